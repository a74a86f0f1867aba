"""Accuracy-driven fallback: keep the most harmful nodes in float until a target holds.

``QuantConfig(target="cosine>=0.999")`` makes :func:`onnxq.quantize` check the quantized model on
the evaluation data; when the goal is missed, :func:`tune`:

1. ranks what could be kept float, once, on the first quantized model:
   - static mode: by *revert-one sensitivity* (:mod:`onnxq.sensitivity`): on the first
     :data:`SENSITIVITY_SAMPLES` evaluation samples, how much of the output error disappears when
     one node (its weights, and an input or output only it quantizes) or one shared activation
     (with its producer and every consumer) is float, measured at the model's outputs in one
     fake-quantization graph -- what each choice buys where the user looks, not how large a
     tensor's own error is;
   - dynamic mode, an integer-I/O or QAT graph (which that graph does not model), or when it
     fails: by :func:`onnxq.analyze` (each tensor's own quantization error);
2. walks that ranking from the largest gain down: each step keeps float the nodes of one entry
   (a folded Relu/Clip always with its Conv/Gemm), re-plans and re-quantizes with the *same*
   calibrated ranges (keeping nodes float never needs a new range), and validates again;
3. keeps a step only if it improved the metric (ties: the worst output's cosine decides, which
   separates steps that top-1 agreement on a few samples scores the same); a step that made
   things worse is undone, recorded with ``kept=False``, and costs no latency in the result;
4. stops when the goal holds, or after ``max_fallback_steps`` steps or ``max_tune_seconds``.

Why one ranking and no re-ranking after each step: re-ranking costs a full pass per candidate,
and the order it gives changes little once a few nodes are float.

Entries are skipped when they touch a node of ``force_quantize`` (the error cannot be removed
without it), when their nodes are float already, or when keeping them float removes nothing.
Every step, kept or undone, is recorded as a :class:`~onnxq.report.schema.FallbackStep`.

Targets (``metric op value``; the worst output counts) use the names of :mod:`onnxq.metrics`,
where they are parsed: ``cosine`` / ``min_cosine``, ``sqnr`` (dB), ``max_abs`` / ``mean_abs``,
``top1`` / ``top5`` (agreement with the float model, a fraction or ``99%``), ``accuracy`` (absolute,
a fraction; needs labels), ``accuracy_drop`` (points; needs labels), ``metric`` / ``metric_drop``
(the user's metric function).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from .config import Mode, QuantConfig
from .engine import Runner, StreamBatch, stream
from .errors import ConfigError
from .metrics import MetricFn, Target, parse_target, worst_value
from .sensitivity import (TENSOR_GATE, ErrorSplit, GatedRuns, emulation_model, error_split,
                          node_sensitivities)
from .plan import NodeDecision, QuantPlan, node_matches, set_calibration_targets
from .report.schema import FallbackStep, LayerMetrics, Report

logger = logging.getLogger(__name__)

__all__ = ["Target", "TuneResult", "parse_target", "tune"]

FALLBACK_REASON = "kept float by the accuracy fallback"


def user_metric(model: onnx.ModelProto, data: Any, fn: MetricFn) -> float:
    """``fn`` on the model's outputs over ``data`` (outputs are gathered; activations are not)."""
    runner = Runner.create(model)
    outputs: dict[str, list[np.ndarray]] = {n: [] for n in runner.outputs}
    labels: list[np.ndarray] = []

    def gather(batch: StreamBatch) -> None:
        for name, values in batch.outputs[0].items():
            outputs[name].append(values)
        if batch.labels is not None:
            labels.append(np.asarray(batch.labels))

    stream([runner], data, gather, desc="metric")
    gathered = {n: np.concatenate(v) for n, v in outputs.items()}
    try:
        value = float(fn(gathered, np.concatenate(labels) if labels else None))
    except Exception as exc:  # the user's code: report it in one line
        raise ConfigError(f"the metric function failed: {type(exc).__name__}: {exc}") from exc
    return value


def metric_value(report: Report, target: Target) -> float:
    """The target's metric on a validation report (worst output; see :func:`onnxq.metrics.worst_value`).

    Raises:
        ConfigError: the report cannot give that metric (no labels, no class-score output).
    """
    try:
        return worst_value(report, target.metric)
    except ConfigError as exc:
        raise ConfigError(f"target {target}: {exc}") from None


