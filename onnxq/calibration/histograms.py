"""Histograms of chosen tensors over a data set, streamed batch by batch (for reports and plots).

Calibration keeps only what a range estimator needs; a report also wants to *show* the
distribution of a tensor next to the clipping range that was chosen for it. This module runs one
extra streamed pass on :mod:`onnxq.engine` with :class:`~onnxq.calibration.observers.HistogramObserver`
on the tapped
tensors (one batch of activations alive at a time), and estimates from a histogram how much
signal a given clipping range keeps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from ..engine import observe
from ..errors import DataError
from .observers import HistogramObserver

logger = logging.getLogger(__name__)

__all__ = ["estimated_sqnr_db", "tensor_histograms", "tensor_names"]


def tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name a graph computes or reads (node inputs and outputs, graph inputs)."""
    names = {i.name for i in model.graph.input}
    for node in model.graph.node:
        names.update(n for n in node.input if n)
        names.update(n for n in node.output if n)
    return names


def tensor_histograms(model: onnx.ModelProto, data: Any, tensors: Sequence[str], *, num_bins: int = 2048,
                      progress: bool = False) -> dict[str, HistogramObserver]:
    """Histogram ``tensors`` of ``model`` over ``data``, one batch of activations alive at a time.

    Args:
        model: the model whose tensors are tapped (not modified).
        data: an iterable of ``{input_name: array}`` batches, e.g. an :class:`onnxq.data.Dataset`.
        tensors: names of tensors of ``model``; names the graph does not compute are skipped
            (with a debug message).
        num_bins: bins per histogram.
        progress: show a progress bar on stderr.

    Returns:
        One observer per tensor that saw at least one finite float value, in the order asked.

    Raises:
        DataError: the data yielded no batch.
        ModelError: ONNX Runtime cannot run the tapped model.
    """
    known = tensor_names(model)
    wanted = [t for t in dict.fromkeys(tensors) if t in known]
    for name in tensors:
        if name not in known:
            logger.debug("tensor %s is not in the model; no histogram", name)
    if not wanted:
        return {}
    observers, samples = observe(model, data, wanted, lambda: HistogramObserver(num_bins), desc="histograms",
                                 progress=progress)
    if samples == 0:
        raise DataError("the data for the histograms holds no batch")
    return {name: obs for name, obs in observers.items() if obs.count > 0}


def estimated_sqnr_db(counts: np.ndarray, edges: np.ndarray, low: float, high: float, *,
                      levels: int = 256) -> float:
    """Estimate the SQNR (dB) of uniform quantization of a histogrammed tensor to ``[low, high]``.

    Each bin is represented by its centre; values inside the range get the uniform rounding
    noise ``step**2 / 12`` with ``step = (high - low) / (levels - 1)``, values outside it their
    clipping error. A cheap ranking of "which tensors does the clipping range hurt most" that needs
    no second model run.

    Returns:
        ``10 * log10(signal / noise)``; ``inf`` for an empty or noiseless histogram.
    """
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    total = counts.sum()
    if total <= 0:
        return math.inf
    step = max(float(high) - float(low), 0.0) / max(levels - 1, 1)
    clipped = np.clip(centres, low, high)
    inside = (centres >= low) & (centres <= high)
    noise = float(np.sum(counts * np.where(inside, step * step / 12.0, (centres - clipped) ** 2)))
    signal = float(np.sum(counts * centres * centres))
    if noise <= 0:
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
