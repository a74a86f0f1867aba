"""The validation report as plain data: dataclasses that round-trip to JSON and print as text.

JSON conventions (``schema_version`` 2; version 1 files still load):

* Non-finite floats are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"`` so that the file
  is strict JSON (``json.loads`` in any language reads it). An SQNR of ``"inf"`` means the quantized
  output is bit-identical to the float output. Reading accepts these strings (any case, also
  ``"Infinity"``) as well as plain numbers for every float field.
* Unknown keys are ignored when reading, so a file written by a newer onnxq with extra fields still
  loads; a file with a *higher* ``schema_version`` than this onnxq knows is refused.
* ``config`` is copied as given; numpy scalars/arrays, enums, paths and sets in it are converted to
  plain JSON values (and non-finite floats to the strings above, which are not converted back).

Version history: 2 added ``layers`` (per-layer error, :class:`LayerMetrics`), ``fallback``
(:class:`FallbackStep`), ``target`` and ``target_met`` (issue 5); a version-1 file loads with
those empty / ``None``. Within version 2, ``passes`` (accuracy-recovery passes, issue 10) was added
as an optional list; files without it load with it empty. ``latency`` gained the optional
percentile spread, ``warmup``, ``stop`` and ``seconds`` (issue 12); older files load with them ``None``.
``framework_names`` (ONNX node name -> the user's layer name) and ``LayerMetrics.framework_name``
are optional (issue 12); older files load with them empty / ``None``. ``timings`` (seconds per stage
of the run, issue 13) is optional; older files load with it empty. ``tensors`` (the plan's
per-tensor specs, issue 9) is optional; older files load with it empty.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._atomic import write_text_atomic
from ..errors import ConfigError, DataError
from ..metrics import METRICS, get_metric
from ..names import display_name

SCHEMA_VERSION = 2

#: Fields of :class:`OutputMetrics` where a larger value is better, and where a smaller one is
#: (directions from :mod:`onnxq.metrics`).
HIGHER_IS_BETTER = frozenset(m.field for m in METRICS.values() if m.field and m.higher_is_better)
LOWER_IS_BETTER = frozenset(m.field for m in METRICS.values() if m.field and not m.higher_is_better)

_NONFINITE_IN = {"inf": math.inf, "+inf": math.inf, "infinity": math.inf, "+infinity": math.inf,
                 "-inf": -math.inf, "-infinity": -math.inf, "nan": math.nan}


@dataclass
class OutputMetrics:
    """How close one quantized model output stays to the float output, over all evaluation samples.

    Each field is the value of one metric of :mod:`onnxq.metrics` (``cosine``, ``min_cosine``,
    ``sqnr``, ``max_abs``, ``mean_abs``, ``top1``, ``top5``).

    Attributes:
        name: the graph output name.
        max_abs_error: largest ``|float - quant|`` over every element.
        mean_abs_error: mean ``|float - quant|`` over every element.
        cosine: mean over samples (axis 0) of the cosine similarity of the flattened outputs;
            two all-zero samples count as 1.
        min_cosine: the worst sample's cosine similarity.
        sqnr_db: ``10 * log10(sum(float^2) / sum((float - quant)^2))``; ``inf`` when identical.
        top1_agreement: for class scores ``[N, C]``: fraction of samples whose argmax agrees.
        top5_agreement: for class scores with ``C >= 5``: fraction of samples where the float
            top-1 class is within the quantized top 5.
    """

    name: str
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    min_cosine: float
    sqnr_db: float
    top1_agreement: float | None = None
    top5_agreement: float | None = None


@dataclass
class LatencyMetrics:
    """Median latency of one batch, float versus quantized, in milliseconds (see :mod:`onnxq.latency`).

    Attributes:
        float_ms: median float latency.
        quant_ms: median quantized latency.
        speedup: ``float_ms / quant_ms`` (below 1: the quantized model is slower; see
            :func:`speed_text`).
        batch_size: samples in the timed batch.
        threads: intra-op threads requested; ``None`` means ONNX Runtime's default.
        runs: timed runs per model (after warm-up).
        float_p10_ms, float_p90_ms: the float model's 10th and 90th percentile (the spread).
        quant_p10_ms, quant_p90_ms: the same for the quantized model.
        warmup: untimed warm-up runs per model.
        stop: why timing stopped: ``"runs"`` (the count asked for), ``"stable"`` (the medians
            settled), ``"max_runs"`` or ``"budget"`` (before they settled).
        seconds: wall time of the measurement.
    """

    float_ms: float
    quant_ms: float
    speedup: float
    batch_size: int
    threads: int | None
    runs: int
    float_p10_ms: float | None = None
    float_p90_ms: float | None = None
    quant_p10_ms: float | None = None
    quant_p90_ms: float | None = None
    warmup: int | None = None
    stop: str | None = None
    seconds: float | None = None

    def format(self) -> str:
        """One line: both medians with their spreads, ``xN faster``/``xN slower`` and how measured."""
        def one(median: float, p10: float | None, p90: float | None) -> str:
            spread = (f" (p10-p90 {format_number(p10, '.3f')}-{format_number(p90, '.3f')})"
                      if p10 is not None and p90 is not None else "")
            return f"{format_number(median, '.3f')} ms{spread}"

        threads = "ORT default" if self.threads is None else str(self.threads)
        how = f"median of {self.runs} interleaved runs" + _STOP_TEXT.get(self.stop or "runs", f", {self.stop}")
        return (f"float {one(self.float_ms, self.float_p10_ms, self.float_p90_ms)} vs quant "
                f"{one(self.quant_ms, self.quant_p10_ms, self.quant_p90_ms)}: {speed_text(self.speedup)} "
                f"(batch {self.batch_size}, threads {threads}, {how})")


#: how :meth:`LatencyMetrics.format` says why timing stopped
_STOP_TEXT = {"runs": "", "stable": ", medians settled", "budget": ", time budget reached before the medians settled",
              "max_runs": ", run cap reached before the medians settled"}


def speed_text(speedup: float) -> str:
    """``x1.80 faster`` for a speed-up of 1.8, ``x1.80 slower`` for 0.556 (never ``x0.56 speedup``),
    ``same speed (x1.00)`` when it rounds to 1."""
    if not math.isfinite(speedup) or speedup <= 0:
        return f"x{format_number(speedup, '.2f')} speedup"
    if f"{speedup:.2f}" == "1.00" or f"{1 / speedup:.2f}" == "1.00":
        return "same speed (x1.00)"
    if speedup >= 1:
        return f"x{speedup:.2f} faster"
    return f"x{1 / speedup:.2f} slower"


@dataclass
class LayerMetrics:
    """The error quantization adds at one quantized tensor (see :func:`onnxq.analyze`).

    Attributes:
        tensor: the tensor's name in the float model (activation, or weight initializer).
        node: for an activation the node producing it in the float model (``None`` for a graph
            input); for a weight the node reading it.
        op_type: that node's op type.
        kind: ``"activation"`` or ``"weight"``.
        sqnr_db: SQNR of this tensor's own quantization, ``10 log10(sum x^2 / sum (x - q(x))^2)``:
            the float activation against itself quantized with the model's scale and zero point
            (upstream errors excluded), or the float weight against its dequantized copy;
            ``inf`` when lossless. The ranking key (lowest = most harmful).
        cosine: mean per-sample cosine of the same pair (one sample for a weight).
        fallback_nodes: float-model nodes that must stay float to remove this error.
        model_sqnr_db: activations: SQNR of what the quantized model computes there (including
            every upstream error) against the float activation; ``None`` for weights.
        model_cosine: activations: the mean per-sample cosine of that pair; ``None`` for weights.
        framework_name: the layer of the user's model that ``node`` came from (``layer2.conv1``,
            see :mod:`onnxq.names`), when the graph tells.
    """

    tensor: str
    node: str | None
    op_type: str | None
    kind: str
    sqnr_db: float
    cosine: float
    fallback_nodes: list[str] = field(default_factory=list)
    model_sqnr_db: float | None = None
    model_cosine: float | None = None
    framework_name: str | None = None


@dataclass
class FallbackStep:
    """One step of the accuracy-driven fallback (see :mod:`onnxq.tune`).

    Attributes:
        step: 0 for the model as first quantized, then 1, 2, ...
        node: the node this step kept in float (``None`` for step 0).
        op_type: its op type.
        metric_value: the target's metric measured after this step.
        goal_met: whether the target held after this step.
        nodes: every node this step kept in float (``node`` plus a folded Relu/Clip and the other
            nodes quantizing the same tensor).
        tensor: the tensor whose error this step removed (the analysis entry it acted on).
        kept: ``False`` when the step made the metric worse and was undone (its nodes stay
            quantized in the result).
    """

    step: int
    node: str | None
    op_type: str | None
    metric_value: float
    goal_met: bool
    nodes: list[str] = field(default_factory=list)
    tensor: str | None = None
    kept: bool = True


@dataclass
class Report:
    """Everything onnxq knows about how a quantized model compares with its float original.

    Attributes:
        outputs: per-output closeness metrics, in the float model's output order.
        samples: number of evaluation samples compared.
        float_size_bytes: size of the float model (with external data).
        quant_size_bytes: size of the quantized model.
        size_ratio: ``float_size_bytes / quant_size_bytes``.
        latency: timing of one batch, or ``None`` when not measured.
        float_accuracy: top-1 accuracy of the float model against the labels, if any (a fraction).
        quant_accuracy: top-1 accuracy of the quantized model against the labels, if any: the
            metric ``accuracy``; ``accuracy_drop`` is ``100 * (float_accuracy - quant_accuracy)``.
        mode: quantization mode (filled by the caller).
        config: the configuration used, as a JSON-able dict (filled by the caller).
        notes: human-readable remarks, e.g. ``"Conv left in float: ..."``.
        float_nodes: names of the nodes the plan kept in float.
        float_node_details: every compute node ONNX Runtime runs in float, as
            ``{"name", "op_type", "reason"}`` (static QDQ; see :mod:`onnxq.strict`).
        qat_tensors: tensors whose quantization parameters came with the model (QAT import), as
            ``{"name", "kind", "scale", "zero_point", "dtype", "axis"}`` (see :mod:`onnxq.qat`).
        layers: per-layer quantization error, most harmful first (filled when the fallback of
            ``QuantConfig.target`` analysed the model; see :func:`onnxq.analyze`).
        fallback: the steps of the accuracy-driven fallback, step 0 being the first quantization.
        target: the goal of ``QuantConfig.target`` in canonical text (``"cosine>=0.999"``; metric
            names of :mod:`onnxq.metrics`), if any.
        target_met: whether the goal held at the end; ``None`` without a target.
        passes: what each accuracy-recovery pass did (equalization, bias correction, adaptive
            rounding), as ``{"name", "summary", "changed", "details", "seconds"}``.
        framework_names: ONNX node name -> the layer of the user's model it came from
            (``layer2.conv1``; :mod:`onnxq.names`), for the nodes this report names.
        timings: wall-clock seconds per stage of the run (``prepare``, ``calibrate``, ``passes``,
            ``rewrite``, ``tune``, ``validate``, ``latency``), for the stages that ran.
        tensors: the plan's per-tensor specs (:class:`onnxq.plan.TensorSpec`), what the rewrite did to
            each tensor it converted: ``{"name", "role", "dtype", "symmetric", "axis", "bits",
            "block_size", "dynamic"}``.
        schema_version: version of this JSON layout.
    """

    outputs: list[OutputMetrics]
    samples: int
    float_size_bytes: int
    quant_size_bytes: int
    size_ratio: float
    latency: LatencyMetrics | None = None
    float_accuracy: float | None = None
    quant_accuracy: float | None = None
    mode: str | None = None
    config: dict | None = None
    notes: list[str] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)
    float_node_details: list[dict[str, Any]] = field(default_factory=list)
    qat_tensors: list[dict[str, Any]] = field(default_factory=list)
    layers: list[LayerMetrics] = field(default_factory=list)
    fallback: list[FallbackStep] = field(default_factory=list)
    target: str | None = None
    target_met: bool | None = None
    passes: list[dict[str, Any]] = field(default_factory=list)
    framework_names: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    tensors: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    # ---------------------------------------------------------------- queries

    def worst(self, metric: str = "cosine") -> OutputMetrics:
        """Return the output that is worst on ``metric``.

        ``metric`` is a per-output metric of :mod:`onnxq.metrics` (``cosine``, ``min_cosine``,
        ``sqnr``, ``max_abs``, ``mean_abs``, ``top1``, ``top5``, any spelling) or an
        :class:`OutputMetrics` field name (``sqnr_db``, ``top1_agreement`` ...). Lowest value for
        similarity metrics, highest for errors. NaN counts as worst; outputs where the metric is
        ``None`` are skipped.

        Raises:
            ConfigError: unknown metric, or no output has a value for it.
        """
        known = ", ".join(sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER))
        try:
            spec = get_metric(metric)
        except ConfigError:
            spec = None
        if spec is None or spec.field is None:
            raise ConfigError(f"unknown metric {metric!r}; known: {known}")
        candidates = [o for o in self.outputs if spec.output_value(o) is not None]
        if not candidates:
            raise ConfigError(f"no output of the report has a value for {metric!r}")
        sign = 1.0 if spec.higher_is_better else -1.0

        def badness_key(o: OutputMetrics) -> tuple[int, float]:
            value = float(spec.output_value(o))
            return (0, 0.0) if math.isnan(value) else (1, sign * value)

        return min(candidates, key=badness_key)

    def display_name(self, node: str | None) -> str:
        """``node (layer2.conv1)`` when the user's layer name of ``node`` is known, else ``node``."""
        return display_name(node, self.framework_names)

    # ---------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (non-finite floats as ``"inf"``/``"-inf"``/``"nan"``)."""
        return to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Build a Report from :meth:`to_dict` output (or the parsed JSON file).

        Raises:
            DataError: the dict is not a report, misses a field, or has a newer schema version.
        """
        if not isinstance(data, dict):
            raise DataError(f"a report must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise DataError(f"report schema_version {version!r} is not supported "
                            f"(this onnxq reads up to {SCHEMA_VERSION})")
        try:
            outputs = [_output_from_dict(o) for o in _require(data, "outputs", "report")]
            latency_raw = data.get("latency")
            return cls(
                outputs=outputs,
                samples=int(_require(data, "samples", "report")),
                float_size_bytes=int(_require(data, "float_size_bytes", "report")),
                quant_size_bytes=int(_require(data, "quant_size_bytes", "report")),
                size_ratio=to_float(_require(data, "size_ratio", "report")),
                latency=None if latency_raw is None else _latency_from_dict(latency_raw),
                float_accuracy=to_optional_float(data.get("float_accuracy")),
                quant_accuracy=to_optional_float(data.get("quant_accuracy")),
                mode=data.get("mode"),
                config=data.get("config"),
                notes=[str(n) for n in data.get("notes") or []],
                float_nodes=[str(n) for n in data.get("float_nodes") or []],
                float_node_details=[dict(d) for d in data.get("float_node_details") or []],
                qat_tensors=[dict(d) for d in data.get("qat_tensors") or []],
                layers=[_layer_from_dict(d) for d in data.get("layers") or []],
                fallback=[_step_from_dict(d) for d in data.get("fallback") or []],
                target=None if data.get("target") is None else str(data["target"]),
                target_met=None if data.get("target_met") is None else bool(data["target_met"]),
                passes=[dict(d) for d in data.get("passes") or []],
                framework_names={str(k): str(v) for k, v in (data.get("framework_names") or {}).items()},
                timings={str(k): to_float(v) for k, v in (data.get("timings") or {}).items()},
                tensors=[dict(d) for d in data.get("tensors") or []],
                schema_version=SCHEMA_VERSION,
            )
        except (TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"malformed report: {exc}") from exc

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int | None = 2) -> str:
        """Serialise to strict JSON; also write it atomically to ``path`` when given.

        Returns:
            The JSON text.
        """
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            write_text_atomic(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike[str]) -> Report:
        """Read a report from JSON text or from a JSON file.

        A ``str`` whose first non-blank character is ``{`` is parsed as JSON text; any other
        ``str`` or path-like is read as a file.

        Raises:
            DataError: the file is missing or the text is not a valid report.
        """
        if isinstance(text_or_path, str) and text_or_path.lstrip().startswith("{"):
            text = text_or_path
        else:
            path = os.fspath(text_or_path)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                raise DataError(f"cannot read report file {path!r}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"report is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    # ---------------------------------------------------------------- text

    def format(self) -> str:
        """Return the human-readable summary the CLI prints (an aligned table plus totals)."""
        lines: list[str] = []
        title = f"onnxq report ({self.mode})" if self.mode else "onnxq report"
        lines.append(f"{title}: {self.samples} samples")
        header = ("output", "cosine", "min cosine", "SQNR dB", "max abs", "top-1 agr.")
        rows = [(o.name, format_number(o.cosine, ".6f"), format_number(o.min_cosine, ".6f"),
                 format_number(o.sqnr_db, ".2f"), format_number(o.max_abs_error, ".4g"),
                 format_percent(o.top1_agreement)) for o in self.outputs]
        lines.extend(format_table(header, rows))
        lines.append(f"size:     {format_bytes(self.float_size_bytes)} -> "
                     f"{format_bytes(self.quant_size_bytes)} (x{format_number(self.size_ratio, '.2f')})")
        if self.latency is not None:
            lines.append(f"latency:  {self.latency.format()}")
        if self.float_accuracy is not None or self.quant_accuracy is not None:
            lines.append(f"accuracy: {format_percent(self.float_accuracy)} -> "
                         f"{format_percent(self.quant_accuracy)}")
        if self.float_nodes:
            shown = ", ".join(self.display_name(n) for n in self.float_nodes[:8])
            more = f", ... (+{len(self.float_nodes) - 8})" if len(self.float_nodes) > 8 else ""
            lines.append(f"float nodes ({len(self.float_nodes)}): {shown}{more}")
        if self.tensors:
            lines.append(f"specs:    {format_specs(self.tensors)}")
        if self.target is not None:
            verdict = {True: "met", False: "NOT met", None: "not checked"}[self.target_met]
            lines.append(f"target:   {self.target} {verdict}" + (
                f" after {len(self.fallback) - 1} fallback step(s)" if self.fallback else ""))
            lines.extend(f"  step {s.step}: " + (f"kept {', '.join(map(self.display_name, s.nodes or [s.node]))}"
                                                  " float -> "
                                                  if s.step else "first quantization -> ")
                         + f"{format_number(s.metric_value, '.6g')}" + ("" if s.kept else " (worse: undone)")
                         for s in self.fallback)
        lines.extend(f"pass:     {p.get('name')}: {p.get('summary')} ({float(p.get('seconds') or 0):.1f} s)"
                     for p in self.passes)
        if self.timings:
            lines.append(f"time:     {format_timings(self.timings)}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


# ------------------------------------------------------------------------- formatting helpers

#: The stages of a run in the order the time line shows them (other names follow).
STAGES = ("export", "prepare", "calibrate", "passes", "rewrite", "tune", "validate", "latency")


def format_timings(timings: dict[str, float]) -> str:
    """``prepare 0.12 s, calibrate 1.30 s, ... (total 2.05 s)``, the stages in :data:`STAGES` order."""
    order = sorted(timings, key=lambda s: STAGES.index(s) if s in STAGES else len(STAGES))
    parts = [f"{stage} {timings[stage]:.2f} s" for stage in order]
    return ", ".join(parts) + f" (total {sum(timings.values()):.2f} s)"


_ROLES = {"activation": "activations", "weight": "weights", "bias": "biases", "constant": "constants"}


def format_specs(tensors: list[dict[str, Any]]) -> str:
    """``activations uint8 asymmetric per-tensor (82); weights int8 symmetric per-channel axis 0 (65,
    7-bit: 44)``: the per-tensor specs of a report grouped by role and kind, with counts."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for spec in tensors:
        groups.setdefault(str(spec.get("role")), {}).setdefault(_spec_kind(spec), []).append(spec)
    parts = []
    for role, kinds in groups.items():
        described = []
        for kind, specs in kinds.items():
            full = _WIDTHS.get(str(specs[0].get("dtype")))
            reduced = sum(1 for s in specs if full is not None and s.get("bits") is not None and s["bits"] < full)
            counts = f"{len(specs)}, {full - 1}-bit: {reduced}" if reduced and full else f"{len(specs)}"
            described.append(f"{kind} ({counts})")
        parts.append(f"{_ROLES.get(role, role)} " + ", ".join(described))
    return "; ".join(parts)


_WIDTHS = {"uint8": 8, "int8": 8, "uint16": 16, "int16": 16, "int32": 32, "int4": 4, "float16": 16}


def _spec_kind(spec: dict[str, Any]) -> str:
    """``int8 symmetric per-channel axis 0``, ``int4 asymmetric blocks of 32 along axis 0``, ``float16``."""
    words = [str(spec.get("dtype"))]
    if spec.get("symmetric") is not None:
        words.append("symmetric" if spec["symmetric"] else "asymmetric")
    if spec.get("block_size"):
        words.append(f"blocks of {spec['block_size']} along axis {spec.get('axis')}")
    elif spec.get("dtype") != "float16":
        words.append("per-tensor" if spec.get("axis") is None else f"per-channel axis {spec['axis']}")
    if spec.get("dynamic"):
        words.append("run-time range")
    return " ".join(words)


def format_number(value: float | None, spec: str) -> str:
    """Format a float with ``spec``; ``None`` as ``-`` and infinities as ``inf``/``-inf``."""
    if value is None:
        return "-"
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def format_percent(value: float | None) -> str:
    """Format a fraction in [0, 1] as a percentage with two decimals; ``None`` as ``-``."""
    if value is None:
        return "-"
    value = float(value)
    return "nan" if math.isnan(value) else f"{100.0 * value:.2f}%"


def format_bytes(n: int) -> str:
    """Format a byte count with a binary unit (B, KiB, MiB, GiB)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024.0 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024.0
    raise AssertionError("unreachable")


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """An aligned text table: a header line, a rule, one line per row (first column left-aligned)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return " | ".join([first, *rest]).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return out


# ------------------------------------------------------------------------- JSON helpers

def to_jsonable(value: Any) -> Any:
    """Turn ``value`` into plain JSON values (non-finite floats become strings)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(value, key=str)]
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    raise DataError(f"cannot store a {type(value).__name__} in a report")


def to_float(value: Any) -> float:
    """A JSON number, or one of the strings ``"inf"``/``"-inf"``/``"nan"``, as a float.

    Raises:
        DataError: anything else.
    """
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _NONFINITE_IN:
            return _NONFINITE_IN[key]
        raise DataError(f"expected a number, got the string {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"expected a number, got {value!r}")
    return float(value)


def to_optional_float(value: Any) -> float | None:
    """:func:`to_float`, with ``None`` kept."""
    return None if value is None else to_float(value)


def _require(data: dict[str, Any], key: str, what: str) -> Any:
    if not isinstance(data, dict):
        raise DataError(f"{what} must be a JSON object, got {type(data).__name__}")
    if key not in data:
        raise DataError(f"{what} is missing the field {key!r}")
    return data[key]


def _output_from_dict(data: dict[str, Any]) -> OutputMetrics:
    return OutputMetrics(
        name=str(_require(data, "name", "output metrics")),
        max_abs_error=to_float(_require(data, "max_abs_error", "output metrics")),
        mean_abs_error=to_float(_require(data, "mean_abs_error", "output metrics")),
        cosine=to_float(_require(data, "cosine", "output metrics")),
        min_cosine=to_float(_require(data, "min_cosine", "output metrics")),
        sqnr_db=to_float(_require(data, "sqnr_db", "output metrics")),
        top1_agreement=to_optional_float(data.get("top1_agreement")),
        top5_agreement=to_optional_float(data.get("top5_agreement")),
    )


def _latency_from_dict(data: dict[str, Any]) -> LatencyMetrics:
    threads = data.get("threads")
    return LatencyMetrics(
        float_ms=to_float(_require(data, "float_ms", "latency")),
        quant_ms=to_float(_require(data, "quant_ms", "latency")),
        speedup=to_float(_require(data, "speedup", "latency")),
        batch_size=int(_require(data, "batch_size", "latency")),
        threads=None if threads is None else int(threads),
        runs=int(_require(data, "runs", "latency")),
        float_p10_ms=to_optional_float(data.get("float_p10_ms")),
        float_p90_ms=to_optional_float(data.get("float_p90_ms")),
        quant_p10_ms=to_optional_float(data.get("quant_p10_ms")),
        quant_p90_ms=to_optional_float(data.get("quant_p90_ms")),
        warmup=None if data.get("warmup") is None else int(data["warmup"]),
        stop=_optional_str(data.get("stop")),
        seconds=to_optional_float(data.get("seconds")),
    )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _layer_from_dict(data: dict[str, Any]) -> LayerMetrics:
    return LayerMetrics(
        tensor=str(_require(data, "tensor", "layer metrics")),
        node=_optional_str(data.get("node")),
        op_type=_optional_str(data.get("op_type")),
        kind=str(_require(data, "kind", "layer metrics")),
        sqnr_db=to_float(_require(data, "sqnr_db", "layer metrics")),
        cosine=to_float(_require(data, "cosine", "layer metrics")),
        fallback_nodes=[str(n) for n in data.get("fallback_nodes") or []],
        model_sqnr_db=to_optional_float(data.get("model_sqnr_db")),
        model_cosine=to_optional_float(data.get("model_cosine")),
        framework_name=_optional_str(data.get("framework_name")),
    )


def _step_from_dict(data: dict[str, Any]) -> FallbackStep:
    return FallbackStep(
        step=int(_require(data, "step", "fallback step")),
        node=_optional_str(data.get("node")),
        op_type=_optional_str(data.get("op_type")),
        metric_value=to_float(_require(data, "metric_value", "fallback step")),
        goal_met=bool(_require(data, "goal_met", "fallback step")),
        nodes=[str(n) for n in data.get("nodes") or []],
        tensor=_optional_str(data.get("tensor")),
        kept=bool(data.get("kept", True)),
    )
