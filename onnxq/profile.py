"""Latency-aware plan: keep float the nodes whose int8 kernel is slower than their float one.

ONNX Runtime fuses a QDQ model into integer kernels (QLinearConv, QGemm ...), and some of them are
slower than the float kernel they replace (a first convolution on 1-3 input channels, some
depthwise convolutions). :func:`node_timings` profiles the float and the quantized model with ORT's
profiler (``SessionOptions.enable_profiling``) on one batch, with the user's thread count, and
pairs each quantized node's kernel time with its float counterpart's:

* quantized kernels are named after the node they replace (``NODE_token_N`` for fused groups);
* float kernels after the node, or after the tensor a fused chain writes (``OUT_nchwc`` for ORT's
  blocked layout): a Conv fused with its activation (Clip, Relu ...) counts as the Conv.

:func:`latency_plan` keeps float the quantized nodes that the setting rejects (``latency``: int8
saves less than 10 %; ``balanced``: int8 is more than 10 % slower), rebuilds through the
keep-float mechanism (:func:`onnxq.tune.keep_float`, so those nodes really run float), times the
whole old and new models interleaved (:mod:`onnxq.latency`) and keeps the new plan only when it is
at least :data:`MIN_GAIN` (5 %) faster. Keeping a node float never costs accuracy (float is the reference). Every decision is
reported with its two timings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .errors import ConfigError, ModelError, first_line
from .latency import LatencyOptions, interleaved_times
from .plan import QuantPlan
from .runtime import run
from .tune import keep_float

logger = logging.getLogger(__name__)

__all__ = ["OPTIMIZE", "LatencyPlan", "NodeTiming", "latency_plan", "node_timings", "rejected_nodes"]

#: ``--optimize`` settings: the int8/float kernel-time ratio above which a node is kept float
#: (``accuracy``: never; the plan is left as it is).
OPTIMIZE: dict[str, float | None] = {"accuracy": None, "balanced": 1.1, "latency": 0.9}

#: kernels under this many microseconds are too short to judge
MIN_KERNEL_US = 10.0
#: the rebuilt model is used only when its whole-model median is at least this much lower (a
#: smaller gain is within the run-to-run noise of a busy machine)
MIN_GAIN = 0.05

_TOKEN = re.compile(r"_token_\d+$")
_FUSED_ACTIVATIONS = frozenset({"Clip", "Relu", "LeakyRelu", "HardSigmoid", "Sigmoid", "Tanh", "HardSwish"})


@dataclass(frozen=True)
class NodeTiming:
    """One quantized node's kernel time in the float and in the int8 model (median per run, µs)."""

    node: str
    op_type: str
    float_us: float
    int8_us: float

    @property
    def ratio(self) -> float:
        """``int8_us / float_us``: above 1 the int8 kernel is slower."""
        return self.int8_us / self.float_us if self.float_us > 0 else float("inf")

    def format(self) -> str:
        """``node (Conv): int8 733 us vs float 548 us (x1.34 slower)``."""
        word = f"x{self.ratio:.2f} slower" if self.ratio >= 1 else f"x{1 / self.ratio:.2f} faster"
        return (f"{self.node} ({self.op_type}): int8 {self.int8_us:.0f} us vs float {self.float_us:.0f} us "
                f"({word})")


@dataclass
class LatencyPlan:
    """What :func:`latency_plan` decided.

    Attributes:
        setting: ``balanced`` or ``latency``.
        rejected: nodes whose int8 kernel the setting rejects, with their two timings.
        kept_float: the nodes the final plan keeps float for latency (empty when the rebuild was
            not faster end to end, or nothing was rejected).
        before_ms, after_ms: whole-model median latency of the first and the rebuilt quantized
            model (``None`` when nothing was rebuilt).
        timings: every paired node.
        notes: one line per decision, for the report.
    """

    setting: str
    rejected: list[NodeTiming] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)
    before_ms: float | None = None
    after_ms: float | None = None
    timings: list[NodeTiming] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = asdict(self)
        data["rejected"] = [{**asdict(t), "ratio": t.ratio} for t in self.rejected]
        data["timings"] = [{**asdict(t), "ratio": t.ratio} for t in self.timings]
        return data