@dataclass
class TuneResult:
    """What the fallback did; :meth:`annotate` writes it into the final report.

    Attributes:
        model: the quantized model after the last kept step.
        plan: its plan (the fallback nodes marked with :data:`FALLBACK_REASON`).
        target: the goal.
        target_met: whether the goal holds for ``model``.
        steps: step 0 (first quantization) and one entry per fallback step.
        layers: the per-layer analysis of the first quantized model (empty when the goal held
            at once).
        report: the validation of ``model`` made by the step that produced it (``None`` with a metric
            function), which the final report reuses instead of validating the same model again.
        best_step: the last step that was kept (whose model is returned).
        ranking: how the candidates were ranked (one line for the report; empty when no step ran).
        diagnosis: where the all-int8 model's output error lives (:class:`~onnxq.sensitivity.ErrorSplit`;
            empty without the revert-one ranking); reported when the goal is missed.
    """

    model: onnx.ModelProto
    plan: QuantPlan
    target: Target
    target_met: bool
    steps: list[FallbackStep] = field(default_factory=list)
    layers: list[LayerMetrics] = field(default_factory=list)
    report: Report | None = None
    best_step: int | None = None
    ranking: str = ""
    diagnosis: str = ""

    def annotate(self, report: Report) -> None:
        """Record target, steps and layers in ``report`` (plus one note)."""
        report.target = str(self.target)
        report.target_met = self.target_met
        report.fallback = list(self.steps)
        report.layers = list(self.layers)
        chosen = len(self.steps) - 1 if self.best_step is None else self.best_step
        kept = [n for s in self.steps[:chosen + 1] if s.kept for n in s.nodes]
        value = self.steps[chosen].metric_value if self.steps else math.nan
        verdict = "met" if self.target_met else "NOT met"
        undone = sum(not s.kept for s in self.steps)
        report.notes.append(f"target {self.target} {verdict} ({self.target.metric} = {value:.6g}) after "
                            f"{len(self.steps) - 1} fallback step(s)"
                            + (f" ({undone} undone: they made it worse)" if undone else "")
                            + (f"; kept float: {', '.join(kept)}" if kept else ""))
        if self.ranking:
            report.notes.append(self.ranking)
        if self.diagnosis and not self.target_met:
            report.notes.append(self.diagnosis)


