"""Streaming calibration: tap tensors, run ORT batch by batch, update observers, drop the batch."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnx

from ..config import CalibrationMethod, QuantConfig
from ..engine import observe as observe_tensors
from ..errors import CalibrationError
from ..feeds import Dataset
from .observers import compute_range, make_observer
from .ranges import Ranges, TensorRange
from .search import auto_settings, search_ranges
from .tapping import tap  # re-exported: analyze, smooth and histograms import it from here

logger = logging.getLogger(__name__)


def collect_ranges(model: onnx.ModelProto, data: Dataset, tensors: Sequence[str], config: QuantConfig, *,
                   progress: bool = False) -> Ranges:
    """Calibrate ``tensors`` of ``model`` on ``data`` with the observer ``config.method`` asks for.

    Only one batch of activations is alive at a time (:func:`onnxq.engine.observe`): each batch's
    tapped outputs update the observers and are dropped before the next batch runs, so memory does
    not grow with the number of samples. MinMax reduces each tensor inside the graph.
    """
    if config.method.value == "auto":  # per tensor, the estimator its consumers tolerate best
        return search_ranges(model, data, tensors, config, progress=progress)
    tensors = list(dict.fromkeys(tensors))
    if not tensors:
        return Ranges(tensors={}, method=config.method.value, settings=range_settings(config))
    # MinMax needs each batch's extremes only: they are reduced inside the graph (issue 13)
    observers, samples = observe_tensors(model, data, tensors, lambda: make_observer(config),
                                         reduce=config.method is CalibrationMethod.MINMAX, progress=progress)
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
