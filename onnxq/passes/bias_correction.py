"""Bias correction: fold the expected output error of the quantized model into the float biases.

Contract. Changes: the float bias of every Conv (plain, grouped, depthwise), Gemm, and MatMul
followed by an ``Add`` of a constant per-channel vector, whose weights ONNX Runtime quantizes
inexactly; a Conv or Gemm without a bias gets one. Needs: the float model the static rewrite will
quantize (``prepared``), calibration data, and ``quantize_fn(model) -> QDQ model`` (the rewrite
with fixed plan and ranges). Ensures: per output channel ``c`` of each corrected node,
``E[y_q[c] - y_f[c]]`` over the calibration data shrinks, so the quantized model's pre-activations
are unbiased; the input model is never mutated; a node whose quantized weights are exact (and so a
model whose weights all are) is left alone. Not float-equivalent: the returned *float* model
computes ``y_f - E[error]``; only its quantized rewrite is meant to be run. Measurement: the float
and QDQ graphs are merged into one ONNX Runtime session that computes per-channel means of
``y_q - y_f`` (and of ``W_q - W`` applied to the float input) with ``ReduceMean`` inside the graph,
so one batch of activations is alive at a time and only ``[C]``-sized vectors leave ORT. Ranges:
the activation ranges are not refreshed; the correction moves each output by at most a fraction
of one quantization step on the tested models, reported per node as ``max_shift_steps``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .._progress import progress as progress_bar
from ..errors import CalibrationError, ConfigError
from ..feeds import Dataset
from ..rewrite.weights import QuantizedWeight, read_quantized_weights
from ..runtime import create_session, run
from . import PassRecord

logger = logging.getLogger(__name__)

#: How each round estimates the error it removes (see :func:`correct_biases`).
ESTIMATES = ("weights", "output")
#: Weights whose rounding error stays below this fraction of a quantization step count as exact.
EXACT_TOLERANCE = 1e-4
_Q = "bc_q/"  # prefix of the QDQ graph's tensors inside the merged measurement graph


@dataclass(frozen=True)
class BiasTarget:
    """One node whose bias the pass corrects.

    Attributes:
        node: the Conv / Gemm / MatMul node (same name in the float and the QDQ graph).
        op_type: its op type.
        output: the measured tensor: the node's output, or for a MatMul the output of its bias Add.
        bias_node: the node holding the bias (the node itself, or the MatMul's Add).
        bias: the bias initializer, ``""`` when a Conv / Gemm has none yet.
        bias_index: input index of the bias on ``bias_node``.
        channels: output channels.
        channel_axis: 1 (Conv) or -1 (Gemm / MatMul: the last axis).
        rank: output rank when known (Conv: the weight's rank; Gemm: 2), else ``None``.
    """

    node: str
    op_type: str
    output: str
    bias_node: str
    bias: str
    bias_index: int
    channels: int
    channel_axis: int
    rank: int | None


@dataclass
class ErrorStats:
    """Per-channel statistics of one target over the data (float64 running sums)."""

    error: np.ndarray                 # sum of y_q - y_f
    error_sq: np.ndarray              # sum of (y_q - y_f) ** 2
    signal_sq: np.ndarray             # sum of y_f ** 2
    weight_error: np.ndarray | None   # sum of (W_q - W) * x_f
    count: float = 0.0                # elements per channel summed

    def mean(self, values: np.ndarray) -> np.ndarray:
        return values / max(self.count, 1.0)

    @property
    def mean_error(self) -> np.ndarray:
        return self.mean(self.error)

    @property
    def sqnr_db(self) -> float:
        noise = float(self.error_sq.sum())
        return float("inf") if noise == 0 else 10 * np.log10(max(float(self.signal_sq.sum()), 1e-30) / noise)


@dataclass
class _Graph:
    """Nodes, initializers and outputs appended to the merged measurement graph."""

    opset: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- targets


def find_targets(model: onnx.ModelProto, qdq_model: onnx.ModelProto,
                 op_types: Sequence[str] = ("Conv", "Gemm", "MatMul")) -> tuple[list[BiasTarget], dict[str, str]]:
    """The nodes whose bias can be corrected, and the skipped candidates with the reason.

    A target is a node of ``op_types`` with a constant float weight that ``qdq_model`` quantizes
    inexactly (see :data:`EXACT_TOLERANCE`) and a bias the pass may edit: an initializer that is
    not a graph input (Conv: ``B``; Gemm: ``C`` of shape ``[N]``, ``[1, N]`` or a scalar; MatMul:
    the per-channel constant of the only consumer, an ``Add``) or none at all (Conv, Gemm).
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    overridable = {i.name for i in graph.input}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    quantized = read_quantized_weights(qdq_model)
    targets: list[BiasTarget] = []
    skipped: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in op_types or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        weight = _constant(node.input[1] if len(node.input) > 1 else "", inits, overridable)
        if weight is None or node.name not in quantized:
            continue  # not a weight layer the rewrite quantizes: nothing to report
        if _exact(quantized[node.name], weight):
            skipped[node.name] = "quantized weights are exact"
            continue
        target, reason = _target(node, weight, inits, overridable, consumers, graph_outputs)
        if target is None:
            skipped[node.name] = reason
        else:
            targets.append(target)
    return targets, skipped


def _constant(name: str, inits: dict[str, onnx.TensorProto], overridable: set[str]) -> np.ndarray | None:
    if not name or name not in inits or name in overridable:
        return None
    value = numpy_helper.to_array(inits[name])
    return value if value.dtype == np.float32 else None


def _exact(weight: QuantizedWeight, float_weight: np.ndarray) -> bool:
    if weight.q.shape != float_weight.shape:
        return False
    error = np.abs(weight.dequantize() - float_weight)
    return bool(error.max(initial=0.0) <= EXACT_TOLERANCE * float(np.max(weight.scale)))


def _target(node: onnx.NodeProto, weight: np.ndarray, inits: dict[str, onnx.TensorProto], overridable: set[str],
            consumers: dict[str, list[onnx.NodeProto]], graph_outputs: set[str]) -> tuple[BiasTarget | None, str]:
    """The target for one weight node, or ``None`` and why it cannot be corrected."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    bias = node.input[2] if len(node.input) > 2 else ""
    if node.op_type == "Conv":
        if bias and _constant(bias, inits, overridable) is None:
            return None, "bias is not a float initializer"
        return BiasTarget(node.name, "Conv", node.output[0], node.name, bias, 2, weight.shape[0], 1, weight.ndim), ""
    if node.op_type == "Gemm":
        channels = weight.shape[0] if attrs.get("transB", 0) else weight.shape[1]
        if attrs.get("beta", 1.0) == 0.0:
            return None, "Gemm beta is 0"
        if bias:
            value = _constant(bias, inits, overridable)
            if value is None or value.size not in (1, channels) or (value.ndim == 2 and value.shape[0] != 1):
                return None, "bias is not a per-channel float initializer"
        return BiasTarget(node.name, "Gemm", node.output[0], node.name, bias, 2, channels, -1, 2), ""
    if weight.ndim != 2:
        return None, "MatMul weight is not 2-D"
    users = consumers.get(node.output[0], [])
    if node.output[0] in graph_outputs or len(users) != 1 or users[0].op_type != "Add":
        return None, "MatMul has no bias Add of its own"
    add = users[0]
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    value = _constant(other, inits, overridable)
    channels = weight.shape[1]
    if value is None or value.size != channels or value.shape[-1] != channels:
        return None, "MatMul's Add is not a per-channel constant"
    index = list(add.input).index(other)
    return BiasTarget(node.name, "MatMul", add.output[0], add.name, other, index, channels, -1, None), ""


# --------------------------------------------------------------------------- measurement


def measure(model: onnx.ModelProto, qdq_model: onnx.ModelProto, targets: Sequence[BiasTarget], data: Dataset, *,
            weight_errors: bool = False, progress: bool = False,
            desc: str = "bias correction") -> dict[str, ErrorStats]:
    """Per-channel error statistics of ``targets`` over ``data`` (one pass, one batch alive at a time).

    Args:
        model: the float reference (its outputs are the truth).
        qdq_model: the quantized model (QDQ graph of ``model`` or of a bias-corrected copy).
        targets: from :func:`find_targets`.
        data: batches of model inputs.
        weight_errors: also measure ``(W_q - W) * x_f`` per channel, the weight-only error estimate
            (``W_q`` read from ``qdq_model``, ``x_f`` the float input).
        progress: progress bar on stderr.
        desc: progress bar label.

    Returns:
        node name -> :class:`ErrorStats` (running sums; ``mean_error`` is ``E[y_q - y_f]``).
    """
    merged = _measurement_model(model, qdq_model, targets, weight_errors)
    names = [o.name for o in merged.graph.output]
    session = create_session(merged)
    stats = {t.node: ErrorStats(*(np.zeros(t.channels) for _ in range(3)),
                                np.zeros(t.channels) if weight_errors else None) for t in targets}
    batches = 0
    for feeds in progress_bar(data, desc=desc, total=data.num_batches, enabled=progress):
        values = dict(zip(names, run(session, feeds, names)))
        for index, target in enumerate(targets):
            _accumulate(stats[target.node], values, f"bc/{index}/", target.channels)
        batches += 1
        del values
    if batches == 0:
        raise CalibrationError("the calibration data yielded no batch")
    return stats


def _accumulate(stats: ErrorStats, values: dict[str, np.ndarray], prefix: str, channels: int) -> None:
    count = float(values[prefix + "size"]) / channels
    stats.count += count
    stats.error += values[prefix + "err"].astype(np.float64) * count
    stats.error_sq += values[prefix + "err2"].astype(np.float64) * count
    stats.signal_sq += values[prefix + "sig2"].astype(np.float64) * count
    if stats.weight_error is not None:
        stats.weight_error += values[prefix + "werr"].astype(np.float64) * count


def _measurement_model(model: onnx.ModelProto, qdq_model: onnx.ModelProto, targets: Sequence[BiasTarget],
                       weight_errors: bool) -> onnx.ModelProto:
    """The float graph plus the prefixed QDQ graph; its outputs are per-channel statistics only."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in qdq_model.graph.node for a in n.attribute):
        raise ConfigError("bias correction does not support models with control-flow subgraphs")
    merged = onnx.ModelProto()
    merged.CopyFrom(model)
    shared = {i.name for i in model.graph.input}
    rename = lambda name: name if not name or name in shared else _Q + name  # noqa: E731
    for init in qdq_model.graph.initializer:
        copy = merged.graph.initializer.add()
        copy.CopyFrom(init)
        copy.name = rename(init.name)
    for node in qdq_model.graph.node:
        copy = merged.graph.node.add()
        copy.CopyFrom(node)
        copy.name = _Q + node.name
        copy.input[:] = [rename(n) for n in node.input]
        copy.output[:] = [rename(n) for n in node.output]
    _merge_opsets(merged, qdq_model)
    opset = next(o.version for o in merged.opset_import if o.domain in ("", "ai.onnx"))
    extra = _Graph(opset)
    float_nodes = {n.name: n for n in model.graph.node}
    qdq_nodes = {n.name: n for n in qdq_model.graph.node}
    weights = read_quantized_weights(qdq_model) if weight_errors else {}
    inits = {i.name: i for i in model.graph.initializer}
    for index, target in enumerate(targets):
        q_output = rename(qdq_nodes[target.bias_node].output[0])
        _add_error_stats(extra, f"bc/{index}/", target, target.output, q_output)
        if weight_errors:
            node = float_nodes[target.node]
            delta = weights[target.node].dequantize() - numpy_helper.to_array(inits[node.input[1]])
            _add_weight_error(extra, f"bc/{index}/", target, node, delta.astype(np.float32))
    merged.graph.node.extend(extra.nodes)
    merged.graph.initializer.extend(extra.inits)
    del merged.graph.output[:]
    merged.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in extra.outputs)
    return merged


def _merge_opsets(merged: onnx.ModelProto, other: onnx.ModelProto) -> None:
    versions = {o.domain: o.version for o in merged.opset_import}
    for o in other.opset_import:
        versions[o.domain] = max(versions.get(o.domain, 0), o.version)
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(d, v) for d, v in versions.items())


