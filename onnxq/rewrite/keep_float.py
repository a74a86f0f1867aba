"""Keep float nodes float at run time: a post-quantization rewrite against ORT's weight re-quantization.

Contract. ONNX Runtime (1.20+, verified on 1.32) runs a graph transformer, ``WeightBiasQuantization``,
at session creation for every graph optimisation level. It finds a ``Conv`` / ``ConvTranspose`` /
``Gemm`` whose input 0 comes from a ``DequantizeLinear`` with a *scalar* scale, whose output reaches
a ``QuantizeLinear`` (through ``Relu``/``Clip`` only, each output read by exactly one node), and
whose weight is a float initializer; it quantizes that weight to int8 (per tensor) and the bias to
int32, and the usual QDQ fusion then turns the node into ``QLinearConv`` / ``QGemm``. So a node
that onnxq's plan or fallback kept float (``exclude_nodes``, the accuracy fallback) ran int8 anyway,
with a cruder weight quantization than onnxq's own. :func:`keep_float_at_runtime` breaks the first
condition at no measurable cost: the float node reads its input through a ``DequantizeLinear``
that is per-axis (axis = the node's input-channel axis) with the same scale and zero point
repeated for every channel. The values are bit-identical (the model means exactly what it meant),
constant folding never touches a ``DequantizeLinear``, and ORT's per-axis dequantization of an
NCHW activation is as fast as the per-tensor one. Only nodes that match ORT's pattern are changed
(a float Conv feeding a float Add already runs float). ``MatMul`` is not touched: ORT 1.32 leaves a
float ``MatMul`` float (the tests check it on ORT's optimised graph, so a later ORT that changes
this is caught). New nodes and outputs end in ``_per_channel``. Changes its input model in place;
needs opset >= 13 (per-axis ``DequantizeLinear``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from .._graph import unique_name

logger = logging.getLogger(__name__)

__all__ = ["REQUANTIZED_OP_TYPES", "keep_float_at_runtime"]

#: Op types whose float weights ORT's ``WeightBiasQuantization`` quantizes at session creation.
REQUANTIZED_OP_TYPES = frozenset({"Conv", "ConvTranspose", "Gemm"})
_SUFFIX = "_per_channel"


@dataclass(frozen=True)
class _Target:
    node: onnx.NodeProto
    dq: onnx.NodeProto
    axis: int
    channels: int


def keep_float_at_runtime(model: onnx.ModelProto) -> list[str]:
    """Make every float Conv/ConvTranspose/Gemm of a QDQ model read a per-axis ``DequantizeLinear``.

    A node qualifies when its input 0 is the output of a ``DequantizeLinear`` with a one-element
    scale, its weight (input 1) is not a ``DequantizeLinear`` output (ORT's quantizer left it
    float), and its output reaches a ``QuantizeLinear`` through single-reader ``Relu``/``Clip``
    nodes only: exactly the nodes ORT would re-quantize. Consumers of the same
    ``DequantizeLinear`` that need the same axis share one new node; the old one is removed when
    nothing reads it any more.

    Args:
        model: a QDQ model; changed in place.

    Returns:
        The names of the nodes now protected from ORT's weight re-quantization.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    targets = [t for n in graph.node
               if _reaches_quantize(n, readers) and (t := _target(n, producer, inits, model)) is not None]
    if not targets:
        return []
    taken = {n.name for n in graph.node} | {o for n in graph.node for o in n.output} | set(inits)
    replacements: dict[tuple[str, int, int], str] = {}
    new_nodes: dict[str, list[onnx.NodeProto]] = {}
    for t in targets:
        key = (t.dq.output[0], t.axis, t.channels)
        if key not in replacements:
            node = _per_axis_copy(graph, t, inits, taken)
            new_nodes.setdefault(t.dq.output[0], []).append(node)
            replacements[key] = node.output[0]
        t.node.input[0] = replacements[key]
    _insert_after_sources(graph, new_nodes)
    _drop_unused_dequantize(graph, {t.dq.output[0] for t in targets})
    names = [t.node.name for t in targets]
    logger.info("kept %d float node(s) float in ONNX Runtime (per-axis input DequantizeLinear): %s",
                len(names), ", ".join(names))
    return names


