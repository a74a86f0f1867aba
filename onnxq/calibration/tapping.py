"""Tapping: expose inner tensors of a model as graph outputs so that ORT returns them.

Contract: :func:`tap` returns a copy of the model (the input is not modified) whose graph outputs
also list the requested tensors, keeping their value info (type, shape) when the graph has it.
Lives apart from :mod:`onnxq.calibration.runner` so that every calibration module can use it
without importing the runner (no import cycles); the runner re-exports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx


def tap(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also expose ``tensors``."""
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    graph = tapped.graph
    known = {vi.name: vi for vi in list(graph.value_info) + list(graph.input)}
    outputs = {o.name for o in graph.output}
    for name in tensors:
        if name in outputs:
            continue
        info = onnx.ValueInfoProto()
        if name in known:
            info.CopyFrom(known[name])
        else:
            info.name = name
        graph.output.append(info)
    return tapped
