"""Integer-only inputs and outputs: a post-quantization rewrite, like TFLite's ``inference_input_type``.

After static QDQ quantization a float input ``x`` enters the graph through ``QuantizeLinear`` and
a float output ``y`` leaves it through ``DequantizeLinear``. :func:`integer_io` moves that boundary
out of the model: the caller feeds integers and receives integers.

* **Inputs.** ``x`` takes the integer type. Its ``QuantizeLinear`` consumers with that type are
  removed (their consumers read ``x`` directly). Consumers that need float (a float node, or a
  ``QuantizeLinear`` of another type or scale) read it through one new ``DequantizeLinear``; an
  input that the quantizer left float gets parameters from its calibrated range (asymmetric).
* **Outputs.** A ``DequantizeLinear`` producing ``y`` is removed and the integer tensor it read is
  renamed ``y``. A float output without one gets a new ``QuantizeLinear`` from its calibrated range.
* **Conversion.** When ``io_type`` differs from the activation type (uint8 I/O around int8 or
  int16 activations) the boundary is ``DequantizeLinear -> QuantizeLinear``: a requantization with
  one extra rounding, noted in the report.
* **Metadata.** Each integer input/output's scale, zero point and dtype are stored in the model's
  ``metadata_props`` under ``onnxq.io.<name>`` as JSON; :func:`io_params` reads them back and
  :func:`quantize_feeds` / :func:`dequantize_outputs` apply them.

Validation (see :func:`float_interface`): the report compares the float model with the integer-I/O
model wrapped in ``QuantizeLinear`` at its inputs and ``DequantizeLinear`` at its outputs built
from the recorded metadata, i.e. exactly what a caller gets who quantizes float inputs with the
recorded parameters and dequantizes the integer outputs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

from ..config import QuantType
from ..errors import ConfigError, ModelError
from .._graph import unique_name

logger = logging.getLogger(__name__)

#: Prefix of the metadata keys holding each integer input's / output's quantization parameters.
METADATA_PREFIX = "onnxq.io."

_ONNX_TYPES = {QuantType.UINT8: TensorProto.UINT8, QuantType.INT8: TensorProto.INT8}
_NUMPY_TYPES = {"uint8": np.uint8, "int8": np.int8}
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


@dataclass(frozen=True)
class IoParams:
    """How one integer input or output maps to float: ``float = scale * (int - zero_point)``.

    Attributes:
        name: the graph input/output name.
        kind: ``"input"`` or ``"output"``.
        scale: the quantization scale.
        zero_point: the zero point.
        dtype: ``"uint8"`` or ``"int8"``.
    """

    name: str
    kind: str
    scale: float
    zero_point: int
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Float values to integers as ONNX ``QuantizeLinear`` does (round half to even, saturate)."""
        info = np.iinfo(_NUMPY_TYPES[self.dtype])
        q = np.rint(np.asarray(values, dtype=np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, info.min, info.max).astype(_NUMPY_TYPES[self.dtype])

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """Integers back to float32 as ONNX ``DequantizeLinear`` does."""
        ints = np.asarray(values).astype(np.int32) - self.zero_point
        return (ints.astype(np.float32) * np.float32(self.scale)).astype(np.float32)


def float_io_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of the model's float graph inputs and outputs (what ``io_type`` turns into integers)."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    return [v.name for v in list(graph.input) + list(graph.output)
            if v.name not in inits and v.type.tensor_type.elem_type in _FLOAT_TYPES]


