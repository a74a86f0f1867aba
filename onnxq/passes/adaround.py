"""Adaptive rounding (AdaRound, Nagel et al. 2020): round each integer weight up or down on data.

Contract. Changes: the integer weights that ONNX Runtime's QDQ rewrite wrote for Conv (plain,
grouped, depthwise; 1-D to 3-D), Gemm and MatMul nodes with a constant float weight. Each element
becomes ``floor(w / s) + zp`` or that plus one (``s``, ``zp``: ORT's scale and zero point, which
stay exactly as ORT wrote them), never leaving ``[q.min(), q.max()]`` of the integers ORT wrote for
that tensor; elements that ORT's weights make exact or that sit on that range's edge keep ORT's
value. Graph, scales, zero points and biases are untouched. Needs: the reference float model (same
node names as the QDQ model: ``prepared`` in the static pipeline, after float-equivalent passes but
*not* a bias-corrected copy, whose shifted biases would become the targets), the QDQ model, and
calibration data (iterated up to once per layer). Bias correction after this pass has nothing
left to remove (the asymmetric reconstruction already removes the mean error). Ensures: a new QDQ model (the inputs are
never mutated) in which, per layer, the rounding minimises on the calibration data the
reconstruction error ``mean ||W_q x_q - W x_f||^2`` (``x_q``: the layer's input in the QDQ model
with every earlier layer already rounded, so each layer compensates upstream quantization
error; ``x_f``: its input in the float model) through AdaRound's rectified-sigmoid relaxation,
annealed rounding regulariser, Adam and hard rounding; a layer whose result is not better than
nearest rounding on the calibration statistics keeps ORT's weights. Not float-equivalent.
Memory: the loss is quadratic in the weights, so the data enter only through the second moments
of ``x_q`` and ``x_q - x_f``: three ``[groups, k, k]`` float64 matrices for the layer being rounded
(``k``: fan-in per group), independent of the data size. Per batch at most ``max_patches`` input rows
(random im2col patches of a Conv, rows of a Gemm / MatMul input) are materialised, ``2 *
max_patches * groups * k`` float32 values. Passes: one per layer, each running only the part of
both models between a frontier and the layer's input; the frontier (the tensors cut just before
an earlier layer, for every batch and both models) is a cache bounded by ``cache_bytes`` (two at
most alive: the current and the one being filled), else the data itself. Alive at once: one
layer's statistics, one batch of the pass's outputs, and at most ``2 * cache_bytes`` of frontier.
Time: ``time_budget_s`` bounds the whole pass; layers not finished by then keep nearest rounding
and are listed in the record.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper, numpy_helper

from .._progress import progress as progress_bar
from ..data import Dataset
from ..errors import CalibrationError, ConfigError
from ..rewrite.weights import QuantizedWeight, read_quantized_weights, replace_quantized_weights
from ..runtime import create_session, run
from . import PassRecord

try:  # optional (scikit-learn installs it): single-threaded BLAS for many small products
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

logger = logging.getLogger(__name__)

#: stretch of the rectified sigmoid ``h(V) = clip(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)``
ZETA, GAMMA = 1.1, -0.1
#: weight of the rounding regulariser ``sum(1 - |2h - 1|^beta)`` against the reconstruction loss
REG_WEIGHT = 0.01
#: the regulariser's exponent anneals (cosine) from the first to the second value
BETA_RANGE = (20.0, 2.0)
#: fraction of the iterations run without the regulariser
WARM_START = 0.2
#: Adam's step size on ``V`` and its moment decays
LEARNING_RATE = 1e-2
ADAM_BETAS = (0.9, 0.999)
#: optimisation steps per layer
DEFAULT_ITERATIONS = 500
#: input rows per batch and layer that enter the statistics, at most
DEFAULT_MAX_PATCHES = 1024
#: rows per statistic dimension over the whole data beyond which no more rows are drawn
ROWS_PER_FEATURE = 512
#: at most this many bytes of cached tensors (both models, all batches) between layer passes
DEFAULT_CACHE_BYTES = 512 << 20
#: low-rank quadratic term: share of the trace of ``E[x_q x_q^T]`` that may be dropped, smallest fan-in
RANK_TOLERANCE = 1e-4
LOW_RANK_MIN_FAN_IN = 128
#: per-group statistics at most this wide are reduced on single-threaded BLAS (depthwise convs)
_SMALL_GROUP = 128
#: how often (in iterations) the time budget is checked
_CHECK_EVERY = 25


@dataclass(frozen=True)
class RoundingLayer:
    """One weight layer in canonical form ``y[g] = W[g] @ x[g]``, ``W[g]``: ``[channels, fan_in]``.

    Attributes:
        node: the Conv / Gemm / MatMul node (same name in the float and the QDQ model).
        op_type: its op type.
        float_input: the node's data input in the float model.
        quant_input: the node's data input in the QDQ model.
        groups: independent groups (Conv ``group``; 1 otherwise).
        channels: output channels per group.
        fan_in: inputs per output channel and group (Conv: ``C_in / group * prod(kernel)``).
        attrs: the node's attributes (Conv geometry; Gemm ``transA``, ``transB``, ``alpha``).
    """

    node: str
    op_type: str
    float_input: str
    quant_input: str
    groups: int
    channels: int
    fan_in: int
    attrs: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class LayerStats:
    """Running sums over the input rows of one layer, per group: ``qq = sum x_q x_q^T``,
    ``dq = sum d x_q^T`` and ``dd = sum d d^T`` with ``d = x_q - x_f`` (float64, ``[groups, k, k]``)."""

    qq: np.ndarray
    dq: np.ndarray
    dd: np.ndarray
    rows: int = 0

    @classmethod
    def zeros(cls, layer: RoundingLayer) -> LayerStats:
        shape = (layer.groups, layer.fan_in, layer.fan_in)
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape))


# --------------------------------------------------------------------------- layers


def find_layers(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto
                ) -> tuple[list[RoundingLayer], dict[str, str]]:
    """The layers whose rounding can be chosen, in graph order, and the skipped ones with the reason."""
    quantized = read_quantized_weights(qdq_model)
    graph = float_model.graph
    inits = {i.name: i for i in graph.initializer}
    overridable = {i.name for i in graph.input}
    qdq_nodes = {n.name: n for n in qdq_model.graph.node}
    uses: dict[str, int] = {}
    for node in qdq_model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    layers: list[RoundingLayer] = []
    skipped: dict[str, str] = {}
    for node in graph.node:
        weight = quantized.get(node.name)
        if weight is None or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        name = node.input[1] if len(node.input) > 1 else ""
        if not name or name not in inits or name in overridable or inits[name].data_type != onnx.TensorProto.FLOAT:
            skipped[node.name] = "weight is not a float initializer in the float model"
            continue
        reason = _unsupported(node, weight, numpy_helper.to_array(inits[name]), qdq_nodes, uses)
        if reason:
            skipped[node.name] = reason
            continue
        layers.append(_layer(node, weight.q.shape, qdq_nodes[node.name].input[0]))
    return layers, skipped


def _unsupported(node: onnx.NodeProto, weight: QuantizedWeight, float_weight: np.ndarray,
                 qdq_nodes: dict[str, onnx.NodeProto], uses: dict[str, int]) -> str:
    """Why a quantized node's rounding cannot be chosen ('' when it can)."""
    if float_weight.shape != weight.q.shape:
        return "float and quantized weights differ in shape"
    if node.name not in qdq_nodes or uses.get(weight.initializer, 0) != 1:
        return "quantized weight is shared"
    if node.op_type == "MatMul" and float_weight.ndim != 2:
        return "MatMul weight is not 2-D"
    if node.op_type == "Conv" and not 3 <= float_weight.ndim <= 5:
        return "Conv is not 1-D, 2-D or 3-D"
    scale = _broadcast(weight, weight.scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = float_weight.astype(np.float64) / scale
    if not np.any((ratio != np.floor(ratio)) & (scale > 0)):
        return "quantized weights are exact"
    return ""


def _layer(node: onnx.NodeProto, shape: tuple[int, ...], quant_input: str) -> RoundingLayer:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    if node.op_type == "Conv":
        groups = int(attrs.get("group", 1))
        attrs["kernel_shape"] = list(shape[2:])
        return RoundingLayer(node.name, "Conv", node.input[0], quant_input, groups, shape[0] // groups,
                             int(np.prod(shape[1:])), attrs)
    if node.op_type == "Gemm" and attrs.get("transB", 0):
        channels, fan_in = shape
    else:
        fan_in, channels = shape
    return RoundingLayer(node.name, node.op_type, node.input[0], quant_input, 1, channels, fan_in, attrs)


def to_canonical(layer: RoundingLayer, array: np.ndarray) -> np.ndarray:
    """A weight-shaped array as ``[groups, channels, fan_in]``."""
    if layer.op_type == "Conv":
        return array.reshape(layer.groups, layer.channels, layer.fan_in)
    if layer.op_type == "Gemm" and layer.attrs.get("transB", 0):
        return array[np.newaxis]
    return array.T[np.newaxis]


def from_canonical(layer: RoundingLayer, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`to_canonical`."""
    if layer.op_type == "Conv":
        return array.reshape(shape)
    if layer.op_type == "Gemm" and layer.attrs.get("transB", 0):
        return array[0]
    return np.ascontiguousarray(array[0].T)


def _broadcast(weight: QuantizedWeight, values: np.ndarray) -> np.ndarray:
    """Per-channel (or per-tensor) parameters broadcast to the weight's shape, float64."""
    values = np.asarray(values, np.float64)
    if weight.axis is not None and values.ndim == 1:
        shape = [1] * weight.q.ndim
        shape[weight.axis] = -1
        values = values.reshape(shape)
    return np.broadcast_to(values, weight.q.shape)


# --------------------------------------------------------------------------- input rows


def positions(layer: RoundingLayer, shape: tuple[int, ...]) -> int:
    """How many input rows (output positions times samples) a batch of input ``shape`` has."""
    if layer.op_type == "Conv":
        return shape[0] * int(np.prod(_conv_geometry(layer, shape)[0]))
    if layer.op_type == "Gemm":
        return shape[1] if layer.attrs.get("transA", 0) else shape[0]
    return int(np.prod(shape[:-1]))


def rows(layer: RoundingLayer, x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The input rows ``index`` (into :func:`positions`) of a batch, as ``[groups, len(index), fan_in]``.

    For a Conv a row is the im2col patch of one output position (zero padding included), so that
    ``W[g] @ row`` is that output without bias; for a Gemm a row of ``alpha * A``.
    """
    if layer.op_type == "Conv":
        return _patches(layer, x, index)
    if layer.op_type == "Gemm":
        a = x.T if layer.attrs.get("transA", 0) else x
        return (a[index] * np.float32(layer.attrs.get("alpha", 1.0)))[np.newaxis]
    return x.reshape(-1, layer.fan_in)[index][np.newaxis]


def _conv_geometry(layer: RoundingLayer, shape: tuple[int, ...]
                   ) -> tuple[list[int], list[tuple[int, int]], list[int], list[int]]:
    """Output sizes, (begin, end) pads, strides and dilations of a Conv on an input of ``shape``."""
    kernel = layer.attrs["kernel_shape"]
    spatial = shape[2:]
    strides = list(layer.attrs.get("strides", [1] * len(kernel)))
    dilations = list(layer.attrs.get("dilations", [1] * len(kernel)))
    auto_pad = layer.attrs.get("auto_pad", "NOTSET")
    pads_attr = list(layer.attrs.get("pads", [0] * 2 * len(kernel)))
    out, pads = [], []
    for d, (size, k, s, dil) in enumerate(zip(spatial, kernel, strides, dilations)):
        extent = dil * (k - 1) + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            n = -(-size // s)
            total = max((n - 1) * s + extent - size, 0)
            small = total // 2
            pads.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
        elif auto_pad == "VALID":
            pads.append((0, 0))
        else:
            pads.append((pads_attr[d], pads_attr[d + len(kernel)]))
        out.append((size + sum(pads[-1]) - extent) // s + 1)
    return out, pads, strides, dilations


def _patches(layer: RoundingLayer, x: np.ndarray, index: np.ndarray) -> np.ndarray:
    out, pads, strides, dilations = _conv_geometry(layer, x.shape)
    kernel = layer.attrs["kernel_shape"]
    spatial = len(kernel)
    padded = np.pad(x, [(0, 0), (0, 0), *pads]) if any(p != (0, 0) for p in pads) else x
    extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    view = sliding_window_view(padded, extent, axis=tuple(range(2, 2 + spatial)))
    view = view[(slice(None), slice(None), *(slice(None, None, s) for s in strides),
                 *(slice(None, None, d) for d in dilations))]
    where = np.unravel_index(index, (x.shape[0], *out))
    picked = view[(where[0], slice(None), *where[1:])]  # [P, C, *kernel]
    picked = picked.reshape(len(index), layer.groups, layer.fan_in)
    return np.ascontiguousarray(picked.transpose(1, 0, 2), dtype=np.float32)


# --------------------------------------------------------------------------- statistics


@dataclass
class _Graph:
    """The structure of one model (float or QDQ) as the walk needs it; weights are read per call."""

    nodes: list[onnx.NodeProto]
    producer: dict[str, int]
    inputs: list[str]
    dynamic: set[str]
    closure: list[set[int]] = field(default_factory=list)  # per layer: nodes that layers >= it need

    @classmethod
    def of(cls, model: onnx.ModelProto, targets: Sequence[str]) -> _Graph:
        graph = model.graph
        constant = {i.name for i in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in constant]
        nodes = list(graph.node)
        producer = {out: index for index, node in enumerate(nodes) for out in node.output if out}
        dynamic = set(inputs)
        for node in nodes:
            if any(name in dynamic for name in node.input):
                dynamic.update(node.output)
        walk = cls(nodes, producer, inputs, dynamic)
        needed: set[int] = set()
        for target in reversed(targets):
            needed = needed | walk.ancestors([target])
            walk.closure.insert(0, needed)
        return walk

    def ancestors(self, tensors: Sequence[str], stop: Sequence[str] = ()) -> set[int]:
        """Indices of the nodes that compute ``tensors`` (not going past ``stop``)."""
        found: set[int] = set()
        todo = [t for t in tensors if t not in stop]
        stop = set(stop)
        while todo:
            index = self.producer.get(todo.pop())
            if index is None or index in found:
                continue
            found.add(index)
            todo.extend(t for t in self.nodes[index].input if t and t not in stop)
        return found

    def cut(self, node: str, needed: set[int]) -> list[str]:
        """Data-dependent tensors computed before ``node`` that a ``needed`` node at or after it reads."""
        position = next(i for i, n in enumerate(self.nodes) if n.name == node)
        names: dict[str, None] = {}
        for index in sorted(needed):
            if index < position:
                continue
            for name in self.nodes[index].input:
                if name in self.dynamic and self.producer.get(name, -1) < position:
                    names[name] = None
        return list(names)

    def subgraph(self, model: onnx.ModelProto, inputs: dict[str, int], outputs: Sequence[str]) -> onnx.ModelProto:
        """``model`` cut down to the nodes computing ``outputs`` from ``inputs`` (name -> ONNX elem type)."""
        keep = sorted(self.ancestors(outputs, stop=list(inputs)))
        used = {name for index in keep for name in self.nodes[index].input}
        graph = helper.make_graph(
            [self.nodes[i] for i in keep], "adaround_inputs",
            [helper.make_tensor_value_info(name, dtype, None) for name, dtype in inputs.items() if name in used],
            [helper.make_empty_tensor_value_info(name) for name in outputs],
            [init for init in model.graph.initializer if init.name in used and init.name not in inputs])
        return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version,
                                 functions=model.functions)


@dataclass
class _Frontier:
    """Tensors of both models cut just before some layer, per batch; ``batches=None``: the data itself."""

    float_names: list[str]
    quant_names: list[str]
    batches: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] | None = None
    nbytes: int = 0


class InputStatistics:
    """Measures, layer after layer in graph order, the statistics of each layer's inputs in both models.

    Each measurement is one pass that runs only the part of each model between the current frontier
    and the layer: the frontier starts as the data itself and moves to the cut just before the
    layer just measured whenever the data-dependent tensors of that cut, for all batches and both
    models, fit ``cache_bytes`` (so the walk costs about one pass of each model in all); otherwise it
    stays where it is and the next measurement recomputes from there. At most two frontiers (the
    current one and the one being filled) are alive, each at most ``cache_bytes``.
    """

    def __init__(self, float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, layers: Sequence[RoundingLayer],
                 data: Dataset, *, max_patches: int = DEFAULT_MAX_PATCHES, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 seed: int = 0, progress: bool = False) -> None:
        if max_patches < 1:
            raise ConfigError(f"max_patches must be at least 1, got {max_patches}")
        self.layers, self.data = list(layers), data
        self.max_patches, self.cache_bytes, self.seed, self.progress = max_patches, cache_bytes, seed, progress
        self.float_model = float_model
        self.float_graph = _Graph.of(float_model, [layer.float_input for layer in self.layers])
        self.quant_graph = _Graph.of(qdq_model, [layer.quant_input for layer in self.layers])
        self.frontier = _Frontier(self.float_graph.inputs, self.quant_graph.inputs)
        self.next = 0
        self.passes = self.cached_passes = 0

    def measure(self, index: int, qdq_model: onnx.ModelProto) -> LayerStats:
        """Statistics of layer ``index`` (layers are measured in order) with the weights of ``qdq_model``."""
        if index < self.next:
            raise ValueError("InputStatistics measures the layers in graph order")
        self.next = index + 1
        layer = self.layers[index]
        later = index + 1 < len(self.layers)
        cut_f = self.float_graph.cut(layer.node, self.float_graph.closure[index + 1]) if later else []
        cut_q = self.quant_graph.cut(layer.node, self.quant_graph.closure[index + 1]) if later else []
        frontier = self.frontier
        run_f = _Runner(self.float_graph, self.float_model, frontier.float_names, [layer.float_input, *cut_f],
                        self._types(frontier, 0, self.float_model))
        run_q = _Runner(self.quant_graph, qdq_model, frontier.quant_names, [layer.quant_input, *cut_q],
                        self._types(frontier, 1, qdq_model))
        moved = set(cut_f + cut_q) - set(frontier.float_names + frontier.quant_names)
        caching = bool(later and self.cache_bytes > 0 and moved)
        new = _Frontier(cut_f, cut_q, [])
        stats = LayerStats.zeros(layer)
        rng = np.random.default_rng([self.seed, index])
        total = frontier.batches and len(frontier.batches) or self.data.num_batches
        for feeds_f, feeds_q in progress_bar(self._source(), desc=f"adaptive rounding: {layer.node}", total=total,
                                             enabled=self.progress):
            values_f, values_q = run_f(feeds_f), run_q(feeds_q)
            x_f, x_q = values_f[layer.float_input], values_q[layer.quant_input]
            if x_f.shape != x_q.shape:
                raise CalibrationError(f"adaptive rounding: the input of {layer.node} has shape {x_q.shape} "
                                       f"in the quantized model but {x_f.shape} in the float model")
            count = positions(layer, x_f.shape)
            picked = np.sort(rng.choice(count, size=min(self.rows_per_batch(layer), count), replace=False))
            _accumulate(stats, rows(layer, x_q, picked), rows(layer, x_f, picked))
            if caching:
                caching = self._keep(new, {n: values_f[n] for n in cut_f}, {n: values_q[n] for n in cut_q})
        if stats.rows == 0:
            raise CalibrationError("adaptive rounding: the calibration data yielded no samples")
        self.passes += 1
        self.cached_passes += frontier.batches is not None
        if caching:
            self.frontier = new
        return stats

    def rows_per_batch(self, layer: RoundingLayer) -> int:
        """Rows drawn per batch: ``max_patches``, or fewer where :data:`ROWS_PER_FEATURE` rows per
        statistic dimension (``2 * fan_in``) over all batches are reached sooner (depthwise layers)."""
        if not self.data.num_batches:
            return self.max_patches
        return min(self.max_patches, -(-ROWS_PER_FEATURE * 2 * layer.fan_in // self.data.num_batches))

    def _source(self) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        if self.frontier.batches is not None:
            yield from self.frontier.batches
            return
        for feeds in self.data:
            yield feeds, feeds

    def _keep(self, new: _Frontier, values_f: dict[str, np.ndarray], values_q: dict[str, np.ndarray]) -> bool:
        """Add one batch to the frontier being filled; ``False`` (and the frontier dropped) once it cannot fit."""
        size = sum(v.nbytes for v in values_f.values()) + sum(v.nbytes for v in values_q.values())
        expected = size * (self.data.num_batches or math.inf) if not new.batches else 0
        new.nbytes += size
        if new.nbytes > self.cache_bytes or expected > self.cache_bytes:
            new.batches = None
            return False
        new.batches.append((values_f, values_q))
        return True

    @staticmethod
    def _types(frontier: _Frontier, side: int, model: onnx.ModelProto) -> dict[str, int]:
        names = frontier.quant_names if side else frontier.float_names
        if frontier.batches is None:
            known = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
            return {name: known[name] for name in names}
        first = frontier.batches[0][side] if frontier.batches else {}
        return {name: helper.np_dtype_to_tensor_dtype(first[name].dtype) for name in names}


class _Runner:
    """One ONNX Runtime session computing ``outputs`` from frontier tensors; frontier tensors pass through."""

    def __init__(self, graph: _Graph, model: onnx.ModelProto, inputs: Sequence[str], outputs: Sequence[str],
                 types: dict[str, int]) -> None:
        self.inputs = list(inputs)
        self.computed = [name for name in dict.fromkeys(outputs) if name not in self.inputs]
        self.session = (create_session(graph.subgraph(model, {n: types[n] for n in self.inputs}, self.computed))
                        if self.computed else None)
        self.fed: list[str] = [] if self.session is None else [i.name for i in self.session.get_inputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = dict(feeds)
        if self.session is not None:
            values.update(zip(self.computed, run(self.session, {n: feeds[n] for n in self.fed}, self.computed)))
        return values


def _accumulate(stats: LayerStats, x_q: np.ndarray, x_f: np.ndarray) -> None:
    d = x_q - x_f
    if x_q.shape[0] > 1 and x_q.shape[2] <= _SMALL_GROUP and threadpool_limits is not None:
        # many small products: one multi-threaded BLAS call per group synchronises the threads each
        # time, up to 500x slower on a loaded machine; single-threaded BLAS is fast
        with threadpool_limits(limits=1, user_api="blas"):
            _add_products(stats, x_q, d)
    elif x_q.shape[0] > 1 and x_q.shape[2] <= _SMALL_GROUP:
        for total, a, b in ((stats.qq, x_q, x_q), (stats.dq, d, x_q), (stats.dd, d, d)):
            total += np.einsum("gpi,gpj->gij", a, b)  # numpy's own loop
    else:
        _add_products(stats, x_q, d)
    stats.rows += x_q.shape[1]


def _add_products(stats: LayerStats, x_q: np.ndarray, d: np.ndarray) -> None:
    stats.qq += np.matmul(x_q.transpose(0, 2, 1), x_q)
    stats.dq += np.matmul(d.transpose(0, 2, 1), x_q)
    stats.dd += np.matmul(d.transpose(0, 2, 1), d)


# --------------------------------------------------------------------------- optimisation


@dataclass
class _Problem:
    """One layer's rounding problem in canonical form (float64 unless noted)."""

    w: np.ndarray          # float weights [g, c, k]
    step: np.ndarray       # scale where the rounding is free, else 0
    q_down: np.ndarray     # floor(w / s) + zp where free, ORT's q elsewhere (integers as float64)
    q_nearest: np.ndarray  # ORT's integers
    zero: np.ndarray
    scale: np.ndarray
    free: np.ndarray       # bool
    rest: np.ndarray       # fractional part of w / s (the initial h)
    h_qq: np.ndarray       # E[x_q x_q^T]          [g, k, k]
    h_dq: np.ndarray       # E[(x_q - x_f) x_q^T]  [g, k, k]
    h_dd: np.ndarray       # E[(x_q - x_f)(x_q - x_f)^T]

    def delta(self, q: np.ndarray) -> np.ndarray:
        return self.scale * (q - self.zero) - self.w

    def loss(self, q: np.ndarray) -> float:
        """``E||W_q x_q - W x_f||^2`` for integer weights ``q`` (canonical)."""
        d = self.delta(q)
        return float(np.sum((d @ self.h_qq) * d) + 2 * np.sum((self.w @ self.h_dq) * d)
                     + np.sum((self.w @ self.h_dd) * self.w))

    def energy(self) -> float:
        """``E||W x_f||^2``: the float output's energy."""
        h_ff = self.h_qq - self.h_dq - self.h_dq.transpose(0, 2, 1) + self.h_dd
        return float(np.sum((self.w @ h_ff) * self.w))


def _problem(layer: RoundingLayer, weight: QuantizedWeight, float_weight: np.ndarray, stats: LayerStats) -> _Problem:
    canon = lambda a: to_canonical(layer, np.asarray(a, np.float64))  # noqa: E731
    w, scale = canon(float_weight), canon(_broadcast(weight, weight.scale))
    zero, q = canon(_broadcast(weight, weight.zero_point)), canon(weight.q)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(scale > 0, w / np.where(scale > 0, scale, 1.0), 0.0)
    down = np.floor(ratio) + zero
    low, high = float(weight.q.min()), float(weight.q.max())
    free = ((ratio > np.floor(ratio)) & (scale > 0) & (down >= low) & (down + 1 <= high)
            & ((q == down) | (q == down + 1)))
    rows = max(stats.rows, 1)
    return _Problem(w=w, step=np.where(free, scale, 0.0), q_down=np.where(free, down, q), q_nearest=q, zero=zero,
                    scale=scale,
                    free=free, rest=np.where(free, ratio - np.floor(ratio), 0.0), h_qq=stats.qq / rows,
                    h_dq=stats.dq / rows, h_dd=stats.dd / rows)


def _rectified(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h(V)`` and ``dh/dV``."""
    sig = 1.0 / (1.0 + np.exp(-v))
    raw = sig * (ZETA - GAMMA) + GAMMA
    inside = (raw > 0) & (raw < 1)
    return np.clip(raw, 0.0, 1.0), np.where(inside, (ZETA - GAMMA) * sig * (1 - sig), 0.0)


def _beta(iteration: int, iterations: int) -> float:
    start = WARM_START * iterations
    progress = (iteration - start) / max(iterations - start, 1)
    high, low = BETA_RANGE
    return low + 0.5 * (high - low) * (1 + math.cos(progress * math.pi))


def _quadratic(h_qq: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """``x -> x @ H`` in float32 and the rank it uses: a rank-``r`` factor of ``H`` when ``r <= k / 2`` suffices.

    The eigenvalues dropped sum to at most :data:`RANK_TOLERANCE` of the trace, so the optimised
    loss moves by at most that fraction of ``E||dW x||^2`` for rounding errors spread evenly over
    directions; the adoption test uses the exact ``H``.
    """
    k = h_qq.shape[-1]
    if h_qq.shape[0] == 1 and k >= LOW_RANK_MIN_FAN_IN:
        values, vectors = np.linalg.eigh(h_qq[0])
        values = np.clip(values, 0.0, None)
        keep = np.cumsum(values) > RANK_TOLERANCE * values.sum()  # ascending: drop the smallest
        if keep.sum() <= k // 2:
            factor = (vectors[:, keep] * np.sqrt(values[keep])).astype(np.float32)
            back = np.ascontiguousarray(factor.T)
            return (lambda x: (x @ factor) @ back), factor.shape[1]
    dense = h_qq.astype(np.float32)
    return (lambda x: x @ dense), k


def optimize_rounding(problem: _Problem, iterations: int, deadline: float = math.inf) -> np.ndarray | None:
    """AdaRound on one layer: the chosen integer weights (canonical), or ``None`` past ``deadline``."""
    rest = np.clip(problem.rest, 1e-6, 1 - 1e-6)
    v = (-np.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).astype(np.float32)
    step = problem.step.astype(np.float32)
    times_h, _ = _quadratic(problem.h_qq)
    # d loss / d W_soft = 2 (dW @ H_qq + W @ H_dq), dW = W_soft - W = delta(q_down) + step * h
    fixed = (2 * (problem.delta(problem.q_down) @ problem.h_qq + problem.w @ problem.h_dq)).astype(np.float32)
    m, s = np.zeros_like(v), np.zeros_like(v)
    b1, b2 = ADAM_BETAS
    warm = int(WARM_START * iterations)
    for t in range(1, iterations + 1):
        if t % _CHECK_EVERY == 0 and time.perf_counter() > deadline:
            return None
        h, dh = _rectified(v)
        grad_h = (fixed + 2 * times_h(step * h)) * step
        if t > warm:
            beta = _beta(t, iterations)
            centred = 2 * h - 1
            grad_h -= REG_WEIGHT * 2 * beta * np.sign(centred) * np.abs(centred) ** (beta - 1)
        grad = grad_h * dh
        m = b1 * m + (1 - b1) * grad
        s = b2 * s + (1 - b2) * grad * grad
        v -= LEARNING_RATE * (m / (1 - b1**t)) / (np.sqrt(s / (1 - b2**t)) + 1e-8)
    return problem.q_down + (problem.free & (v >= 0))


# --------------------------------------------------------------------------- the pass


def adaround(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, data: Dataset, *,
             iterations: int = DEFAULT_ITERATIONS, time_budget_s: float | None = None,
             max_patches: int = DEFAULT_MAX_PATCHES, cache_bytes: int = DEFAULT_CACHE_BYTES, seed: int = 0,
             progress: bool = False) -> tuple[onnx.ModelProto, PassRecord]:
    """Choose the rounding of every quantized weight layer on ``data``; returns a new QDQ model.

    Layers are rounded one after the other in graph order; each is measured with the rounding
    already chosen upstream in place (see :class:`InputStatistics` for what each pass runs).

    Args:
        float_model: the reference float model (same node names as ``qdq_model``; not a bias-corrected
            copy: its layer outputs are the targets); not modified.
        qdq_model: the QDQ model ORT's rewrite wrote (nearest rounding); not modified.
        data: calibration batches (iterated again whenever no cached frontier serves a layer).
        iterations: Adam steps per layer.
        time_budget_s: wall-time limit of the pass (``None``: none); layers not finished in time
            keep nearest rounding.
        max_patches: input rows per batch and layer that enter the statistics (bounds memory and
            the statistics' cost; a Conv's rows are random output positions).
        cache_bytes: bound of the cached tensors between layer passes (0: every pass starts from
            the data).
        seed: seed of the row sampling.
        progress: progress bars on stderr (one over the layers, one per layer pass).

    Returns:
        The QDQ model with the chosen integer weights (``qdq_model`` itself when nothing changed) and
        the :class:`PassRecord`: ``details["nodes"]`` holds per layer the relative reconstruction
        error ``E||W_q x_q - W x_f||^2 / E||W x_f||^2`` on the calibration data with nearest and
        with adaptive rounding, whether the latter was adopted, the fraction of weights rounded the
        other way and the seconds spent; ``details["kept_nearest"]`` the layers the time budget
        left with nearest rounding; ``details["skipped"]`` the layers that cannot be rounded.
    """
    start = time.perf_counter()
    if iterations < 1:
        raise ConfigError(f"iterations must be at least 1, got {iterations}")
    deadline = math.inf if time_budget_s is None else start + time_budget_s
    layers, skipped = find_layers(float_model, qdq_model)
    quantized = read_quantized_weights(qdq_model)
    float_weights = _float_weights(float_model, layers)
    current, nodes, kept = qdq_model, {}, []
    inputs = InputStatistics(float_model, qdq_model, layers, data, max_patches=max_patches, cache_bytes=cache_bytes,
                             seed=seed, progress=progress) if layers else None
    for index, layer in enumerate(progress_bar(layers, desc="adaptive rounding", total=len(layers),
                                               enabled=progress, unit="layer")):
        if time.perf_counter() > deadline:
            kept.append(layer.node)
            continue
        began = time.perf_counter()
        weight = quantized[layer.node]
        problem = _problem(layer, weight, float_weights[layer.node], inputs.measure(index, current))
        q = optimize_rounding(problem, iterations, deadline)
        if q is None:
            kept.append(layer.node)
            continue
        nodes[layer.node] = entry = _figures(problem, q, time.perf_counter() - began)
        logger.debug("adaptive rounding %s: relative error %.3g -> %.3g (%s, %.1f s)", layer.node,
                     entry["relative_error_nearest"], entry["relative_error_adaptive"],
                     "adopted" if entry["adopted"] else "kept nearest", entry["seconds"])
        if entry["adopted"]:
            new = from_canonical(layer, q, weight.q.shape).astype(weight.q.dtype)
            current = replace_quantized_weights(current, {weight.initializer: new})
    details = _details(nodes, skipped, kept, iterations, max_patches)
    details.update(passes=inputs.passes if inputs else 0, cached_passes=inputs.cached_passes if inputs else 0)
    record = PassRecord("adaptive_rounding", _summary(details), [n for n, e in nodes.items() if e["adopted"]],
                        details, time.perf_counter() - start)
    logger.info("%s (%.1f s)", record.summary, record.seconds)
    return current, record


def _float_weights(model: onnx.ModelProto, layers: Sequence[RoundingLayer]) -> dict[str, np.ndarray]:
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    return {layer.node: numpy_helper.to_array(inits[nodes[layer.node].input[1]]) for layer in layers}


def _figures(problem: _Problem, q: np.ndarray, seconds: float) -> dict:
    """Per-layer figures; adaptive rounding is adopted only where it beats nearest on the statistics."""
    nearest = problem.q_nearest
    energy = max(problem.energy(), 1e-30)
    before, after = problem.loss(nearest), problem.loss(q)
    free = int(problem.free.sum())
    return {"relative_error_nearest": before / energy, "relative_error_adaptive": after / energy,
            "adopted": bool(after < before), "weights": int(problem.w.size), "free": free,
            "flipped": float(np.mean(q[problem.free] != nearest[problem.free])) if free else 0.0,
            "seconds": seconds}


def _details(nodes: dict[str, dict], skipped: dict[str, str], kept: list[str], iterations: int,
             max_patches: int) -> dict:
    details: dict = {"nodes": nodes, "skipped": skipped, "kept_nearest": kept,
                     "iterations": iterations, "max_patches": max_patches}
    adopted = [e for e in nodes.values() if e["adopted"]]
    if adopted:
        details["mean_relative_error_nearest"] = float(np.mean([e["relative_error_nearest"] for e in adopted]))
        details["mean_relative_error_adaptive"] = float(np.mean([e["relative_error_adaptive"] for e in adopted]))
    return details


def _summary(details: dict) -> str:
    adopted = sum(e["adopted"] for e in details["nodes"].values())
    text = f"adaptive rounding on {adopted} layer(s)"
    if "mean_relative_error_nearest" in details:
        text += (f": mean relative reconstruction error {details['mean_relative_error_nearest']:.3g} -> "
                 f"{details['mean_relative_error_adaptive']:.3g}")
    if details["kept_nearest"]:
        text += f"; {len(details['kept_nearest'])} layer(s) kept nearest rounding (time budget)"
    return text + f" ({details['passes']} layer pass(es))"