def tune(float_model: onnx.ModelProto, prepared: onnx.ModelProto, plan: QuantPlan, quantized: onnx.ModelProto,
         data: Any, config: QuantConfig, *, ranges: Any = None, progress: bool = False,
         metric: MetricFn | None = None,
         rebuild: Callable[[QuantPlan], onnx.ModelProto] | None = None, executor: Any = None,
         unbiased: onnx.ModelProto | None = None,
         view: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None) -> TuneResult:
    """Fall back the most harmful nodes to float until ``config.target`` holds or the budget ends.

    Args:
        float_model: the float model the report compares against.
        prepared: the prepared (and smoothed) model the plan and ``quantized`` were made from.
        plan: the plan of ``quantized``.
        quantized: the first quantized model.
        data: the evaluation ``Dataset``.
        config: the run's config (``target``, ``max_fallback_steps``, ``max_tune_seconds``,
            ``force_quantize``).
        ranges: the calibrated ranges (static mode), reused for every re-quantization.
        progress: progress bars.
        metric: the user's metric function, for the targets ``metric>=X`` (on the quantized
            model) and ``metric_drop<=X`` (float minus quantized).
        executor: validates each candidate on a Dask cluster (``DaskExecutor``; the same reports).
        unbiased: ``prepared`` before bias correction (a node kept float gets its own bias back).
        view: what validation runs for a model ``rebuild`` returns (e.g. the float interface of an
            integer-I/O model); default: the model itself.

    Raises:
        ConfigError: no target, no evaluation data, or a metric the data cannot give.
    """
    target = _checked_target(config, data, metric)
    start = time.monotonic()
    meter = _Meter(float_model, data, target, metric, executor, view or (lambda model: model))
    value, tie, report = meter.measure(quantized)
    steps = [FallbackStep(step=0, node=None, op_type=None, metric_value=value, goal_met=target.holds(value))]
    logger.info("target %s: first quantization gives %.6g", target, value)
    if steps[0].goal_met:
        return TuneResult(quantized, plan, target, True, steps, report=report)
    best = _Best(value, tie, quantized, plan, report, 0)
    candidates, layers, split = _ranking(float_model, prepared, meter.view(quantized), data, config,
                                         unbiased=unbiased, progress=progress, executor=executor)
    ranking = (f"fallback ranking: {'per-layer error (analyze)' if layers else 'revert-one sensitivity'} of "
               f"{len(candidates)} candidate(s)")
    by_name = {n.name: n for n in prepared.graph.node}
    undone: set[frozenset[str]] = set()  # node sets measured and undone on the current base
    for entry in candidates:
        if len(steps) > config.max_fallback_steps:
            break
        if config.max_tune_seconds is not None and time.monotonic() - start > config.max_tune_seconds:
            logger.info("fallback stopped: max_tune_seconds=%g reached", config.max_tune_seconds)
            break
        proposal = _propose(entry, best.plan, prepared, ranges, config, by_name)
        if proposal is None or frozenset(proposal[1]) in undone:
            continue
        candidate, nodes = proposal
        model = rebuild(candidate) if rebuild is not None else _rewrite(prepared, candidate, ranges, config)
        value, tie, report = meter.measure(model)
        met = target.holds(value)
        kept = met or _better(target, value, best.value) or (value == best.value and tie > best.tie)
        primary = entry.node if entry.node in nodes else nodes[0]
        steps.append(FallbackStep(step=len(steps), node=primary, op_type=by_name[primary].op_type,
                                  metric_value=value, goal_met=met, nodes=nodes, tensor=entry.tensor, kept=kept))
        logger.info("fallback step %d: kept %s float (%s) -> %s = %.6g%s", len(steps) - 1, ", ".join(nodes),
                    entry.why, target.metric, value, "" if kept else ": worse, undone")
        if kept:  # greedy: a step that does not help is undone, so it costs no latency
            best = _Best(value, tie, model, candidate, report, len(steps) - 1)
            undone.clear()  # on a new base the same nodes may help
        else:
            undone.add(frozenset(nodes))
        if met:
            break
    return TuneResult(best.model, best.plan, target, steps[best.step].goal_met, steps, layers, best.report,
                      best_step=best.step, ranking=ranking, diagnosis=split.describe() if split else "")


def _checked_target(config: QuantConfig, data: Any, metric: MetricFn | None) -> Target:
    """The parsed target, after checking that the data (and metric function) can measure it."""
    if config.target is None:
        raise ConfigError("tune() needs config.target")
    target = parse_target(config.target)
    if data is None:
        raise ConfigError(f"target {target} needs evaluation data (or calibration data to validate on)")
    if target.spec.needs_labels and not getattr(data, "has_labels", False):
        raise ConfigError(f"target {target} needs labels in the evaluation data")
    if target.metric in ("metric", "metric_drop") and metric is None:
        raise ConfigError(f"target {target} needs a metric function (metric=... / --metric-fn MODULE:FUNC)")
    return target


@dataclass
class _Meter:
    """Measures the target's metric on a quantized model (validation, or the user's function)."""

    float_model: onnx.ModelProto
    data: Any
    target: Target
    metric: MetricFn | None
    executor: Any
    view: Callable[[onnx.ModelProto], onnx.ModelProto]
    reference: float | None = None
    float_runner: Any = None  # the float model's outputs, computed once for every step

    def measure(self, model: onnx.ModelProto) -> tuple[float, float, Report | None]:
        """``(metric value, tie-break, validation report or None)`` of ``model``."""
        if self.target.metric in ("metric", "metric_drop"):
            assert self.metric is not None  # _checked_target
            value = user_metric(self.view(model), self.data, self.metric)
            if self.target.metric == "metric":
                return value, math.nan, None
            if self.reference is None:
                self.reference = user_metric(self.float_model, self.data, self.metric)
            return self.reference - value, math.nan, None
        from .validate import validate

        if self.executor is not None:
            report = self.executor.validate(self.float_model, self.view(model), self.data, latency=False,
                                            progress=False, replay=True)  # float outputs kept on the workers
        else:
            if self.float_runner is None:
                from .engine import ReplayRunner

                self.float_runner = ReplayRunner.create(self.float_model)
            report = validate(self.float_model, self.view(model), self.data, latency=False, progress=False,
                              float_runner=self.float_runner)
        return metric_value(report, self.target), _tie_break(report), report