def _reaches_quantize(node: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]]) -> bool:
    """ORT's ``IsNoBranchPathToQuantizeLinear``: one reader at each step, Relu/Clip until a QuantizeLinear."""
    if node.op_type not in REQUANTIZED_OP_TYPES:
        return False
    current = node
    for _ in range(64):
        if len(current.output) != 1 or len(readers.get(current.output[0], [])) != 1:
            return False
        current = readers[current.output[0]][0]
        if current.op_type == "QuantizeLinear":
            return True
        if current.op_type not in ("Relu", "Clip"):
            return False
    return False


def _target(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto], inits: dict[str, onnx.TensorProto],
            model: onnx.ModelProto) -> _Target | None:
    if node.op_type not in REQUANTIZED_OP_TYPES or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    dq = producer.get(node.input[0])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
        return None
    weight_source = producer.get(node.input[1])
    if weight_source is not None and weight_source.op_type == "DequantizeLinear":
        return None  # quantized by onnxq/ORT's quantizer: meant to run int8
    scale = inits.get(dq.input[1])
    if scale is None or int(np.prod(scale.dims)) != 1 or _attr(dq, "block_size", 0):
        return None  # a computed or per-axis scale: ORT's transformer skips it already
    axis, channels = _channel_axis(node, inits, producer, model)
    if channels is None:
        logger.warning("cannot tell the input channels of %s (%s); ONNX Runtime may run it int8",
                       node.name, node.op_type)
        return None
    return _Target(node, dq, axis, channels)


def _channel_axis(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
                  producer: dict[str, onnx.NodeProto], model: onnx.ModelProto) -> tuple[int, int | None]:
    """(axis of input 0 that the per-axis scale runs along, its length or None when unknown)."""
    weight = _const_shape(node.input[1], inits, producer)
    if node.op_type == "Gemm":
        axis = 0 if _attr(node, "transA", 0) else 1
        if weight is not None and len(weight) == 2:
            return axis, weight[1] if _attr(node, "transB", 0) else weight[0]
        return axis, _value_dim(model, node.input[0], axis)
    if weight is not None and len(weight) >= 2:
        channels = weight[0] if node.op_type == "ConvTranspose" else weight[1] * _attr(node, "group", 1)
        return 1, channels
    return 1, _value_dim(model, node.input[0], 1)


def _const_shape(name: str, inits: dict[str, onnx.TensorProto],
                 producer: dict[str, onnx.NodeProto]) -> list[int] | None:
    if name in inits:
        return list(inits[name].dims)
    node = producer.get(name)
    if node is not None and node.op_type == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return list(a.t.dims)
    return None


def _value_dim(model: onnx.ModelProto, name: str, axis: int) -> int | None:
    for vi in list(model.graph.value_info) + list(model.graph.input):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            if axis < len(dims) and dims[axis].HasField("dim_value") and dims[axis].dim_value > 0:
                return dims[axis].dim_value
    return None


def _per_axis_copy(graph: onnx.GraphProto, t: _Target, inits: dict[str, onnx.TensorProto],
                   taken: set[str]) -> onnx.NodeProto:
    """A new DequantizeLinear of the same integer tensor with the scale/zero point repeated per channel."""
    base = f"{t.dq.output[0]}{_SUFFIX}" if t.axis == 1 else f"{t.dq.output[0]}{_SUFFIX}_axis{t.axis}"
    inputs = [t.dq.input[0]]
    for index, role in ((1, "scale"), (2, "zero_point")):
        if index >= len(t.dq.input) or not t.dq.input[index]:
            continue
        value = numpy_helper.to_array(inits[t.dq.input[index]]).reshape(())
        name = unique_name(f"{base}_{role}_{t.channels}", taken)
        graph.initializer.append(numpy_helper.from_array(np.full(t.channels, value, value.dtype), name))
        inits[name] = graph.initializer[-1]
        inputs.append(name)
    return helper.make_node("DequantizeLinear", inputs, [unique_name(base, taken)], axis=t.axis,
                            name=unique_name(f"{t.dq.name or base}{_SUFFIX}", taken))


def _insert_after_sources(graph: onnx.GraphProto, new_nodes: dict[str, list[onnx.NodeProto]]) -> None:
    """Put each new node right after the DequantizeLinear it copies (its inputs exist there)."""
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        ordered.append(node)
        if node.op_type == "DequantizeLinear" and node.output[0] in new_nodes:
            ordered.extend(new_nodes[node.output[0]])
    del graph.node[:]
    graph.node.extend(ordered)


def _drop_unused_dequantize(graph: onnx.GraphProto, outputs: set[str]) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [n for n in graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] in outputs
                                          and n.output[0] not in used)]
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)



def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(helper.get_attribute_value(a))
    return default