def _add_error_stats(g: _Graph, prefix: str, target: BiasTarget, f_output: str, q_output: str) -> None:
    """err = E_c[q - f], err2 = E_c[(q - f)^2], sig2 = E_c[f^2], size = number of elements."""
    n = helper.make_node
    g.nodes += [n("Sub", [q_output, f_output], [prefix + "d"], name=prefix + "sub"),
                n("Mul", [prefix + "d", prefix + "d"], [prefix + "d2"], name=prefix + "d2"),
                n("Mul", [f_output, f_output], [prefix + "f2"], name=prefix + "f2"),
                n("Size", [prefix + "d"], [prefix + "size"], name=prefix + "size")]
    for source, out in (("d", "err"), ("d2", "err2"), ("f2", "sig2")):
        _channel_mean(g, prefix + source, prefix + out, target)
    g.outputs += [prefix + "size"]


def _add_weight_error(g: _Graph, prefix: str, target: BiasTarget, node: onnx.NodeProto, delta: np.ndarray) -> None:
    """werr = E_c[op(x_f, W_q - W)]: the same Conv / Gemm / MatMul with the weight error, no bias."""
    g.inits.append(numpy_helper.from_array(delta, prefix + "dW"))
    clone = helper.make_node(node.op_type, [node.input[0], prefix + "dW"], [prefix + "w"], name=prefix + "w")
    clone.attribute.extend(a for a in node.attribute if a.name != "beta")
    g.nodes.append(clone)
    _channel_mean(g, prefix + "w", prefix + "werr", target)


