"""QAT import: recognise a model that already carries QuantizeLinear/DequantizeLinear.

Models exported after quantization-aware training (torchao PT2E, tf2onnx on a
tensorflow-model-optimization model) or quantized before (by onnxq or another tool) hold their
own quantization parameters. onnxq never quantizes them twice:

* :func:`qat_tensors` lists the tensors carrying QAT parameters (name, scale, zero point,
  dtype, axis): the float input of every ``QuantizeLinear`` (activations) and the output of every
  ``DequantizeLinear`` of a constant (weights stored as integers).
* By default ``onnxq.quantize`` passes such a model through unchanged and reports those tensors.
* With ``QuantConfig(qat_quantize_rest=True)`` the nodes the QAT model left in float are quantized
  by the normal static flow (calibration data required). :func:`exclude_qat_nodes` keeps every
  node that is already quantized out of the plan: a node *already quantized* is one whose
  floating-point inputs (float weights included) all come from ``DequantizeLinear``. Tensors produced by a
  ``DequantizeLinear`` are never re-quantized (ONNX Runtime's quantizer skips them), so the
  existing Q/DQ nodes and their scales stay untouched.

Validation has no float reference: the QAT+rest model is compared with the QAT-only model (the
report then shows what the extra quantization changed) and, with labels, both accuracies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._graph import elem_types
from .plan import NodeDecision, QuantPlan, set_calibration_targets

_FLOAT = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class QatTensor:
    """A tensor that carries quantization parameters from the model itself (QAT or earlier tool).

    Attributes:
        name: the float tensor quantized by a ``QuantizeLinear`` (activation) or produced by a
            ``DequantizeLinear`` of a constant (weight).
        kind: ``"activation"`` or ``"weight"``.
        scale: the scale, or one per channel.
        zero_point: the zero point, or one per channel.
        dtype: integer type (``"uint8"``, ``"int8"``, ``"int16"``, ...).
        axis: the channel axis of per-channel parameters, else ``None``.
    """

    name: str
    kind: str
    scale: float | list[float]
    zero_point: int | list[int]
    dtype: str
    axis: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def is_prequantized(model: onnx.ModelProto) -> bool:
    """True for a model that already holds QuantizeLinear/DequantizeLinear nodes."""
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def qat_tensors(model: onnx.ModelProto) -> list[QatTensor]:
    """The tensors of ``model`` that carry their own quantization parameters, in graph order."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    constants = _constant_outputs(graph)
    found: dict[str, QatTensor] = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            entry = _tensor(node, node.input[0], "activation", inits, constants)
        elif node.op_type == "DequantizeLinear" and node.input[0] in constants:
            entry = _tensor(node, node.output[0], "weight", inits, constants)
        else:
            continue
        if entry is not None and entry.name not in found:
            found[entry.name] = entry
    return list(found.values())


def qat_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the compute nodes already quantized: every float input (weights too) from DequantizeLinear."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    types = elem_types(model)
    done = set()
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        # float constants count: a float weight means the node was not quantized
        activations = [t for t in node.input if t and types.get(t, TensorProto.FLOAT) in _FLOAT]
        if activations and all(producer.get(t) is not None and producer[t].op_type == "DequantizeLinear"
                               for t in activations):
            done.add(node.name)
    return done


def exclude_qat_nodes(plan: QuantPlan, model: onnx.ModelProto) -> QuantPlan:
    """The plan with every already-quantized node kept out (left exactly as the model has it).

    Returns:
        A new plan (``plan`` is not modified).
    """
    done = qat_nodes(model)
    decisions = [NodeDecision(d.name, d.op_type, False, "already quantized in the model (QAT): left as it is",
                              d.candidate) if d.name in done and d.quantize else d for d in plan.decisions]
    tensors = len(qat_tensors(model))
    new = replace(plan, decisions=decisions, notes=plan.notes + [
        f"The model already holds Q/DQ (quantization-aware training): {len(done)} node(s) and {tensors} "
        "tensor(s) keep their QAT parameters; only the remaining float nodes are quantized. "
        "Validated against the QAT-only model."])
    # DequantizeLinear outputs next to the rest nodes are calibrated too (cheap) but never used:
    # ONNX Runtime's quantizer does not re-quantize a tensor a DequantizeLinear produces
    return set_calibration_targets(new, model)


