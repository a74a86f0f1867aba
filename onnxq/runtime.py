"""ONNX Runtime sessions for in-memory models (CPU), shared by calibration and validation."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from ._graph import serialized_size
from .errors import ModelError

_TWO_GB = 2**31 - 1


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
            if serialized_size(model) < _TWO_GB:
                return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
            with tempfile.TemporaryDirectory(prefix="onnxq-") as tmp:
                path = os.path.join(tmp, "model.onnx")
                onnx.save_model(model, path, save_as_external_data=True, location="model.onnx.data")
                return ort.InferenceSession(path, options, providers=providers)
        return ort.InferenceSession(os.fspath(model), options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise ModelError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from exc


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray],
        output_names: list[str] | None = None) -> list[np.ndarray]:
    """Run one batch; turn ORT's failure into a ModelError with its first line."""
    try:
        return session.run(output_names, feeds)
    except Exception as exc:
        raise ModelError(f"ONNX Runtime failed to run the model: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
