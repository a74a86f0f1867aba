"""PyTorch data -> onnxq feeds: batches of ``{input_name: np.ndarray}`` plus an optional ``labels``.

Sources: a ``DataLoader``; a ``Dataset`` (map-style or iterable; batched here with a
``DataLoader`` of ``batch_size`` samples); a tensor (all samples of a one-input model); a dict of
tensors; a tuple ``(inputs..., labels)`` of tensors (all samples at once); a list or other
iterable of batches. A batch is a tensor, a dict of tensors (key ``labels`` = labels), or a
tuple/list: ``(x, y)`` for a one-input model, ``(x1, ..., xn)`` or ``(x1, ..., xn, y)`` for an
n-input model, or ``(inputs, labels)`` where ``inputs`` is a tuple or dict. ``transform`` is
applied to each batch before that.

Nothing is materialised: a re-iterable source gives a re-iterable :class:`TorchFeeds`, a
one-shot iterator a one-shot generator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from onnxq.errors import DataError

from .inputs import to_numpy

LABELS_KEY = "labels"
DEFAULT_BATCH_SIZE = 8

Feed = dict[str, np.ndarray]


def _is_leaf(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def _has_tensor(value: Any, depth: int = 0) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if depth > 3:
        return False
    if isinstance(value, Mapping):
        return any(_has_tensor(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)) and value:
        return _has_tensor(value[0], depth + 1)
    return False


def owns_data(data: Any) -> bool:
    """True for torch data: DataLoader, Dataset, tensors, and containers whose leaves are tensors."""
    if isinstance(data, (DataLoader, Dataset, torch.Tensor)):
        return True
    return isinstance(data, (Mapping, list, tuple)) and _has_tensor(data)


def batch_to_feed(batch: Any, input_names: list[str], where: str = "the batch") -> Feed:
    """One batch (tensor, dict, or tuple with optional labels) -> ``{name: array}`` (+ ``labels``)."""
    n = len(input_names)
    if _is_leaf(batch):
        if n != 1:
            raise DataError(f"{where} is a single tensor but the model has {n} inputs "
                            f"({', '.join(input_names)}): yield a dict or a tuple per batch")
        return {input_names[0]: to_numpy(batch)}
    if isinstance(batch, Mapping):
        return {str(k): to_numpy(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        items = list(batch)
        if len(items) == 2 and isinstance(items[0], (Mapping, tuple, list)):
            feed = batch_to_feed(items[0], input_names, where)  # (inputs, labels)
            feed[LABELS_KEY] = to_numpy(items[1])
            return feed
        if all(_is_leaf(v) for v in items):
            if len(items) == n:
                return {name: to_numpy(v) for name, v in zip(input_names, items)}
            if len(items) == n + 1:
                feed = {name: to_numpy(v) for name, v in zip(input_names, items)}
                feed[LABELS_KEY] = to_numpy(items[-1])
                return feed
        raise DataError(f"{where} is a {type(batch).__name__} of {len(items)} items; the model has "
                        f"{n} input(s) ({', '.join(input_names)}): expected {n} tensors, optionally "
                        "followed by labels, or (inputs, labels)")
    raise DataError(f"{where} is a {type(batch).__name__}; expected a tensor, a dict of tensors or "
                    "a tuple (inputs..., labels)")


class TorchFeeds:
    """Re-iterable feeds over a re-iterable torch source; each pass re-reads the source."""

    def __init__(self, source: Iterable[Any], input_names: list[str],
                 transform: Callable[[Any], Any] | None = None) -> None:
        self.source = source
        self.input_names = list(input_names)
        self.transform = transform

    def __iter__(self) -> Iterator[Feed]:
        return _convert(iter(self.source), self.input_names, self.transform)

    def __repr__(self) -> str:
        return f"TorchFeeds({type(self.source).__name__}, inputs={self.input_names})"


def _convert(batches: Iterator[Any], input_names: list[str],
             transform: Callable[[Any], Any] | None) -> Iterator[Feed]:
    for number, batch in enumerate(batches):
        if transform is not None:
            batch = transform(batch)
        yield batch_to_feed(batch, input_names, f"batch {number}")


def to_feeds(data: Any, input_names: list[str], *, transform: Callable[[Any], Any] | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE) -> Any:
    """Torch data -> something :func:`onnxq.data.load_data` accepts (see the module doc).

    Raises:
        DataError: a source or batch layout that does not fit the model's inputs.
    """
    if isinstance(data, (Dataset, IterableDataset)) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, DataLoader):
        return TorchFeeds(data, input_names, transform)
    if _is_leaf(data) or isinstance(data, (Mapping, tuple)):
        # all samples at once: one "batch" that load_data re-batches
        if transform is not None:
            data = transform(data)
        return batch_to_feed(data, input_names, "the data")
    if isinstance(data, Iterator):
        return _convert(data, input_names, transform)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        return TorchFeeds(data, input_names, transform)
    raise DataError(f"cannot read a {type(data).__name__} as torch data: pass a DataLoader, a Dataset, "
                    "a tensor, a dict of tensors or a list of batches")


def first_batch(data: Any, input_names: list[str] | None, *,
                transform: Callable[[Any], Any] | None = None) -> Any:
    """The inputs of the first batch of torch ``data`` (labels dropped), as a tensor, tuple or dict.

    ``input_names`` may be ``None`` when unknown: then tuples are read as ``(x, y)`` or inputs only.
    """
    if isinstance(data, (Dataset, IterableDataset)) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=DEFAULT_BATCH_SIZE, shuffle=False)
    if isinstance(data, DataLoader) or (isinstance(data, Iterable) and isinstance(data, list)):
        try:
            batch = next(iter(data))
        except StopIteration:
            raise DataError("the data is empty: no batch to take example inputs from") from None
    else:
        batch = data
    if transform is not None:
        batch = transform(batch)
    names = input_names or ["input"]
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k != LABELS_KEY}
    if isinstance(batch, (tuple, list)):
        items = list(batch)
        if len(items) == 2 and isinstance(items[0], (Mapping, tuple, list)):
            return first_batch(items[0], input_names)
        if len(items) == len(names) + 1 or (input_names is None and len(items) == 2):
            items = items[:-1]
        return tuple(items) if len(items) > 1 else items[0]
    return batch
