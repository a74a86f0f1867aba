"""A yes/no gate for CI: does every output of the quantized model meet a threshold on one metric?

:func:`compare` runs :func:`onnxq.validate` and checks each output against the threshold;
:class:`Comparison` holds the verdicts and the full report, prints as text, round-trips to JSON
and writes JUnit XML (:meth:`Comparison.to_junit`) that GitHub Actions test reporters, GitLab
(``artifacts:reports:junit``) and Jenkins (``junit`` step) display: one ``<testsuite
name="onnxq compare">``, one ``<testcase>`` per output, a ``<failure>`` on a miss and every metric
of the output in ``<system-out>``.

Metrics (the ``--metric`` of ``onnxq compare``) and when an output passes:

==================  =============================================================================
``cosine``          mean per-sample cosine similarity to float ``>= threshold`` (e.g. 0.999)
``min-cosine``      the worst sample's cosine similarity ``>= threshold``
``sqnr``            signal-to-quantization-noise ratio in dB ``>= threshold`` (e.g. 30)
``max-abs``         largest absolute difference to float ``<= threshold``
``mean-abs``        mean absolute difference to float ``<= threshold``
``top1``            fraction of samples whose argmax agrees with float ``>= threshold`` (0..1);
                    class-score outputs ``[N, C]`` only, other outputs are skipped
``accuracy``        task accuracy of the quantized model against labels ``>= threshold`` (a
                    fraction 0..1, e.g. 0.98); checked on the class-score output that is scored
``accuracy-drop``   float accuracy minus quantized accuracy, in percentage points,
                    ``<= threshold`` (e.g. 0.5); same output as ``accuracy``
==================  =============================================================================

The names, directions and units are those of the one registry, :mod:`onnxq.metrics`; the API also
takes their ``_`` spellings and aliases (``accuracy_drop``, ``min_cosine``, ``sqnr_db``), so the
metric and value of a ``QuantConfig.target`` (``metrics.parse_target``) gate the same way here.
"""

from __future__ import annotations

import json
import logging
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ._junit import finish_junit as _finish_junit
from ._junit import junit_timestamp as _junit_timestamp
from ._junit import xml_text as _xml_text
from .errors import ConfigError, DataError, one_line
from .engine import sample_specs
from .data import DEFAULT_BATCH_SIZE, load_data
from .latency import LatencyOptions
from .metrics import Metric, get_metric
from .model import load_model, load_model_header
from .report.schema import OutputMetrics, Report, format_number, to_float, to_jsonable, to_optional_float
from .validate import validate

logger = logging.getLogger(__name__)

__all__ = ["METRICS", "Comparison", "Metric", "OutputCheck", "check_report", "compare", "junit_error",
           "read_labels"]


#: The metrics :func:`compare` gates on, by their command-line names (entries of :mod:`onnxq.metrics`).
METRICS: dict[str, Metric] = {m.cli_name: m for m in map(get_metric, (
    "cosine", "min_cosine", "sqnr", "max_abs", "mean_abs", "top1", "accuracy", "accuracy_drop"))}


@dataclass
class OutputCheck:
    """The verdict for one output.

    Attributes:
        output: the graph output name.
        metric: the metric's command-line name (a key of :data:`METRICS`).
        value: the measured value; ``None`` when the metric does not apply to this output.
        threshold: the threshold it was checked against.
        passed: ``True``/``False``; ``None`` when skipped (the metric does not apply).
        message: one line saying what was measured and how it relates to the threshold.
    """

    output: str
    metric: str
    value: float | None
    threshold: float
    passed: bool | None
    message: str