def _channel_mean(g: _Graph, tensor: str, out: str, target: BiasTarget) -> None:
    """``out`` = mean of ``tensor`` over every axis but the channel axis, shape ``[C]``."""
    if target.channel_axis == 1:
        axes = [0, *range(2, target.rank or 4)]
    elif target.rank == 2:
        axes = [0]
    else:  # MatMul: any rank, channels last -> [-1, C]
        shape = out + "_shape"
        g.inits.append(numpy_helper.from_array(np.array([-1, target.channels], np.int64), shape))
        g.nodes.append(helper.make_node("Reshape", [tensor, shape], [out + "_2d"], name=out + "_2d"))
        tensor, axes = out + "_2d", [0]
    if g.opset >= 18:
        g.inits.append(numpy_helper.from_array(np.array(axes, np.int64), out + "_axes"))
        node = helper.make_node("ReduceMean", [tensor, out + "_axes"], [out], keepdims=0, name=out)
    else:
        node = helper.make_node("ReduceMean", [tensor], [out], axes=axes, keepdims=0, name=out)
    g.nodes.append(node)
    g.outputs.append(out)


# --------------------------------------------------------------------------- biases


def float_bias(model: onnx.ModelProto, target: BiasTarget) -> np.ndarray:
    """The target's bias per channel as ``y`` sees it (Gemm: ``beta * C``); zeros when it has none."""
    if not target.bias:
        return np.zeros(target.channels)
    init = next(i for i in model.graph.initializer if i.name == target.bias)
    value = numpy_helper.to_array(init).astype(np.float64)
    return np.broadcast_to(value.reshape(-1), (target.channels,)) * _beta(model, target)


