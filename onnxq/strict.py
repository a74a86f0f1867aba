"""Strict integer mode: find the nodes of a QDQ model that ONNX Runtime will still run in float.

A QDQ model says "run this node in integer" by surrounding it with ``DequantizeLinear`` (inputs)
and ``QuantizeLinear`` (outputs); ONNX Runtime's CPU graph optimiser then fuses such groups into
integer kernels (QLinearConv, QLinearMatMul, MatMulIntegerToFloat, QLinearAdd, ...) or drops the
Q/DQ around data-movement ops. A node runs **in integer** here when all of these hold:

1. its op type has an integer form in ORT's QDQ fusions on CPU (:data:`INTEGER_OP_TYPES`, taken
   from ``qdq_selector_action_transformer.cc``; Relu/Clip count because ORT folds them into the
   QuantizeLinear that follows);
2. every floating-point input that is not a constant comes from a ``DequantizeLinear`` of an
   8-bit tensor (int32 for biases); 16-bit Q/DQ count as float, because ORT's CPU kernels
   dequantize them and compute in float, except for pure data movement (:data:`INT16_OP_TYPES`);
3. every floating-point output goes only to ``QuantizeLinear`` nodes, except for MatMul and Gemm
   (ORT has integer kernels with a float output: ``MatMulIntegerToFloat``, ``QGemm``) and ArgMax.

Every other *compute node* is a float node. Compute nodes are all nodes except
``QuantizeLinear``/``DequantizeLinear``/``Constant``, nodes with no floating-point input or output
(shape and index arithmetic) and nodes whose inputs are all constants (folded by ORT at load time).
:func:`float_nodes` lists them with a reason; ``QuantConfig(strict=True)`` turns a non-empty list
into :class:`~onnxq.errors.StrictModeError`, like TFLite's ``TFLITE_BUILTINS_INT8``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import onnx
from onnx import TensorProto

from ._graph import elem_types
from .errors import StrictModeError

logger = logging.getLogger(__name__)

#: Op types with an integer kernel (or Q/DQ-dropping rule) in ORT's CPU QDQ fusions.
INTEGER_OP_TYPES = frozenset({
    # QLinear replacements
    "Conv", "MatMul", "Gemm", "Add", "Mul", "Concat", "Where",
    "AveragePool", "GlobalAveragePool", "LeakyRelu", "Sigmoid", "Softmax",
    # Q/DQ dropped around data movement and order-preserving ops
    "Expand", "Flatten", "Gather", "GatherElements", "Reshape", "Slice", "Squeeze", "Tile",
    "Transpose", "Unsqueeze", "Resize", "MaxPool", "ReduceMax", "ReduceMin", "Split", "ArgMax",
    # folded into the following QuantizeLinear
    "Relu", "Clip",
})
#: Op types whose Q/DQ ORT also drops for 16-bit tensors (data movement only).
INT16_OP_TYPES = frozenset({"Expand", "Flatten", "Gather", "GatherElements", "Reshape", "Slice", "Squeeze",
                            "Tile", "Transpose", "Unsqueeze", "Split"})
#: Op types with an integer kernel that may leave their output in float.
FLOAT_OUTPUT_OK = frozenset({"MatMul", "Gemm", "ArgMax"})

_FLOAT = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
_EIGHT_BIT = {TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32}
_SIXTEEN_BIT = {TensorProto.UINT16, TensorProto.INT16}
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class FloatNode:
    """One node that runs in float, and why.

    Attributes:
        name: node name.
        op_type: ONNX op type.
        reason: why ONNX Runtime will not run it in integer.
    """

    name: str
    op_type: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready dict."""
        return asdict(self)

    def format(self) -> str:
        """One line: ``name (OpType): reason``."""
        return f"{self.name} ({self.op_type}): {self.reason}"


