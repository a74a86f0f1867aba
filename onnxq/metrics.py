"""The one metric registry: every metric's name, direction, unit, labels, and the one target parser.

Contract: this module is the vocabulary shared by the accuracy fallback (``QuantConfig.target``,
:mod:`onnxq.tune`), the CI gate (:func:`onnxq.compare.compare`, ``onnxq compare --metric
--threshold``), the report (:class:`onnxq.report.schema.Report`) and the pytest helper
(:func:`onnxq.testing.assert_quantized_close`); a word means the same thing in each. It holds
plain data and pure functions and imports nothing of onnxq but :mod:`onnxq.errors`, so any layer
may use it. Reports are read by duck typing (``outputs``, ``float_accuracy``, ``quant_accuracy``).

Names are case-insensitive and ``-`` equals ``_`` (``min-cosine`` is ``min_cosine``); each metric
also answers to a few aliases (``sqnr_db``, ``top1_agreement``, ``cos``, ``acc_drop`` ...).
``accuracy`` is always the quantized model's absolute accuracy against labels (a fraction), and
``accuracy_drop`` the float accuracy minus the quantized accuracy in percentage points.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:  # for type hints only: the report imports this module
    from .report.schema import OutputMetrics, Report

__all__ = ["METRICS", "Metric", "MetricFn", "Target", "get_metric", "metric_names", "parse_target",
           "worst_value"]

#: A user metric: ``fn(outputs, labels) -> float``, higher is better; ``outputs`` maps each output
#: name to its values over the whole evaluation set, ``labels`` is ``None`` without labels.
MetricFn = Callable[[dict[str, np.ndarray], Optional[np.ndarray]], float]


@dataclass(frozen=True)
class Metric:
    """One metric of the registry.

    Attributes:
        name: canonical name (``"cosine"``, ``"accuracy_drop"`` ...); :attr:`cli_name` spells it
            with ``-``.
        higher_is_better: a value passes a threshold when ``>=`` it (else ``<=``).
        unit: ``"dB"``, ``"points"`` or ``""``.
        needs_labels: the evaluation data must carry labels.
        kind: ``"output"`` (one value per model output, in :class:`OutputMetrics`), ``"accuracy"``
            (one value per report, from the accuracies) or ``"user"`` (the user's metric function).
        field: the :class:`~onnxq.report.schema.OutputMetrics` field of an ``"output"`` metric.
        fraction: the value is a fraction in ``[-1, 1]``: a threshold above 1 is refused.
        percent: a target may write the value with ``%``: a fraction divided by 100
            (``top1>=99%``), or points as they are (``accuracy_drop<=0.5%``).
        aliases: other accepted names.
        description: one line for help texts.
    """

    name: str
    higher_is_better: bool
    unit: str = ""
    needs_labels: bool = False
    kind: str = "output"
    field: str | None = None
    fraction: bool = False
    percent: bool = False
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def operator(self) -> str:
        """``">="`` or ``"<="``: how a passing value relates to its threshold."""
        return ">=" if self.higher_is_better else "<="

    @property
    def cli_name(self) -> str:
        """The name as the command line spells it (``min-cosine``)."""
        return self.name.replace("_", "-")

    @property
    def suffix(self) -> str:
        """The unit for messages: ``" dB"``, ``" points"`` or ``""``."""
        return f" {self.unit}" if self.unit else ""

    def passes(self, value: float | None, threshold: float) -> bool:
        """Whether ``value`` meets ``threshold`` in this metric's direction (NaN/None never do)."""
        if value is None or math.isnan(value):
            return False
        return value >= threshold if self.higher_is_better else value <= threshold

    def check_threshold(self, threshold: Any) -> float:
        """Return ``threshold`` as a float.

        Raises:
            ConfigError: not a finite number, or a fraction metric's threshold beyond ``[-1, 1]``.
        """
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ConfigError(f"threshold must be a finite number, got {threshold!r}")
        if self.fraction and not -1.0 <= threshold <= 1.0:
            hint = f"; did you mean {threshold / 100:g}?" if 1.0 < threshold <= 100.0 else ""
            raise ConfigError(f"the {self.name} threshold is a fraction (at most 1), got {threshold:g}{hint}")
        return float(threshold)

    def output_value(self, output: OutputMetrics) -> float | None:
        """This metric on one output's metrics; ``None`` when it does not apply there."""
        if self.field is None:
            return None
        value = getattr(output, self.field)
        return None if value is None else float(value)

    def report_value(self, report: Report) -> float | None:
        """An ``"accuracy"`` metric on a report; ``None`` without the accuracies it needs."""
        quant, ref = report.quant_accuracy, report.float_accuracy
        if self.kind != "accuracy" or quant is None:
            return None
        if self.name == "accuracy":
            return float(quant)
        return None if ref is None else 100.0 * (float(ref) - float(quant))


_FRACTION = "a fraction (0.98 = 98%)"

#: Every metric, by canonical name.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("cosine", True, field="cosine", fraction=True, aliases=("cos",),
           description="mean per-sample cosine similarity to the float output"),
    Metric("min_cosine", True, field="min_cosine", fraction=True, aliases=("min_cos",),
           description="the worst sample's cosine similarity to the float output"),
    Metric("sqnr", True, "dB", field="sqnr_db", aliases=("sqnr_db",),
           description="signal-to-quantization-noise ratio in dB"),
    Metric("max_abs", False, field="max_abs_error", aliases=("max_abs_error",),
           description="largest |float - quantized| over every element"),
    Metric("mean_abs", False, field="mean_abs_error", aliases=("mean_abs_error",),
           description="mean |float - quantized| over every element"),
    Metric("top1", True, field="top1_agreement", fraction=True, percent=True, aliases=("top1_agreement",),
           description=f"fraction of samples whose argmax agrees with float, {_FRACTION}; class scores [N, C]"),
    Metric("top5", True, field="top5_agreement", fraction=True, percent=True, aliases=("top5_agreement",),
           description=f"fraction of samples whose float top-1 class is in the quantized top 5, {_FRACTION}"),
    Metric("accuracy", True, needs_labels=True, kind="accuracy", fraction=True, percent=True,
           aliases=("acc", "quant_accuracy"),
           description=f"quantized accuracy against the labels, {_FRACTION}"),
    Metric("accuracy_drop", False, "points", needs_labels=True, kind="accuracy", percent=True, aliases=("acc_drop",),
           description="float accuracy minus quantized accuracy, in percentage points"),
    Metric("metric", True, kind="user", description="your metric function on the quantized model"),
    Metric("metric_drop", False, kind="user",
           description="your metric function: float model's value minus the quantized model's"),
)}

