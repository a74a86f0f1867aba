"""What a model contains: inputs, outputs, operators, parameters, and how much of it is quantized.

``summarize`` backs ``onnxq inspect``. The share of quantized compute is an estimate: multiply-
accumulates (MACs) of Conv / ConvTranspose / MatMul / Gemm and their integer and QLinear variants,
computed from weight shapes and ONNX shape inference. Dimensions that stay symbolic (a dynamic
batch) count as 1, which scales every node alike and so leaves the share unchanged.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from math import prod
from typing import Any

import numpy as np
import onnx

from ._graph import LARGE_MODEL_BYTES, all_nodes, opset_version, proto_size, serialized_size
from .errors import ModelError

logger = logging.getLogger(__name__)

#: Op types that compute on quantized integers themselves (besides every ``QLinear*`` op).
QUANTIZED_OP_TYPES = frozenset({
    "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
    # com.microsoft contrib ops produced by ORT's quantizers and optimizers
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QGemm",
    "QAttention", "QEmbedLayerNormalization", "MatMulNBits", "MatMulBnb4", "GatherBlockQuantized",
})

#: Q/DQ nodes themselves are plumbing, not quantized compute.
_QDQ_OP_TYPES = frozenset({"QuantizeLinear", "DequantizeLinear"})

#: Ops that only move or reshape data: a DequantizeLinear seen through them still feeds the node.
_PASS_THROUGH = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})

#: (input index of the activation, input index of the weight) of matrix-multiplying ops.
_MATMUL_INPUTS = {
    "MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3),
    "MatMulIntegerToFloat": (0, 1), "DynamicQuantizeMatMul": (0, 1),
}
_CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_GEMM_WEIGHT = {"Gemm": 1, "QGemm": 3}

Shape = list[int | str | None]


@dataclass
class TensorInfo:
    """A graph input or output.

    Attributes:
        name: tensor name.
        dtype: element type as numpy names it (``float32``, ``int64``, ...); for non-tensor
            values a description such as ``sequence(float32)``.
        shape: one entry per dimension: a size, a symbolic name, or ``None`` when unknown;
            ``None`` instead of a list when even the rank is unknown.
    """

    name: str
    dtype: str
    shape: Shape | None


@dataclass
class ModelSummary:
    """What ``onnxq inspect`` shows about a model.

    Attributes:
        inputs: graph inputs (initializers excluded).
        outputs: graph outputs.
        opset: default-domain opset (0 when the model imports none).
        ir_version: ONNX IR version.
        producer: producer name and version.
        op_counts: nodes per op type, most frequent first (subgraphs included).
        num_parameters: elements in all initializers.
        size_bytes: serialized size, external data included.
        quantized_ops: nodes that are integer / QLinear ops, or that are fed by DequantizeLinear.
        quantized_compute_share: estimated share of MACs in quantized nodes (0.0 to 1.0).
        estimated_macs: estimated multiply-accumulates of one run (symbolic dimensions as 1).
    """

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opset: int
    ir_version: int
    producer: str
    op_counts: dict[str, int]
    num_parameters: int
    size_bytes: int
    quantized_ops: int
    quantized_compute_share: float
    estimated_macs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as JSON-ready plain data."""
        return asdict(self)

    def format(self) -> str:
        """Return the summary as human-readable lines for the command line."""
        lines = [
            f"producer:    {self.producer or '-'}",
            f"ir version:  {self.ir_version}    opset: {self.opset}",
            f"size:        {_human_bytes(self.size_bytes)}    "
            f"parameters: {self.num_parameters:,}",
            "inputs:",
            *_format_tensors(self.inputs),
            "outputs:",
            *_format_tensors(self.outputs),
            f"operators:   {sum(self.op_counts.values())} nodes",
        ]
        width = max((len(op) for op in self.op_counts), default=0)
        lines += [f"  {op:<{width}}  {count}" for op, count in self.op_counts.items()]
        lines.append(f"quantized:   {self.quantized_ops} nodes, "
                     f"{self.quantized_compute_share:.1%} of estimated compute "
                     f"({_human_count(self.estimated_macs)} MACs)")
        return "\n".join(lines)