def float_nodes(model: onnx.ModelProto) -> list[FloatNode]:
    """The compute nodes of a QDQ model that ONNX Runtime runs in float (see the module docstring).

    Args:
        model: a quantized (QDQ) model.

    Returns:
        One :class:`FloatNode` per float compute node, in graph order.
    """
    graph = model.graph
    types = _qdq_elem_types(model)
    inits = {i.name: i for i in graph.initializer}
    constants = _constants(graph)
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}

    found: list[FloatNode] = []
    for node in graph.node:
        if node.op_type in _QDQ or node.op_type == "Constant":
            continue
        float_in = [t for t in node.input if t and types.get(t, TensorProto.FLOAT) in _FLOAT]
        float_out = [t for t in node.output if t and types.get(t, TensorProto.FLOAT) in _FLOAT]
        if not float_in and not float_out:
            continue
        if node.input and all(t in constants for t in node.input if t):
            continue
        reason = _float_reason(node, float_in, float_out, constants, producer, consumers, graph_outputs,
                               inits, types)
        if reason is not None:
            found.append(FloatNode(node.name, node.op_type, reason))
    return found


def check_strict(model: onnx.ModelProto) -> list[FloatNode]:
    """Raise :class:`StrictModeError` listing the float nodes, if there are any.

    Returns:
        The empty list when every compute node runs in integer.
    """
    nodes = float_nodes(model)
    if nodes:
        first = nodes[0].format()
        more = f" (and {len(nodes) - 1} more)" if len(nodes) > 1 else ""
        raise StrictModeError(f"strict integer mode: {len(nodes)} node(s) would run in float: {first}{more}",
                              nodes)
    return nodes


def _float_reason(node: onnx.NodeProto, float_in: list[str], float_out: list[str], constants: set[str],
                  producer: dict[str, onnx.NodeProto], consumers: dict[str, list[onnx.NodeProto]],
                  graph_outputs: set[str], inits: dict[str, onnx.TensorProto],
                  types: dict[str, int]) -> str | None:
    op = node.op_type
    if op not in INTEGER_OP_TYPES:
        return "no integer kernel in ONNX Runtime's QDQ fusions for this op type"
    for name in float_in:
        source = producer.get(name)
        if source is None or source.op_type != "DequantizeLinear":
            what = "a constant" if name in constants else "a graph input" if source is None else source.op_type
            return f"input {name!r} is float ({what}, not produced by DequantizeLinear)"
        bits = _dq_type(source, inits, types)
        if bits in _SIXTEEN_BIT and op not in INT16_OP_TYPES:
            return f"input {name!r} is dequantized from 16 bits: ONNX Runtime runs this op in float"
        if bits is not None and bits not in _EIGHT_BIT | _SIXTEEN_BIT:
            return f"input {name!r} is dequantized from {TensorProto.DataType.Name(bits)}"
    if op in FLOAT_OUTPUT_OK:
        return None
    for name in float_out:
        users = consumers.get(name, [])
        if name in graph_outputs or not users or any(u.op_type != "QuantizeLinear" for u in users):
            return f"output {name!r} stays float (not quantized by QuantizeLinear)"
    return None


def _dq_type(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], types: dict[str, int]) -> int | None:
    data = node.input[0]
    if data in inits:
        return inits[data].data_type
    if len(node.input) > 2 and node.input[2] in inits:
        return inits[node.input[2]].data_type
    return types.get(data)


def _constants(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.initializer}
    for node in graph.node:  # graph order is topological: one pass propagates
        if node.op_type == "Constant" or (node.input and all(t in names for t in node.input if t)):
            names.update(node.output)
    return names


def _qdq_elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """:func:`onnxq._graph.elem_types` (inferred) plus what a QDQ graph implies: a QuantizeLinear
    output has its zero point's type, a Constant output its value's."""
    types = elem_types(model, infer=True)
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in types:
            types.setdefault(node.output[0], types[node.input[2]])
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def details(nodes: list[FloatNode]) -> list[dict[str, Any]]:
    """The float nodes as plain dicts (what the report stores)."""
    return [n.to_dict() for n in nodes]

