"""Test helpers for users' own test suites (pytest, unittest): is my quantized model still close?

Example::

    from onnxq.testing import assert_quantized_close

    def test_int8_model_stays_close():
        assert_quantized_close("model.onnx", "model.int8.onnx", "eval.npz",
                               metric="cosine", threshold=0.999)

A miss raises ``AssertionError`` whose message names the output, the metric, the threshold, the
measured value and the worst sample (its index in the data and its own value), so a failing CI
run says what to look at without re-running anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from .data import DEFAULT_BATCH_SIZE
from .engine import StreamBatch, pair_runners, stream
from .errors import ConfigError
from .metrics import METRICS, Metric, get_metric
from .model import load_model
from .report.schema import format_number
from .validate import OutputAccumulator, check_same_io, evaluation_data, is_class_scores

__all__ = ["assert_quantized_close"]


def assert_quantized_close(float_model: onnx.ModelProto | str | os.PathLike[str],
                           quant_model: onnx.ModelProto | str | os.PathLike[str], data: Any, *,
                           metric: str = "cosine", threshold: float = 0.99,
                           outputs: Sequence[str] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                           limit: int | None = None) -> dict[str, float]:
    """Assert that every (chosen) output of ``quant_model`` stays close to ``float_model``.

    The aggregate values are those of :func:`onnxq.validate` (the same streamed accumulators);
    per-sample values are tracked alongside, one batch alive at a time, to name the worst sample.

    Args:
        float_model: the float model, or a path to it.
        quant_model: the quantized model, or a path to it.
        data: evaluation data (anything :func:`onnxq.data.load_data` accepts).
        metric: ``cosine`` (mean per-sample cosine >= threshold), ``min-cosine``, ``sqnr`` (dB,
            >=), ``max-abs`` (<=), ``mean-abs`` (<=), ``top1`` (fraction of agreeing argmax, >=,
            class-score outputs only) or ``top5`` (float top-1 within the quantized top 5, >=);
            names, spellings and directions of :mod:`onnxq.metrics`.
        threshold: the threshold on the aggregate value.
        outputs: output names to check; default: every output the metric applies to.
        batch_size: samples per batch.
        limit: use at most this many samples.

    Returns:
        ``output name -> aggregate value`` of the checked outputs (when all pass).

    Raises:
        AssertionError: an output misses the threshold (every miss is listed).
        ConfigError: unknown metric or output name, an accuracy metric (use
            :func:`onnxq.compare.compare` with labels), or no output the metric applies to.
        DataError, ModelError: the data or the models do not fit.
    """
    spec = _output_metric(metric, threshold)
    metric = spec.cli_name
    float_proto = load_model(float_model, check=False)
    quant_proto = load_model(quant_model, check=False)
    check_same_io(float_proto, quant_proto)
    names = _chosen_outputs(float_proto, outputs)
    dataset = evaluation_data(data, float_proto, batch_size=batch_size, limit=limit)
    runners = pair_runners(float_model, quant_model, float_proto, quant_proto, names)
    del float_proto, quant_proto

    tracker = _Tracker(spec, names)
    stream(list(runners), dataset, tracker.update, desc="compare")
    values, misses = tracker.verdicts(threshold)
    if not values:
        raise ConfigError(f"no output to check with metric {metric!r}"
                          + (f" ({metric} needs class scores [N, C])" if spec.name in ("top1", "top5") else ""))
    if misses:
        header = (f"quantized model is not close enough to the float model "
                  f"({metric} {spec.operator} {_fmt(threshold)}{spec.suffix} required):")
        raise AssertionError("\n".join([header, *("  " + m for m in misses)]))
    return values


def _output_metric(metric: str, threshold: float) -> Metric:
    """The output metric named ``metric`` (:mod:`onnxq.metrics`), with ``threshold`` checked against it.

    Raises:
        ConfigError: unknown metric, a task-accuracy metric, or a threshold out of its range.
    """
    spec = get_metric(metric)
    if spec.kind != "output":
        raise ConfigError(f"assert_quantized_close compares outputs, not task accuracy; for {metric!r} "
                          "use onnxq.compare.compare(..., labels=...)")
    spec.check_threshold(threshold)
    return spec


def _chosen_outputs(model: onnx.ModelProto, outputs: Sequence[str] | None) -> list[str]:
    """The output names to check: ``outputs`` (each once, in order) or every output of ``model``.

    Raises:
        ConfigError: a name the model does not have.
    """
    names = [o.name for o in model.graph.output]
    if outputs is None:
        return names
    unknown = [n for n in outputs if n not in names]
    if unknown:
        raise ConfigError(f"unknown output(s) {unknown}; the model has {names}")
    return list(dict.fromkeys(outputs))


class _Tracker:
    """Per output: the streamed aggregate (as :func:`onnxq.validate` computes it) and the worst sample."""

    def __init__(self, spec: Metric, names: list[str]) -> None:
        self.spec, self.names = spec, names
        self.accumulators = {n: OutputAccumulator(n) for n in names}
        self.worst = {n: _Worst(higher_is_better=spec.higher_is_better) for n in names}
        self.usable = set(names)  # outputs the metric applies to (numeric; class scores for top-k)
        self.offset = 0  # index in the data of the batch's first sample

    def update(self, batch: StreamBatch) -> None:
        """One batch of the float and quantized models' outputs."""
        float_out, quant_out = batch.outputs
        n = 0
        for name in self.names:
            ref, cand = np.asarray(float_out[name]), np.asarray(quant_out[name])
            n = max(n, ref.shape[0] if ref.ndim else 1)
            if name not in self.usable:
                continue
            if ref.dtype.kind not in "biuf" or (self.spec.name in ("top1", "top5") and not is_class_scores(ref)):
                self.usable.discard(name)
                continue
            self.accumulators[name].update(ref, cand)
            self.worst[name].update(self.offset, *_per_sample(self.spec.name, ref, cand))
        self.offset += n

    def verdicts(self, threshold: float) -> tuple[dict[str, float], list[str]]:
        """``output -> aggregate value`` of the checked outputs, and one line per output that misses."""
        spec, metric = self.spec, self.spec.cli_name
        values: dict[str, float] = {}
        misses: list[str] = []
        for name in self.names:
            value = spec.output_value(self.accumulators[name].result()) if name in self.usable else None
            if value is None:
                continue
            values[name] = value
            if spec.passes(value, threshold):
                continue
            relation = "<" if spec.higher_is_better else ">"
            misses.append(f"output {name!r}: {metric} {_fmt(value)}{spec.suffix} {relation} threshold "
                          f"{_fmt(threshold)}{spec.suffix} over {self.accumulators[name].samples} samples; "
                          f"worst sample #{self.worst[name].describe(metric, spec.suffix)}")
        return values, misses


