"""The library entry points: ``quantize``, ``calibrate`` and ``QuantResult``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import pipelines, rewrite
from ._paths import check_output_folder
from .adapters import adapter_for_data, adapter_for_object, adapter_for_path, describe_inputs
from .calibration.ranges import Ranges
from .config import Mode, QuantConfig
from .data import Dataset, InputSpec, check_data, load_data
from .engine import sample_specs, timed
from .errors import AdapterError, ConfigError
from .evidence import Collected
from .latency import LatencyOptions
from .model import load_model, model_size, save_model
from .names import framework_names
from .plan import QuantPlan, make_plan
from .prepare import prepare
from .qat import is_prequantized
from .report import Report
from .summary import FrameworkSummary

logger = logging.getLogger(__name__)

@dataclass
class QuantResult:
    """A quantized model with the evidence of how it was made and how close it stays to float.

    Attributes:
        model: the quantized model (in memory; :meth:`save` writes it atomically).
        report: validation of the quantized model against the float one.
        plan: which nodes were quantized and which stayed float, with reasons.
        ranges: calibrated activation ranges (static mode), ``None`` for dynamic.
        float_model: the float ONNX model the run quantized (exported from a framework model, before
            preparation), for reports that compare against it without exporting it again.
        evidence: with ``quantize(..., evidence=True)``, the plots' data of an HTML report taken in
            the run's own calibration and validation passes (:class:`onnxq.evidence.Collected`).
    """

    model: onnx.ModelProto
    report: Report
    plan: QuantPlan
    ranges: Ranges | None = None
    source: str | None = None
    float_model: onnx.ModelProto | None = None
    evidence: Any = None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the quantized model atomically; refuses to overwrite the float model it came from."""
        return save_model(self.model, path, protect=[self.source] if self.source else [])


def calibrate(model: Any, calibration: Any, *, config: QuantConfig | None = None,
              progress: bool = False, cache_dir: str | os.PathLike[str] | None = None,
              example_inputs: Any = None, export_options: dict[str, Any] | None = None, client: Any = None) -> Ranges:
    """Calibrate the activation ranges that static quantization of ``model`` needs.

    Args:
        model: ONNX path or ModelProto, or a framework model exported by an adapter.
        calibration: anything :func:`onnxq.data.load_data` accepts (dict of arrays, .npz, folder, ...).
        config: quantization config (method, bins, percentile, samples, batch size).
        progress: show a progress bar.
        cache_dir: reuse / store ranges keyed by model hash + data hash + settings.
        example_inputs: export inputs for a framework model.
        export_options: adapter export options.
        client: calibrate on a Dask cluster (as for :func:`quantize`); the same ranges.
    """
    client = client if client is not None or config is None else config.executor
    if isinstance(client, str):  # a cluster for this call only
        return _on_cluster(client, calibrate, model, calibration, config=config, progress=progress,
                           cache_dir=cache_dir, example_inputs=example_inputs, export_options=export_options)
    config = config or QuantConfig()
    float_model, _ = resolve_model(model, example_inputs=example_inputs, data=calibration,
                                   export_options=export_options)
    calibration = resolve_data(calibration, [i.name for i in float_model.graph.input])
    prepared = prepare(float_model, config)
    plan = make_plan(prepared, config, supported_op_types=rewrite.static_op_types())
    data = _dataset(calibration, prepared, config)
    return pipelines.calibrate_ranges(prepared, plan, data, config, progress=progress, cache_dir=cache_dir,
                                      executor=_executor(client, calibration, None))