@dataclass
class Comparison:
    """The result of :func:`compare`: one verdict per output plus the full validation report.

    Attributes:
        metric: the metric's command-line name (a key of :data:`METRICS`).
        threshold: the threshold.
        checks: one verdict per output, in the float model's output order.
        report: the validation report the verdicts were taken from.
        float_model: the float model's path, when it was given as a path.
        quant_model: the quantized model's path, when it was given as a path.
        seconds: wall time of the comparison.
    """

    metric: str
    threshold: float
    checks: list[OutputCheck]
    report: Report
    float_model: str | None = None
    quant_model: str | None = None
    seconds: float = 0.0
    timestamp: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def passed(self) -> bool:
        """Every checked output meets the threshold (skipped outputs do not count)."""
        return all(c.passed is not False for c in self.checks) and any(c.passed for c in self.checks)

    @property
    def failures(self) -> list[OutputCheck]:
        """The outputs that miss the threshold."""
        return [c for c in self.checks if c.passed is False]

    # ------------------------------------------------------------------ text / JSON

    def format(self) -> str:
        """One line per output (``PASS``/``FAIL``/``SKIP``) and a verdict line."""
        metric = get_metric(self.metric)
        lines = []
        for c in self.checks:
            tag = "SKIP" if c.passed is None else "PASS" if c.passed else "FAIL"
            lines.append(f"{tag} {c.message}")
        failed = len(self.failures)
        checked = sum(c.passed is not None for c in self.checks)
        verdict = "passed" if self.passed else "FAILED"
        lines.append(f"onnxq compare {verdict}: {checked - failed} of {checked} output(s) meet "
                     f"{self.metric} {metric.operator} {_fmt(self.threshold)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats as ``"inf"``/``"-inf"``/``"nan"``)."""
        return to_jsonable({
            "metric": self.metric, "threshold": self.threshold, "passed": self.passed,
            "checks": [vars(c) for c in self.checks], "float_model": self.float_model,
            "quant_model": self.quant_model, "seconds": self.seconds, "timestamp": self.timestamp,
            "report": self.report.to_dict(),
        })

    def to_json(self, *, indent: int | None = 2) -> str:
        """Strict JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        """Rebuild a comparison from :meth:`to_dict` output.

        Raises:
            DataError: the dict is not a comparison.
        """
        try:
            checks = [OutputCheck(output=str(c["output"]), metric=str(c["metric"]),
                                  value=to_optional_float(c.get("value")), threshold=to_float(c["threshold"]),
                                  passed=c.get("passed"), message=str(c.get("message", "")))
                      for c in data["checks"]]
            return cls(metric=str(data["metric"]), threshold=to_float(data["threshold"]), checks=checks,
                       report=Report.from_dict(data["report"]), float_model=data.get("float_model"),
                       quant_model=data.get("quant_model"),
                       seconds=float(data.get("seconds", 0.0)), timestamp=str(data.get("timestamp", "")))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"malformed comparison: {exc}") from exc

    # ------------------------------------------------------------------ JUnit

    def to_junit(self, path: str | os.PathLike[str] | None = None) -> str:
        """JUnit XML of the verdicts; also written atomically to ``path`` when given.

        Layout (valid against the JUnit schema of Jenkins' xunit plug-in, which GitLab and the
        GitHub reporters also read): ``<testsuites>`` holding one ``<testsuite name="onnxq
        compare">`` with ``tests``/``failures``/``errors``/``skipped`` counts and the metric,
        threshold and models as ``<properties>``; one ``<testcase classname="onnxq.compare.METRIC"
        name="OUTPUT">`` per output, with ``<failure message="...">`` when it misses the
        threshold, ``<skipped>`` when the metric does not apply, and the output's metrics in
        ``<system-out>``. :func:`junit_error` writes the same layout for a comparison that could
        not run.

        Returns:
            The XML text.
        """
        skipped = sum(c.passed is None for c in self.checks)
        root, suite = _junit_suite(metric=self.metric, threshold=self.threshold, tests=len(self.checks),
                                   failures=len(self.failures), errors=0, skipped=skipped, seconds=self.seconds,
                                   timestamp=self.timestamp, float_model=self.float_model,
                                   quant_model=self.quant_model, samples=self.report.samples)
        by_name = {o.name: o for o in self.report.outputs}
        for check in self.checks:
            case = ET.SubElement(suite, "testcase", {"classname": f"onnxq.compare.{self.metric}",
                                                     "name": _xml_text(check.output), "time": "0"})
            message = _xml_text(check.message)
            if check.passed is False:
                failure = ET.SubElement(case, "failure", {"message": message, "type": "ThresholdNotMet"})
                failure.text = message
            elif check.passed is None:
                ET.SubElement(case, "skipped", {"message": message})
            out = ET.SubElement(case, "system-out")
            out.text = _xml_text(_metrics_text(by_name.get(check.output), self.report))
        return _finish_junit(root, path)


def junit_error(error: BaseException, path: str | os.PathLike[str] | None = None, *, metric: str,
                threshold: float, float_model: Any = None, quant_model: Any = None,
                seconds: float = 0.0) -> str:
    """JUnit XML for a comparison that could not run; also written atomically to ``path`` when given.

    Same layout as :meth:`Comparison.to_junit`, with one ``<testcase name="compare">`` holding an
    ``<error type="ERROR_CLASS" message="ONE LINE">`` (the full message as its text), so a CI
    reporter shows an error instead of a missing report.

    Returns:
        The XML text.
    """
    timestamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    root, suite = _junit_suite(metric=metric, threshold=threshold, tests=1, failures=0, errors=1, skipped=0,
                               seconds=seconds, timestamp=timestamp, float_model=_path_or_none(float_model),
                               quant_model=_path_or_none(quant_model), samples=None)
    case = ET.SubElement(suite, "testcase", {"classname": f"onnxq.compare.{metric}", "name": "compare",
                                             "time": f"{seconds:.3f}"})
    element = ET.SubElement(case, "error", {"message": _xml_text(one_line(error)), "type": type(error).__name__})
    element.text = _xml_text(str(error) or type(error).__name__)
    return _finish_junit(root, path)


def compare(float_model: Any, quant_model: Any, data: Any, *, metric: str = "cosine", threshold: float,
            labels: Any = None, batch_size: int = DEFAULT_BATCH_SIZE, limit: int | None = None,
            threads: int | None = None,
            latency: bool | LatencyOptions = False, progress: bool = False, client: Any = None) -> Comparison:
    """Validate ``quant_model`` against ``float_model`` on ``data`` and check every output.

    Args:
        float_model: the float model, or a path to it.
        quant_model: the quantized model, or a path to it.
        data: evaluation data (anything :func:`onnxq.data.load_data` accepts; a ``labels`` key
            of an ``.npz`` supplies labels).
        metric: a key of :data:`METRICS` or its ``_`` spelling (see the module docstring for the
            pass rules).
        threshold: the threshold (a fraction for ``cosine``/``top1``/``accuracy``, dB for
            ``sqnr``, percentage points for ``accuracy-drop``).
        labels: class labels for the accuracy metrics when ``data`` has none: an array, or a
            ``.npy`` / ``.npz`` file (key ``labels``, or its only array); one per sample, in order.
        batch_size: samples per batch.
        limit: compare at most this many samples (the first ones).
        threads: ONNX Runtime intra-op threads.
        latency: also measure latency into the report (never gated): ``True`` or
            :class:`~onnxq.latency.LatencyOptions`.
        progress: progress bar on stderr.
        client: evaluate on a Dask cluster (``pip install 'onnxq[dask]'``): a ``distributed.Client``, or
            ``"tcp://HOST:PORT"`` / ``"local:N"`` for a cluster opened and closed for this call. The batches
            are sharded as in :func:`onnxq.distributed.validate.validate_on_cluster` (a data path is read by
            the workers themselves); the same report and verdicts as in-process (latency aside).

    Returns:
        The verdicts and the report; :attr:`Comparison.passed` is the CI answer.

    Raises:
        ConfigError: unknown metric or a non-finite threshold.
        DataError: the data does not fit, labels are missing or do not fit, or no output has a
            value for the metric.
        ModelError: the models cannot be compared.
    """
    spec = check_metric(metric, threshold)
    metric = spec.cli_name
    started = time.perf_counter()
    label_array = read_labels(labels) if labels is not None else None
    # the inputs are all the data check needs: the graph without its weights, whatever the model's size
    float_proto = (load_model_header(float_model) if isinstance(float_model, (str, os.PathLike))
                   else load_model(float_model, check=False))
    dataset = load_data(data, sample_specs(float_proto), batch_size=batch_size, limit=limit)  # keeps every sample
    if label_array is not None:
        dataset = _Labelled(dataset, label_array, limited=limit is not None)
    elif spec.needs_labels and not dataset.has_labels:
        raise DataError(f"--metric {metric} needs labels: add a 'labels' array to the data file "
                        "or pass --labels FILE.npy")
    del float_proto
    if client is None:
        report = validate(float_model, quant_model, dataset, latency=latency, threads=threads, progress=progress)
    else:
        source = data if isinstance(data, (str, os.PathLike)) and label_array is None else None
        report = _validate_on_cluster(client, float_model, quant_model, dataset, source=source, latency=latency,
                                      threads=threads, progress=progress)
    comparison = Comparison(metric=metric, threshold=float(threshold), checks=check_report(report, metric, threshold),
                            report=report, float_model=_path_or_none(float_model),
                            quant_model=_path_or_none(quant_model), seconds=time.perf_counter() - started)
    logger.debug("compare %s %s %s: %s", metric, spec.operator, threshold,
                 "passed" if comparison.passed else "failed")
    return comparison


def check_metric(metric: str, threshold: float) -> Metric:
    """Return the :class:`~onnxq.metrics.Metric` named ``metric`` (any spelling of :data:`METRICS`).

    Raises:
        ConfigError: unknown metric, one compare cannot gate on, or a threshold that is not a
            finite number (or a fraction above 1).
    """
    try:
        spec = get_metric(metric)
    except ConfigError:
        spec = None
    if spec is None or spec.cli_name not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    spec.check_threshold(threshold)
    return spec


def check_report(report: Report, metric: str, threshold: float) -> list[OutputCheck]:
    """Check every output of ``report`` against ``threshold`` on ``metric``.

    A NaN value fails. Outputs for which the metric is not defined are skipped (``passed is
    None``); the accuracy metrics check the first class-score output and skip the others.

    Raises:
        ConfigError: unknown metric or a non-finite threshold.
        DataError: no output has a value for ``metric`` (e.g. ``top1`` without class scores,
            ``accuracy`` without labels).
    """
    spec = check_metric(metric, threshold)
    metric = spec.cli_name
    checks: list[OutputCheck] = []
    if spec.kind == "output":
        values = {o.name: spec.output_value(o) for o in report.outputs}
        why_none = "not class scores [N, C]"
    else:
        scored = next((o.name for o in report.outputs if o.top1_agreement is not None), None)
        accuracy = spec.report_value(report)
        values = {o.name: (accuracy if o.name == scored else None) for o in report.outputs}
        why_none = "not the scored class-score output"
    if all(v is None for v in values.values()):
        raise DataError(f"no output has a value for metric {metric!r}"
                        + (" (needs an output of class scores [N, C])" if metric == "top1" else
                           " (needs labels and an output of class scores [N, C])" if spec.needs_labels else ""))
    for name, value in values.items():
        if value is None:
            checks.append(OutputCheck(name, metric, None, float(threshold), None,
                                      f"{name}: {metric} not applicable ({why_none})"))
            continue
        ok = spec.passes(value, threshold)
        relation = spec.operator if ok else ("<" if spec.higher_is_better else ">")
        checks.append(OutputCheck(name, metric, value, float(threshold), ok,
                                  f"{name}: {metric} {_fmt(value)}{spec.suffix} {relation} threshold "
                                  f"{_fmt(threshold)}{spec.suffix}"))
    return checks


# ------------------------------------------------------------------------- helpers


def _validate_on_cluster(client: Any, float_model: Any, quant_model: Any, dataset: Any, **kwargs: Any) -> Report:
    """The evaluation sharded over a Dask cluster (a spec string opens one for this call)."""
    from .distributed.cluster import open_cluster
    from .distributed.validate import validate_on_cluster

    with open_cluster(client) as connected:
        report, _ = validate_on_cluster(connected, float_model, quant_model, dataset, **kwargs)
    return report


class _Labelled:
    """A checked Dataset whose labels come from a separate array (streamed alongside)."""

    def __init__(self, dataset: Any, labels: np.ndarray, *, limited: bool) -> None:
        total = dataset.num_samples
        if total is not None:
            if len(labels) < total or (not limited and len(labels) != total):
                raise DataError(f"{len(labels)} labels for {total} evaluation samples")
            labels = labels[:total]
        self._dataset = dataset
        self._labels = labels
        self.batch_size = dataset.batch_size
        self.num_batches = dataset.num_batches
        self.num_samples = total
        self.has_labels = True

    def batches(self) -> Any:
        offset = 0
        for inputs, _ in self._dataset.batches():
            n = len(next(iter(inputs.values())))
            if offset + n > len(self._labels):
                raise DataError(f"{len(self._labels)} labels for more evaluation samples")
            yield inputs, self._labels[offset:offset + n]
            offset += n
        if offset != len(self._labels):
            raise DataError(f"{len(self._labels)} labels for {offset} evaluation samples")


def read_labels(labels: Any) -> np.ndarray:
    """Class labels from an array or a ``.npy`` / ``.npz`` file (key ``labels``, or its only array).

    Never unpickles. Labels are numbers: class indices (one per sample) or one-hot rows.

    Raises:
        DataError: the file is missing, not a regular file, unreadable or pickled, or the labels
            are not numeric arrays of rank 1 or 2.
    """
    if not isinstance(labels, (str, os.PathLike)):
        return _checked_labels(labels, "the labels")
    path = Path(labels)
    if not path.is_file():
        why = "not a regular file" if path.exists() else "no such file"
        raise DataError(f"cannot read labels from {path}: {why}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return _checked_labels(loaded, str(path))
        with loaded:
            keys = list(loaded.keys())
            key = "labels" if "labels" in keys else keys[0] if len(keys) == 1 else None
            if key is None:
                raise DataError(f"{path} holds {keys}: name the labels array 'labels'")
            return _checked_labels(loaded[key], f"{path}[{key!r}]")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError (pickled arrays), BadZipFile, EOFError, ...
        raise DataError(f"cannot read labels from {path}: {one_line(exc)}") from exc


def _checked_labels(labels: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(labels)
    except Exception as exc:  # noqa: BLE001 - ragged lists and other non-arrays
        raise DataError(f"{where}: labels must be an array of class indices ({one_line(exc)})") from exc
    if array.dtype.kind not in "iubf" or array.ndim not in (1, 2):
        raise DataError(f"{where}: labels must be class indices (one per sample) or one-hot rows, "
                        f"got {array.dtype} with shape {list(array.shape)}")
    return array


def _metrics_text(metrics: OutputMetrics | None, report: Report) -> str:
    lines = [f"samples: {report.samples}"]
    if metrics is not None:
        lines += [f"cosine: {_fmt(metrics.cosine)}", f"min_cosine: {_fmt(metrics.min_cosine)}",
                  f"sqnr_db: {_fmt(metrics.sqnr_db)}", f"max_abs_error: {_fmt(metrics.max_abs_error)}",
                  f"mean_abs_error: {_fmt(metrics.mean_abs_error)}"]
        if metrics.top1_agreement is not None:
            lines.append(f"top1_agreement: {_fmt(metrics.top1_agreement)}")
        if metrics.top5_agreement is not None:
            lines.append(f"top5_agreement: {_fmt(metrics.top5_agreement)}")
    if report.float_accuracy is not None:
        lines.append(f"float_accuracy: {_fmt(report.float_accuracy)}")
    if report.quant_accuracy is not None:
        lines.append(f"quant_accuracy: {_fmt(report.quant_accuracy)}")
    lines.append(f"size_bytes: {report.float_size_bytes} -> {report.quant_size_bytes}")
    return "\n".join(lines)


def _junit_suite(*, metric: str, threshold: float, tests: int, failures: int, errors: int, skipped: int,
                 seconds: float, timestamp: str, float_model: str | None, quant_model: str | None,
                 samples: int | None) -> tuple[ET.Element, ET.Element]:
    """``<testsuites>`` and its one ``<testsuite>`` with counts and properties.

    ``<testsuites>`` carries only the attributes Jenkins' xunit schema allows there (no
    ``skipped``); the timestamp is UTC without an offset, as Ant and Jenkins write it.
    """
    counts = {"tests": str(tests), "failures": str(failures), "errors": str(errors)}
    time_text = f"{max(seconds, 0.0):.3f}"
    root = ET.Element("testsuites", {"name": "onnxq", **counts, "time": time_text})
    suite = ET.SubElement(root, "testsuite", {"name": "onnxq compare", **counts, "skipped": str(skipped),
                                              "time": time_text, "timestamp": _junit_timestamp(timestamp)})
    props = ET.SubElement(suite, "properties")
    operator = get_metric(metric).operator if metric in METRICS else None
    for key, value in (("metric", metric), ("threshold", _fmt(threshold)), ("operator", operator),
                       ("float_model", float_model), ("quant_model", quant_model), ("samples", samples)):
        if value is not None:
            ET.SubElement(props, "property", {"name": key, "value": _xml_text(str(value))})
    return root, suite


def _fmt(value: float) -> str:
    return format_number(value, ".6g")


def _path_or_none(model: Any) -> str | None:
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