def describe(tensors: list[QatTensor], limit: int = 6) -> str:
    """One sentence naming the QAT tensors (for the report's notes)."""
    shown = ", ".join(f"{t.name} ({t.dtype}, scale {_short(t.scale)}, zero point {_short(t.zero_point)})"
                      for t in tensors[:limit])
    more = f", ... (+{len(tensors) - limit})" if len(tensors) > limit else ""
    return f"{len(tensors)} tensor(s) carry QAT quantization parameters: {shown}{more}"


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)} per-channel values]"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _tensor(node: onnx.NodeProto, name: str, kind: str, inits: dict[str, onnx.TensorProto],
            constants: dict[str, onnx.TensorProto | None]) -> QatTensor | None:
    scale = _const_array(node.input[1], inits, constants)
    if scale is None:
        return None
    zp = _const_array(node.input[2], inits, constants) if len(node.input) > 2 and node.input[2] else None
    if zp is not None:
        dtype = zp.dtype.name
    else:  # no zero point: the integer type is the data's (DQ) or uint8 (Q default)
        data = _const_array(node.input[0], inits, constants) if kind == "weight" else None
        dtype = data.dtype.name if data is not None else "uint8"
        zp = np.zeros_like(scale, dtype=np.int64)
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), None)
    per_channel = scale.size > 1
    return QatTensor(
        name=name, kind=kind,
        scale=[float(v) for v in scale.reshape(-1)] if per_channel else float(scale.reshape(-1)[0]),
        zero_point=[int(v) for v in zp.reshape(-1)] if per_channel else int(zp.reshape(-1)[0]),
        dtype=dtype, axis=int(axis if axis is not None else 1) if per_channel else None)


def _const_array(name: str, inits: dict[str, onnx.TensorProto],
                 constants: dict[str, onnx.TensorProto | None]) -> np.ndarray | None:
    if name in inits:
        return numpy_helper.to_array(inits[name])
    tensor = constants.get(name)
    return numpy_helper.to_array(tensor) if tensor is not None else None


def _constant_outputs(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto | None]:
    """Constant tensor name -> its value where known (initializers, Constant nodes), else None."""
    values: dict[str, onnx.TensorProto | None] = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            values[node.output[0]] = attr.t if attr is not None else None
    return values


