"""Per-tensor range search (``method="auto"``): the estimator whose range hurts the consumers least.

Contract: :func:`search_ranges` calibrates like :func:`~onnxq.calibration.runner.collect_ranges`
(one streamed pass over the data, a 2048-bin :class:`HistogramObserver` per tensor), computes the
MinMax, percentile, entropy and MSE ranges of each tensor from that one histogram, and keeps the
one with the smallest estimated error *where it matters*: at the outputs of the nodes that read
the tensor. Each consumer node runs alone in ONNX Runtime on a bounded cache of real inputs (the
tapped activations of the first batches: at most ``samples`` samples and ``cache_bytes``, default
64 samples / 256 MiB; the only memory beyond one batch), once with the float tensor and once per
candidate with the tensor fake-quantized exactly as ORT's QuantizeLinear/DequantizeLinear will
(scale, zero point, rounding, integer limits). A sample can miss the rare outliers that decide
whether clipping pays, so the sample only measures how much the consumers amplify each
candidate's error (output error / tensor error on the sample); the expected tensor error over
all the data comes from the histogram (:func:`~onnxq.calibration.estimators.quantization_error`),
and the score is their product. Where no cache fits or a consumer cannot run alone (a subgraph,
an input that is not cached), the histogram term alone decides (weighting it by the consumers'
weight norms would scale every candidate of one tensor alike and could not change its choice).
The data is read once; the model is not modified; the returned :class:`Ranges` records the
winning estimator per tensor in ``chosen``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from .._progress import progress as progress_bar
from ..config import CalibrationMethod, QuantConfig, QuantType
from ..data import Dataset
from ..engine import Runner, StreamBatch, stream
from ..errors import CalibrationError, ModelError
from ..runtime import create_session, run
from .observers import AUTO_CANDIDATES, Grid, HistogramObserver, activation_grid, compute_range, histogram_errors
from .ranges import Ranges, TensorRange
from .tapping import tap

logger = logging.getLogger(__name__)

__all__ = ["CANDIDATES", "Choice", "Grid", "Search", "activation_grid", "auto_settings", "fake_quantize", "search",
           "search_ranges"]

#: The estimators ``auto`` chooses among, in order of preference when two give the same range.
CANDIDATES: tuple[str, ...] = AUTO_CANDIDATES
#: Most samples (of the first batches) cached for the consumer evaluation.
DEFAULT_SAMPLES = 64
#: Upper bound of the cached activations (all tensors together).
DEFAULT_CACHE_BYTES = 256 << 20
#: Ranges whose ends differ by less than this share of their width count as the same candidate.
SAME_RANGE = 2e-3


@dataclass(frozen=True)
class Choice:
    """What the search decided for one tensor.

    Attributes:
        estimator: the winning estimator (one of :data:`CANDIDATES`).
        low: lower end of the chosen range.
        high: upper end of the chosen range.
        errors: estimator -> its score (lower is better); an estimator whose range (nearly) equals an
            earlier one's is left out.
        scorer: ``"consumers"`` (relative error of the consumers' outputs per unit of tensor error,
            measured on the cached sample, times the expected tensor error over all the data),
            ``"histogram"`` (the expected squared error of the tensor alone) or ``"single"`` (every
            estimator gave the same range).
    """

    estimator: str
    low: float
    high: float
    errors: dict[str, float] = field(default_factory=dict)
    scorer: str = "consumers"


@dataclass
class Search:
    """The ranges ``auto`` chose and why (one :class:`Choice` per tensor)."""

    ranges: Ranges
    choices: dict[str, Choice]


def auto_settings(config: QuantConfig, *, samples: int = DEFAULT_SAMPLES, cache_bytes: int = DEFAULT_CACHE_BYTES,
                  scorer: str = "consumers") -> dict[str, float | int | str]:
    """The settings that change ``auto`` ranges (the calibration cache key): every candidate's and the search's."""
    return {"method": "auto", "num_bins": config.num_bins, "percentile": config.percentile,
            "activation_type": config.activation_type.value, "search_samples": samples,
            "search_cache_bytes": cache_bytes, "search_scorer": scorer}


def fake_quantize(values: np.ndarray, grid: Grid) -> np.ndarray:
    """``DequantizeLinear(QuantizeLinear(values))`` on ``grid``, in the dtype of ``values``."""
    scale = np.float32(grid.scale)
    q = np.rint(values.astype(np.float32) / scale) + np.float32(grid.zero_point)
    np.clip(q, grid.qmin, grid.qmax, out=q)
    return ((q - np.float32(grid.zero_point)) * scale).astype(values.dtype)


def search_ranges(model: onnx.ModelProto, data: Dataset, tensors: Sequence[str], config: QuantConfig, *,
                  progress: bool = False, samples: int = DEFAULT_SAMPLES,
                  cache_bytes: int = DEFAULT_CACHE_BYTES, scorer: str = "consumers") -> Ranges:
    """Calibrate ``tensors`` with, per tensor, the estimator whose range its consumers tolerate best.

    Args:
        model: the (prepared) float model.
        data: calibration batches.
        tensors: names of the tensors to calibrate.
        config: supplies ``num_bins``, ``percentile`` and ``activation_type`` (the grid).
        progress: progress bars on stderr.
        samples: most samples (whole first batches, or the first samples of the first batch)
            cached for the consumer evaluation; 0 scores with the histogram alone.
        cache_bytes: most bytes the cached activations may take.
        scorer: ``"consumers"`` (default) or ``"histogram"`` (the proxy for every tensor).

    Returns:
        Ranges with ``method="auto"`` and ``chosen``: tensor -> winning estimator.

    Raises:
        CalibrationError: the data yielded no samples, or an argument is invalid.
    """
    return search(model, data, tensors, config, progress=progress, samples=samples,
                  cache_bytes=cache_bytes, scorer=scorer).ranges


def search(model: onnx.ModelProto, data: Dataset, tensors: Sequence[str], config: QuantConfig, *,
           progress: bool = False, samples: int = DEFAULT_SAMPLES, cache_bytes: int = DEFAULT_CACHE_BYTES,
           scorer: str = "consumers") -> Search:
    """:func:`search_ranges` with the per-tensor :class:`Choice` records (errors of every candidate)."""
    if scorer not in ("consumers", "histogram"):
        raise CalibrationError(f"scorer must be 'consumers' or 'histogram', got {scorer!r}")
    if samples < 0 or cache_bytes < 0:
        raise CalibrationError("samples and cache_bytes must be non-negative")
    tensors = list(dict.fromkeys(tensors))
    settings = auto_settings(config, samples=samples, cache_bytes=cache_bytes, scorer=scorer)
    if not tensors:
        return Search(Ranges(tensors={}, method="auto", settings=settings), {})
    budget = samples if scorer == "consumers" else 0
    observers, cache, count = _calibrate(model, data, tensors, config, samples=budget, cache_bytes=cache_bytes,
                                         progress=progress)
    configs = {name: replace(config, method=CalibrationMethod(name)) for name in CANDIDATES}
    evaluator = _Consumers(model, cache) if cache else None
    choices: dict[str, Choice] = {}
    for name in progress_bar(tensors, desc="choosing ranges", total=len(tensors), enabled=progress):
        observer = observers[name]
        if observer.count == 0:
            logger.debug("tensor %s saw no finite float values; left out of the ranges", name)
            continue
        choices[name] = _choose(name, observer, configs, config.activation_type, evaluator)
    ranges = Ranges(tensors={n: TensorRange(c.low, c.high) for n, c in choices.items()}, method="auto",
                    samples=count, settings=settings, chosen={n: c.estimator for n, c in choices.items()})
    _log_summary(choices)
    return Search(ranges, choices)


# --------------------------------------------------------------------------------------------
# the one pass over the data


def _calibrate(model: onnx.ModelProto, data: Dataset, tensors: list[str], config: QuantConfig, *,
               samples: int, cache_bytes: int, progress: bool
               ) -> tuple[dict[str, HistogramObserver], list[dict[str, np.ndarray]], int]:
    """Histograms of ``tensors`` over all of ``data``, and the cached activations of the first batches.

    The cache also holds the other activation inputs of the tensors' consumers, so that each
    consumer can run alone.
    """
    extra = _consumer_inputs(model, tensors) if samples else []
    tapped = tensors + extra
    runner = Runner.create(tap(model, tapped), tapped)
    observers = {name: HistogramObserver(config.num_bins) for name in tensors}
    cache = _SampleCache(samples, cache_bytes)

    def update(batch: StreamBatch) -> None:
        values = batch.outputs[0]
        for name in tensors:
            if values[name].dtype.kind == "f":
                observers[name].update(values[name])
        cache.offer(runner.session, batch.inputs, tapped, [values[n] for n in tapped], batch.samples)

    count = stream([runner], data, update, desc="calibrating", progress=progress).samples
    if count == 0:
        raise CalibrationError("the calibration data yielded no samples")
    if samples and not cache.batches:
        logger.info("auto ranges: one sample of activations exceeds the %.0f MiB cache; "
                    "ranges are chosen from the histograms only", cache_bytes / 2**20)
    logger.debug("auto ranges: %d sample(s) cached, %.1f MiB", cache.samples, cache.nbytes / 2**20)
    return observers, cache.batches, count


class _SampleCache:
    """The tapped activations of the first whole batches, up to ``samples`` samples and ``cache_bytes``.

    When the first batch alone is too large (or has more than ``samples`` samples), its first
    samples are run again on their own and cached instead; caching stops at the first batch that
    does not fit. Whole batches are kept as they are, so no tensor's batch axis has to be guessed.
    """

    def __init__(self, samples: int, cache_bytes: int) -> None:
        self.limit, self.cache_bytes = samples, cache_bytes
        self.batches: list[dict[str, np.ndarray]] = []
        self.samples, self.nbytes = 0, 0
        self.open = samples > 0

    def offer(self, session, feeds: Mapping[str, np.ndarray], names: list[str], outputs: list[np.ndarray],
              batch: int) -> None:
        """Keep this batch's activations when they fit; otherwise stop caching."""
        if not self.open:
            return
        size = sum(o.nbytes for o in outputs) + sum(v.nbytes for k, v in feeds.items() if k not in names)
        if self.samples + batch <= self.limit and self.nbytes + size <= self.cache_bytes:
            self._keep(dict(zip(names, outputs)), feeds, batch, size)
            return
        self.open = False
        if self.batches or batch <= 1:
            return
        keep = min(self.limit, batch - 1, int(self.cache_bytes // (size / batch)))
        if keep >= 1:  # run the first samples again rather than guess each tensor's batch axis
            inputs = {k: (v[:keep] if v.ndim and len(v) == batch else v) for k, v in feeds.items()}
            values = run(session, inputs, names)
            self._keep(dict(zip(names, values)), inputs, keep, sum(v.nbytes for v in values))

    def _keep(self, values: dict[str, np.ndarray], feeds: Mapping[str, np.ndarray], batch: int, size: int) -> None:
        values.update({k: v for k, v in feeds.items() if k not in values})
        self.batches.append(values)
        self.samples += batch
        self.nbytes += size


def _consumer_inputs(model: onnx.ModelProto, tensors: list[str]) -> list[str]:
    """Activation inputs of the tensors' consumers that are not among ``tensors`` (to cache them too)."""
    wanted, constant = set(tensors), {i.name for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    extra: dict[str, None] = {}
    for node in model.graph.node:
        if wanted.intersection(node.input):
            for name in node.input:
                if name and name not in wanted and name not in constant and name not in graph_inputs:
                    extra[name] = None
    return list(extra)


# --------------------------------------------------------------------------------------------
# choosing


def _candidates(observer: HistogramObserver, configs: Mapping[str, QuantConfig]) -> dict[str, tuple[float, float]]:
    """Estimator -> range, leaving out a range (nearly) equal to one an earlier estimator gave.

    Two ranges whose ends differ by less than ``SAME_RANGE`` of their width quantize alike
    (``[0, 5.99]`` and ``[0, 6]`` after a ReLU6); evaluating both would only cost time.
    """
    found: dict[str, tuple[float, float]] = {}
    for name, cfg in configs.items():
        low, high = compute_range(observer, cfg)
        tolerance = SAME_RANGE * (high - low)
        if not any(abs(low - a) <= tolerance and abs(high - b) <= tolerance for a, b in found.values()):
            found[name] = (low, high)
    return found


def _choose(name: str, observer: HistogramObserver, configs: Mapping[str, QuantConfig],
            activation_type: QuantType, evaluator: _Consumers | None) -> Choice:
    """The candidate with the smallest estimated consumer error (histogram proxy when consumers cannot run).

    The consumers run on a sample, which may miss the rare outliers that decide whether clipping
    pays. So the sample measures how much the consumers amplify each candidate's error (output
    error / tensor error on the sample), and the histogram of all the data says how much error
    the candidate makes: score = amplification x expected tensor error over all the data.
    """
    candidates = _candidates(observer, configs)
    if len(candidates) == 1:
        estimator, (low, high) = next(iter(candidates.items()))
        return Choice(estimator, low, high, {}, "single")
    grids = {k: activation_grid(lo, hi, activation_type) for k, (lo, hi) in candidates.items()}
    expected = histogram_errors(observer, candidates, activation_type)
    measured = evaluator.errors(name, grids) if evaluator is not None else None
    if measured is not None and all(tensor_error > 0.0 for _, tensor_error in measured.values()):
        errors = {k: output_error / tensor_error * expected[k] for k, (output_error, tensor_error) in measured.items()}
        scorer = "consumers"
    else:
        errors, scorer = expected, "histogram"
    best = min(errors, key=lambda k: (errors[k], CANDIDATES.index(k)))
    low, high = candidates[best]
    return Choice(best, low, high, errors, scorer)


class _Consumers:
    """Runs the consumers of a tensor alone on the cached batches and measures their output error."""

    def __init__(self, model: onnx.ModelProto, batches: list[dict[str, np.ndarray]]) -> None:
        self.model, self.batches = model, batches
        self.initializers = {i.name: i for i in model.graph.initializer}
        self.graph_outputs = {o.name for o in model.graph.output}
        self.readers: dict[str, list[int]] = {}
        for index, node in enumerate(model.graph.node):
            for name in dict.fromkeys(node.input):
                if name:
                    self.readers.setdefault(name, []).append(index)
        self.sessions: dict[int, object | None] = {}

    def errors(self, tensor: str, grids: Mapping[str, Grid]) -> dict[str, tuple[float, float]] | None:
        """Candidate -> (relative output error summed over the consumers, mean squared tensor error).

        ``None`` when the tensor is not cached or one of its consumers cannot run alone. A graph
        output (or a tensor nobody reads) counts itself as one consumer.
        """
        if any(tensor not in b or b[tensor].dtype.kind != "f" for b in self.batches):
            return None
        readers = self.readers.get(tensor, [])
        sessions = [self._session(i) for i in readers]
        if any(s is None for s in sessions):
            return None
        itself = tensor in self.graph_outputs or not readers
        outputs = {k: _Energies() for k in grids}      # per candidate: every consumer output's noise
        tensor_noise, tensor_count = dict.fromkeys(grids, 0.0), 0
        for batch in self.batches:
            values = batch[tensor]
            quantized = {k: fake_quantize(values, g) for k, g in grids.items()}
            for k, q in quantized.items():
                tensor_noise[k] += _energy(q - values)
                if itself:
                    outputs[k].add("", values, q)
            tensor_count += values.size
            for index, session in zip(readers, sessions):
                if not self._run_node(index, session, batch, tensor, quantized, outputs):
                    return None
        return {k: (outputs[k].relative(), tensor_noise[k] / max(tensor_count, 1)) for k in grids}

    def _run_node(self, index: int, session, batch: Mapping[str, np.ndarray], tensor: str,
                  quantized: Mapping[str, np.ndarray], outputs: Mapping[str, _Energies]) -> bool:
        """Add one node's output errors on one batch; ``False`` when ORT refuses to run it."""
        feeds = {i.name: batch[i.name] for i in session.get_inputs()}
        try:
            reference = run(session, feeds)
            for k, q in quantized.items():
                feeds[tensor] = q
                for position, (ref, out) in enumerate(zip(reference, run(session, feeds))):
                    outputs[k].add(f"{index}:{position}", ref, out)
        except ModelError as exc:
            logger.debug("auto ranges: node %s does not run alone (%s)", self.model.graph.node[index].name, exc)
            return False
        return True

    def _session(self, index: int):
        if index not in self.sessions:
            self.sessions[index] = self._build(self.model.graph.node[index])
        return self.sessions[index]

    def _build(self, node: onnx.NodeProto):
        """A session running ``node`` alone (``None`` when it has a subgraph or an input is not cached)."""
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return None
        inputs, constants = [], []
        first = self.batches[0]
        for name in dict.fromkeys(n for n in node.input if n):
            if name in self.initializers:
                constants.append(self.initializers[name])
            elif name in first:
                value = first[name]
                elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
                inputs.append(onnx.helper.make_tensor_value_info(name, elem, [None] * value.ndim))
            else:
                return None
        outputs = [onnx.helper.make_empty_tensor_value_info(n) for n in node.output if n]
        graph = onnx.helper.make_graph([node], "consumer", inputs, outputs, constants)
        single = onnx.helper.make_model(graph, opset_imports=list(self.model.opset_import),
                                        functions=list(self.model.functions))
        single.ir_version = self.model.ir_version
        try:
            return create_session(single)
        except ModelError as exc:
            logger.debug("auto ranges: node %s cannot run alone (%s)", node.name, exc)
            return None


class _Energies:
    """Noise and signal energy per output, summed over batches."""

    def __init__(self) -> None:
        self.noise: dict[str, float] = {}
        self.signal: dict[str, float] = {}

    def add(self, key: str, reference: np.ndarray, actual: np.ndarray) -> None:
        if reference.dtype.kind != "f" or reference.size == 0:
            return
        self.noise[key] = self.noise.get(key, 0.0) + _energy(actual - reference)
        self.signal[key] = self.signal.get(key, 0.0) + _energy(reference)

    def relative(self) -> float:
        """Sum over the outputs of noise / signal (noise alone for an all-zero output)."""
        return sum(n / self.signal[k] if self.signal[k] > 0 else n for k, n in self.noise.items())


def _energy(values: np.ndarray) -> float:
    """``sum(values**2)``, squared in the array's precision and summed in float64."""
    return float(np.sum(np.square(values), dtype=np.float64))


def _log_summary(choices: Mapping[str, Choice]) -> None:
    counts: dict[str, int] = {}
    for choice in choices.values():
        counts[choice.estimator] = counts.get(choice.estimator, 0) + 1
    logger.info("auto ranges: %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no tensors")
