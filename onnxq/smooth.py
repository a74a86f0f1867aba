"""SmoothQuant: move activation outlier channels into the weights of the linear layers.

A float-equivalent pre-transform of the prepared model, like BatchNorm folding, applied before
calibration. For an activation ``X`` read by quantized MatMuls with constant weights
``W_1 .. W_n`` (e.g. Q, K and V of one attention block share their input), per input channel
``j``::

    s_j = max|X_j| ** alpha / max_i max_k |W_i[j, k]| ** (1 - alpha)     clipped to [1e-2, 1e2]
    X'  = Mul(X, 1 / s)                  one new node, read only by those MatMuls
    W_i <- diag(s) @ W_i                 new initializers (the originals are never modified)

``X' @ W_i' == X @ W_i`` in exact arithmetic, so the float model computes the same outputs
(up to float32 rounding). What changes is what int8 sees: per-tensor uint8 activation scales
suffer from a few channels with huge magnitudes (LayerNorm and GELU outputs of transformers),
while per-channel int8 weight scales absorb them well. Other consumers of ``X`` (the residual
Add, a MatMul that stays float) keep reading the original ``X``.

The transform is policy (which tensors, which scales), not a quantization rewrite: ONNX Runtime
still performs every Q/DQ insertion (see DESIGN.md). The clip range keeps a dead channel
(``max|X_j| == 0``) or a dead weight row from producing an infinite or zero scale; channels
with either maximum equal to zero keep ``s_j = 1``.

Targets are ``MatMul`` nodes only. ``Gemm`` is skipped on purpose: exported transformers write
their linear layers as MatMul (+ Add), and the Gemm nodes that do exist in practice are CNN
classifier heads fed by Flatten, whose "channels" are flattened spatial positions, where
smoothing buys nothing. A Gemm could be handled (scale the columns of ``B`` when ``transB=1``,
its rows otherwise, when ``transA=0``) if a model ever needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .data import Dataset
from .engine import Runner, stream, tapped
from .errors import CalibrationError, ConfigError
from .plan import SENTINEL_MAGNITUDE, NodeDecision, QuantPlan, constant_names, set_calibration_targets
from ._graph import unique_name

logger = logging.getLogger(__name__)

#: Smoothing scales are clipped to [SCALE_MIN, SCALE_MAX]: at most a 100x migration either way.
SCALE_MIN = 1e-2
SCALE_MAX = 1e2

SMOOTH_REASON = "SmoothQuant scale"

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


class ChannelStats:
    """An engine consumer: per-channel statistics (channel = last axis) of float tensors.

    Attributes:
        abs_max: tensor -> per-channel maximum of ``|x|`` (float64; non-finite values count as 0),
            SmoothQuant's statistic.
        low, high: tensor -> per-channel minimum / maximum of the finite values (``+inf`` / ``-inf``
            for a channel without one), from which the range of ``x * (1 / s)`` follows exactly.
    """

    def __init__(self) -> None:
        self.abs_max: dict[str, np.ndarray] = {}
        self.low: dict[str, np.ndarray] = {}
        self.high: dict[str, np.ndarray] = {}

    def update(self, tensors: dict[str, np.ndarray]) -> None:
        """Fold one batch of ``{name: values}`` into the statistics."""
        for name, values in tensors.items():
            if values.dtype.kind != "f" or values.ndim == 0 or values.size == 0:
                continue
            signed = values.reshape(-1, values.shape[-1])
            flat = np.abs(signed)
            batch_max = flat.max(axis=0).astype(np.float64)
            low, high = signed.min(axis=0).astype(np.float64), signed.max(axis=0).astype(np.float64)
            if not np.all(np.isfinite(batch_max)):  # rare: redo this batch without inf / NaN
                finite = np.isfinite(flat)
                batch_max = np.where(finite, flat, 0).max(axis=0).astype(np.float64)
                low = np.where(finite, signed, np.inf).min(axis=0).astype(np.float64)
                high = np.where(finite, signed, -np.inf).max(axis=0).astype(np.float64)
            previous = self.abs_max.get(name)
            if previous is None:
                self.abs_max[name], self.low[name], self.high[name] = batch_max, low, high
            elif previous.shape != batch_max.shape:
                raise CalibrationError(f"tensor {name!r} changes its last dimension between batches "
                                       f"({previous.shape[0]} -> {batch_max.shape[0]})")
            else:
                np.maximum(previous, batch_max, out=previous)
                np.minimum(self.low[name], low, out=self.low[name])
                np.maximum(self.high[name], high, out=self.high[name])


def channel_abs_max(model: onnx.ModelProto, data: Dataset, tensors: list[str], *,
                    progress: bool = False) -> dict[str, np.ndarray]:
    """Per-channel maximum of ``|x|`` (channel = last axis) of ``tensors`` over ``data``.

    Streams ``data`` through ONNX Runtime one batch at a time (:func:`onnxq.engine.stream`); each
    batch's tapped values update a running maximum and are dropped before the next batch runs.

    Args:
        model: the model whose tensors are measured.
        data: batches of model inputs.
        tensors: tensor names to measure (activations of float type).
        progress: show a progress bar on stderr.

    Returns:
        ``{tensor: float64 array of shape [C]}``; non-finite values are ignored. A tensor that
        is not float, has rank 0, or never holds a finite value is left out.

    Raises:
        CalibrationError: the data yields no batch, or a tensor's last dimension changes.
    """
    tensors = list(dict.fromkeys(tensors))
    if not tensors:
        return {}
    stats = ChannelStats()
    streamed = stream([Runner.create(tapped(model, tensors), tensors)], data, lambda b: stats.update(b.outputs[0]),
                      desc="smoothing statistics", progress=progress)
    if streamed.batches == 0:
        raise CalibrationError("the calibration data yielded no batch")
    maxima = stats.abs_max
    return maxima


def smoothing_targets(model: onnx.ModelProto, plan: QuantPlan) -> dict[str, list[str]]:
    """Activations that SmoothQuant can rescale, with the MatMuls that consume them.

    A target is a node of ``plan.nodes_to_quantize`` of op type ``MatMul`` whose ``B`` input is a
    2-D float initializer (not also a graph input, which would make it overridable) and whose
    ``A`` input is an activation (not a constant). Gemm nodes are skipped (see the module
    docstring).

    Args:
        model: the prepared model the plan was made for.
        plan: the quantization plan.

    Returns:
        ``{activation tensor: [MatMul node names]}`` in graph order; empty when nothing qualifies.
    """
    chosen = set(plan.nodes_to_quantize)
    inits = {i.name: i for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    constants = constant_names(model)
    targets: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.name not in chosen or node.op_type != "MatMul" or len(node.input) < 2:
            continue
        activation, weight = node.input[0], node.input[1]
        init = inits.get(weight)
        if (init is None or weight in graph_inputs or len(init.dims) != 2 or init.data_type not in _FLOAT_TYPES
                or not activation or activation in constants):
            continue
        targets.setdefault(activation, []).append(node.name)
    return targets


def smooth(model: onnx.ModelProto, plan: QuantPlan, data: Dataset | None, *, alpha: float = 0.75,
           progress: bool = False, act_max: dict[str, np.ndarray] | None = None) -> tuple[onnx.ModelProto, QuantPlan]:
    """Apply SmoothQuant to every target of :func:`smoothing_targets`.

    Args:
        model: the prepared float model (not modified).
        plan: its quantization plan (static mode; not modified).
        data: calibration batches, used to measure the per-channel activation maxima.
        alpha: migration strength in [0, 1]: 0 leaves activations alone (scales from the weights
            only), 1 moves all of an activation's per-channel range into the weights. 0.7-0.8
            works on BERT-style encoders; 0.5 was worse than no smoothing on all-MiniLM-L6-v2.
        progress: show a progress bar while measuring.
        act_max: the per-channel maxima already measured (:class:`ChannelStats` in a pass that also
            calibrated); ``data`` is then not read.

    Returns:
        ``(new_model, new_plan)``. The new model holds one ``Mul(X, 1/s)`` per smoothed activation
        and rescaled copies of the weights; the new plan lists the Mul nodes as float
        (``candidate=False``, reason ``"SmoothQuant scale"``) and calibrates the Mul outputs in
        place of ``X`` (``X`` stays only while another quantized node reads it). When there is
        nothing to smooth, the input ``model`` and ``plan`` are returned as they are.

    Raises:
        ConfigError: ``alpha`` outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"smoothing alpha must be in [0, 1], got {alpha}")
    targets = smoothing_targets(model, plan)
    if not targets:
        logger.debug("SmoothQuant: no MatMul with a constant weight to smooth")
        return model, plan

    if act_max is None:
        act_max = channel_abs_max(model, data, list(targets), progress=progress)
    inits = {i.name: i for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    scales: dict[str, np.ndarray] = {}
    for tensor, matmuls in targets.items():
        weights = [numpy_helper.to_array(inits[by_name[m].input[1]]) for m in matmuls]
        scale = _scales(tensor, act_max.get(tensor), weights, alpha)
        if scale is not None:
            scales[tensor] = scale
    if not scales:
        return model, plan

    new_model = onnx.ModelProto()
    new_model.CopyFrom(model)
    inserted = _rewrite(new_model, {t: targets[t] for t in scales}, scales)
    new_plan = _updated_plan(new_model, plan, inserted)
    logger.info("SmoothQuant (alpha %.2f): %d activation(s) rescaled for %d MatMul(s)", alpha, len(scales),
                sum(len(targets[t]) for t in scales))
    return new_model, new_plan


def smoothed_tensors(model: onnx.ModelProto, plan: QuantPlan) -> dict[str, tuple[str, np.ndarray]]:
    """``{X': (X, 1 / s)}`` for every SmoothQuant Mul of a smoothed model and its plan."""
    muls = {d.name for d in plan.decisions if d.reason == SMOOTH_REASON}
    inits = {i.name: i for i in model.graph.initializer}
    return {node.output[0]: (node.input[0], numpy_helper.to_array(inits[node.input[1]]))
            for node in model.graph.node if node.name in muls and node.input[1] in inits}


def _scales(tensor: str, act_max: np.ndarray | None, weights: Sequence[np.ndarray],
            alpha: float) -> np.ndarray | None:
    """The per-channel scale ``s`` for one activation, or ``None`` when it cannot be smoothed."""
    rows = {w.shape[0] for w in weights}
    if act_max is None:
        logger.debug("SmoothQuant: %s holds no finite float value; skipped", tensor)
        return None
    if rows != {act_max.shape[0]}:
        logger.debug("SmoothQuant: %s has %d channels but its weights have %s rows; skipped", tensor,
                     act_max.shape[0], sorted(rows))
        return None
    if act_max.max(initial=0.0) > SENTINEL_MAGNITUDE:
        logger.debug("SmoothQuant: %s holds a sentinel value; skipped", tensor)
        return None
    w_max = np.max([np.abs(w.astype(np.float64)).max(axis=1) for w in weights], axis=0)
    scale = np.ones_like(act_max)
    live = (act_max > 0) & (w_max > 0) & np.isfinite(w_max)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        scale[live] = act_max[live] ** alpha / w_max[live] ** (1.0 - alpha)
    scale = np.where(np.isfinite(scale), scale, 1.0)
    return np.clip(scale, SCALE_MIN, SCALE_MAX)


def _rewrite(model: onnx.ModelProto, targets: dict[str, list[str]],
             scales: dict[str, np.ndarray]) -> dict[str, tuple[str, str]]:
    """Insert the Mul nodes and the rescaled weights in place; returns ``{X: (mul node, X')}``."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    infos = {vi.name: vi for vi in list(graph.input) + list(graph.value_info) + list(graph.output)}
    tensor_names = _tensor_names(model)
    node_names = {n.name for n in graph.node}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for output in graph.output:
        uses[output.name] = uses.get(output.name, 0) + 1
    for name in _subgraph_inputs(graph):  # outer-scope names read inside If / Loop bodies: never dropped
        uses[name] = uses.get(name, 0) + 1

    matmul_to_tensor = {m: t for t, ms in targets.items() for m in ms}
    new_nodes: list[onnx.NodeProto] = []
    inserted: dict[str, tuple[str, str]] = {}
    for node in graph.node:
        tensor = matmul_to_tensor.get(node.name)
        if tensor is not None:
            if tensor not in inserted:  # first target of X in graph order: X is already computed here
                scale = scales[tensor]
                weight_dtype = numpy_helper.to_array(inits[node.input[1]]).dtype
                inv_name = unique_name(f"{tensor}_smooth_inv_scale", tensor_names)
                out_name = unique_name(f"{tensor}_smoothed", tensor_names)
                mul_name = unique_name(f"{tensor}_smooth", node_names)
                graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(weight_dtype), inv_name))
                new_nodes.append(helper.make_node("Mul", [tensor, inv_name], [out_name], name=mul_name))
                if tensor in infos:
                    info = onnx.ValueInfoProto()
                    info.CopyFrom(infos[tensor])
                    info.name = out_name
                    graph.value_info.append(info)
                inserted[tensor] = (mul_name, out_name)
            weight_name = node.input[1]
            weight = numpy_helper.to_array(inits[weight_name])
            scaled = (weight.astype(np.float64) * scales[tensor][:, None]).astype(weight.dtype)
            new_weight = unique_name(f"{weight_name}_smoothed", tensor_names)
            graph.initializer.append(numpy_helper.from_array(scaled, new_weight))
            uses[weight_name] -= 1
            node.input[0] = inserted[tensor][1]
            node.input[1] = new_weight
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)

    unused = {name for name, count in uses.items() if count <= 0}
    graph_inputs = {i.name for i in graph.input}
    keep = [i for i in graph.initializer if i.name not in unused or i.name in graph_inputs]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return inserted


def _updated_plan(model: onnx.ModelProto, plan: QuantPlan, inserted: dict[str, tuple[str, str]]) -> QuantPlan:
    """The plan for the smoothed model: Mul decisions in graph order, calibration list recomputed."""
    mul_nodes = {mul: NodeDecision(mul, "Mul", False, SMOOTH_REASON, candidate=False)
                 for mul, _ in inserted.values()}
    old = {d.name: d for d in plan.decisions}
    decisions = []
    for node in model.graph.node:
        if node.name in mul_nodes:
            decisions.append(mul_nodes[node.name])
        elif node.name in old:
            decisions.append(old.pop(node.name))
    decisions.extend(old.values())  # decisions without a node (none in practice): kept, at the end
    new = replace(plan, decisions=decisions,
                  notes=plan.notes + [f"SmoothQuant: {len(inserted)} activation(s) feeding int8 MatMuls "
                                      "rescaled per channel into the weights (float-equivalent)."])
    return set_calibration_targets(new, model)


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes of the subgraphs (If / Loop / Scan bodies) nested in ``graph``."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                for inner in sub.node:
                    names.update(inner.input)
                names |= _subgraph_inputs(sub)
    return names


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {i.name for i in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    names.update(vi.name for vi in graph.value_info)
    return names