def node_timings(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                 nodes: list[str], *, threads: int | None = None, runs: int = 15) -> list[NodeTiming]:
    """Profile both models on ``feeds`` and pair the kernel times of ``nodes`` (float-model names).

    Args:
        float_model: the float model the plan refers to (node names as in the plan).
        quant_model: its quantized rewrite.
        feeds: one batch.
        nodes: the quantized nodes to time.
        threads: ORT intra-op threads (the user's).
        runs: profiled runs per model, the two models in turns (the median per kernel is taken;
            a first run is dropped).

    Returns:
        One entry per node found in both profiles, in ``nodes`` order.
    """
    graph = float_model.graph
    producer = {out: node for node in graph.node for out in node.output}
    by_name = {node.name: node for node in graph.node}
    float_profile, int8_profile = _profile([float_model, quant_model], feeds, threads, runs)
    float_us = _attribute(float_profile, lambda key: _float_node(key, by_name, producer))
    int8_us = _attribute(int8_profile, lambda key: _quant_node(key, by_name))
    return [NodeTiming(name, by_name[name].op_type, float_us[name], int8_us[name])
            for name in nodes if name in float_us and name in int8_us]


def rejected_nodes(timings: list[NodeTiming], setting: str) -> list[NodeTiming]:
    """The nodes ``setting`` keeps float: int8/float ratio above its threshold (see :data:`OPTIMIZE`).

    Raises:
        ConfigError: an unknown setting.
    """
    if setting not in OPTIMIZE:
        raise ConfigError(f"optimize={setting!r} is not one of: {', '.join(OPTIMIZE)}")
    threshold = OPTIMIZE[setting]
    if threshold is None:
        return []
    return [t for t in timings if t.ratio > threshold and max(t.int8_us, t.float_us) >= MIN_KERNEL_US]


def latency_plan(float_model: onnx.ModelProto, plan: QuantPlan, quantized: onnx.ModelProto,
                 feeds: Mapping[str, np.ndarray], *, setting: str, rebuild: Callable[[QuantPlan], onnx.ModelProto],
                 ranges: Any = None, threads: int | None = None,
                 timing: LatencyOptions | None = None) -> tuple[QuantPlan, onnx.ModelProto, LatencyPlan]:
    """Keep float the nodes whose int8 kernel ``setting`` rejects, if that makes the model faster.

    Args:
        float_model: the (prepared) float model ``plan`` refers to.
        plan: the plan ``quantized`` was built from.
        quantized: the quantized model.
        feeds: one calibration batch (profiled and timed).
        setting: ``accuracy`` (nothing changes), ``balanced`` or ``latency``.
        rebuild: builds the quantized model of a plan (``Recipe.build``).
        ranges: the calibrated ranges (a node whose fallback needs new ranges is left int8).
        threads: ORT intra-op threads (the user's).
        timing: how the whole models are compared (default: interleaved until the medians settle,
            as :mod:`onnxq.latency` measures).

    Returns:
        The plan and model to use, and the decisions.
    """
    result = LatencyPlan(setting)
    if OPTIMIZE.get(setting, 0.0) is None:
        return plan, quantized, result
    rejected_nodes([], setting)  # checks the setting
    try:
        result.timings = node_timings(float_model, quantized, feeds, list(plan.nodes_to_quantize), threads=threads)
    except (ModelError, OSError, ValueError) as exc:  # the quantized model as it is stays usable
        result.notes.append(f"latency plan ({setting}): cannot profile with ONNX Runtime's CPU provider "
                            f"({' '.join(str(exc).split())}); plan left as it is")
        return plan, quantized, result
    result.rejected = rejected_nodes(result.timings, setting)
    if not result.rejected:
        result.notes.append(f"latency plan ({setting}): every int8 kernel of {len(result.timings)} profiled "
                            "node(s) pays off; nothing kept float")
        return plan, quantized, result
    candidate = keep_float(plan, float_model, [t.node for t in result.rejected], ranges)
    if candidate is None:
        result.notes.append(f"latency plan ({setting}): keeping {len(result.rejected)} node(s) float needs new "
                            "calibration ranges; left int8")
        return plan, quantized, result
    rebuilt = rebuild(candidate)
    result.before_ms, result.after_ms = _whole_model_ms(quantized, rebuilt, feeds, threads, timing)
    faster = result.after_ms < result.before_ms * (1.0 - MIN_GAIN)
    verdict = "kept float" if faster else f"left int8 (the rebuilt model was not {MIN_GAIN:.0%} faster)"
    result.notes.extend(f"latency plan ({setting}): {t.format()}: {verdict}" for t in result.rejected)
    result.notes.append(f"latency plan ({setting}): whole model {result.before_ms:.3f} ms -> "
                        f"{result.after_ms:.3f} ms; {'rebuilt plan used' if faster else 'first plan kept'}")
    for line in result.notes:
        logger.info(line)
    if not faster:
        return plan, quantized, result
    result.kept_float = [d.name for d in candidate.decisions
                         if not d.quantize and d.name in set(plan.nodes_to_quantize)]
    return candidate, rebuilt, result