def _on_cluster(spec: str, entry: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``entry(*args, client=..., **kwargs)`` with a cluster opened for ``spec`` and closed after."""
    from .distributed.cluster import open_cluster

    with open_cluster(spec) as client:
        return entry(*args, client=client, **kwargs)


def _executor(client: Any, calibration: Any, evaluation: Any) -> Any:
    """The Dask executor of a run on ``client``, or ``None`` (in-process; Dask is not imported)."""
    if client is None:
        return None
    from .distributed.executor import DaskExecutor

    return DaskExecutor(client, calibration=calibration, evaluation=evaluation)


def quantize(model: Any, calibration: Any = None, *, config: QuantConfig | None = None,
             evaluation: Any = None, ranges: Ranges | None = None, progress: bool = False,
             cache_dir: str | os.PathLike[str] | None = None, latency: bool | LatencyOptions = True,
             threads: int | None = None, example_inputs: Any = None,
             export_options: dict[str, Any] | None = None, allow_pickle: bool = False,
             metric: Callable[[dict[str, Any], Any], float] | None = None, client: Any = None,
             evidence: bool = False) -> QuantResult:
    """Quantize a float model and validate it against the float model.

    Args:
        model: ONNX path or ModelProto (never modified), or a framework model / model file
            (``nn.Module``, ``.pt2``, Keras model, ``.keras``...) exported by an installed adapter.
        calibration: calibration data for static mode (anything ``load_data`` accepts).
        config: what to quantize and how; defaults to static U8S8 per-channel MinMax.
        evaluation: held-out data for the report; defaults to the calibration data.
        ranges: previously calibrated ranges (skips calibration).
        progress: progress bars on stderr.
        cache_dir: calibration cache folder.
        latency: measure float vs quantized latency in the report (``True``: the defaults; a
            :class:`~onnxq.latency.LatencyOptions` sets runs, batch and time budget).
        threads: ORT intra-op threads for the latency measurement.
        example_inputs: inputs for a framework model's export (default: taken from the
            calibration data by the adapter).
        export_options: adapter options (input/output names, dynamic axes, opset, ...).
        allow_pickle: let an adapter load pickled model files (runs code from the file).
        metric: a task metric ``fn(outputs, labels) -> float`` (higher is better) for the targets
            ``metric>=X`` and ``metric_drop<=X``; ``outputs`` maps output names to their values
            over the whole evaluation set.
        evidence: also take what an HTML report plots (calibration histograms, output scatter) in
            the run's own passes: ``QuantResult.evidence`` (see :func:`onnxq.evidence.html_report`).
        client: run calibration and validation on a Dask cluster (``pip install 'onnxq[dask]'``): a
            ``distributed.Client``, or ``"tcp://HOST:PORT"`` / ``"local:N"`` for a cluster opened and
            closed for this call (default: ``config.executor``). Same results as in-process.

    Returns:
        QuantResult with the quantized model, the plan and the validation report.
    """
    client = client if client is not None or config is None else config.executor
    if isinstance(client, str):  # a cluster for this call only
        return _on_cluster(client, quantize, model, calibration, config=config, evaluation=evaluation,
                           ranges=ranges, progress=progress, cache_dir=cache_dir, latency=latency, threads=threads,
                           example_inputs=example_inputs, export_options=export_options,
                           allow_pickle=allow_pickle, metric=metric)
    config = config or QuantConfig()
    if cache_dir is not None:  # before any work: a cache path that is a file fails here, not at the end
        check_output_folder(cache_dir, what="cache_dir")
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    float_model, export_notes = resolve_model(model, example_inputs=example_inputs, data=calibration,
                                              export_options=export_options, allow_pickle=allow_pickle)
    qat = is_prequantized(float_model)
    if qat and not config.qat_quantize_rest:
        return _pass_through(float_model, export_notes, config, source)
    if qat:  # QAT weights are DequantizeLinear outputs: nothing for SmoothQuant to rescale
        config = config.replace(smooth_alpha=None)
    _check_data_needs(config, calibration, ranges)
    input_names = [i.name for i in float_model.graph.input]
    calibration = resolve_data(calibration, input_names)
    evaluation = resolve_data(evaluation, input_names)
    # check every data source against the model's inputs before any long work starts
    # (preparing the model never changes its inputs)
    calib_data = _dataset(calibration, float_model, config) if _calibrates(config, ranges) else None
    eval_source = evaluation if evaluation is not None else calibration
    eval_data = _eval_dataset(eval_source, float_model, config)
    timings: dict[str, float] = {}  # seconds per stage, for the report's time line
    with timed(timings, "prepare"):
        prepared = prepare(float_model, config)

    executor = _executor(client, calibration, eval_source)
    collected = Collected() if evidence else None  # histograms in calibration, scatter in validation
    job = pipelines.Job(prepared, config, calib_data, ranges, qat=qat, progress=progress, cache_dir=cache_dir,
                        executor=executor, histograms=collected.histograms if collected else None)
    built = pipelines.PIPELINES[config.mode](job)
    timings.update(built.timings)
    final = _decide(float_model, prepared, built, calib_data, eval_data, config, timings=timings, threads=threads,
                    progress=progress, metric=metric, executor=executor)
    report = _final_report(float_model, prepared, built, final, eval_data, config, qat=qat, export_notes=export_notes,
                           timings=timings, progress=progress, latency=latency, threads=threads, executor=executor,
                           collected=collected, held_out=evaluation is not None or calibration is None)
    return QuantResult(model=final.model, report=report, plan=final.plan, ranges=built.ranges, source=source,
                       float_model=float_model, evidence=collected)


@dataclass
class _Decided:
    """The model a run returns, after the latency plan, integer I/O and the fallback.

    Attributes:
        plan: its plan.
        model: the quantized model (integer-I/O when ``io_type`` is set).
        float_ops: its compute nodes that run in float (static mode).
        notes: notes for the report.
        tuning: what the fallback did (``None`` without a target).
    """

    plan: QuantPlan
    model: onnx.ModelProto
    float_ops: list[Any]
    notes: list[str]
    tuning: Any = None


def _decide(float_model: onnx.ModelProto, prepared: onnx.ModelProto, built: pipelines.Built,
            calib_data: Dataset | None, eval_data: Dataset | None, config: QuantConfig, *, timings: dict[str, float],
            threads: int | None, progress: bool, metric: Callable[[dict[str, Any], Any], float] | None,
            executor: Any) -> _Decided:
    """The steps after a mode pipeline: latency plan (``optimize``), integer I/O and float-node analysis
    (static mode), then the accuracy fallback (``target``)."""
    plan, quantized = built.plan, built.model
    notes = list(plan.notes)
    if config.optimize != "accuracy" and config.mode is Mode.STATIC and calib_data is not None and built.recipe:
        from .profile import latency_plan  # keep float the nodes whose int8 kernel is slower (issue 13)

        with timed(timings, "latency plan"):
            first = next(iter(calib_data.batches()))[0]
            plan, quantized, decided = latency_plan(prepared, plan, quantized, first, setting=config.optimize,
                                                    rebuild=built.recipe.build, ranges=built.ranges, threads=threads)
        notes += decided.notes
    elif config.optimize != "accuracy":
        notes.append(f"optimize={config.optimize}: needs static mode and a calibration batch to profile; not applied")
    float_ops: list[Any] = []
    integer_notes: list[str] = []
    if config.mode is Mode.STATIC:
        quantized, float_ops, integer_notes = _integer_steps(quantized, built.ranges, config)
        notes += integer_notes
    tuning = None
    if config.target is not None:  # keep the most harmful nodes float until the target holds
        with timed(timings, "tune"):
            tuning, io_notes = _fallback(float_model, replace(built, plan=plan), quantized, eval_data, config,
                                         progress=progress, metric=metric, executor=executor)
        if tuning.model is not quantized:
            plan, quantized = tuning.plan, tuning.model
            float_ops = _float_ops(quantized, config)
            if config.io_type is not None:  # the boundary notes of the model returned, not the first one
                notes = [n for n in notes if n not in integer_notes] + _sixteen_bit_note(config) + io_notes
    for note in notes:
        logger.info(note)
    return _Decided(plan, quantized, float_ops, notes, tuning)


def _final_report(float_model: onnx.ModelProto, prepared: onnx.ModelProto, built: pipelines.Built, final: _Decided,
                  eval_data: Dataset | None, config: QuantConfig, *, qat: bool, export_notes: list[str],
                  timings: dict[str, float], progress: bool, latency: bool | LatencyOptions, threads: int | None,
                  executor: Any, collected: Collected | None, held_out: bool) -> Report:
    """Validate the returned model (or reuse the fallback's validation of it) and complete its report."""
    view = _float_io_view(final.model, config)
    tuning = final.tuning
    known = tuning.report if tuning is not None else None  # the fallback validated this view already
    report = _report(float_model, view, eval_data, config, final.plan, final.notes,
                     progress=progress, latency=latency, threads=threads, known=known, executor=executor,
                     consumers=[collected.scatter_sample.update] if collected else ())
    _add_integer_details(report, float_model if qat else None, final.model, final.float_ops, config)
    report.passes = [record.to_dict() for record in built.passes]
    report.timings = {**timings, **report.timings}  # + validate, latency
    if tuning is not None:
        tuning.annotate(report)
    report.notes[:0] = export_notes
    report.framework_names = _named_nodes(prepared, report)
    if not held_out:
        report.notes.append("Validated on the calibration data; pass evaluation data for a held-out check.")
    return report


def _named_nodes(model: onnx.ModelProto, report: Report) -> dict[str, str]:
    """The framework names (``layer2.conv1``) of the nodes ``report`` names."""
    mentioned = set(report.float_nodes) | {str(d.get("name")) for d in report.float_node_details}
    for step in report.fallback:
        mentioned.update(step.nodes + ([step.node] if step.node else []))
    for layer in report.layers:
        mentioned.update(layer.fallback_nodes + ([layer.node] if layer.node else []))
    return framework_names(model, mentioned)


def _check_data_needs(config: QuantConfig, calibration: Any, ranges: Ranges | None) -> None:
    """The data a config needs is there (before any export or preparation)."""
    if config.mode is Mode.STATIC and ranges is None and calibration is None:
        raise ConfigError("static quantization needs calibration data (calibration=...) "
                          "or ranges; use mode='dynamic' to quantize without data")
    if _needs_data(config) and calibration is None:
        raise ConfigError("weight_only_algorithm='gptq' needs calibration data (calibration=...); "
                          "rtn and hqq need none")
    if _passes_need_data(config) and calibration is None:
        raise ConfigError("bias_correction and weight_rounding='adaptive' need calibration data "
                          "(calibration=...)")


def _calibrates(config: QuantConfig, ranges: Ranges | None) -> bool:
    """Whether the run reads calibration data (ranges to calibrate, passes or GPTQ that read it)."""
    return config.mode is Mode.STATIC and (ranges is None or _passes_need_data(config)) or _needs_data(config)


def _passes_need_data(config: QuantConfig) -> bool:
    """Bias correction and adaptive rounding read the calibration data even when ranges are given."""
    return config.mode is Mode.STATIC and (config.bias_correction is True or config.weight_rounding == "adaptive")


def _pass_through(model: onnx.ModelProto, export_notes: list[str], config: QuantConfig,
                  source: str | None) -> QuantResult:
    """A QAT model is already quantized: return it unchanged instead of quantizing it twice."""
    plan = QuantPlan(mode="qat", op_types=[], decisions=[], notes=[
        "The model already has QuantizeLinear/DequantizeLinear nodes (quantization-aware training): "
        "passed through unchanged, no calibration and no second quantization.",
        "No per-tensor specs in the plan: the model's own quantized tensors are listed in the report's "
        "qat_tensors."])
    size = model_size(model)
    report = Report(outputs=[], samples=0, float_size_bytes=size, quant_size_bytes=size, size_ratio=1.0,
                    mode="qat", config=config.to_dict(), notes=export_notes + plan.notes)
    _add_integer_details(report, model, model, [], config)
    return QuantResult(model=model, report=report, plan=plan, ranges=None, source=source, float_model=model)


def _integer_steps(model: onnx.ModelProto, ranges: Ranges | None,
                   config: QuantConfig) -> tuple[onnx.ModelProto, list[Any], list[str]]:
    """After the static rewrite: integer-only I/O, then the float-node analysis (strict mode raises).

    Returns:
        The model, its float compute nodes, and notes for the report.
    """
    from .strict import check_strict

    model, io_notes = _integer_io(model, ranges, config)
    return model, (check_strict(model) if config.strict else _float_ops(model, config)), \
        _sixteen_bit_note(config) + io_notes


def _sixteen_bit_note(config: QuantConfig) -> list[str]:
    """The report's note on 16-bit activations (none for 8-bit ones)."""
    if config.activation_type.bits != 16:
        return []
    return [f"16x8: {config.activation_type.value} activations, int8 weights, opset 21. ONNX Runtime's CPU "
            "kernels run 16-bit QDQ in float between Q/DQ: this buys accuracy, not speed."]


def _integer_io(model: onnx.ModelProto, ranges: Ranges | None,
                config: QuantConfig) -> tuple[onnx.ModelProto, list[str]]:
    """The model with integer inputs and outputs when ``config.io_type`` asks for it, and its notes."""
    if config.io_type is None:
        return model, []
    from .rewrite.io_types import integer_io

    assert ranges is not None  # io_type is static-only (QuantConfig checks it)
    return integer_io(model, ranges, config.io_type, config.activation_type)


def _float_ops(model: onnx.ModelProto, config: QuantConfig) -> list[Any]:
    """The compute nodes that run in float (static mode; other modes report none)."""
    from .strict import float_nodes

    return float_nodes(model) if config.mode is Mode.STATIC else []


def _fallback(float_model: onnx.ModelProto, built: pipelines.Built, quantized: onnx.ModelProto,
              eval_data: Dataset | None, config: QuantConfig, *, progress: bool,
              metric: Callable[[dict[str, Any], Any], float] | None, executor: Any) -> tuple[Any, list[str]]:
    """Run the accuracy fallback (:func:`onnxq.tune.tune`) on ``quantized``, made of ``built.plan``.

    Every model a fallback step builds goes through the same integer-I/O step as ``quantized`` and is
    validated through its float interface (what the final report validates), so a step is judged
    on the model the user gets.

    Returns:
        The :class:`~onnxq.tune.TuneResult`, and the integer-I/O notes of its model (``[]`` without
        ``io_type`` or when no step was kept).
    """
    from .tune import tune

    recipe = built.recipe
    assert recipe is not None  # target needs static or dynamic mode (QuantConfig checks it)
    io_notes: dict[int, list[str]] = {}  # id(model) -> its boundary notes

    def rebuild(candidate: QuantPlan) -> onnx.ModelProto:
        model, notes = _integer_io(recipe.build(candidate), built.ranges, config)
        io_notes[id(model)] = notes
        return model

    tuning = tune(float_model, recipe.model, built.plan, quantized, eval_data, config, ranges=built.ranges,
                  progress=progress, metric=metric, rebuild=rebuild, executor=executor, unbiased=recipe.unbiased,
                  view=lambda model: _float_io_view(model, config))
    return tuning, io_notes.get(id(tuning.model), [])


def _float_io_view(model: onnx.ModelProto, config: QuantConfig) -> onnx.ModelProto:
    """What validation runs: an integer-I/O model behind Q/DQ built from its recorded parameters."""
    if config.mode is Mode.FLOAT16:  # float16 I/O: the same graph behind float32 Casts
        return rewrite.float32_facade(model)
    if config.io_type is None:
        return model
    from .rewrite.io_types import float_interface

    return float_interface(model)


def _add_integer_details(report: Report, qat_model: onnx.ModelProto | None, quantized: onnx.ModelProto,
                         float_ops: list[Any], config: QuantConfig) -> None:
    """Float-node reasons, QAT tensors and the real size of an integer-I/O model in the report."""
    report.float_node_details = [node.to_dict() for node in float_ops]
    if qat_model is not None:
        from .qat import describe, qat_tensors

        tensors = qat_tensors(qat_model)
        report.qat_tensors = [t.to_dict() for t in tensors]
        report.notes.append(describe(tensors))
    if config.io_type is not None or config.mode is Mode.FLOAT16:  # validation ran a wrapped model
        report.quant_size_bytes = model_size(quantized, debug_info=False)
        report.size_ratio = report.float_size_bytes / max(report.quant_size_bytes, 1)


def _needs_data(config: QuantConfig) -> bool:
    """Weight-only GPTQ reads calibration data (static mode's own need is checked apart)."""
    return config.mode is Mode.WEIGHT_ONLY and config.weight_only_algorithm == "gptq"


def resolve_model(model: Any, *, example_inputs: Any = None, data: Any = None,
                  export_options: dict[str, Any] | None = None,
                  allow_pickle: bool = False) -> tuple[onnx.ModelProto, list[str]]:
    """An ONNX model from an ONNX path/proto, a framework model file, or a framework model object.

    Returns:
        The float ONNX model and notes about the export (exporter used, fallbacks, error vs framework).
    """
    if isinstance(model, onnx.ModelProto):
        return load_model(model), []
    obj = model
    if isinstance(model, (str, os.PathLike)):
        adapter = adapter_for_path(model)
        if adapter is None:
            return load_model(model), []
        obj = adapter.load(Path(model), allow_pickle=allow_pickle)
    else:
        adapter = adapter_for_object(model)
    _check_data_names(adapter, obj, data, export_options)
    result = adapter.export(obj, example_inputs=example_inputs, data=data, **(export_options or {}))
    notes = [f"Exported with {result.exporter} (opset {result.opset})"
             + (f"; max |framework - ONNX Runtime| = {result.max_abs_error:.3g}"
                if result.max_abs_error is not None else "")] + list(result.notes)
    return load_model(result.model), notes


def _check_data_names(adapter: Any, obj: Any, data: Any, export_options: dict[str, Any] | None) -> None:
    """Numpy data against the inputs the export will have, before the (slow) export: names,
    dtypes and ranks (sizes are left to the export, which may transpose or fix them)."""
    if data is None or adapter_for_data(data) is not None:
        return
    inputs = describe_inputs(adapter, obj, export_options)
    if not inputs:
        return
    try:
        specs = [InputSpec(name=i.name, dtype=np.dtype(i.dtype),
                           shape=None if i.shape is None else (None,) * len(i.shape)) for i in inputs]
    except TypeError:  # a dtype numpy does not know (bfloat16): the export checks the data
        return
    check_data(data, specs)


def inspect_framework_model(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> FrameworkSummary:
    """What ``onnxq inspect`` shows about a framework model file (``.keras``, ``.h5``, SavedModel,
    ``.pt2``): the inputs its export will have, read through its adapter without exporting.

    Raises:
        AdapterError: no installed adapter reads the file, or it cannot be loaded.
    """
    adapter = adapter_for_path(path)
    if adapter is None:
        raise AdapterError(f"{os.fspath(path)} is not a framework model file")
    obj = adapter.load(Path(path), allow_pickle=allow_pickle)
    return FrameworkSummary(path=os.fspath(path), adapter=adapter.package,
                            inputs=describe_inputs(adapter, obj))


def resolve_data(data: Any, input_names: list[str]) -> Any:
    """Framework data (DataLoader, tf.data, tensors) through its adapter; anything else unchanged."""
    adapter = adapter_for_data(data)
    return data if adapter is None else adapter.to_feeds(data, input_names)


def _dataset(source: Any, model: onnx.ModelProto, config: QuantConfig) -> Dataset:
    return load_data(source, model, batch_size=config.batch_size, limit=config.samples,
                     shuffle=config.shuffle, seed=config.seed)


def _eval_dataset(source: Any, model: onnx.ModelProto, config: QuantConfig) -> Dataset | None:
    """The evaluation batches (every sample, in order), or ``None`` without data."""
    return None if source is None else load_data(source, sample_specs(model), batch_size=config.batch_size)


def _report(float_model: onnx.ModelProto, quantized: onnx.ModelProto, data: Dataset | None, config: QuantConfig,
            plan: QuantPlan, notes: list[str], *, progress: bool, latency: bool | LatencyOptions,
            threads: int | None, known: Report | None = None, executor: Any = None,
            consumers: Sequence[Callable[[Any], None]] = ()) -> Report:
    from .validate import validate, with_latency

    if data is None:
        float_bytes, quant_bytes = model_size(float_model, debug_info=False), model_size(quantized, debug_info=False)
        report = Report(outputs=[], samples=0, float_size_bytes=float_bytes, quant_size_bytes=quant_bytes,
                        size_ratio=float_bytes / max(quant_bytes, 1))
        report.notes.append("No evaluation data: closeness to float was not measured.")
    elif executor is not None:  # sharded on a Dask cluster: the same report
        report = executor.validate(float_model, quantized, data, latency=latency, threads=threads, progress=progress)
    elif known is not None:  # the fallback's last step validated this very model: latency only
        report = with_latency(known, float_model, quantized, data, latency=latency, threads=threads)
    else:
        report = validate(float_model, quantized, data, batch_size=config.batch_size, latency=latency,
                          threads=threads, progress=progress, consumers=consumers)
    report.mode = config.mode.value
    report.config = config.to_dict()
    report.notes = list(notes) + report.notes
    report.float_nodes = plan.float_nodes
    report.tensors = [asdict(spec) for spec in plan.tensors]
    return report
