"""``TorchAdapter``: what onnxq's core finds under the ``onnxq.adapters`` entry point ``torch``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onnxq.adapters import ExportResult
from onnxq.errors import AdapterError
from onnxq.summary import TensorInfo

from . import data as _data
from . import files as _files
from .export import _dynamic_axes as dynamic_axes
from .export import check_options, example_from_numpy, export_module
from .inputs import normalize, signature_names

EXAMPLE_SAMPLES = 8  # example inputs taken from data: at most this many samples


def _head(value: Any, limit: int = EXAMPLE_SAMPLES) -> Any:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value[:limit] if value.ndim > 0 else value
    if isinstance(value, Mapping):
        return {k: _head(v, limit) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_head(v, limit) for v in value)
    return value


class TorchAdapter:
    """Exports ``nn.Module`` / ``ExportedProgram`` / TorchScript and turns torch data into feeds."""

    name = "torch"
    package = "onnxq-torch"

    def can_export(self, obj: Any) -> bool:
        return isinstance(obj, (torch.nn.Module, torch.export.ExportedProgram, _files.LoadedModel))

    def can_load(self, path: Path) -> bool:
        return _files.can_load(Path(path))

    def load(self, path: Path, *, allow_pickle: bool = False) -> _files.LoadedModel:
        return _files.load_file(Path(path), allow_pickle=allow_pickle)

    def export(self, obj: Any, *, example_inputs: Any = None, data: Any = None, **options: Any) -> ExportResult:
        """Export ``obj`` (options: :data:`onnxq_torch.EXPORT_OPTIONS`); example inputs default to
        those stored in a ``.pt2`` file, else the first batch of ``data``."""
        check_options(options)
        notes: list[str] = []
        model = obj
        if isinstance(obj, _files.LoadedModel):
            model = obj.model
            if example_inputs is None and obj.example_inputs is not None:
                example_inputs = obj.example_inputs
                notes.append(f"example inputs taken from {obj.path.name}")
        if not self.can_export(model):
            raise AdapterError(f"the torch adapter cannot export a {type(model).__name__}")
        if example_inputs is None:
            example_inputs = self._examples_from(model, data, options.get("input_names"))
            notes.append("example inputs taken from the first batch of the data")
        result = export_module(model, example_inputs, **options)
        result.notes[:0] = notes
        return result

    def _examples_from(self, model: Any, data: Any, input_names: Any) -> Any:
        module = model.module() if isinstance(model, torch.export.ExportedProgram) else model
        params = list(input_names) if input_names else signature_names(module)[0] or None
        if data is None:
            raise AdapterError("example inputs are needed to export a torch model: pass example_inputs=... "
                               "or calibration data (CLI: --data FILE.npz)")
        if isinstance(data, (str, os.PathLike)):
            path = Path(data)
            if path.suffix.lower() not in (".npz", ".npy") or not path.is_file():
                raise AdapterError(f"example inputs for a torch model are read from a .npz or .npy file, not {path}")
            try:
                loaded = np.load(path, allow_pickle=False)
                arrays = {params[0] if params else "input": loaded} if path.suffix.lower() == ".npy" else dict(loaded)
            except Exception as exc:
                raise AdapterError(f"cannot read example inputs from {path.name}: {exc}") from exc
            return example_from_numpy(arrays, params or [], EXAMPLE_SAMPLES)
        if self.owns_data(data):
            return _head(_data.first_batch(data, params))
        if isinstance(data, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(data[:EXAMPLE_SAMPLES]))
        if isinstance(data, Mapping):
            return example_from_numpy(data, params or [], EXAMPLE_SAMPLES)
        if isinstance(data, (list, tuple)) and data and isinstance(data[0], Mapping):
            return example_from_numpy(data[0], params or [], EXAMPLE_SAMPLES)
        raise AdapterError(f"cannot take example inputs from a {type(data).__name__}: pass example_inputs=...")

    def describe_inputs(self, obj: Any, **options: Any) -> list[TensorInfo] | None:
        """The ONNX inputs the export of ``obj`` will have, from the example inputs a ``.pt2``
        file stores (``None`` for models whose inputs only example inputs or data can tell)."""
        check_options(options)
        if not isinstance(obj, _files.LoadedModel) or obj.example_inputs is None:
            return None
        model = obj.model
        module = model.module() if isinstance(model, torch.export.ExportedProgram) else model
        example = normalize(obj.example_inputs, module, options.get("input_names"))
        axes = dynamic_axes(example, options)
        infos = []
        for name, tensor in zip(example.names, example.tensors()):
            dims: list[int | str | None] = [axes.get(name, {}).get(i, int(d)) for i, d in enumerate(tensor.shape)]
            infos.append(TensorInfo(name=name, dtype=str(tensor.dtype).replace("torch.", ""), shape=dims))
        return infos

    def owns_data(self, data: Any) -> bool:
        return _data.owns_data(data)

    def to_feeds(self, data: Any, input_names: list[str], *, transform: Any = None) -> Any:
        return _data.to_feeds(data, input_names, transform=transform)