def quantized_bias(qdq_model: onnx.ModelProto, target: BiasTarget) -> np.ndarray | None:
    """The bias ONNX Runtime computes with: the DequantizeLinear of its integer bias, if any."""
    graph = qdq_model.graph
    node = next(n for n in graph.node if n.name == target.bias_node)
    name = node.input[target.bias_index] if len(node.input) > target.bias_index else ""
    dq = next((n for n in graph.node if name and n.op_type == "DequantizeLinear" and n.output[0] == name), None)
    inits = {i.name: i for i in graph.initializer}
    if dq is None or dq.input[0] not in inits:
        return None
    q, scale = numpy_helper.to_array(inits[dq.input[0]]), numpy_helper.to_array(inits[dq.input[1]])
    zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits else 0
    value = (q.astype(np.float64) - np.asarray(zero, np.float64)) * np.asarray(scale, np.float64)
    return np.broadcast_to(value.reshape(-1), (target.channels,)) * _beta(qdq_model, target)


def _beta(model: onnx.ModelProto, target: BiasTarget) -> float:
    if target.op_type != "Gemm":
        return 1.0
    node = next(n for n in model.graph.node if n.name == target.node)
    return float(next((a.f for a in node.attribute if a.name == "beta"), 1.0))


def apply_corrections(model: onnx.ModelProto, targets: Sequence[BiasTarget],
                      corrections: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose biases are lowered by ``corrections`` (node -> per-channel shift of ``y``).

    A bias shared with another node is copied first; a Conv / Gemm without one gets a new one.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes = {n.name: n for n in graph.node}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    for target in targets:
        shift = corrections.get(target.node)
        if shift is None:
            continue
        new = float_bias(model, target) - shift
        bias_node = nodes[target.bias_node]
        old = next((i for i in graph.initializer if i.name == target.bias), None) if target.bias else None
        shape = numpy_helper.to_array(old).shape if old is not None and old.dims and np.prod(old.dims) > 1 else (
            target.channels,)
        values = (new / _beta(model, target)).reshape(shape).astype(np.float32)
        if old is not None and users.get(target.bias, 0) == 1:
            old.CopyFrom(numpy_helper.from_array(values, target.bias))
            continue
        name = _unique(f"{target.node}_bias", taken)
        graph.initializer.append(numpy_helper.from_array(values, name))
        if target.bias:
            bias_node.input[:] = [name if i == target.bias else i for i in bias_node.input]
        else:
            while len(bias_node.input) < 2:
                bias_node.input.append("")
            bias_node.input.append(name)
    return out


def _unique(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


# --------------------------------------------------------------------------- the pass


def correct_biases(model: onnx.ModelProto, data: Dataset, quantize_fn: Callable[[onnx.ModelProto], onnx.ModelProto],
                   *, rounds: int = 2, estimate: str = "weights", verify: bool = True, progress: bool = False,
                   op_types: Sequence[str] = ("Conv", "Gemm", "MatMul")) -> tuple[onnx.ModelProto, PassRecord]:
    """Lower the float biases by the expected error of the quantized model; returns a new float model.

    Each round measures on ``data`` and lowers every target's bias by its per-channel error
    estimate, then re-quantizes with ``quantize_fn``. The first round's estimate is ``estimate``:
    ``"weights"``, the error of the quantized weights (and bias) alone on the float input,
    ``E[(W_q - W) x_f] + (b_q - b)`` (no double counting along depth), or ``"output"``, the whole
    measured error ``E[y_q - y_f]`` (includes input quantization and what upstream layers pass on).
    Later rounds remove the measured residual ``E[y_q - y_f]`` of the corrected model. Costs
    ``rounds`` passes over ``data`` (+1 with ``verify``, which measures the result for the report)
    and ``rounds + 1`` calls of ``quantize_fn``.

    Args:
        model: the float model the final rewrite will quantize (``prepared``); never modified.
        data: calibration batches (iterated once per pass).
        quantize_fn: ``model -> QDQ model`` with the plan and ranges of the final rewrite.
        rounds: measurement rounds (>= 1).
        estimate: first-round estimate, one of :data:`ESTIMATES`.
        verify: measure the corrected model once more (the "after" figures of the report).
        progress: progress bars on stderr.
        op_types: op types to correct (of Conv, Gemm, MatMul).

    Returns:
        The corrected float model (a copy; ``model`` itself when nothing needs correcting) and the
        :class:`PassRecord` (``details["nodes"]``: per-node max |correction|, mean |E[error]| before and
        after, SQNR before and after, output shift in quantization steps).
    """
    start = time.perf_counter()
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}")
    if estimate not in ESTIMATES:
        raise ConfigError(f"estimate={estimate!r} is not one of: {', '.join(ESTIMATES)}")
    qdq = quantize_fn(model)
    targets, skipped = find_targets(model, qdq, op_types)
    if not targets:
        summary = "bias correction: no node with inexact quantized weights and an editable bias; nothing changed"
        return model, PassRecord("bias_correction", summary, [], {"skipped": skipped},
                                 time.perf_counter() - start)
    first_bias = {t.node: _bias_or_float(qdq, model, t) for t in targets}
    total = {t.node: np.zeros(t.channels) for t in targets}
    corrected, before = model, None
    for index in range(rounds):
        use_weights = index == 0 and estimate == "weights"
        stats = measure(model, qdq, targets, data, weight_errors=use_weights, progress=progress,
                        desc=f"bias correction {index + 1}/{rounds}")
        if before is None:
            before = stats
        for target in targets:
            total[target.node] += _estimate(stats[target.node], model, qdq, target, use_weights)
        corrected = apply_corrections(model, targets, total)
        qdq = quantize_fn(corrected)
    assert before is not None
    after = measure(model, qdq, targets, data, progress=progress, desc="bias correction check") if verify else None
    details = _details(targets, skipped, total, before, after, qdq, model, first_bias)
    details.update(estimate=estimate, rounds=rounds, passes=rounds + int(verify))
    record = PassRecord("bias_correction", _summary(details), [t.node for t in targets], details,
                        time.perf_counter() - start)
    logger.info("%s (%.1f s)", record.summary, record.seconds)
    return corrected, record


def _estimate(stats: ErrorStats, model: onnx.ModelProto, qdq: onnx.ModelProto, target: BiasTarget,
              use_weights: bool) -> np.ndarray:
    if not use_weights:
        return stats.mean_error
    assert stats.weight_error is not None
    return stats.mean(stats.weight_error) + _bias_or_float(qdq, model, target) - float_bias(model, target)


def _bias_or_float(qdq: onnx.ModelProto, model: onnx.ModelProto, target: BiasTarget) -> np.ndarray:
    """The bias the quantized model adds (the float one where ORT leaves it float)."""
    value = quantized_bias(qdq, target)
    return value if value is not None else float_bias(model, target)


def _output_step(qdq: onnx.ModelProto, target: BiasTarget) -> float | None:
    """The quantization step of the target's output in the QDQ graph (``None`` if not quantized)."""
    graph = qdq.graph
    node = next(n for n in graph.node if n.name == target.bias_node)
    quantize = next((n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == node.output[0]), None)
    init = next((i for i in graph.initializer if quantize is not None and i.name == quantize.input[1]), None)
    return None if init is None else float(np.max(numpy_helper.to_array(init)))


def _details(targets: Sequence[BiasTarget], skipped: dict[str, str], total: dict[str, np.ndarray],
             before: dict[str, ErrorStats], after: dict[str, ErrorStats] | None, qdq: onnx.ModelProto,
             model: onnx.ModelProto, first_bias: dict[str, np.ndarray]) -> dict:
    """Per-node and overall figures for the report (JSON-ready)."""
    nodes = {}
    intended = realised_gap = 0.0
    for target in targets:
        shift = total[target.node]
        realised = first_bias[target.node] - _bias_or_float(qdq, model, target)  # what the int bias removed
        intended += float(np.abs(shift).sum())
        realised_gap += float(np.abs(realised - shift).sum())
        step = _output_step(qdq, target)
        entry = {"op_type": target.op_type, "channels": target.channels, "bias_added": not target.bias,
                 "max_abs_correction": float(np.abs(shift).max()),
                 "mean_abs_error_before": float(np.abs(before[target.node].mean_error).mean()),
                 "sqnr_db_before": before[target.node].sqnr_db,
                 "max_shift_steps": None if step is None else float(np.abs(shift).max() / step)}
        if after is not None:
            entry["mean_abs_error_after"] = float(np.abs(after[target.node].mean_error).mean())
            entry["sqnr_db_after"] = after[target.node].sqnr_db
        nodes[target.node] = entry
    details: dict = {"nodes": nodes, "skipped": skipped,
                     "lost_to_bias_rounding": realised_gap / intended if intended else 0.0}
    for key in ("mean_abs_error_before", "mean_abs_error_after"):
        values = [e[key] for e in nodes.values() if key in e]
        if values:
            details[key] = float(np.mean(values))
    return details


def _summary(details: dict) -> str:
    text = f"bias correction on {len(details['nodes'])} node(s)"
    if "mean_abs_error_after" in details:
        text += (f": mean |E[y_q - y_f]| per channel {details['mean_abs_error_before']:.3g} -> "
                 f"{details['mean_abs_error_after']:.3g}")
    return text + f" ({details['passes']} pass(es) over the calibration data)"