def _propose(entry: Candidate, plan: QuantPlan, prepared: onnx.ModelProto, ranges: Any, config: QuantConfig,
             by_name: dict[str, onnx.NodeProto]) -> tuple[QuantPlan, list[str]] | None:
    """``plan`` with ``entry``'s nodes kept float, and the nodes that become float; ``None`` when
    nothing changes, a ``force_quantize`` node would fall back, or new ranges would be needed."""
    chosen = set(plan.nodes_to_quantize)
    nodes = [n for n in entry.nodes if n in chosen]
    if not nodes or _forced(entry.nodes, by_name, config):
        return None
    candidate = keep_float(plan, prepared, nodes, ranges)
    if candidate is None:
        logger.info("cannot keep %s float without new calibration ranges; skipped", ", ".join(nodes))
        return None
    nodes = [d.name for d in candidate.decisions if d.name in chosen and not d.quantize]
    if _forced(nodes, by_name, config):  # a Conv/Gemm that a Relu/Clip of the entry is folded into
        return None
    return candidate, nodes


def _tie_break(report: Report) -> float:
    """The worst output's cosine (NaN without outputs): it separates two steps that a coarse metric
    such as top-1 agreement on a few samples scores the same."""
    return min((o.cosine for o in report.outputs), default=math.nan)


#: Evaluation samples the revert-one ranking runs on (one run of them per candidate): a model whose
#: initializers exceed SMALL_MODEL_BYTES gets the first, a smaller (cheaper to run) one the second.
SENSITIVITY_SAMPLES = (8, 32)
SMALL_MODEL_BYTES = 10 * 2**20


@dataclass(frozen=True)
class Candidate:
    """One ranked fallback entry: the nodes one step keeps float.

    Attributes:
        node: the node the entry is about (for an activation: its producer, or first consumer).
        nodes: every node the step keeps float.
        tensor: the activation whose error the step removes, if the entry is an activation.
        why: one line for the log (what was measured).
    """

    node: str
    nodes: list[str]
    tensor: str | None
    why: str


@dataclass
class _Best:
    value: float
    tie: float
    model: onnx.ModelProto
    plan: QuantPlan
    report: Report | None
    step: int


def _forced(nodes: list[str], by_name: dict[str, onnx.NodeProto], config: QuantConfig) -> bool:
    """Whether one of ``nodes`` must stay quantized (``force_quantize``)."""
    return any(node_matches(by_name.get(n, n), config.force_quantize) for n in nodes)


def _better(target: Target, value: float, than: float) -> bool:
    """Whether ``value`` is closer to meeting ``target`` than ``than``."""
    if math.isnan(value):
        return False
    if math.isnan(than):
        return True
    return value > than if target.op in (">=", ">") else value < than


def _ranking(float_model: onnx.ModelProto, prepared: onnx.ModelProto, quantized: onnx.ModelProto, data: Any,
             config: QuantConfig, *, unbiased: onnx.ModelProto | None, progress: bool,
             executor: Any = None) -> tuple[list[Candidate], list[LayerMetrics], ErrorSplit | None]:
    """The fallback's candidates, best first (see the module docstring), the analysis if it ran, and
    where the error lives (revert-one ranking only)."""
    from .analyze import analyze

    emulated = (config.mode is Mode.STATIC and config.io_type is None
                and not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in prepared.graph.node))
    if emulated:
        try:
            candidates, split = sensitivity_ranking(float_model, prepared, quantized, data, unbiased=unbiased,
                                                    progress=progress, executor=executor)
            return candidates, [], split
        except Exception as exc:  # noqa: BLE001 -- the analysis below still gives an order
            logger.warning("revert-one ranking failed (%s: %s); ranking by per-layer error instead",
                           type(exc).__name__, exc)
    layers = analyze(prepared, quantized, data, progress=progress)
    candidates = [Candidate(e.node, list(e.fallback_nodes), e.tensor,
                            f"{e.kind} {e.tensor}, SQNR {e.sqnr_db:.1f} dB")
                  for e in layers if e.sqnr_db != math.inf]
    return candidates, layers, None


