"""ONNX Runtime vs torch on the example inputs: the exported graph must compute what the module does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import torch

from onnxq.errors import AdapterError, ModelError
from onnxq.runtime import create_session, run

from .inputs import ExampleInputs, to_numpy


def flatten_outputs(outputs: Any) -> tuple[list[str], list[torch.Tensor]]:
    """Default output names and the output tensors, in the order the exporters write them.

    Raises:
        AdapterError: an output that is not a tensor.
    """
    if isinstance(outputs, torch.Tensor):
        return ["output"], [outputs]
    names: list[str] = []
    tensors: list[torch.Tensor] = []

    def walk(value: Any, name: str) -> None:
        if isinstance(value, torch.Tensor):
            names.append(name)
            tensors.append(value)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, str(key))
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item, f"output_{len(tensors)}")
        else:
            raise AdapterError(f"forward returns a {type(value).__name__}; onnxq exports models "
                               "whose outputs are tensors (or tuples / dicts of tensors)")

    walk(outputs, "output")
    if not tensors:
        raise AdapterError("forward returns no tensors; there is nothing to export")
    return names, tensors


def verify(model: onnx.ModelProto, example: ExampleInputs, expected: Any, output_names: list[str], *,
           rtol: float = 1e-4, atol: float = 1e-4) -> float:
    """Run ONNX Runtime on the example inputs and compare each output with torch's.

    ``atol`` is scaled by ``max(1, max |torch output|)``.

    Returns:
        The largest absolute difference over all outputs.

    Raises:
        AdapterError: ORT cannot run the model, or an output differs beyond tolerance.
    """
    _, tensors = flatten_outputs(expected)
    wanted = [to_numpy(t) for t in tensors]
    graph_inputs = {i.name for i in model.graph.input}
    feeds = {k: v for k, v in example.feeds().items() if k in graph_inputs}
    # a QDQ (QAT) graph is checked as written: ORT's fused integer kernels may differ from torch's
    # fake-quant arithmetic by design (e.g. u8 x s8 saturation on AVX2 CPUs without VNNI)
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    try:
        got = run(create_session(model, optimize=not qdq), feeds)
    except ModelError as exc:
        raise AdapterError(f"ONNX Runtime cannot run the exported model: {exc}") from exc
    if len(got) != len(wanted):
        raise AdapterError(f"the exported model has {len(got)} outputs, torch returns {len(wanted)}")
    worst = 0.0
    for name, ours, theirs in zip(output_names, got, wanted):
        if ours.shape != theirs.shape:
            raise AdapterError(f"output {name!r}: ONNX Runtime gives shape {list(ours.shape)}, "
                               f"torch {list(theirs.shape)}")
        if theirs.dtype.kind not in "fc":
            if not np.array_equal(ours, theirs):
                raise AdapterError(f"output {name!r}: ONNX Runtime and torch disagree on integer/bool values")
            continue
        a, b = ours.astype(np.float64), theirs.astype(np.float64)
        error = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
        bad = np.abs(a - b) > atol * scale + rtol * np.abs(b)
        if np.isnan(a).any() != np.isnan(b).any() or bad.any():
            raise AdapterError(f"ONNX Runtime disagrees with torch on output {name!r}: max abs error "
                               f"{error:.3g} (max |torch| {scale:.3g}, rtol={rtol}, atol={atol}); "
                               "raise export_options rtol/atol if this is expected")
        worst = max(worst, error)
    return worst
