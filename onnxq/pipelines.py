"""One small pipeline per mode, and the one build step that the fallback re-uses.

Each pipeline takes a :class:`Job` (the prepared model, the checked data, the config) and returns
a :class:`Built`: the plan, the quantized model, the ranges, a :class:`Recipe` that rebuilds the
graph for another plan (the fallback calls it), and what every accuracy pass did. Nothing here
validates or reports: :mod:`onnxq.api` runs the fallback and validation once on what a pipeline
returns. Stages return new values; no plan or model is changed after it was built.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from . import rewrite
from .calibration.ranges import RangeCache, Ranges, TensorRange
from .calibration.runner import collect_ranges, range_settings
from .config import CalibrationMethod, Mode, QuantConfig
from .data import Dataset
from .engine import Stopwatch, timed
from .errors import CalibrationError
from .model import model_hash
from .passes import PassRecord
from .plan import QuantPlan, is_transformer, make_plan, refine_plan
from .plan_modes import plan_float16, plan_weight_only

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """The inputs every mode pipeline gets, checked before any long work.

    Attributes:
        prepared: the prepared float model (opset, shapes, ORT basic optimisation).
        config: the run's configuration.
        calibration: calibration batches, where the mode needs data.
        ranges: ranges given by the caller (static mode skips calibration).
        qat: the model already holds Q/DQ pairs (quantization-aware training).
        progress: progress bars on stderr.
        cache_dir: calibration cache folder.
        executor: runs calibration elsewhere (``onnxq.distributed.executor.DaskExecutor``), or ``None``.
        histograms: a dict the calibration pass fills with a histogram per calibrated tensor (for an
            HTML report; left empty when the ranges come from elsewhere), or ``None``.
    """

    prepared: onnx.ModelProto
    config: QuantConfig
    calibration: Dataset | None = None
    ranges: Ranges | None = None
    qat: bool = False
    progress: bool = False
    cache_dir: str | os.PathLike[str] | None = None
    executor: Any = None
    histograms: dict[str, Any] | None = None


@dataclass(frozen=True)
class Recipe:
    """How to turn a plan into a graph: the fallback rebuilds with the same model, ranges and weights.

    Attributes:
        model: the float model the plan refers to (smoothed / equalized / bias-corrected).
        ranges: calibrated ranges (static) or ``None``.
        config: the run's configuration.
        weights: node name -> integer weights chosen by adaptive rounding, re-applied to every build
            in which that node is still quantized with the same scales.
        qat: rewrite only the float part of a QAT model.
        unbiased: the model before bias correction: a node that a plan keeps float gets its own
            bias back (a corrected bias compensates quantized weights it no longer has).
    """

    model: onnx.ModelProto
    ranges: Ranges | None
    config: QuantConfig
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    qat: bool = False
    unbiased: onnx.ModelProto | None = None

    def build(self, plan: QuantPlan) -> onnx.ModelProto:
        """The quantized graph of ``plan`` (ORT's rewrite, then the chosen integer weights)."""
        work = onnx.ModelProto()
        work.CopyFrom(self.model)  # ORT's quantizers may change their input model
        if self.unbiased is not None:
            _restore_float_biases(work, self.unbiased, set(plan.nodes_to_quantize))
        if plan.mode != Mode.STATIC.value:
            return rewrite.quantize_dynamic(work, plan, self.config)
        if self.qat:  # the float part only; the model's own Q/DQ stay exactly as they are
            from .qat import quantize_rest

            model = quantize_rest(work, plan, self.ranges, self.config, rewrite.quantize_static)
        else:
            model = rewrite.quantize_static(work, plan, self.ranges, self.config)
        return _apply_weights(model, self.weights)


@dataclass
class Built:
    """What a mode pipeline produced.

    Attributes:
        plan: which nodes were quantized, with reasons.
        model: the quantized model.
        ranges: the activation ranges used (static mode).
        recipe: rebuilds the graph for another plan (``None``: the mode has no fallback).
        passes: what each accuracy pass did.
        timings: wall-clock seconds of the stages that ran (``calibrate``, ``passes``, ``rewrite``).
    """

    plan: QuantPlan
    model: onnx.ModelProto
    ranges: Ranges | None = None
    recipe: Recipe | None = None
    passes: list[PassRecord] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------- the pipelines


def static(job: Job) -> Built:
    """Calibrated QDQ: plan -> float passes -> calibration -> plan refinement -> rewrite -> weight passes."""
    config, model = job.config, job.prepared
    plan = make_plan(model, config, supported_op_types=rewrite.static_op_types())
    if job.qat:
        from .qat import exclude_qat_nodes

        plan = exclude_qat_nodes(plan, model)
    passes: list[PassRecord] = []
    stopwatch = Stopwatch()
    ranges = job.ranges
    if ranges is None:
        assert job.calibration is not None  # api.quantize checked it
        # float-equivalent passes change which values the tensors take: they run before calibration,
        # and only when we calibrate here (ranges passed in were made for the unchanged model)
        model, plan, ranges = _smooth(model, plan, job)  # ranges: when smoothing shared the calibration pass
        model = _equalize(model, job, passes)
        stopwatch.lap("passes")
        if config.io_type is not None:  # integer I/O needs the range of every float input/output
            from .rewrite.io_types import float_io_tensors

            plan = replace(plan, tensors_to_calibrate=plan.tensors_to_calibrate + [
                t for t in float_io_tensors(model) if t not in plan.tensors_to_calibrate])
        stopwatch.lap(None)
        if ranges is None:
            ranges = calibrate_ranges(model, plan, job.calibration, config, progress=job.progress,
                                      cache_dir=job.cache_dir, executor=job.executor, histograms=job.histograms)
    stopwatch.lap("calibrate" if job.ranges is None else None)
    plan = refine_plan(plan, model, ranges)
    recipe = Recipe(model, ranges, config, qat=job.qat)
    built: onnx.ModelProto | None = None
    if job.calibration is not None and not job.qat:
        recipe, built = _correct_biases(recipe, plan, job, passes)
        if config.weight_rounding == "adaptive":  # new integer weights: the final graph is built below
            recipe, built = _round_weights(recipe, plan, built, job, passes), None
        stopwatch.lap("passes")
    quantized = built if built is not None else recipe.build(plan)
    stopwatch.lap("rewrite" if built is None else None)  # else: the bias-correction pass rewrote it
    return Built(plan, quantized, ranges, recipe, passes, stopwatch.timings)


def dynamic(job: Job) -> Built:
    """Int8 weights, activations quantized by ORT at run time: no data, no ranges."""
    plan = make_plan(job.prepared, job.config, supported_op_types=rewrite.dynamic_op_types())
    recipe = Recipe(job.prepared, None, job.config)
    timings: dict[str, float] = {}
    with timed(timings, "rewrite"):
        quantized = recipe.build(plan)
    return Built(plan, quantized, None, recipe, timings=timings)


def float16(job: Job) -> Built:
    """float16 weights and activations through ORT's converter (no fallback: nothing is calibrated)."""
    plan = plan_float16(job.prepared, job.config, block_list=rewrite.default_block_list())
    timings: dict[str, float] = {}
    with timed(timings, "rewrite"):
        quantized = rewrite.quantize_float16(job.prepared, plan, job.config)
    return Built(plan, quantized, timings=timings)


def weight_only(job: Job) -> Built:
    """Block-wise int4/int8 MatMul weights (MatMulNBits); GPTQ reads the calibration data."""
    plan = plan_weight_only(job.prepared, job.config)
    timings: dict[str, float] = {}
    with timed(timings, "rewrite"):  # GPTQ's pass over the calibration data included
        quantized = rewrite.quantize_weight_only(job.prepared, plan, job.config, calibration=job.calibration)
    return Built(plan, quantized, timings=timings)


PIPELINES: dict[Mode, Callable[[Job], Built]] = {
    Mode.STATIC: static, Mode.DYNAMIC: dynamic, Mode.FLOAT16: float16, Mode.WEIGHT_ONLY: weight_only,
}


# ------------------------------------------------------------------------------- calibration


def calibrate_ranges(model: onnx.ModelProto, plan: QuantPlan, data: Dataset, config: QuantConfig, *,
                     progress: bool, cache_dir: str | os.PathLike[str] | None, executor: Any = None,
                     histograms: dict[str, Any] | None = None) -> Ranges:
    """The ranges of ``plan.tensors_to_calibrate``, from the cache when it holds them
    (calibrated by ``executor.collect_ranges`` when an executor is given: a Dask cluster)."""
    collect = executor.collect_ranges if executor is not None else collect_ranges
    if cache_dir is None and executor is None and histograms is not None:  # + the HTML report's histograms
        return collect(model, data, plan.tensors_to_calibrate, config, progress=progress, histograms=histograms)
    if cache_dir is None:  # hashing the model and every sample is only worth it for the cache
        return collect(model, data, plan.tensors_to_calibrate, config, progress=progress)
    cache = RangeCache(cache_dir)
    key_model, key_data = model_hash(model), data.fingerprint()
    if key_data is not None:
        cached = cache.get(key_model, key_data, range_settings(config))
        if cached is not None and all(t in cached for t in plan.tensors_to_calibrate):
            logger.info("calibration ranges loaded from the cache")
            return cached
    ranges = collect(model, data, plan.tensors_to_calibrate, config, progress=progress)
    ranges.model_hash, ranges.data_hash = key_model, key_data
    if key_data is not None:
        cache.put(ranges)
    return ranges


# ------------------------------------------------------------------------------- the passes


def _smooth(model: onnx.ModelProto, plan: QuantPlan, job: Job) -> tuple[onnx.ModelProto, QuantPlan, Ranges | None]:
    """SmoothQuant on transformer graphs (float-equivalent); a no-op when off or not a transformer.

    With MinMax calibration the smoothing statistics and the calibration share one pass over the data
    (:func:`_smooth_and_calibrate`), and the ranges come back too; otherwise they are ``None``.
    """
    config = job.config  # a QAT model arrives with smooth_alpha=None (api.quantize)
    if config.smooth_alpha is None or not (config.transformer_policy and is_transformer(model)):
        return model, plan, None
    from .smooth import smooth

    if (config.method is CalibrationMethod.MINMAX and not config.moving_average and job.cache_dir is None
            and job.executor is None and not config.equalization and not job.qat):
        return _smooth_and_calibrate(model, plan, job)
    return (*smooth(model, plan, job.calibration, alpha=config.smooth_alpha, progress=job.progress), None)


def _smooth_and_calibrate(model: onnx.ModelProto, plan: QuantPlan, job: Job
                          ) -> tuple[onnx.ModelProto, QuantPlan, Ranges | None]:
    """SmoothQuant and MinMax calibration in one pass over the calibration data.

    The pass runs the unsmoothed model: MinMax observers on every tensor to calibrate (reduced in the
    graph) and per-channel statistics of the activations to smooth. The range of a smoothed input
    ``X' = X * (1 / s)`` follows from the per-channel minima and maxima of ``X`` exactly (rounding
    is monotonic and ``1 / s > 0``); every other tensor keeps the name and, up to float32 rounding
    downstream of the rescaled MatMuls, the values it had before smoothing. A tensor the pass did
    not see is calibrated on the smoothed model in a second pass (none in practice).
    """
    from .calibration.observers import MinMaxObserver, compute_range, make_observer
    from .engine import TappedModel
    from .smooth import ChannelStats, smooth, smoothed_tensors, smoothing_targets

    config, data = job.config, job.calibration
    extra = []
    if config.io_type is not None:
        from .rewrite.io_types import float_io_tensors

        extra = float_io_tensors(model)
    stats = ChannelStats()
    observers, samples = TappedModel(model, list(plan.tensors_to_calibrate) + extra, reduce=True,
                                     keep=list(smoothing_targets(model, plan))).observe(
        data, lambda: make_observer(config), progress=job.progress, also=stats.update)
    smoothed, new_plan = smooth(model, plan, None, alpha=config.smooth_alpha, act_max=stats.abs_max)
    for scaled, (source, inverse) in smoothed_tensors(smoothed, new_plan).items():
        products = [stats.low[source].astype(inverse.dtype) * inverse,  # float32 products, as ORT's Mul
                    stats.high[source].astype(inverse.dtype) * inverse]
        finite = [p[np.isfinite(p)] for p in products]
        observers[scaled] = MinMaxObserver()
        if finite[0].size and finite[1].size:
            observers[scaled].update_extremes(float(finite[0].min()), float(finite[1].max()), 1)
    wanted = list(dict.fromkeys(list(new_plan.tensors_to_calibrate) + extra))
    missing = [t for t in wanted if t not in observers]
    if missing:
        logger.debug("calibrating %d tensor(s) of the smoothed model in a second pass", len(missing))
        observers.update(_collect_ranges_observers(smoothed, data, missing, config, job.progress))
    if samples == 0:
        raise CalibrationError("the calibration data yielded no samples")
    tensors = {t: TensorRange(*map(float, compute_range(observers[t], config))) for t in wanted if observers[t].count}
    return smoothed, new_plan, Ranges(tensors=tensors, method=config.method.value, samples=samples,
                                      settings=range_settings(config))


def _collect_ranges_observers(model: onnx.ModelProto, data: Dataset, tensors: list[str], config: QuantConfig,
                              progress: bool) -> dict[str, Any]:
    from .calibration.observers import make_observer
    from .engine import observe

    return observe(model, data, tensors, lambda: make_observer(config), reduce=True, progress=progress)[0]


def _equalize(model: onnx.ModelProto, job: Job, passes: list[PassRecord]) -> onnx.ModelProto:
    """Cross-layer equalization (float-equivalent) before calibration, when the config asks for it."""
    if not job.config.equalization or job.qat:
        return model
    from .passes.equalize import equalize

    model, record = _timed(lambda: equalize(model, data=job.calibration))
    passes.append(record)
    return model


def _correct_biases(recipe: Recipe, plan: QuantPlan, job: Job, passes: list[PassRecord]
                    ) -> tuple[Recipe, onnx.ModelProto | None]:
    """Fold the quantized weights' expected output error into the float biases.

    Returns the recipe of the corrected model and, when the pass's last rewrite (the one it verified)
    is the graph ``recipe.build(plan)`` would make, that graph: the pipeline does not build it twice.
    """
    asked = job.config.bias_correction
    if asked is False or (asked is None and is_transformer(recipe.model)):
        return recipe, None
    if asked is None and job.config.weight_rounding == "adaptive":
        return recipe, None  # adaptive rounding already removes the error; on top of it the correction costs accuracy
    from .passes.bias_correction import correct_biases

    build, last = _builder(recipe, plan), {}

    def remembered(model: onnx.ModelProto) -> onnx.ModelProto:
        last["model"], last["quantized"] = model, build(model)
        return last["quantized"]

    model, record = _timed(lambda: correct_biases(recipe.model, job.calibration, remembered, progress=job.progress))
    passes.append(record)
    corrected = replace(recipe, model=model, unbiased=recipe.model)
    # the same graph when the pass last rewrote this very model and no corrected node is kept float
    # (Recipe.build gives a float node its own bias back; a corrected node is always quantized here)
    same = last.get("model") is model and set(record.changed) <= set(plan.nodes_to_quantize)
    return corrected, last["quantized"] if same else None


def _round_weights(recipe: Recipe, plan: QuantPlan, nearest: onnx.ModelProto | None, job: Job,
                   passes: list[PassRecord]) -> Recipe:
    """Adaptive rounding: integer weights chosen on the calibration data, kept for every rebuild.
    ``nearest``: ``recipe.build(plan)`` if already built (by bias correction), else built here."""
    from .passes.adaround import adaround
    from .rewrite.weights import read_quantized_weights

    nearest = nearest if nearest is not None else recipe.build(plan)
    reference = recipe.unbiased if recipe.unbiased is not None else recipe.model  # the true float model
    rounded, record = _timed(lambda: adaround(reference, nearest, job.calibration,
                                              time_budget_s=job.config.rounding_seconds, progress=job.progress))
    weights = {node: w.q for node, w in read_quantized_weights(rounded).items()}
    passes.append(record)
    return replace(recipe, weights=weights)


def _restore_float_biases(model: onnx.ModelProto, unbiased: onnx.ModelProto, quantized: set[str]) -> None:
    """In place: every node outside ``quantized`` whose bias differs from ``unbiased`` gets the original
    bias back (zeros where bias correction added one)."""
    from onnx import numpy_helper

    original = {n.name: n for n in unbiased.graph.node}
    old_inits = {i.name: i for i in unbiased.graph.initializer}
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name in quantized or node.op_type not in ("Conv", "Gemm", "ConvTranspose") or len(node.input) < 3:
            continue
        bias, before = inits.get(node.input[2]), original.get(node.name)
        if bias is None or before is None:
            continue
        source = old_inits.get(before.input[2]) if len(before.input) > 2 and before.input[2] else None
        values = (numpy_helper.to_array(source) if source is not None
                  else np.zeros(tuple(bias.dims), onnx.helper.tensor_dtype_to_np_dtype(bias.data_type)))
        if not np.array_equal(values, numpy_helper.to_array(bias)):
            bias.CopyFrom(numpy_helper.from_array(values, bias.name))


def _builder(recipe: Recipe, plan: QuantPlan) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """``model -> quantized model`` with the recipe's ranges and config, for passes that re-quantize."""
    return lambda model: replace(recipe, model=model).build(plan)


def _timed(run: Callable[[], tuple[Any, PassRecord]]) -> tuple[Any, PassRecord]:
    start = time.perf_counter()
    value, record = run()
    if not record.seconds:
        record.seconds = time.perf_counter() - start
    logger.debug("%s: %s (%.1f s)", record.name, record.summary, record.seconds)
    return value, record


def _apply_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Put chosen integer weights back into a rebuilt graph, where the node is quantized as before."""
    if not weights:
        return model
    from .rewrite.weights import read_quantized_weights, replace_quantized_weights

    current = read_quantized_weights(model)
    new = {w.initializer: weights[node] for node, w in current.items()
           if node in weights and weights[node].shape == w.q.shape and weights[node].dtype == w.q.dtype}
    return replace_quantized_weights(model, new) if new else model