def sensitivity_ranking(float_model: onnx.ModelProto, prepared: onnx.ModelProto, quantized: onnx.ModelProto,
                        data: Any, *, unbiased: onnx.ModelProto | None = None, samples: int | None = None,
                        progress: bool = False, executor: Any = None) -> tuple[list[Candidate], ErrorSplit]:
    """Revert-one candidates of a static QDQ model: those that help at the outputs, largest gain
    first, then those that seemed to hurt on the few samples (least first); and where the error
    lives (every weight / every shared activation float, measured on the same samples). With a
    Dask ``executor``, the runs of many candidates go to its workers (the same ranking)."""

    started = time.monotonic()
    if samples is None:
        weights = sum(t.ByteSize() for t in prepared.graph.initializer if not t.external_data)
        samples = SENSITIVITY_SAMPLES[0] if weights > SMALL_MODEL_BYTES else SENSITIVITY_SAMPLES[1]
    emulation, gates = emulation_model(prepared, quantized, unbiased=unbiased, tensor_gates=True)
    producer = {o: n.name for n in prepared.graph.node for o in n.output}
    by_name = {n.name: n for n in prepared.graph.node}
    constants = {t.name for t in prepared.graph.initializer}
    consumers: dict[str, list[str]] = {}
    for node in prepared.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    runs = (executor.gated_runs(float_model, emulation, gates, data, samples) if executor is not None
            else GatedRuns(float_model, emulation, gates, data, samples))
    try:
        base, ranked = node_sensitivities(float_model, emulation, gates, data, list(gates), screen=True,
                                          progress=progress, runs=runs)
    finally:
        runs.close()
    candidates = []
    # what helps first; then what the few samples could not tell apart from noise (a step that does
    # not help on the evaluation data is undone); never what switches nothing
    for entry in [e for e in ranked if e.gain > 0] + [e for e in ranked if e.gain < 0]:
        share = f"{entry.gain / base:+.1%} of the output error" if base > 0 else "no error"
        if entry.node.startswith(TENSOR_GATE):
            tensor = entry.node[len(TENSOR_GATE):]
            nodes = list(dict.fromkeys(([producer[tensor]] if tensor in producer else []) + consumers.get(tensor, [])))
            if nodes:
                candidates.append(Candidate(nodes[0], nodes, tensor, f"activation {tensor}: {share}"))
        else:
            weight = next((i for i in by_name[entry.node].input if i in constants), None) if entry.node in by_name else None
            candidates.append(Candidate(entry.node, [entry.node], weight, f"node {entry.node}: {share}"))
    split = error_split(runs, base)
    logger.info("fallback ranking: revert-one sensitivity of %d entries on %d samples in %.1f s; %s",
                len(ranked), samples, time.monotonic() - started, split.describe())
    return candidates, split


def keep_float(plan: QuantPlan, model: onnx.ModelProto, nodes: list[str], ranges: Any = None) -> QuantPlan | None:
    """A new plan with ``nodes`` kept float, re-targeted for calibration; ``None`` if it needs new ranges.

    A Relu/Clip folded into its producer (``plan.range_aliases``) falls back together with that
    producer: either one alone would need the pre-activation range, which was never calibrated.
    """
    names = set(nodes)
    producer = {o: n.name for n in model.graph.node for o in n.output}
    for pre, act in plan.range_aliases.items():
        pair = {producer.get(pre), producer.get(act)} - {None}
        if pair & names:
            names |= pair
    decisions = [NodeDecision(d.name, d.op_type, False, FALLBACK_REASON, d.candidate)
                 if d.quantize and d.name in names else d for d in plan.decisions]
    new = set_calibration_targets(replace(plan, decisions=decisions, notes=list(plan.notes)), model)
    if ranges is not None and new.mode == Mode.STATIC.value:
        if any(t not in ranges for t in new.tensors_to_calibrate):
            return None
    return new


def _rewrite(prepared: onnx.ModelProto, plan: QuantPlan, ranges: Any, config: QuantConfig) -> onnx.ModelProto:
    from . import rewrite

    work = onnx.ModelProto()
    work.CopyFrom(prepared)  # the quantizers may change their input model
    if plan.mode == Mode.STATIC.value:
        return rewrite.quantize_static(work, plan, ranges, config)
    return rewrite.quantize_dynamic(work, plan, config)
