"""What an HTML report shows besides the report itself: calibration histograms and output scatter.

The HTML module only renders (:func:`onnxq.report.html.write_html`); this module gathers its data on
the streaming engine, from ONNX models that are already there (``QuantResult.float_model`` after
:func:`onnxq.quantize`: no second export of a framework model), and the report that the run made (no
second validation). Two streamed passes of at most ``max_samples`` samples each (one batch alive at
a time): the activation histograms of the quantized tensors on the calibration data, and a uniform
subsample of ``max_points`` paired output values per output on the evaluation data.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .calibration.histograms import estimated_sqnr_db, tensor_histograms, tensor_names
from .data import DEFAULT_BATCH_SIZE
from .engine import StreamBatch, pair_runners, stream
from .errors import ConfigError
from .model import load_model
from .report.html import require_matplotlib, write_html
from .report.schema import Report
from .validate import check_same_io, evaluation_data

logger = logging.getLogger(__name__)

__all__ = ["Collected", "Evidence", "ScatterSample", "clipping_ranges", "collect_scatter", "gather_evidence", "html_report"]

_RENAMED_OUTPUT = "_QuantizeLinear_Input"


@dataclass
class Evidence:
    """The plots' data of an HTML report.

    Attributes:
        histograms: ``tensor -> (counts, edges, low, high)``, the worst tensors first.
        scatter: ``output -> (float values, quantized values)``, subsampled.
    """

    histograms: dict[str, tuple[np.ndarray, np.ndarray, float, float]] = field(default_factory=dict)
    scatter: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class Collected:
    """What a run gathers for its HTML report in its own passes (``quantize(..., evidence=True)``).

    Attributes:
        histograms: tensor -> histogram observer, filled by the calibration pass (empty when the
            ranges came from elsewhere: given, cached, or calibrated on Dask).
        scatter_sample: the scatter consumer of the validation pass.
    """

    histograms: dict[str, Any] = field(default_factory=dict)
    scatter_sample: ScatterSample = field(default_factory=lambda: ScatterSample())


def html_report(float_model: onnx.ModelProto | str | os.PathLike[str],
                quant_model: onnx.ModelProto | str | os.PathLike[str], data: Any,
                path: str | os.PathLike[str], *, report: Report | None = None, ranges: Any = None,
                calibration: Any = None, batch_size: int = DEFAULT_BATCH_SIZE, max_samples: int = 256, worst: int = 6,
                max_points: int = 2000, num_bins: int = 2048, progress: bool = False,
                scatter: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                collected: Collected | None = None) -> Path:
    """Gather the histograms and scatter samples of a float/quantized pair and write the HTML report.

    Args:
        float_model: the float ONNX model (a path or a ModelProto; after :func:`onnxq.quantize`,
            ``QuantResult.float_model``, so that a framework model is not exported again).
        quant_model: the quantized model or a path to it.
        data: evaluation data (anything :func:`onnxq.data.load_data` accepts), or ``None``.
        path: the ``.html`` file to write.
        report: the report to render; default: :func:`onnxq.validate` on ``data`` (no latency).
        ranges: the clipping ranges (a :class:`~onnxq.Ranges` or ``name -> (low, high)``); default:
            read from the quantized model's QuantizeLinear scales and zero points.
        calibration: data for the histograms (the calibration data); default ``data``.
        batch_size: samples per batch.
        max_samples: samples used by each pass.
        worst: how many tensors' histograms to show.
        max_points: scatter points per output.
        num_bins: histogram bins.
        progress: progress bars on stderr.
        scatter: the scatter sample, when the validation pass already took it (a :class:`ScatterSample`
            among ``validate(consumers=...)``); otherwise one more pass takes it.
        collected: what the run gathered (``QuantResult.evidence``): its histograms and scatter are
            used, and a pass runs only for what it lacks.

    Raises:
        ConfigError: matplotlib is missing, or a count argument is not positive.
        DataError, ModelError: the data or models do not fit.
    """
    from .validate import validate

    require_matplotlib()  # fail before the long passes
    for name, value in (("max_samples", max_samples), ("worst", worst), ("max_points", max_points)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if data is None and calibration is None:  # e.g. dynamic quantization without evaluation data
        if report is None:
            raise ConfigError("an HTML report needs evaluation data or a report")
        return write_html(report, path)
    float_proto = load_model(float_model, check=False)
    quant_proto = load_model(quant_model, check=False)
    data = data if data is not None else calibration
    if report is None:
        report = validate(float_proto, quant_proto, data, batch_size=batch_size, latency=False, progress=progress)
    observed = None
    if collected is not None:
        scatter = scatter if scatter is not None else (collected.scatter_sample.result() or None)
        observed = collected.histograms or None
    evidence = gather_evidence(float_proto, quant_proto, data, report=report, ranges=ranges, calibration=calibration,
                               batch_size=batch_size, max_samples=max_samples, worst=worst, max_points=max_points,
                               num_bins=num_bins, progress=progress, scatter=scatter, observed=observed)
    return write_html(report, path, histograms=evidence.histograms, scatter=evidence.scatter)


def gather_evidence(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, data: Any, *, report: Report,
                    ranges: Any = None, calibration: Any = None, batch_size: int = DEFAULT_BATCH_SIZE,
                    max_samples: int = 256,
                    worst: int = 6, max_points: int = 2000, num_bins: int = 2048, progress: bool = False,
                    scatter: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                    observed: Mapping[str, Any] | None = None) -> Evidence:
    """The histograms of the ``worst`` quantized tensors and the output scatter of the pair.

    The worst tensors are those of lowest per-layer SQNR when ``report.layers`` is there, otherwise
    of lowest SQNR estimated from the histogram and its clipping range. A tensor that the float
    model computes is histogrammed there; one that only the quantized model has (a
    SmoothQuant-scaled input) in the quantized model, where it is the input of its QuantizeLinear.
    ``observed`` (tensor -> histogram observer, from the run's calibration pass) replaces that pass.
    """
    calibration = calibration if calibration is not None else data
    in_quant = clipping_ranges(quant_model)
    chosen = _as_ranges(ranges) if ranges is not None else {n: (lo, hi) for n, (lo, hi, _) in in_quant.items()}
    levels = {n: lv for n, (_, _, lv) in in_quant.items()}
    histograms: dict[str, tuple[np.ndarray, np.ndarray, float, float]] = {}
    if chosen and observed:
        for name, obs in observed.items():
            if name in chosen and obs.count > 0:
                histograms[name] = (obs.counts, obs.edges, *map(float, chosen[name]))
    elif chosen and calibration is not None:
        float_known, quant_known = tensor_names(float_model), tensor_names(quant_model)
        for model, names in ((float_model, [n for n in chosen if n in float_known]),
                             (quant_model, [n for n in chosen if n not in float_known and n in quant_known])):
            if not names:
                continue
            source = evaluation_data(calibration, model, batch_size=batch_size, limit=max_samples)
            for name, obs in tensor_histograms(model, source, names, num_bins=num_bins, progress=progress).items():
                low, high = chosen[name]
                histograms[name] = (obs.counts, obs.edges, float(low), float(high))
    if histograms:
        layer_sqnr = {str(layer.tensor): layer.sqnr_db for layer in report.layers}

        def badness(name: str) -> float:
            value = layer_sqnr.get(name)
            if value is None:
                counts, edges, low, high = histograms[name]
                value = estimated_sqnr_db(counts, edges, low, high, levels=levels.get(name, 256))
            return -math.inf if math.isnan(value) else value

        histograms = {n: histograms[n] for n in sorted(histograms, key=badness)[:worst]}
    if scatter is None:
        scatter = (collect_scatter(float_model, quant_model, data, max_points=max_points, batch_size=batch_size,
                                   limit=max_samples, progress=progress) if data is not None else {})
    return Evidence(histograms, dict(scatter))


class ScatterSample:
    """An engine consumer: a uniform random subsample of paired float/quantized output values.

    Every element of every batch gets a random key; the ``max_points`` smallest keys seen so far
    are kept (a reservoir), so memory stays ``O(max_points)`` per output whatever the data size.
    """

    def __init__(self, names: list[str] | None = None, max_points: int = 2000, seed: int = 0) -> None:
        self.names, self.max_points = names, max_points
        self.rng = np.random.default_rng(seed)
        self.kept: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def update(self, batch: StreamBatch) -> None:
        """Fold one batch of both models' outputs into the sample."""
        float_out, quant_out = batch.outputs
        for name in self.names if self.names is not None else list(float_out):
            ref, cand = np.asarray(float_out[name]), np.asarray(quant_out[name])
            if ref.dtype.kind != "f" or ref.shape != cand.shape:
                continue
            r, c = ref.reshape(-1).astype(np.float64), cand.reshape(-1).astype(np.float64)
            keys = self.rng.random(r.size)
            if name in self.kept:
                old_keys, old_r, old_c = self.kept[name]
                keys, r, c = np.concatenate([old_keys, keys]), np.concatenate([old_r, r]), np.concatenate([old_c, c])
            if keys.size > self.max_points:
                pick = np.argpartition(keys, self.max_points)[:self.max_points]
                keys, r, c = keys[pick], r[pick], c[pick]
            self.kept[name] = (keys, r, c)

    def result(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``output name -> (float values, quantized values)`` (float64, same length)."""
        return {name: (r, c) for name, (_, r, c) in self.kept.items()}


def collect_scatter(float_model: onnx.ModelProto | str | os.PathLike[str],
                    quant_model: onnx.ModelProto | str | os.PathLike[str], data: Any, *,
                    max_points: int = 2000, batch_size: int = DEFAULT_BATCH_SIZE, limit: int | None = None,
                    seed: int = 0,
                    progress: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A uniform random subsample of paired float/quantized output values, streamed (see :class:`ScatterSample`).

    Returns:
        ``output name -> (float values, quantized values)`` (float64, same length) for every
        floating-point output.

    Raises:
        ModelError: the models differ in inputs/outputs or cannot run.
        DataError: the data does not fit the model.
    """
    float_proto = load_model(float_model, check=False)
    quant_proto = load_model(quant_model, check=False)
    check_same_io(float_proto, quant_proto)
    names = [o.name for o in float_proto.graph.output]
    dataset = evaluation_data(data, float_proto, batch_size=batch_size, limit=limit)
    runners = pair_runners(float_proto, quant_proto, float_proto, quant_proto, names)
    sample = ScatterSample(names, max_points, seed)
    stream(list(runners), dataset, sample.update, desc="scatter", progress=progress)
    return sample.result()


def clipping_ranges(quant_model: onnx.ModelProto) -> dict[str, tuple[float, float, int]]:
    """The clipping range of every per-tensor quantized activation of a QDQ model.

    Read from each QuantizeLinear whose input is not an initializer and whose scale and zero point
    are scalar initializers: ``low = (qmin - zp) * scale``, ``high = (qmax - zp) * scale``.

    Returns:
        ``tensor name -> (low, high, levels)``, ``levels`` being 256 for 8-bit and 65536 for 16-bit.
    """
    graph = quant_model.graph
    inits = {t.name: t for t in graph.initializer}
    limits = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127),
              np.dtype(np.uint16): (0, 65535), np.dtype(np.int16): (-32768, 32767)}
    outputs = {o.name for o in graph.output}
    result: dict[str, tuple[float, float, int]] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]])
        if scale.size != 1:
            continue
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in inits:
                continue
            zp = numpy_helper.to_array(inits[node.input[2]])
        else:
            zp = np.zeros((), np.uint8)
        if zp.size != 1 or zp.dtype not in limits:
            continue
        qmin, qmax = limits[zp.dtype]
        s, z = float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])
        name = node.input[0]
        if name.endswith(_RENAMED_OUTPUT) and name[:-len(_RENAMED_OUTPUT)] in outputs:
            name = name[:-len(_RENAMED_OUTPUT)]  # ORT renames a quantized graph output's producer
        result[name] = ((qmin - z) * s, (qmax - z) * s, qmax - qmin + 1)
    return result


def _as_ranges(ranges: Any) -> dict[str, tuple[float, float]]:
    """``Ranges`` / mapping of ``TensorRange`` or ``(low, high)`` -> ``name -> (low, high)``."""
    tensors = getattr(ranges, "tensors", ranges)
    if not isinstance(tensors, Mapping):
        raise ConfigError(f"ranges must be a Ranges or a mapping name -> (low, high), got {type(ranges).__name__}")
    out = {}
    for name, value in tensors.items():
        if hasattr(value, "low") and hasattr(value, "high"):
            out[str(name)] = (float(value.low), float(value.high))
        else:
            low, high = value
            out[str(name)] = (float(low), float(high))
    return out
