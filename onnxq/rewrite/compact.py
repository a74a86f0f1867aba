"""Compact a QDQ model after ONNX Runtime's rewrite: drop what no one needs to run or trace it.

Contract: changes the model in place; the outputs ONNX Runtime computes are bit-identical and
the graph it fuses is the same (QLinearConv, QGemm ... as before); model-level
``metadata_props`` (onnxq's own records) are kept. What goes, measured on EfficientNet-Lite1:

* **All-zero zero points of constant integer tensors** that ONNX Runtime does not read: the int32
  zero-point vector of every quantized bias (as large as the bias itself; the fused kernels use
  the bias values only, and ``DequantizeLinear`` defaults to a zero point of 0), and of every
  weight read only by ``Conv`` (fused the same without it). Weights of ``Gemm``/``MatMul`` keep
  theirs: without it ORT does not fuse them into ``QGemm``.
* **Exporters' debug information** on nodes: stack traces, FX node text, namespaces and
  rewrite-rule names in ``metadata_props`` (torch's dynamo exporter, onnxscript), and node
  ``doc_string``s. What names a node's framework layer stays (onnxq's own ``onnxq.*`` keys and
  torch's module path and class hierarchy, :data:`TRACE_KEYS`), so reports still trace nodes to
  the user's model.
* **Initializers no node reads** (float leftovers of quantized weights, orphaned scales).

Names, value_info, scales and the graph's structure are left as ORT wrote them: other stages
(analyze, keep-float, bias correction) find tensors by those names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from .._graph import all_nodes, serialized_size

__all__ = ["TRACE_KEYS", "CompactStats", "compact"]

#: node ``metadata_props`` kept: those that name the framework layer of a node (:mod:`onnxq.names`),
#: and every key onnxq writes itself (``onnxq.`` prefix)
TRACE_KEYS = frozenset({"pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy"})
_OWN_PREFIX = "onnxq."

#: ops that fuse the same with or without the zero point of their weight's DequantizeLinear
_WEIGHT_ZP_OPTIONAL = frozenset({"Conv"})


@dataclass(frozen=True)
class CompactStats:
    """What :func:`compact` removed."""

    zero_points: int = 0
    initializers: int = 0
    debug_nodes: int = 0
    bytes_saved: int = 0


def compact(model: onnx.ModelProto) -> CompactStats:
    """Remove unneeded zero points, debug metadata and unused initializers (see the module docstring).

    Returns:
        Counts of what was removed and the bytes saved in the serialized model.
    """
    before = serialized_size(model)
    graph = model.graph
    zero_points = _drop_zero_points(graph)
    debug = sum(_slim_debug_info(node) for node in all_nodes(graph))
    initializers = _drop_unused_initializers(graph)
    return CompactStats(zero_points=zero_points, initializers=initializers, debug_nodes=debug,
                        bytes_saved=before - serialized_size(model))


def _drop_zero_points(graph: onnx.GraphProto) -> int:
    """Drop the all-zero zero point of each ``DequantizeLinear`` of a constant integer tensor
    whose zero point ORT does not need (int32 biases; weights read only by Conv)."""
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in all_nodes(graph):
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    dropped = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.domain not in ("", "ai.onnx"):
            continue
        data, zero_point = inits.get(node.input[0]), inits.get(node.input[2])
        if data is None or zero_point is None or node.output[0] in outputs:
            continue
        readers = consumers.get(node.output[0], [])
        bias = data.data_type == onnx.TensorProto.INT32
        if not (bias or (readers and all(r.op_type in _WEIGHT_ZP_OPTIONAL for r in readers))):
            continue
        if uses_external_data(zero_point) or np.any(numpy_helper.to_array(zero_point)):
            continue
        del node.input[2]
        dropped += 1
    return dropped


def _slim_debug_info(node: onnx.NodeProto) -> int:
    """Keep only the metadata that traces the node (:data:`TRACE_KEYS`, ``onnxq.*``); drop its
    doc string. 1 if changed."""
    keep = [(p.key, p.value) for p in node.metadata_props
            if p.key in TRACE_KEYS or p.key.startswith(_OWN_PREFIX)]
    if not node.doc_string and len(keep) == len(node.metadata_props):
        return 0
    node.ClearField("doc_string")
    node.ClearField("metadata_props")
    for key, value in keep:
        entry = node.metadata_props.add()
        entry.key, entry.value = key, value
    return 1


def _drop_unused_initializers(graph: onnx.GraphProto) -> int:
    """Remove initializers that no node (subgraphs included) reads and that are not graph outputs
    or graph inputs (an initializer listed as an input can be overridden: it stays)."""
    used = {name for node in all_nodes(graph) for name in node.input}
    used |= {o.name for o in graph.output} | {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in used]
    removed = len(graph.initializer) - len(keep)
    if removed:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return removed
