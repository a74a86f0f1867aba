"""Cross-layer equalization and bias absorption (Nagel et al., "Data-Free Quantization", 2019).

Contract. Changes: the float weights and biases of every *pair* ``L1 -> act -> L2`` where L1 and
L2 are both Conv (plain, grouped, depthwise, with a channel multiplier) or both Gemm with constant,
unshared float weights, ``act`` is nothing, Relu, LeakyRelu or (see ``bounded``) a Clip with
constant bounds ``lo <= 0 < hi``, and L1's output reaches L2 through that single path (one consumer
each, no graph output on the way). Output channel ``i`` of L1 is divided by ``s_i`` and input
channel ``i`` of L2 multiplied by ``s_i``, ``s_i = sqrt(r1_i / r2_i)`` with ``r`` the per-channel
weight absolute maxima, so both ranges become ``sqrt(r1_i * r2_i)``; pairs are swept in graph
order until no scale moves by more than :data:`TOLERANCE` or ``iterations`` sweeps, which
equalizes chains (conv -> depthwise -> conv) jointly. Needs: a model after ORT basic optimisation
(BatchNorm folded), opset >= 13; data only for ``bounded="measure"`` and bias absorption.

Float-equivalence. Through nothing / Relu / LeakyRelu (positively homogeneous): exact for every
input. A Clip (Relu6) is scale-equivariant only while no value crosses a moved bound, so
``bounded`` chooses: ``"skip"`` (default) leaves such pairs alone (exact); ``"rebound"`` scales
them freely and gives the Clip per-channel bounds (``Relu`` / ``Max(y, lo / t)``, then
``Min(., hi / t)``; exact for every input, but ONNX Runtime has no quantized Min, so each rebound
Clip leaves a float ``Min`` between a DequantizeLinear and a QuantizeLinear); ``"measure"`` streams
the data once (per-channel min / max of L1's output, reduced inside the ORT graph, one batch alive
at a time) and lets channel ``i``'s cumulative scale move only while its observed values times
:data:`CLIP_MARGIN` stay inside the moved bounds (``t_i >= margin * max_i / hi``; closer channels
keep ``t_i = 1``): exact on that data, *not* on other inputs. Measured on EfficientNet-Lite1
(128 calibration crops, 512 held-out crops; top-1 agreement of static int8 with the float model,
per-channel / per-tensor weights): no pass 87.5 / 23.2 %; skip 87.9 / 25.0 (only two Clip-free
pairs; 88.3 / 25.8 without bias absorption); rebound 77.7 / 68.6 with the float model unchanged
(1.3e-6 relative) but int8 latency 42 -> 73 ms (float: 68 ms), from 42 float Min nodes; measure
82.8 / 53.3, but the float model itself moves by up to 7.7 % of the logit range on the held-out
crops (4.5 % with a margin of 1.5 and 3.4 % with 2, where the per-tensor gain is gone: 24 %),
because per-channel maxima of 128 crops do not bound those of other crops. Hence the default
``"skip"``; per-channel weights do not gain from equalization on that model.

Bias absorption (``absorb_bias``, needs data, only where L2 has no padding, because padded zeros
would not carry the shift): through nothing, each channel is centred (``c = (min + max) / 2``;
exact for any input); through Relu / LeakyRelu, ``c = max(0, observed min)``, exact wherever the
pre-activation stays ``>= c`` (true on the calibration data by construction); never through a Clip.
The shift leaves L1's bias as ``b1 - c`` and adds ``W2 c`` to L2's bias. With data, the float
model's outputs before and after are compared on that data and the largest relative change is
reported (``details["max_relative_output_change"]``). The input model is never mutated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..data import Dataset
from ..engine import Runner, StreamBatch, stream
from ..errors import ConfigError, DataError
from . import PassRecord
from .._graph import unique_name

logger = logging.getLogger(__name__)

#: ``bounded`` choices for pairs through a Clip (see the module docstring).
BOUNDED = ("skip", "measure", "rebound")
#: Sweeps stop when no scale changes by more than this (relative).
TOLERANCE = 1e-4
#: ``bounded="measure"``: a channel's observed extremes times this must stay inside the moved bounds.
CLIP_MARGIN = 1.0
_LAYERS = ("Conv", "Gemm")
_HOMOGENEOUS = ("Relu", "LeakyRelu")  # act(s * y) == s * act(y) for s > 0
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


@dataclass(frozen=True)
class Layer:
    """A Conv or Gemm whose weight the pass may rescale.

    Attributes:
        node: node name.
        op_type: ``"Conv"`` or ``"Gemm"``.
        weight: weight initializer (Conv ``W``; Gemm ``B``).
        bias: bias initializer, ``""`` when the node has none.
        groups: Conv ``group`` (Gemm: 1).
        trans_b: Gemm ``transB`` (``B`` stored ``[N, K]``).
        rank: rank of the output tensor (Conv: the weight's rank; Gemm: 2).
        padded: Conv with non-zero (or automatic) padding.
        alpha, beta: Gemm scalars (Conv: 1).
    """

    node: str
    op_type: str
    weight: str
    bias: str
    groups: int = 1
    trans_b: bool = False
    rank: int = 2
    padded: bool = False
    alpha: float = 1.0
    beta: float = 1.0


@dataclass(frozen=True)
class Pair:
    """``first -> act -> second``: output channel ``i`` of ``first`` feeds input channel ``i`` of ``second``.

    Attributes:
        first, second: the two layers.
        act: activation op type between them (``""``: none).
        act_node: the activation node's name (``""``: none).
        bounds: a Clip's ``(lo, hi)`` (``None`` where unbounded); ``None`` for the other activations.
        tensor: ``first``'s output (the pre-activation).
        channels: number of channels.
    """

    first: Layer
    second: Layer
    act: str
    act_node: str
    bounds: tuple[float | None, float | None] | None
    tensor: str
    channels: int

    @property
    def name(self) -> str:
        return f"{self.first.node} -> {self.act or '-'} -> {self.second.node}"


@dataclass
class _Stats:
    """Per-channel running min / max of a pre-activation over the data."""

    low: np.ndarray
    high: np.ndarray


@dataclass
class _State:
    """Weights and biases being rescaled (float64 working copies) and each pair's cumulative scale."""

    weights: dict[str, np.ndarray]
    biases: dict[str, np.ndarray]           # weight name -> bias as the node adds it (zeros if none)
    scales: dict[str, np.ndarray] = field(default_factory=dict)  # pair tensor -> t (y_new = y / t)


# --------------------------------------------------------------------------- finding pairs


def find_pairs(model: onnx.ModelProto, *, bounded: str = "skip") -> tuple[list[Pair], dict[str, str]]:
    """The pairs the pass can equalize, in graph order, and the rejected candidates with the reason.

    A candidate is every Conv / Gemm whose output goes to exactly one node; it is rejected (and
    named in the second result) when the path to the next layer or either layer does not qualify.
    With ``bounded="skip"`` a pair through a Clip is rejected.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses = _use_counts(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in set(node.input):
            consumers.setdefault(name, []).append(node)
    blocked = {o.name for o in graph.output} | {i.name for i in graph.input}
    constants = _constant_nodes(graph)
    layers = {n.output[0]: _layer(n, inits, uses, blocked) for n in graph.node if n.op_type in _LAYERS}
    pairs, skipped = [], {}
    for node in graph.node:
        if node.op_type not in _LAYERS:
            continue
        first = layers[node.output[0]]
        found = _pair_from(node, first, layers, consumers, blocked, inits, constants, bounded)
        if isinstance(found, Pair):
            pairs.append(found)
        elif found:
            skipped[node.name or node.output[0]] = found
    return pairs, skipped


def _pair_from(node: onnx.NodeProto, first: Layer | str, layers: dict[str, Layer | str],
               consumers: dict[str, list[onnx.NodeProto]], blocked: set[str], inits: dict[str, onnx.TensorProto],
               constants: dict[str, np.ndarray], bounded: str) -> Pair | str:
    """The pair starting at ``node``, or why there is none (``""``: not even a candidate)."""
    tensor = node.output[0]
    nxt = _single_consumer(tensor, consumers, blocked)
    if nxt is None:
        return ""
    act, act_node, bounds, feed = "", "", None, tensor
    if (nxt.op_type in _HOMOGENEOUS or nxt.op_type == "Clip") and nxt.input[0] == tensor:
        act, act_node = nxt.op_type, nxt.name
        if act == "Clip":
            bounds = _clip_bounds(nxt, inits, constants)
            if isinstance(bounds, str):
                return bounds
            if bounds[1] is None and (bounds[0] is None or bounds[0] == 0.0):
                act, bounds = "Relu" if bounds[0] == 0.0 else "", None  # no upper bound: homogeneous
            elif bounded == "skip":
                return f"bounded activation {nxt.name} (Clip); bounded='skip'"
        feed = nxt.output[0]
        nxt = _single_consumer(feed, consumers, blocked)
        if nxt is None:
            return ""
    if nxt.op_type != node.op_type or nxt.input[0] != feed:
        return ""
    second = layers[nxt.output[0]]
    for layer in (first, second):
        if isinstance(layer, str):
            return layer
    assert isinstance(first, Layer) and isinstance(second, Layer)
    if second.op_type == "Gemm" and _attr(nxt, "transA", 0):
        return f"{nxt.name}: transA=1"
    channels = _dims(first, inits)[0]
    if _dims(second, inits)[1] != channels:
        return f"{node.name} -> {nxt.name}: channel counts differ"
    return Pair(first, second, act, act_node, bounds, tensor, channels)


def _single_consumer(tensor: str, consumers: dict[str, list[onnx.NodeProto]],
                     blocked: set[str]) -> onnx.NodeProto | None:
    users = consumers.get(tensor, [])
    if tensor in blocked or len(users) != 1 or list(users[0].input).count(tensor) != 1:
        return None
    return users[0]


def _layer(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], uses: dict[str, int],
           blocked: set[str]) -> Layer | str:
    """The layer view of a Conv / Gemm, or why its weights cannot be rescaled."""
    weight = node.input[1] if len(node.input) > 1 else ""
    bias = node.input[2] if len(node.input) > 2 else ""
    for name, what in ((weight, "weight"), (bias, "bias")):
        if not name and what == "bias":
            continue
        if name not in inits or name in blocked:
            return f"{node.name}: {what} is not a constant initializer"
        if uses.get(name, 0) != 1:
            return f"{node.name}: {what} {name} is shared with other nodes"
        if inits[name].data_type not in _FLOATS:
            return f"{node.name}: {what} is not float32/float64"
    w_shape = tuple(inits[weight].dims)
    if node.op_type == "Conv":
        pads = _attr(node, "pads", [0])
        auto = _attr(node, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        padded = any(int(p) != 0 for p in pads) or auto in ("SAME_UPPER", "SAME_LOWER")
        return Layer(node.name or node.output[0], "Conv", weight, bias, groups=int(_attr(node, "group", 1)),
                     rank=len(w_shape), padded=padded)
    if len(w_shape) != 2:
        return f"{node.name}: weight is not 2-D"
    if float(_attr(node, "beta", 1.0)) == 0.0:
        return f"{node.name}: Gemm beta=0"
    trans_b = bool(_attr(node, "transB", 0))
    n_out = w_shape[0] if trans_b else w_shape[1]
    if bias and int(np.prod(inits[bias].dims)) not in (1, n_out):
        return f"{node.name}: bias C is not per-channel"
    return Layer(node.name or node.output[0], "Gemm", weight, bias, trans_b=trans_b,
                 alpha=float(_attr(node, "alpha", 1.0)), beta=float(_attr(node, "beta", 1.0)))


def _dims(layer: Layer, inits: dict[str, onnx.TensorProto]) -> tuple[int, int]:
    """(output channels, input channels) of a layer."""
    shape = tuple(inits[layer.weight].dims)
    if layer.op_type == "Gemm":
        return (shape[0], shape[1]) if layer.trans_b else (shape[1], shape[0])
    return shape[0], shape[1] * layer.groups


def _clip_bounds(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
                 constants: dict[str, np.ndarray]) -> tuple[float | None, float | None] | str:
    """A Clip's constant ``(lo, hi)``, or why it cannot be handled."""
    out: list[float | None] = []
    for index in (1, 2):
        name = node.input[index] if len(node.input) > index else ""
        if not name:
            out.append(None)
            continue
        value = numpy_helper.to_array(inits[name]) if name in inits else constants.get(name)
        if value is None or value.size != 1:
            return f"{node.name}: Clip bound {name} is not a constant scalar"
        out.append(float(value.reshape(())))
    lo, hi = out
    if (lo is not None and lo > 0) or (hi is not None and hi <= 0):
        return f"{node.name}: Clip bounds ({lo}, {hi}) do not contain 0"
    return lo, hi


def _constant_nodes(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def _use_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """How many node inputs (subgraphs included) name each tensor."""
    counts: dict[str, int] = {}

    def visit(g: onnx.GraphProto) -> None:
        for node in g.node:
            for name in node.input:
                counts[name] = counts.get(name, 0) + 1
            for a in node.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    visit(sub)

    visit(graph)
    return counts


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# --------------------------------------------------------------------------- channel views


def _grouped(layer: Layer, weight: np.ndarray) -> np.ndarray:
    """The weight as ``[groups, out per group, in per group, rest]`` (a copy for Gemm ``transB=0``)."""
    if layer.op_type == "Gemm":
        w = weight if layer.trans_b else weight.T
        return w.reshape(1, w.shape[0], w.shape[1], 1)
    return weight.reshape(layer.groups, weight.shape[0] // layer.groups, weight.shape[1], -1)


def _ungrouped(layer: Layer, grouped: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if layer.op_type == "Gemm":
        w = grouped.reshape(grouped.shape[1], grouped.shape[2])
        return w if layer.trans_b else w.T
    return grouped.reshape(shape)


def out_ranges(layer: Layer, weight: np.ndarray) -> np.ndarray:
    """Per output channel absolute maximum of the weight, ``[C_out]``."""
    g = np.abs(_grouped(layer, weight))
    return g.max(axis=(2, 3)).reshape(-1)


def in_ranges(layer: Layer, weight: np.ndarray) -> np.ndarray:
    """Per input channel absolute maximum of the weight, ``[C_in]`` (grouped / depthwise aware)."""
    g = np.abs(_grouped(layer, weight))
    return g.max(axis=(1, 3)).reshape(-1)


def scale_out(layer: Layer, weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """The weight with output channel ``i`` multiplied by ``factor[i]``."""
    g = _grouped(layer, weight)
    return _ungrouped(layer, g * factor.reshape(g.shape[0], g.shape[1], 1, 1), weight.shape)


def scale_in(layer: Layer, weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """The weight with input channel ``i`` multiplied by ``factor[i]``."""
    g = _grouped(layer, weight)
    return _ungrouped(layer, g * factor.reshape(g.shape[0], 1, g.shape[2], 1), weight.shape)


def _input_shift(layer: Layer, weight: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """What the layer adds per output channel when its (unpadded) input grows by ``shift`` per channel."""
    g = _grouped(layer, weight)
    out = np.einsum("gplk,gl->gp", g, shift.reshape(g.shape[0], g.shape[2])).reshape(-1)
    return layer.alpha * out


# --------------------------------------------------------------------------- scales


def _allowed(pair: Pair, stats: _Stats | None, margin: float) -> np.ndarray | None:
    """Lowest allowed cumulative scale ``t`` per channel of a Clip pair; ``inf``: ``t`` must stay 1.

    ``clip(y / t, lo, hi) * t == clip(y, lo, hi)`` on the data when ``t * hi`` stays above the
    observed maximum and ``t * lo`` below the observed minimum (``hi > 0 >= lo``).
    """
    if pair.bounds is None:
        return None
    assert stats is not None  # measure mode measured every Clip pair
    lo, hi = pair.bounds
    need = np.zeros(pair.channels)
    if hi is not None:
        need = np.maximum(need, margin * np.maximum(stats.high, 0.0) / hi)
    if lo is not None and lo < 0:
        need = np.maximum(need, margin * np.minimum(stats.low, 0.0) / lo)
    return np.where(need < 1.0, need, np.inf)


def _pair_scale(pair: Pair, state: _State, floor: np.ndarray | None) -> np.ndarray:
    """This sweep's scale ``s`` of one pair (1 where a range is zero or the bound forbids it)."""
    r1 = out_ranges(pair.first, state.weights[pair.first.weight])
    r2 = in_ranges(pair.second, state.weights[pair.second.weight])
    ok = (r1 > 0) & (r2 > 0)
    s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
    if floor is None:
        return s
    t_old = state.scales[pair.tensor]
    t_new = np.where(np.isinf(floor), 1.0, np.maximum(t_old * s, np.where(np.isinf(floor), 0.0, floor)))
    return t_new / t_old


def _apply_scale(pair: Pair, state: _State, s: np.ndarray) -> None:
    first, second = pair.first, pair.second
    state.weights[first.weight] = scale_out(first, state.weights[first.weight], 1.0 / s)
    state.biases[first.weight] = state.biases[first.weight] / s
    state.weights[second.weight] = scale_in(second, state.weights[second.weight], s)
    state.scales[pair.tensor] = state.scales[pair.tensor] * s


def sweep(pairs: Sequence[Pair], state: _State, floors: dict[str, np.ndarray | None], *,
          iterations: int) -> tuple[int, float]:
    """Equalize every pair in turn until the scales settle: (sweeps run, last largest change)."""
    change = 0.0
    for done in range(1, iterations + 1):
        change = 0.0
        for pair in pairs:
            s = _pair_scale(pair, state, floors.get(pair.tensor))
            change = max(change, float(np.abs(s - 1.0).max(initial=0.0)))
            _apply_scale(pair, state, s)
        if change <= TOLERANCE:
            return done, change
    return iterations, change


# --------------------------------------------------------------------------- statistics


def channel_stats(model: onnx.ModelProto, pairs: Sequence[Pair], data: Dataset) -> dict[str, _Stats]:
    """Per-channel min / max of each pair's pre-activation over ``data``.

    ``ReduceMin`` / ``ReduceMax`` run inside the ONNX Runtime graph, so one batch of activations is
    alive at a time and only ``[C]`` vectors come back.
    """
    if not pairs:
        return {}
    probe, outputs = _stats_model(model, pairs)
    stats: dict[str, _Stats] = {}

    def update(batch: StreamBatch) -> None:
        values = [batch.outputs[0][name] for name in outputs]
        for index, pair in enumerate(pairs):
            low, high = (v.astype(np.float64) for v in values[2 * index:2 * index + 2])
            seen = stats.get(pair.tensor)
            stats[pair.tensor] = _Stats(low, high) if seen is None else _Stats(
                np.minimum(seen.low, low), np.maximum(seen.high, high))

    batches = stream([Runner.create(probe, outputs)], _model_inputs(model, data), update, desc="equalization").batches
    if not batches:
        raise DataError("equalization: the data has no batches")
    return stats


def _model_inputs(model: onnx.ModelProto, data: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Each batch of ``data`` (a Dataset yields input feeds) restricted to the model's inputs."""
    inputs = {i.name for i in model.graph.input}
    for batch in data:
        yield {k: v for k, v in batch.items() if k in inputs}


def _stats_model(model: onnx.ModelProto, pairs: Sequence[Pair]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose only outputs are ``[C]`` minima / maxima of the pairs' pre-activations."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph = probe.graph
    opset = next((o.version for o in probe.opset_import if o.domain in ("", "ai.onnx")), 13)
    del graph.output[:]
    dtypes = {i.name: i.data_type for i in graph.initializer}
    outputs = []
    for index, pair in enumerate(pairs):
        axes = [0, *range(2, pair.first.rank)]
        axes_name = f"eq_axes_{index}"
        if opset >= 18:
            graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
        for op in ("ReduceMin", "ReduceMax"):
            out = f"eq_{op}_{index}"
            if opset >= 18:
                node = helper.make_node(op, [pair.tensor, axes_name], [out], keepdims=0, name=out)
            else:
                node = helper.make_node(op, [pair.tensor], [out], axes=axes, keepdims=0, name=out)
            graph.node.append(node)
            graph.output.append(helper.make_tensor_value_info(out, dtypes[pair.first.weight], [pair.channels]))
            outputs.append(out)
    return probe, outputs


def output_change(before: onnx.ModelProto, after: onnx.ModelProto, data: Iterable[dict[str, np.ndarray]]
                  ) -> dict[str, float]:
    """Per float output: ``max |after - before| / max |before|`` over ``data`` (one batch at a time)."""
    names = [o.name for o in before.graph.output]
    diff = dict.fromkeys(names, 0.0)
    scale = dict.fromkeys(names, 0.0)

    def update(batch: StreamBatch) -> None:
        for name in names:
            a, b = batch.outputs[0][name], batch.outputs[1][name]
            if not np.issubdtype(a.dtype, np.floating):
                continue
            diff[name] = max(diff[name], float(np.abs(b.astype(np.float64) - a).max(initial=0.0)))
            scale[name] = max(scale[name], float(np.abs(a).max(initial=0.0)))

    stream([Runner.create(before, names), Runner.create(after, names)], _model_inputs(before, data), update,
           desc="equalization check")
    return {name: diff[name] / scale[name] if scale[name] > 0 else diff[name] for name in names}


# --------------------------------------------------------------------------- bias absorption


def _shift(pair: Pair, state: _State, stats: _Stats) -> np.ndarray | None:
    """The per-channel shift ``c`` absorbed from ``first`` into ``second``, or ``None``."""
    if pair.act == "Clip" or pair.second.padded:
        return None
    t = state.scales[pair.tensor]
    low, high = stats.low / t, stats.high / t  # the pre-activation after the scaling
    if pair.act == "":
        return (low + high) / 2.0
    return np.maximum(low, 0.0)  # Relu / LeakyRelu: exact where y >= c


def absorb(pairs: Sequence[Pair], state: _State, stats: dict[str, _Stats]) -> dict[str, int]:
    """Move each pair's shift from ``first``'s bias to ``second``'s: pair name -> channels shifted."""
    done = {}
    for pair in pairs:
        if pair.tensor not in stats:
            continue
        c = _shift(pair, state, stats[pair.tensor])
        if c is None or not np.any(c):
            continue
        state.biases[pair.first.weight] = state.biases[pair.first.weight] - c
        state.biases[pair.second.weight] = state.biases[pair.second.weight] + _input_shift(
            pair.second, state.weights[pair.second.weight], c)
        done[pair.name] = int(np.count_nonzero(c))
    return done


# --------------------------------------------------------------------------- the model


def _initial_state(model: onnx.ModelProto, pairs: Sequence[Pair]) -> _State:
    inits = {i.name: i for i in model.graph.initializer}
    state = _State({}, {})
    for pair in pairs:
        for layer in (pair.first, pair.second):
            state.weights[layer.weight] = numpy_helper.to_array(inits[layer.weight]).astype(np.float64)
            n_out = _dims(layer, inits)[0]
            bias = (numpy_helper.to_array(inits[layer.bias]).astype(np.float64).reshape(-1) if layer.bias
                    else np.zeros(1))
            state.biases[layer.weight] = np.broadcast_to(bias * layer.beta, (n_out,)).copy()
        state.scales[pair.tensor] = np.ones(pair.channels)
    return state


def _write(model: onnx.ModelProto, pairs: Sequence[Pair], state: _State) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` holding the new weights and biases; the names of the changed nodes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = {n.input[1]: n for n in graph.node if n.op_type in _LAYERS and len(n.input) > 1}
    taken = {i.name for i in graph.initializer} | {v for n in graph.node for v in n.output}
    layers = {layer.weight: layer for pair in pairs for layer in (pair.first, pair.second)}
    changed = []
    for name, layer in layers.items():
        original = numpy_helper.to_array(inits[layer.weight])
        weight = state.weights[layer.weight].astype(original.dtype)
        bias = state.biases[name] / layer.beta
        old_bias = (np.broadcast_to(numpy_helper.to_array(inits[layer.bias]).reshape(-1), bias.shape)
                    if layer.bias else np.zeros_like(bias))
        if np.array_equal(weight, original) and np.allclose(bias, old_bias, rtol=0, atol=0):
            continue
        inits[layer.weight].CopyFrom(numpy_helper.from_array(weight, layer.weight))
        if layer.bias:
            old_shape = tuple(inits[layer.bias].dims)
            shaped = bias.reshape(old_shape) if int(np.prod(old_shape)) == bias.size else bias
            inits[layer.bias].CopyFrom(numpy_helper.from_array(shaped.astype(original.dtype), layer.bias))
        elif np.any(bias):
            bias_name = unique_name(f"{layer.weight}_eq_bias", taken)
            graph.initializer.append(numpy_helper.from_array(bias.astype(original.dtype), bias_name))
            node = nodes[name]
            while len(node.input) < 2:
                node.input.append("")
            node.input.append(bias_name)
        changed.append(layer.node)
    return out, changed


def _rebound(model: onnx.ModelProto, pairs: Sequence[Pair], state: _State) -> list[str]:
    """Give each scaled Clip pair per-channel bounds ``lo / t``, ``hi / t`` (in place; exact for every input).

    The Clip becomes ``Relu`` (``lo == 0``, which ONNX Runtime folds into the producer) or
    ``Max(y, lo / t)``, followed by ``Min(., hi / t)`` with per-channel constants. (Keeping a scalar
    Clip widened to the loosest channel's bounds before the ``Min`` measured 2-3 points of top-1
    agreement worse on EfficientNet-Lite1, per-tensor and per-channel.)
    """
    graph = model.graph
    taken = {i.name for i in graph.initializer} | {v for n in graph.node for v in n.output}
    dtypes = {i.name: i.data_type for i in graph.initializer}
    done = []
    for pair in pairs:
        t = state.scales[pair.tensor]
        if pair.bounds is None or np.all(t == 1.0):
            continue
        index = next(i for i, n in enumerate(graph.node) if n.name == pair.act_node and n.op_type == "Clip")
        clip = graph.node[index]
        shape = (pair.channels,) + (1,) * (pair.first.rank - 2)
        dtype = helper.tensor_dtype_to_np_dtype(dtypes[pair.first.weight])
        added, current = [], clip.input[0]
        for op, bound in (("Max", pair.bounds[0]), ("Min", pair.bounds[1])):
            if bound is None:
                continue
            out, name = unique_name(f"{clip.output[0]}_eq_{op.lower()}", taken), unique_name(f"{clip.name}_{op.lower()}", taken)
            if op == "Max" and bound == 0.0:
                added.append(helper.make_node("Relu", [current], [out], name=name))
            else:
                limit = unique_name(f"{clip.name}_eq_{op.lower()}_bound", taken)
                graph.initializer.append(numpy_helper.from_array((bound / t).reshape(shape).astype(dtype), limit))
                added.append(helper.make_node(op, [current, limit], [out], name=name))
            current = out
        added[-1].output[0] = clip.output[0]
        del graph.node[index]
        for offset, node in enumerate(added):
            graph.node.insert(index + offset, node)
        done.append(clip.name)
    return done



def _spread(layer: Layer, weight: np.ndarray, side: str) -> float:
    """Mean over channels of ``range_i / max range``: the share of a per-tensor int8 grid a channel uses."""
    r = out_ranges(layer, weight) if side == "out" else in_ranges(layer, weight)
    top = float(r.max(initial=0.0))
    return float(r.mean() / top) if top > 0 else 1.0


# --------------------------------------------------------------------------- the pass


def equalize(model: onnx.ModelProto, *, data: Dataset | None = None, bounded: str = "skip", iterations: int = 20,
             absorb_bias: bool = True) -> tuple[onnx.ModelProto, PassRecord]:
    """Cross-layer equalization (and bias absorption) of Conv/Gemm pairs; see the module contract.

    Args:
        model: the prepared float model (not modified).
        data: calibration batches; needed by ``bounded="measure"`` and by bias absorption, and used
            to report how much the float outputs moved.
        bounded: pairs through a Clip (Relu6): ``"skip"`` leaves them alone; ``"rebound"`` scales
            them and gives the Clip per-channel bounds (exact, adds float ``Min`` nodes);
            ``"measure"`` scales only within the per-channel ranges observed on ``data`` (exact on
            that data only).
        iterations: at most this many sweeps over all pairs.
        absorb_bias: shift biases from one layer to the next where exact (needs ``data``).

    Returns:
        The equalized model and the pass record (``details["max_relative_output_change"]``).
    """
    start = time.perf_counter()
    if bounded not in BOUNDED:
        raise ConfigError(f"bounded={bounded!r} is not one of: {', '.join(BOUNDED)}")
    if iterations < 1:
        raise ConfigError(f"iterations must be at least 1, got {iterations}")
    if bounded == "measure" and data is None:
        raise ConfigError("bounded='measure' needs calibration data")
    pairs, skipped = find_pairs(model, bounded=bounded)
    if not pairs:
        return _copy(model), PassRecord("equalization", "no Conv/Gemm pair to equalize", [],
                                        {"pairs": {}, "skipped": skipped, "bounded": bounded,
                                         "max_relative_output_change": 0.0},
                                        time.perf_counter() - start)
    measured = bounded == "measure"
    wanted = [p for p in pairs if (p.bounds is not None and measured) or (absorb_bias and p.bounds is None)]
    stats = channel_stats(model, wanted, data) if data is not None and wanted else {}
    floors = {p.tensor: _allowed(p, stats.get(p.tensor), CLIP_MARGIN) if measured else None for p in pairs}
    state = _initial_state(model, pairs)
    before = {p.name: (_spread(p.first, state.weights[p.first.weight], "out"),
                       _spread(p.second, state.weights[p.second.weight], "in")) for p in pairs}
    sweeps, change = sweep(pairs, state, floors, iterations=iterations)
    absorbed = absorb(pairs, state, stats) if absorb_bias and stats else {}
    new, changed = _write(model, pairs, state)
    rebound = _rebound(new, pairs, state) if bounded == "rebound" else []
    details = _details(pairs, state, floors, before, absorbed, skipped)
    changed += rebound
    details.update(bounded=bounded, sweeps=sweeps, rebound_clips=rebound, converged=change <= TOLERANCE,
                   last_change=change, clip_margin=CLIP_MARGIN if bounded == "measure" else None,
                   bias_absorption="done" if absorbed else ("needs data" if absorb_bias and data is None else "none"))
    if data is not None:
        per_output = output_change(model, new, data)
        details["relative_output_change"] = per_output
        details["max_relative_output_change"] = max(per_output.values(), default=0.0)
    else:
        details["max_relative_output_change"] = None
    return new, PassRecord("equalization", _summary(details), changed, details, time.perf_counter() - start)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _details(pairs: Sequence[Pair], state: _State, floors: dict[str, np.ndarray | None],
             before: dict[str, tuple[float, float]], absorbed: dict[str, int], skipped: dict[str, str]) -> dict:
    """Per-pair figures for the report (JSON-ready)."""
    out = {}
    for p in pairs:
        t = state.scales[p.tensor]
        floor = floors[p.tensor]
        entry = {"activation": p.act or None, "channels": p.channels,
                 "weight_spread_before": list(before[p.name]),
                 "weight_spread_after": [_spread(p.first, state.weights[p.first.weight], "out"),
                                         _spread(p.second, state.weights[p.second.weight], "in")],
                 "max_abs_log2_scale": float(np.abs(np.log2(t)).max(initial=0.0)),
                 "bias_shifted_channels": absorbed.get(p.name, 0)}
        if floor is not None:
            entry["channels_held"] = int(np.isinf(floor).sum())
        out[p.name] = entry
    return {"pairs": out, "skipped": skipped}


def _summary(details: dict) -> str:
    pairs = details["pairs"]
    text = f"equalized {len(pairs)} Conv/Gemm pair(s) in {details['sweeps']} sweep(s)"
    held = sum(e.get("channels_held", 0) for e in pairs.values())
    if held:
        text += f", {held} channel(s) held at their Clip bound"
    shifted = sum(1 for e in pairs.values() if e["bias_shifted_channels"])
    if shifted:
        text += f", biases absorbed in {shifted} pair(s)"
    change = details["max_relative_output_change"]
    if change is not None:
        text += f"; max relative change of the float outputs {change:.2g}"
    return text
