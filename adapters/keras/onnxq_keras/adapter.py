"""``KerasAdapter``: the object onnxq finds under the entry point ``onnxq.adapters: keras``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxq.adapters import ExportResult

from . import _tf, data, export, files


class KerasAdapter:
    """TF/Keras support for onnxq (satisfies ``onnxq.adapters.Adapter``).

    Exports Keras 3 models (Functional, Sequential, subclassed), ``tf.function``s and loaded
    SavedModels with tf2onnx; reads ``tf.data.Dataset``, ``keras.utils.PyDataset`` and tf
    tensors as calibration data; loads ``.keras`` / ``.h5`` files and SavedModel folders.
    """

    name = "keras"
    package = "onnxq-keras"

    def can_export(self, obj: Any) -> bool:
        # Every TF/Keras object is claimed, so one that cannot be exported gets this adapter's
        # specific error ("pass a keras.Model, a tf.function ...") instead of an install hint.
        return _tf.loaded() and _tf.from_framework(obj)

    def can_load(self, path: Path) -> bool:
        return files.can_load(path)

    def load(self, path: Path, *, allow_pickle: bool = False) -> Any:
        return files.load(path, allow_pickle=allow_pickle)

    def export(self, obj: Any, *, example_inputs: Any = None, data: Any = None,
               **options: Any) -> ExportResult:
        """See :class:`onnxq_keras.ExportOptions` for ``options``."""
        return export.export(obj, example_inputs=example_inputs, data=data, **options)

    def describe_inputs(self, obj: Any, **options: Any) -> Any:
        """The ONNX inputs (``onnxq.summary.TensorInfo``) the export of ``obj`` will have."""
        return export.describe_inputs(obj, **options)

    def owns_data(self, data_: Any) -> bool:
        return data.owns(data_)

    def to_feeds(self, data_: Any, input_names: list[str], *, transform: Any = None) -> Any:
        return data.to_feeds(data_, input_names, transform=transform)
