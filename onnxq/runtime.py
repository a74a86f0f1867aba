"""ONNX Runtime sessions for in-memory models (CPU), shared by calibration and validation.

A model over protobuf's 2 GiB limit cannot be serialized whole: for a session, its large
initializers go once to a private side file that ONNX Runtime memory-maps (unlinked right away);
for a one-off ORT pass (:func:`session_inputs`) they are handed over from memory
(``add_external_initializers``). The caller's model is never modified.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ._graph import LARGE_MODEL_BYTES, is_repeated, serialized_size
from .errors import ModelError, one_line


def create_session(model: onnx.ModelProto | str | os.PathLike[str], *, threads: int | None = None,
                   optimize: bool = True) -> ort.InferenceSession:
    """Create a CPU InferenceSession for a model in memory or on disk.

    Args:
        model: the model, or a path to it.
        threads: intra-op threads; ``None`` lets ORT decide.
        optimize: apply ORT's graph optimisations (off for tapping raw tensors is not needed;
            ORT keeps graph outputs intact either way).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    providers = ["CPUExecutionProvider"]
    try:
        if isinstance(model, onnx.ModelProto):
            if serialized_size(model) < LARGE_MODEL_BYTES:
                return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
            return _large_session(model, options, providers)
        return ort.InferenceSession(os.fspath(model), options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise ModelError(f"ONNX Runtime cannot load the model: {one_line(exc)}") from exc


def session_inputs(model: onnx.ModelProto) -> tuple[bytes, list[str], list[ort.OrtValue]]:
    """What ONNX Runtime loads for an in-memory model, which is never modified.

    Returns:
        The serialized model, and for a model over 2 GiB the names and values of its large
        initializers, to hand over with ``SessionOptions.add_external_initializers`` (the bytes
        then hold stubs for them). Keep the values alive as long as the session.
    """
    if serialized_size(model) < LARGE_MODEL_BYTES:
        return model.SerializeToString(), [], []
    slim, names, values = _slim_copy(model)
    return slim.SerializeToString(), names, values


def _large_session(model: onnx.ModelProto, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    """A > 2 GiB model: its large initializers written once to a private side file, which ONNX
    Runtime memory-maps (no second copy in memory); the file is unlinked as soon as the session
    holds its mapping, so nothing is left behind even if the process is killed later."""
    with tempfile.TemporaryDirectory(prefix="onnxq-session-") as tmp:
        path = Path(tmp) / "model.onnx"
        slim = onnx.ModelProto()
        _copy_fields(model, slim, skip="graph")
        _copy_fields(model.graph, slim.graph, skip="initializer")
        with open(path.with_name("model.onnx.data"), "wb") as side:
            for tensor in model.graph.initializer:
                if not tensor.HasField("raw_data") or serialized_size(tensor) < _EXTERNAL_MIN_BYTES:
                    slim.graph.initializer.add().CopyFrom(tensor)
                    continue
                offset = -(-side.tell() // _ALIGNMENT) * _ALIGNMENT  # page-aligned: ORT maps it
                side.seek(offset)
                length = side.write(tensor.raw_data)
                _stub(slim.graph.initializer.add(), tensor, "model.onnx.data", offset, length)
        path.write_bytes(slim.SerializeToString())
        return ort.InferenceSession(str(path), options, providers=providers)


_ALIGNMENT = 4096


def _stub(stub: onnx.TensorProto, tensor: onnx.TensorProto, location: str, offset: int | None = None,
          length: int | None = None) -> None:
    """``stub`` = ``tensor``'s name, type and shape, its data in external file ``location``."""
    stub.name, stub.data_type = tensor.name, tensor.data_type
    stub.dims.extend(tensor.dims)
    stub.data_location = onnx.TensorProto.EXTERNAL
    entries = [("location", location)] + ([("offset", str(offset)), ("length", str(length))]
                                          if offset is not None else [])
    for key, value in entries:
        entry = stub.external_data.add()
        entry.key, entry.value = key, value


#: Initializers of the main graph at least this large are passed to ORT from memory, not serialized.
_EXTERNAL_MIN_BYTES = 1 << 20


def _slim_copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str], list[ort.OrtValue]]:
    """A copy of ``model`` whose large main-graph initializers are external-data stubs, and those
    initializers as OrtValues (one copy of their bytes, shared with ORT)."""
    slim = onnx.ModelProto()
    _copy_fields(model, slim, skip="graph")
    _copy_fields(model.graph, slim.graph, skip="initializer")
    names: list[str] = []
    values: list[ort.OrtValue] = []
    for tensor in model.graph.initializer:
        if not tensor.HasField("raw_data") or serialized_size(tensor) < _EXTERNAL_MIN_BYTES:
            slim.graph.initializer.add().CopyFrom(tensor)
            continue
        _stub(slim.graph.initializer.add(), tensor, "onnxq-in-memory.bin")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        array = np.frombuffer(tensor.raw_data, dtype=dtype).reshape(tuple(tensor.dims))
        names.append(tensor.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(array))
    return slim, names, values


def _copy_fields(source: object, target: object, *, skip: str) -> None:
    """Copy every set field of one protobuf message into another, except ``skip``."""
    for field, value in source.ListFields():  # type: ignore[attr-defined]
        if field.name == skip:
            continue
        if is_repeated(field):
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray],
        output_names: list[str] | None = None) -> list[np.ndarray]:
    """Run one batch; turn ORT's failure into a ModelError with its whole message (on one line)."""
    try:
        return session.run(output_names, feeds)
    except Exception as exc:
        raise ModelError(f"ONNX Runtime failed to run the model: {one_line(exc)}") from exc