@dataclass
class _Worst:
    """The worst sample seen so far: index in the data, its value and, for top-1, the classes."""

    higher_is_better: bool
    index: int = -1
    value: float = math.nan
    detail: str = ""

    def update(self, offset: int, per_sample: np.ndarray, details: list[str] | None) -> None:
        if per_sample.size == 0:
            return
        order = per_sample if self.higher_is_better else -per_sample
        nan = np.isnan(order)
        i = int(np.argmax(nan)) if nan.any() else int(np.argmin(order))
        value = float(per_sample[i])
        if self.index < 0 or _worse(value, self.value, self.higher_is_better):
            self.index, self.value = offset + i, value
            self.detail = details[i] if details else ""

    def describe(self, metric: str, unit: str) -> str:
        text = f"{self.index}: {metric} {_fmt(self.value)}{unit}"
        return f"{text} ({self.detail})" if self.detail else text


def _worse(value: float, current: float, higher_is_better: bool) -> bool:
    if math.isnan(current):
        return False
    if math.isnan(value):
        return True
    return value < current if higher_is_better else value > current


def _per_sample(metric: str, ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """The metric (canonical name) of each sample of one batch (axis 0 = samples), plus class details."""
    n = ref.shape[0] if ref.ndim else 1
    if metric == "top5":
        ref_class = np.argmax(ref, axis=1)
        top5 = np.argsort(-cand, axis=1, kind="stable")[:, :5]
        details = [f"float class {int(r)}, quantized top 5 {[int(c) for c in t]}" for r, t in zip(ref_class, top5)]
        return (top5 == ref_class[:, None]).any(axis=1).astype(np.float64), details
    if metric == "top1":
        ref_class = np.argmax(ref, axis=1)
        cand_class = np.argmax(cand, axis=1)
        details = [f"float class {int(r)}, quantized class {int(c)}" for r, c in zip(ref_class, cand_class)]
        return (ref_class == cand_class).astype(np.float64), details
    r = ref.astype(np.float64).reshape(n, -1)
    c = cand.astype(np.float64).reshape(n, -1)
    diff = r - c
    if metric == "max_abs":
        return (np.abs(diff).max(axis=1) if diff.shape[1] else np.zeros(n)), None
    if metric == "mean_abs":
        return (np.abs(diff).mean(axis=1) if diff.shape[1] else np.zeros(n)), None
    rr = np.einsum("ij,ij->i", r, r)
    noise = np.einsum("ij,ij->i", diff, diff)
    identical = np.all(diff == 0, axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if metric == "sqnr":
            sqnr = 10.0 * np.log10(rr / noise)
            return np.where(identical, math.inf, sqnr), None
        cc = np.einsum("ij,ij->i", c, c)
        rc = np.einsum("ij,ij->i", r, c)
        denom = np.sqrt(rr * cc)
        cos = np.clip(np.where(denom > 0, rc / np.where(denom > 0, denom, 1.0), 0.0), -1.0, 1.0)
    cos = np.where(np.isnan(denom) | np.isnan(rc), np.nan, cos)
    return np.where(identical, 1.0, cos), None


def _fmt(value: float) -> str:
    return format_number(value, ".6g")


# the metrics this helper accepts, by their command-line names (for documentation and tests)
SUPPORTED_METRICS = tuple(m.cli_name for m in METRICS.values() if m.kind == "output")
