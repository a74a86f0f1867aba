"""Framework data -> onnxq feeds: ``tf.data.Dataset``, ``keras.utils.PyDataset``, tensors.

Every element becomes ``{input_name: np.ndarray}`` (plus ``"labels"`` for ``(x, y)`` elements).
Pipelines are streamed: the returned object re-iterates the dataset on every pass and never
holds more than one element.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from onnxq.errors import AdapterError, DataError

from . import _tf

LABELS_KEY = "labels"
UNBATCHED_BATCH_SIZE = 32  # an unbatched tf.data pipeline is batched this much for speed

# Inputs the most recent export made NCHW (``inputs_as_nchw``): their 4-D framework data is
# transposed from Keras's NHWC on the way to ONNX Runtime.
_NCHW_INPUTS: set[str] = set()


def remember_nchw(input_names: list[str], nchw: list[str]) -> None:
    """Record which inputs the latest export turned NCHW (the others are cleared)."""
    _NCHW_INPUTS.difference_update(input_names)
    _NCHW_INPUTS.update(nchw)


def owns(data: Any) -> bool:
    """True for tf.data datasets, Keras PyDatasets, tf tensors and containers holding tensors."""
    if not _tf.loaded():
        return False
    if _tf.from_framework(data):
        return True
    if isinstance(data, Mapping):
        return any(_tf.from_framework(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return any(_tf.from_framework(v) for v in data)
    return False


def to_feeds(data: Any, input_names: list[str], *, transform: Callable[[Any], Any] | None = None) -> Any:
    """Framework data -> what ``onnxq.data.load_data`` accepts.

    Tensors (and tuples/dicts of tensors) become one dict of arrays (random access); datasets
    become a re-iterable stream of dicts.
    """
    tf, keras = _tf.tf(), _tf.keras()
    if isinstance(data, tf.data.Dataset):
        if not _is_batched(data):
            data = data.batch(UNBATCHED_BATCH_SIZE)
        return _Stream(lambda: data.as_numpy_iterator(), input_names, transform)
    if isinstance(data, keras.utils.PyDataset):
        return _Stream(lambda: _py_dataset_items(data), input_names, transform)
    if _tf.from_framework(data) and not tf.is_tensor(data):
        raise AdapterError(f"onnxq-keras cannot read data from a {type(data).__name__}: pass a "
                           "tf.data.Dataset, a keras.utils.PyDataset, tensors or numpy arrays")
    element = transform(data) if transform else data
    return element_to_feed(_to_numpy(element), input_names)


def element_to_feed(element: Any, input_names: list[str]) -> dict[str, np.ndarray]:
    """One dataset element -> ``{input_name: array}``: ``x``, ``(x,)``, ``(x, y)`` or
    ``(x, y, sample_weight)`` as in ``model.fit``, where ``x`` is an array, a list (or a tuple
    nested in the element) in input order, or a dict keyed by input name."""
    labels = None
    if isinstance(element, tuple) and len(element) in (2, 3):  # Keras's convention, as in model.fit
        element, labels = element[0], element[1]
    elif isinstance(element, tuple) and len(element) == 1:
        element = element[0]
    if isinstance(element, Mapping):
        feed = {str(k): v for k, v in element.items()}
    elif isinstance(element, (list, tuple)):
        if len(element) != len(input_names):
            raise DataError(f"a data element holds {len(element)} input arrays; the model has "
                            f"{len(input_names)} inputs ({', '.join(input_names)})")
        feed = dict(zip(input_names, element))
    else:
        if len(input_names) != 1:
            raise DataError(f"a data element holds one array; the model has {len(input_names)} "
                            f"inputs ({', '.join(input_names)}): yield a dict or a tuple per element")
        feed = {input_names[0]: element}
    feed = {k: _nchw(k, np.asarray(v)) for k, v in feed.items()}
    if labels is not None and LABELS_KEY not in input_names:
        feed[LABELS_KEY] = np.asarray(labels)
    return feed


class _Stream:
    """Re-iterable feeds over a framework pipeline (a fresh iterator on every pass)."""

    def __init__(self, items: Callable[[], Iterator[Any]], input_names: list[str],
                 transform: Callable[[Any], Any] | None) -> None:
        self._items, self._names, self._transform = items, list(input_names), transform

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for element in self._items():
            if self._transform is not None:
                element = _to_numpy(self._transform(element))
            yield element_to_feed(element, self._names)


def _py_dataset_items(dataset: Any) -> Iterator[Any]:
    count = dataset.num_batches if getattr(dataset, "num_batches", None) is not None else len(dataset)
    for index in range(count):
        yield _to_numpy(dataset[index])


def _is_batched(dataset: Any) -> bool:
    """Whether a batch (or padded batch) op is in the pipeline; map/prefetch/... after it count."""
    node = dataset
    for _ in range(100):
        name = type(node).__name__
        if "Batch" in name and "Unbatch" not in name:
            return True
        if "Unbatch" in name:
            return False
        inputs = getattr(node, "_input_dataset", None)
        if inputs is None:
            break
        node = inputs
    return False


def _to_numpy(value: Any) -> Any:
    tf = _tf.tf()
    if tf.is_tensor(value):
        return value.numpy()
    if isinstance(value, Mapping):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_to_numpy(v) for v in value)
    if isinstance(value, list):
        return [_to_numpy(v) for v in value]
    return value


def _nchw(name: str, array: np.ndarray) -> np.ndarray:
    if name in _NCHW_INPUTS and array.ndim == 4:
        return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    return array