# ------------------------------------------------------------------------- helpers


def _profile(models: list[onnx.ModelProto], feeds: Mapping[str, np.ndarray], threads: int | None,
             runs: int) -> list[dict[str, list[float]]]:
    """Per model, kernel name -> durations in µs, one per run after the first (ORT's profiler).

    The models run in turns, one run each, so that the machine's load changes hit them alike.
    """
    with tempfile.TemporaryDirectory(prefix="onnxq-profile-") as folder:
        sessions = []
        for index, model in enumerate(models):
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(folder, f"profile{index}")
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            try:
                sessions.append(ort.InferenceSession(model.SerializeToString(), options,
                                                     providers=["CPUExecutionProvider"]))
            except Exception as exc:  # ORT's own exception types
                raise ModelError(f"ONNX Runtime cannot profile the model: {first_line(exc)}") from exc
        batch = dict(feeds)
        for _ in range(runs + 1):
            for session in sessions:
                run(session, batch)
        paths = [session.end_profiling() for session in sessions]
        profiles = []
        for path in paths:
            with open(path, encoding="utf-8") as handle:
                profiles.append(_kernel_times(json.load(handle), runs))
    return profiles


def _kernel_times(events: list[dict[str, Any]], runs: int) -> dict[str, list[float]]:
    durations: dict[str, list[float]] = defaultdict(list)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            durations[name[:-len("_kernel_time")]].append(float(event.get("dur", 0)))
    return {name: values[-runs:] for name, values in durations.items()}


def _attribute(durations: dict[str, list[float]], owner: Callable[[str], str | None]) -> dict[str, float]:
    """Node name -> the sum over its kernels of each kernel's median µs."""
    totals: dict[str, float] = defaultdict(float)
    for key, values in durations.items():
        node = owner(key)
        if node is not None and values:
            totals[node] += float(np.median(values))
    return dict(totals)


def _quant_node(key: str, by_name: dict[str, onnx.NodeProto]) -> str | None:
    base = _TOKEN.sub("", key)
    return base if base in by_name else None


def _float_node(key: str, by_name: dict[str, onnx.NodeProto], producer: dict[str, onnx.NodeProto]) -> str | None:
    base = key[:-len("_nchwc")] if key.endswith("_nchwc") else key
    node = by_name.get(base) or producer.get(base)
    while node is not None and node.op_type in _FUSED_ACTIVATIONS and node.input and node.input[0] in producer:
        node = producer[node.input[0]]  # an activation fused into the kernel that feeds it
    return node.name if node is not None else None


def _whole_model_ms(before: onnx.ModelProto, after: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                    threads: int | None, timing: LatencyOptions | None) -> tuple[float, float]:
    from .runtime import create_session

    sessions = {"before": create_session(before, threads=threads), "after": create_session(after, threads=threads)}
    batch = dict(feeds)
    openers = {name: (lambda s=s: (lambda: run(s, batch))) for name, s in sessions.items()}
    times = interleaved_times(openers, timing or LatencyOptions())
    return (float(np.median(times["before"].seconds)) * 1000.0, float(np.median(times["after"].seconds)) * 1000.0)
