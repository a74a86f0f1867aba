"""Calibration: observers of activation statistics, range estimators, and ranges as data."""

from __future__ import annotations

from .estimators import entropy_range, mse_range, percentile_range
from .observers import HistogramObserver, MinMaxObserver, compute_range, make_observer
from .ranges import RangeCache, Ranges, TensorRange, default_cache_dir

__all__ = [
    # observers
    "MinMaxObserver", "HistogramObserver", "make_observer", "compute_range",
    # estimators (pure functions on a histogram)
    "entropy_range", "percentile_range", "mse_range",
    # ranges as data
    "Ranges", "TensorRange", "RangeCache", "default_cache_dir",
]
