"""Streaming calibration: tap tensors, run ORT batch by batch, update observers, drop the batch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import onnx

from ..config import CalibrationMethod, QuantConfig
from ..data import Dataset
from ..engine import TappedModel
from ..engine import observe as observe_tensors
from ..errors import CalibrationError
from .observers import HistogramObserver, compute_range, make_observer
from .ranges import Ranges, TensorRange
from .search import auto_settings, search_ranges
from .tapping import tap  # re-exported: analyze, smooth and histograms import it from here

logger = logging.getLogger(__name__)


def collect_ranges(model: onnx.ModelProto, data: Dataset, tensors: Sequence[str], config: QuantConfig, *,
                   progress: bool = False, histograms: dict[str, HistogramObserver] | None = None) -> Ranges:
    """Calibrate ``tensors`` of ``model`` on ``data`` with the observer ``config.method`` asks for.

    Only one batch of activations is alive at a time (:func:`onnxq.engine.observe`): each batch's
    tapped outputs update the observers and are dropped before the next batch runs, so memory does
    not grow with the number of samples. MinMax reduces each tensor inside the graph.

    ``histograms`` (a dict, filled in place) asks the same pass for a 2048-bin histogram of every
    tensor, for an HTML report (MinMax then taps the tensors in full); not filled by ``auto``.
    """
    if config.method.value == "auto":  # per tensor, the estimator its consumers tolerate best
        return search_ranges(model, data, tensors, config, progress=progress)
    tensors = list(dict.fromkeys(tensors))
    if not tensors:
        return Ranges(tensors={}, method=config.method.value, settings=range_settings(config))
    # MinMax needs each batch's extremes only: they are reduced inside the graph (issue 13)
    minmax = config.method is CalibrationMethod.MINMAX
    if histograms is None:
        observers, samples = observe_tensors(model, data, tensors, lambda: make_observer(config), reduce=minmax,
                                             progress=progress)
    else:
        histograms.update({t: HistogramObserver() for t in tensors} if minmax else {})
        tapped = TappedModel(model, tensors, keep=tensors if minmax else ())
        observers, samples = tapped.observe(data, lambda: make_observer(config), progress=progress,
                                            also=(lambda values: _fold(histograms, values)) if minmax else None)
        if not minmax:
            histograms.update(observers)  # type: ignore[arg-type]
    return ranges_from_observers(observers, samples, config)


def ranges_from_observers(observers: dict[str, Any], samples: int, config: QuantConfig) -> Ranges:
    """The :class:`Ranges` of filled (or merged) observers: each tensor's range by ``config.method``.

    Raises:
        CalibrationError: no samples were seen.
    """
    if samples == 0:
        raise CalibrationError("the calibration data yielded no samples")
    ranges = {}
    for name, observer in observers.items():
        if observer.count == 0:
            logger.debug("tensor %s saw no finite float values; left out of the ranges", name)
            continue
        low, high = compute_range(observer, config)
        ranges[name] = TensorRange(low=float(low), high=float(high))
    return Ranges(tensors=ranges, method=config.method.value, samples=samples, settings=range_settings(config))


def _fold(histograms: dict[str, HistogramObserver], values: dict[str, Any]) -> None:
    for name, array in values.items():
        if array.dtype.kind == "f":
            histograms[name].update(array)


def range_settings(config: QuantConfig) -> dict[str, float | int | str]:
    """The config fields that change ranges (part of the cache key)."""
    if config.method.value == "auto":
        return auto_settings(config)
    settings: dict[str, float | int | str] = {"method": config.method.value}
    if config.method.value in ("entropy", "percentile", "mse"):
        settings["num_bins"] = config.num_bins
    if config.method.value == "percentile":
        settings["percentile"] = config.percentile
    if config.method.value in ("entropy", "mse"):  # both depend on the activation grid
        settings["activation_type"] = config.activation_type.value
    if config.moving_average and config.method.value == "minmax":
        settings["averaging_constant"] = config.averaging_constant
    return settings