_BY_NAME: dict[str, Metric] = {**{a: m for m in METRICS.values() for a in m.aliases}, **METRICS}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def get_metric(name: str | Metric) -> Metric:
    """The metric called ``name`` (any spelling or alias).

    Raises:
        ConfigError: unknown name.
    """
    if isinstance(name, Metric):
        return name
    metric = _BY_NAME.get(_key(name)) if isinstance(name, str) else None
    if metric is None:
        raise ConfigError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return metric


def metric_names(*kinds: str, cli: bool = False) -> list[str]:
    """Canonical names (or CLI spellings) of the metrics of ``kinds`` (default: all), in registry order."""
    return [m.cli_name if cli else m.name for m in METRICS.values() if not kinds or m.kind in kinds]


def worst_value(report: Report, metric: str | Metric) -> float:
    """``metric`` on a report: its worst output (NaN counts as worst), or the accuracy value.

    Raises:
        ConfigError: the report cannot give that metric (no labels, no class-score output, or a
            user metric, which needs the metric function).
    """
    spec = get_metric(metric)
    if spec.kind == "accuracy":
        value = spec.report_value(report)
        if value is None:
            raise ConfigError(f"{spec.name} needs labels in the evaluation data and a class-score output")
        return value
    if spec.kind != "output":
        raise ConfigError(f"{spec.name} needs a metric function (metric=... / --metric-fn MODULE:FUNC)")
    values = [v for v in (spec.output_value(o) for o in report.outputs) if v is not None]
    if not values:
        raise ConfigError(f"no output has a {spec.field} ({spec.name} needs class scores [N, C])"
                          if spec.name in ("top1", "top5") else f"no output has a {spec.field}")
    if any(math.isnan(v) for v in values):
        return math.nan
    return min(values) if spec.higher_is_better else max(values)


# ------------------------------------------------------------------------------------ targets

_PATTERN = re.compile(r"^\s*([A-Za-z][\w\-]*)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(%?)\s*$")
_OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}


@dataclass(frozen=True)
class Target:
    """A parsed goal, e.g. ``Target("cosine", ">=", 0.999)``; ``metric`` is a canonical name."""

    metric: str
    op: str
    value: float

    @property
    def spec(self) -> Metric:
        """The registry entry of :attr:`metric`."""
        return get_metric(self.metric)

    def holds(self, value: float) -> bool:
        """Whether a measured ``value`` meets the goal (NaN never does)."""
        return not math.isnan(value) and _OPS[self.op](value, self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_target(text: str | Target) -> Target:
    """Parse ``"cosine>=0.999"``-style text (``METRIC OP VALUE``, an optional ``%``).

    ``%`` divides a fraction metric by 100 (``top1>=97%`` is ``top1>=0.97``) and is allowed on
    ``accuracy_drop``, which is in points already.

    Raises:
        ConfigError: unknown metric, bad syntax, an operator pointing the wrong way, or a value
            out of the metric's range.
    """
    if isinstance(text, Target):
        return text
    match = _PATTERN.match(text) if isinstance(text, str) else None
    known = ", ".join(METRICS)
    if match is None:
        raise ConfigError(f"target {text!r} is not 'METRIC>=VALUE' or 'METRIC<=VALUE' (metrics: {known})")
    name, op, number, percent = match.groups()
    spec = _BY_NAME.get(_key(name))
    if spec is None:
        raise ConfigError(f"target {text!r}: unknown metric {name!r} (known: {known})")
    value = float(number)
    if percent and not spec.percent:
        fits = ", ".join(m.name for m in METRICS.values() if m.percent)
        raise ConfigError(f"target {text!r}: '%' only fits {fits}")
    if percent and spec.fraction:
        value /= 100.0
    if spec.higher_is_better != (op in (">=", ">")):
        raise ConfigError(f"target {text!r}: {spec.name} is better when "
                          f"{'higher' if spec.higher_is_better else 'lower'}, use {spec.operator}")
    try:
        spec.check_threshold(value)
    except ConfigError as exc:
        raise ConfigError(f"target {text!r}: {exc}") from None
    return Target(spec.name, op, value)