@dataclass
class FrameworkSummary:
    """What ``onnxq inspect`` shows about a framework model file (read through its adapter).

    Attributes:
        path: the file or SavedModel folder.
        adapter: the adapter package that reads it (``onnxq-keras``, ``onnxq-torch``).
        inputs: the inputs its ONNX export will have; ``None`` when only data can tell.
    """

    path: str
    adapter: str
    inputs: list[TensorInfo] | None

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as JSON-ready plain data."""
        return asdict(self)

    def format(self) -> str:
        """Return the summary as human-readable lines for the command line."""
        inputs = (_format_tensors(self.inputs) if self.inputs is not None
                  else ["  (known only from data: pass example inputs or data to export it)"])
        return "\n".join([f"framework model ({self.adapter}); inputs of its ONNX export:", *inputs,
                          "run `onnxq export` for outputs, operators and sizes"])


def summarize(model: onnx.ModelProto) -> ModelSummary:
    """Describe a model: its interface, operators, parameters, size and quantized share.

    Args:
        model: the model (never modified).

    Returns:
        The summary; MAC figures are estimates from weight shapes and shape inference.
    """
    try:
        opset = opset_version(model)
    except ModelError:
        opset = 0
    graph = _infer_shapes(model, LARGE_MODEL_BYTES).graph
    shapes = _collect_shapes(graph)
    initializer_names = {t.name for t in _graph_initializers(graph)}
    nodes = list(all_nodes(graph))
    producers = {out: node for node in nodes for out in node.output if out}

    op_counts = Counter(node.op_type for node in nodes)
    quantized_ops = 0
    total_macs = quantized_macs = 0
    for node in nodes:
        quantized = _is_quantized(node, producers)
        quantized_ops += quantized
        macs = _estimate_macs(node, shapes, producers)
        total_macs += macs
        if quantized:
            quantized_macs += macs

    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    return ModelSummary(
        inputs=[_tensor_info(v) for v in graph.input if v.name not in initializer_names],
        outputs=[_tensor_info(v) for v in graph.output],
        opset=opset,
        ir_version=int(model.ir_version),
        producer=producer,
        op_counts=dict(sorted(op_counts.items(), key=lambda item: (-item[1], item[0]))),
        num_parameters=sum(_num_elements(t) for t in _graph_initializers(model.graph)),
        size_bytes=proto_size(model),
        quantized_ops=quantized_ops,
        quantized_compute_share=quantized_macs / total_macs if total_macs else 0.0,
        estimated_macs=total_macs,
    )


# ------------------------------------------------------------------------------- graph walking


def _infer_shapes(model: onnx.ModelProto, limit: int) -> onnx.ModelProto:
    """ONNX shape inference on a copy; the model itself when inference fails or it is too big."""
    if serialized_size(model) > limit:
        return model
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # inference is best effort here
        logger.debug("shape inference failed, MACs estimated from weights only: %s", exc)
        return model


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def _graph_initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    for sub in _graphs(graph):
        yield from sub.initializer


def _num_elements(tensor: onnx.TensorProto) -> int:
    return prod(int(d) for d in tensor.dims)


def _collect_shapes(graph: onnx.GraphProto) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for sub in _graphs(graph):
        for value in (*sub.input, *sub.output, *sub.value_info):
            shape = _type_shape(value.type)
            if shape is not None:
                shapes.setdefault(value.name, shape)
        for tensor in sub.initializer:
            shapes[tensor.name] = [int(d) for d in tensor.dims]
        for node in sub.node:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value" and attribute.HasField("t"):
                        shapes.setdefault(node.output[0], [int(d) for d in attribute.t.dims])
    return shapes


def _type_shape(type_proto: onnx.TypeProto) -> Shape | None:
    kind = type_proto.WhichOneof("value")
    if kind not in ("tensor_type", "sparse_tensor_type"):
        return None
    tensor_type = getattr(type_proto, kind)
    if not tensor_type.HasField("shape"):
        return None
    dims: Shape = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    return TensorInfo(name=value.name, dtype=_type_name(value.type),
                      shape=_type_shape(value.type))


def _type_name(type_proto: onnx.TypeProto) -> str:
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        name = _elem_name(getattr(type_proto, kind).elem_type)
        return name if kind == "tensor_type" else f"sparse({name})"
    if kind == "sequence_type":
        return f"sequence({_type_name(type_proto.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({_type_name(type_proto.optional_type.elem_type)})"
    if kind == "map_type":
        key = _elem_name(type_proto.map_type.key_type)
        return f"map({key}, {_type_name(type_proto.map_type.value_type)})"
    return "unknown"


def _elem_name(elem_type: int) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # UNDEFINED, or a type numpy cannot name
        try:
            return onnx.TensorProto.DataType.Name(elem_type).lower()
        except ValueError:
            return "unknown"


# ------------------------------------------------------------------- quantization and compute


def _is_quantized(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> bool:
    if node.op_type in _QDQ_OP_TYPES:
        return False
    if node.op_type.startswith("QLinear") or node.op_type in QUANTIZED_OP_TYPES:
        return True
    return any(_fed_by_dequantize(name, producers) for name in node.input if name)


def _fed_by_dequantize(name: str, producers: dict[str, onnx.NodeProto], depth: int = 4) -> bool:
    node = producers.get(name)
    if node is None:
        return False
    if node.op_type == "DequantizeLinear":
        return True
    if depth > 0 and node.op_type in _PASS_THROUGH and node.input:
        return _fed_by_dequantize(node.input[0], producers, depth - 1)
    return False


def _shape_of(name: str, shapes: dict[str, Shape], producers: dict[str, onnx.NodeProto],
              depth: int = 4) -> list[int] | None:
    """Numeric shape of a tensor (symbolic dimensions as 1), looking through Q/DQ and casts."""
    shape = shapes.get(name)
    if shape is not None:
        return [d if isinstance(d, int) and d > 0 else 1 for d in shape]
    node = producers.get(name)
    if depth > 0 and node is not None and node.input and node.op_type in (
            *_QDQ_OP_TYPES, "Identity", "Cast"):
        return _shape_of(node.input[0], shapes, producers, depth - 1)
    return None


def _estimate_macs(node: onnx.NodeProto, shapes: dict[str, Shape],
                   producers: dict[str, onnx.NodeProto]) -> int:
    """Multiply-accumulates of one node; 0 for ops that are not Conv / MatMul / Gemm-like."""
    op = node.op_type

    def shape(index: int) -> list[int] | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        return _shape_of(node.input[index], shapes, producers)

    out = _shape_of(node.output[0], shapes, producers) if node.output else None
    if op in _CONV_WEIGHT:
        weight = shape(_CONV_WEIGHT[op])
        if weight is None or len(weight) < 2:
            return 0
        return (prod(out) if out else weight[0]) * prod(weight[1:])
    if op == "ConvTranspose":
        weight, x = shape(1), shape(0)
        if weight is None or len(weight) < 2:
            return 0
        return (prod(x) if x else weight[0]) * prod(weight[1:])
    if op in _MATMUL_INPUTS:
        a, b = (shape(i) for i in _MATMUL_INPUTS[op])
        k = a[-1] if a else (b[-2] if b and len(b) >= 2 else (b[0] if b else None))
        if out is not None and k is not None:
            return prod(out) * k
        if a and b:
            return prod(a) * (b[-1] if len(b) >= 2 else 1)
        return prod(b) if b else 0
    if op in _GEMM_WEIGHT:
        b = shape(_GEMM_WEIGHT[op])
        if b is None or len(b) != 2:
            return 0
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        n, k = (b[0], b[1]) if trans_b else (b[1], b[0])
        m = out[0] if out else 1
        return m * n * k
    if op == "MatMulNBits":
        attrs = {a.name: a.i for a in node.attribute}
        k, n = attrs.get("K", 0), attrs.get("N", 0)
        a = shape(0)
        rows = prod(a[:-1]) if a else 1
        return rows * k * n
    return 0


# --------------------------------------------------------------------------------- formatting


def _format_tensors(tensors: list[TensorInfo]) -> list[str]:
    if not tensors:
        return ["  (none)"]
    width = max(len(t.name) for t in tensors)
    return [f"  {t.name:<{width}}  {t.dtype:<8} {_format_shape(t.shape)}" for t in tensors]


def _format_shape(shape: Shape | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover


def _human_count(count: int) -> str:
    value = float(count)
    for unit in ("", "K", "M", "G"):
        if value < 1000 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}G"  # pragma: no cover