def keep_qat_boundaries(quantized: onnx.ModelProto, qat_model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the Q/DQ pairs the rest-quantization put in front of the model's own QuantizeLinear.

    A float node quantized by the rest pass whose output already feeds a QAT ``QuantizeLinear``
    gets a second ``QuantizeLinear -> DequantizeLinear`` from ONNX Runtime (with calibrated
    parameters, and node names that can clash with the QAT ones). The QAT node quantizes that
    tensor already: it is fed the float tensor again and the new pair is dropped where nothing
    else reads it. Node names still used twice get a suffix.

    Args:
        quantized: the model after the rest-quantization (modified in place and returned).
        qat_model: the model handed to the rest-quantization (tells the QAT Q/DQ apart).
    """
    graph = quantized.graph
    original = {out for n in qat_model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                for out in n.output}
    producer = {out: node for node in graph.node for out in node.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    removed: set[int] = set()
    for dq in list(graph.node):
        if dq.op_type != "DequantizeLinear" or dq.output[0] in original:
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.output[0] in original:
            continue
        qat_users = [u for u in users.get(dq.output[0], []) if u.op_type == "QuantizeLinear"
                     and u.output[0] in original]
        for user in qat_users:
            user.input[0] = q.input[0]
        if len(qat_users) == len(users.get(dq.output[0], [])) and dq.output[0] not in _outputs(graph):
            removed.add(id(dq))
            if len(users.get(q.output[0], [])) == 1:
                removed.add(id(q))
    if removed:
        kept = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        used = {t for n in graph.node for t in n.input} | _outputs(graph)
        inits = [i for i in graph.initializer if i.name in used]  # the dropped pair's scale / zero point
        del graph.initializer[:]
        graph.initializer.extend(inits)
    new_nodes = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                 and not set(n.output) & original]
    taken = {n.name for n in graph.node if all(n is not m for m in new_nodes)}
    for node in new_nodes:  # the model's own nodes keep their names
        base, i = node.name, 1
        while node.name in taken:
            node.name, i = f"{base}_{i}", i + 1
        taken.add(node.name)
    return quantized


def _outputs(graph: onnx.GraphProto) -> set[str]:
    return {o.name for o in graph.output}


def quantize_rest(model: onnx.ModelProto, plan: QuantPlan, ranges: Any, config: Any,
                  quantize_static: Any) -> onnx.ModelProto:
    """Run the static rewrite on a QAT model's float part, leaving its own Q/DQ exactly as they are.

    ONNX Runtime names the Q/DQ it adds after the tensor (``T_QuantizeLinear``, ``T_scale``...),
    which clashes with a model quantized by ORT's naming scheme before. So every tensor a node
    produces and a QAT ``QuantizeLinear`` reads is renamed for the rewrite (borrowing its
    calibrated range), the double Q/DQ in front of the QAT node is dropped
    (:func:`keep_qat_boundaries`), and the tensor gets its name back.

    Args:
        model: the prepared QAT model.
        plan: the plan from :func:`exclude_qat_nodes` (refined).
        ranges: calibrated ranges.
        config: the QuantConfig.
        quantize_static: ``onnxq.rewrite.quantize_static``.
    """
    work = onnx.ModelProto()
    work.CopyFrom(model)
    graph = work.graph
    _per_tensor_again(graph)
    inputs = {i.name for i in graph.input}
    feeds = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"} - inputs
    produced = {out for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                for out in n.output}
    taken = {t for n in graph.node for t in list(n.input) + list(n.output)} | {i.name for i in graph.initializer}
    renamed: dict[str, str] = {}
    for name in sorted(feeds & produced - _outputs(graph)):
        new, i = f"{name}_onnxq_rest", 1
        while new in taken:
            new, i = f"{name}_onnxq_rest{i}", i + 1
        taken.add(new)
        renamed[name] = new
        _rename(graph, name, new)
    aliases = dict(plan.range_aliases)
    aliases.update({new: aliases.get(old, old) for old, new in renamed.items()})
    skeleton = onnx.ModelProto()  # the QAT nodes as they were (ORT's quantizer edits its input in place)
    skeleton.graph.node.extend(graph.node)
    quantized = quantize_static(work, replace(plan, range_aliases=aliases), ranges, config)
    quantized = keep_qat_boundaries(quantized, skeleton)
    for old, new in renamed.items():
        _rename(quantized.graph, new, old)
    return quantized


def _per_tensor_again(graph: onnx.GraphProto) -> None:
    """Undo onnxq's keep-float guard on a model it quantized before: a DequantizeLinear whose per-axis
    scale and zero point repeat one value is per-tensor again, so ORT's quantizer can read it as the
    input quantization of a node it now quantizes (it cannot use a per-axis activation scale)."""
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        params = [numpy_helper.to_array(inits[name]) for name in node.input[1:3] if name in inits]
        if params[0].ndim != 1 or params[0].size < 2 or any(np.unique(p).size != 1 for p in params):
            continue
        for index, value in zip(range(1, 3), params):
            scalar = f"{node.input[index]}_scalar"
            if scalar not in inits:
                graph.initializer.append(numpy_helper.from_array(np.asarray(value[0], dtype=value.dtype),
                                                                 scalar))
                inits[scalar] = graph.initializer[-1]
            node.input[index] = scalar
        kept = [a for a in node.attribute if a.name != "axis"]
        del node.attribute[:]
        node.attribute.extend(kept)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for vi in graph.value_info:
        if vi.name == old:
            vi.name = new