def integer_io(model: onnx.ModelProto, ranges: Any, io_type: QuantType | str,
               activation_type: QuantType | str | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """Make the float inputs and outputs of a static-QDQ model integer tensors.

    Args:
        model: the quantized model (not modified).
        ranges: calibrated ranges (mapping of tensor name to an object with ``low``/``high``),
            used for inputs/outputs the quantizer left in float.
        io_type: ``"uint8"`` or ``"int8"``.
        activation_type: the model's activation type, only to word the notes.

    Returns:
        The rewritten model and notes for the report (one per conversion or new boundary node).

    Raises:
        ConfigError: ``io_type`` is not an 8-bit type.
        ModelError: an input/output has no usable quantization parameters and no calibrated range.
    """
    io_type = QuantType(io_type)
    if io_type not in _ONNX_TYPES:
        raise ConfigError(f"io_type must be uint8 or int8, got {io_type.value!r}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rewriter = _Rewriter(out, ranges, io_type)
    names = set(float_io_tensors(out))
    for vi in list(out.graph.input):
        if vi.name in names:
            rewriter.input(vi)
    for vi in list(out.graph.output):
        if vi.name in names:
            rewriter.output(vi)
    rewriter.finish()
    notes = list(rewriter.notes)
    if activation_type is not None and QuantType(activation_type) is not io_type:
        notes.append(f"io_type {io_type.value} differs from the {QuantType(activation_type).value} activations: "
                     "quantized inputs are requantized (DequantizeLinear -> QuantizeLinear) at the boundary, "
                     "one extra rounding")
    params = ", ".join(f"{p.name} (scale {p.scale:.6g}, zero point {p.zero_point})" for p in rewriter.params)
    notes.append(f"Integer-only I/O ({io_type.value}): {params}. Validated through the recorded "
                 "parameters: float inputs quantized, integer outputs dequantized.")
    return out, notes


def io_params(model: Any) -> dict[str, IoParams]:
    """The quantization parameters of an integer-I/O model's inputs and outputs (from its metadata).

    Args:
        model: an ONNX ModelProto or a path to one.

    Returns:
        Input/output name -> :class:`IoParams`; empty for a model without integer I/O.
    """
    from ..model import load_model

    proto = model if isinstance(model, onnx.ModelProto) else load_model(model, check=False)
    params: dict[str, IoParams] = {}
    for prop in proto.metadata_props:
        if not prop.key.startswith(METADATA_PREFIX):
            continue
        name = prop.key[len(METADATA_PREFIX):]
        try:
            data = json.loads(prop.value)
            params[name] = IoParams(name=name, kind=str(data["kind"]), scale=float(data["scale"]),
                                    zero_point=int(data["zero_point"]), dtype=str(data["dtype"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"malformed integer I/O metadata {prop.key!r}: {exc}") from exc
    return params


def quantize_feeds(params: Mapping[str, IoParams], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float feeds to the integers an integer-input model takes (inputs without params unchanged)."""
    return {name: params[name].quantize(value) if name in params and params[name].kind == "input" else value
            for name, value in feeds.items()}


def dequantize_outputs(params: Mapping[str, IoParams], outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Integer outputs back to float32 (outputs without params unchanged)."""
    return {name: params[name].dequantize(value) if name in params and params[name].kind == "output" else value
            for name, value in outputs.items()}


def float_interface(model: onnx.ModelProto) -> onnx.ModelProto:
    """The integer-I/O model wrapped to take and return floats again, from its recorded metadata.

    Used to validate an integer-I/O model against the float one: ``QuantizeLinear`` in front of
    every integer input and ``DequantizeLinear`` after every integer output, with the recorded
    parameters. A model without integer I/O metadata is returned unchanged.
    """
    params = io_params(model)
    if not params:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    front: list[onnx.NodeProto] = []
    taken = _names(out)
    for vi in graph.input:
        p = params.get(vi.name)
        if p is None or p.kind != "input":
            continue
        inner = unique_name(f"{vi.name}_int", taken)
        _rename_uses(graph, vi.name, inner)
        scale, zp = _add_params(graph, f"{vi.name}_io_wrap", p, taken)
        front.append(helper.make_node("QuantizeLinear", [vi.name, scale, zp], [inner],
                                      name=unique_name(f"{vi.name}_io_wrap_QuantizeLinear", taken)))
        vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for vi in graph.output:
        p = params.get(vi.name)
        if p is None or p.kind != "output":
            continue
        inner = unique_name(f"{vi.name}_int", taken)
        _rename_everywhere(graph, vi.name, inner)
        scale, zp = _add_params(graph, f"{vi.name}_io_wrap", p, taken)
        graph.node.append(helper.make_node("DequantizeLinear", [inner, scale, zp], [vi.name],
                                           name=unique_name(f"{vi.name}_io_wrap_DequantizeLinear", taken)))
        vi.type.tensor_type.elem_type = TensorProto.FLOAT
    _prepend(graph, front)
    _drop_value_info(graph, {vi.name for vi in list(graph.input) + list(graph.output)})
    return out


# ----------------------------------------------------------------------------------- internals


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, ranges: Any, io_type: QuantType) -> None:
        self.model = model
        self.graph = model.graph
        self.ranges = ranges
        self.io_type = io_type
        self.onnx_type = _ONNX_TYPES[io_type]
        self.taken = _names(model)
        self.inits = {i.name: i for i in self.graph.initializer}
        self.params: list[IoParams] = []
        self.notes: list[str] = []
        self.front: list[onnx.NodeProto] = []
        self.touched: set[str] = set()

    # -- inputs
    def input(self, vi: onnx.ValueInfoProto) -> None:
        name = vi.name
        consumers = [n for n in self.graph.node if name in n.input]
        quantizers = [n for n in consumers if n.op_type == "QuantizeLinear" and n.input[0] == name
                      and self._q_params(n) is not None]
        params = next((self._q_params(q) for q in quantizers), None) or self._from_range(name)
        scale, zp = params
        removed = [q for q in quantizers if self._q_params(q) == params]
        rest = [n for n in consumers if all(n is not q for q in removed)]
        for q in removed:  # same type and parameters: the integer input replaces the Q's output
            _rename_uses(self.graph, q.output[0], name)
            self.graph.node.remove(q)
        if rest:  # float consumers (or a QuantizeLinear of another type): one DequantizeLinear
            dq_out = unique_name(f"{name}_dequantized", self.taken)
            for node in rest:
                _replace_inputs(node, name, dq_out)
            s, z = _add_params(self.graph, f"{name}_io", self._record(name, "input", scale, zp), self.taken)
            self.front.append(helper.make_node("DequantizeLinear", [name, s, z], [dq_out],
                                               name=unique_name(f"{name}_io_DequantizeLinear", self.taken)))
            self.notes.append(f"input {name!r} feeds {len(rest)} float or differently quantized node(s): "
                              "one DequantizeLinear added after it")
        else:
            self._record(name, "input", scale, zp)
        vi.type.tensor_type.elem_type = self.onnx_type
        self.touched.add(name)
        logger.debug("input %s: %d QuantizeLinear removed", name, len(removed))

    # -- outputs
    def output(self, vi: onnx.ValueInfoProto) -> None:
        name = vi.name
        producer = next((n for n in self.graph.node if name in n.output), None)
        dq_params = self._dq_params(producer) if producer is not None else None
        if producer is not None and producer.op_type == "DequantizeLinear" and dq_params is not None:
            quantized = producer.input[0]
            float_users = [n for n in self.graph.node if name in n.input]
            if float_users:  # the float value is still used inside the graph
                inner = unique_name(f"{name}_dequantized", self.taken)
                for node in float_users:
                    _replace_inputs(node, name, inner)
                producer.output[0] = inner
            else:
                self.graph.node.remove(producer)
            _rename_everywhere(self.graph, quantized, name)
            self.touched.add(quantized)
            self._record(name, "output", *dq_params)
        else:
            scale, zp = self._from_range(name)
            inner = unique_name(f"{name}_float", self.taken)
            _rename_everywhere(self.graph, name, inner)
            s, z = _add_params(self.graph, f"{name}_io", self._record(name, "output", scale, zp), self.taken)
            self.graph.node.append(helper.make_node("QuantizeLinear", [inner, s, z], [name],
                                                    name=unique_name(f"{name}_io_QuantizeLinear", self.taken)))
            self.notes.append(f"output {name!r} was float: one QuantizeLinear added from its calibrated range")
        vi.type.tensor_type.elem_type = self.onnx_type
        self.touched.add(name)

    def finish(self) -> None:
        _prepend(self.graph, self.front)
        _drop_value_info(self.graph, self.touched)
        for p in self.params:
            entry = self.model.metadata_props.add()
            entry.key = METADATA_PREFIX + p.name
            entry.value = json.dumps({"kind": p.kind, "scale": p.scale, "zero_point": p.zero_point,
                                      "dtype": p.dtype})

    # -- parameters
    def _record(self, name: str, kind: str, scale: float, zero_point: int) -> IoParams:
        p = IoParams(name=name, kind=kind, scale=float(scale), zero_point=int(zero_point), dtype=self.io_type.value)
        self.params.append(p)
        return p

    def _scalar_params(self, node: onnx.NodeProto) -> tuple[float, int] | None:
        if len(node.input) < 3 or node.input[1] not in self.inits or node.input[2] not in self.inits:
            return None
        scale = numpy_helper.to_array(self.inits[node.input[1]])
        zp_init = self.inits[node.input[2]]
        if zp_init.data_type != self.onnx_type or scale.size != 1:
            return None
        return float(scale.reshape(-1)[0]), int(numpy_helper.to_array(zp_init).reshape(-1)[0])

    def _q_params(self, node: onnx.NodeProto) -> tuple[float, int] | None:
        return self._scalar_params(node) if node.op_type == "QuantizeLinear" else None

    def _dq_params(self, node: onnx.NodeProto) -> tuple[float, int] | None:
        return self._scalar_params(node) if node.op_type == "DequantizeLinear" else None

    def _from_range(self, name: str) -> tuple[float, int]:
        if self.ranges is None or name not in self.ranges:
            raise ModelError(f"integer I/O: {name!r} has no QuantizeLinear/DequantizeLinear of type "
                             f"{self.io_type.value} and no calibrated range")
        r = self.ranges[name]
        qmin, qmax = get_qmin_qmax_for_qType(self.onnx_type)
        zp, scale = compute_scale_zp(np.array(r.low, np.float32), np.array(r.high, np.float32), qmin, qmax)
        return float(scale), int(zp)


def _names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {n.name for n in graph.node} | {i.name for i in graph.initializer}
    names |= {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    names |= {t for n in graph.node for t in list(n.input) + list(n.output)}
    return names



def _add_params(graph: onnx.GraphProto, prefix: str, p: IoParams, taken: set[str]) -> tuple[str, str]:
    scale = unique_name(f"{prefix}_scale", taken)
    zp = unique_name(f"{prefix}_zero_point", taken)
    graph.initializer.append(numpy_helper.from_array(np.array(p.scale, np.float32), scale))
    graph.initializer.append(numpy_helper.from_array(np.array(p.zero_point, _NUMPY_TYPES[p.dtype]), zp))
    return scale, zp


def _replace_inputs(node: onnx.NodeProto, old: str, new: str) -> None:
    for i, name in enumerate(node.input):
        if name == old:
            node.input[i] = new


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        _replace_inputs(node, old, new)


def _rename_everywhere(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor produced inside the graph (its producer's output and every use)."""
    for node in graph.node:
        _replace_inputs(node, old, new)
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new


def _prepend(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    if not nodes:
        return
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)


def _drop_value_info(graph: onnx.GraphProto, names: set[str]) -> None:
    keep = [vi for vi in graph.value_info if vi.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(keep)

