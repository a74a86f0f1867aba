"""Observers: small, fixed-size statistics of a tensor, updated one batch at a time.

The calibration runner calls ``observer.update(batch)`` for every tapped tensor and then drops
the batch, so an observer's memory does not grow with the number of batches. Observers of
disjoint data can be combined with ``merge`` and saved with ``to_dict`` (JSON-ready).
``compute_range`` turns an observer into the ``(low, high)`` range a tensor is quantized with.

Values that are not finite are never part of the statistics: NaN and +-inf are skipped and
counted in ``nonfinite``, and so are float64 values beyond the float32 range, which no float32
quantization scale can hold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..config import CalibrationMethod, QuantConfig, QuantType
from ..errors import CalibrationError
from . import estimators

logger = logging.getLogger(__name__)

#: Values binned per step of ``HistogramObserver.update`` (keeps temporaries cache-sized).
_CHUNK = 1 << 17
#: Largest ``|lo| / width`` (in bins) for which bin indices are computed in float32.
_FLOAT32_SAFE_OFFSET = float(1 << 17)
#: Smallest bin width (below float32's smallest step), so that width ratios stay finite.
_MIN_WIDTH = 2.0**-160
#: Smallest bin width relative to the magnitude of the data, so that float64 edges stay distinct.
_MIN_RELATIVE_WIDTH = 2.0**-40
#: Beyond this many old bins the exact integer re-binning gives way to proportional re-binning.
_INT_SAFE = float(1 << 52)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)


@dataclass
class _Batch:
    """The finite values of one batch and their extremes."""

    values: np.ndarray
    low: float
    high: float
    nonfinite: int


def _finite_batch(values: np.ndarray) -> _Batch:
    """Flatten ``values`` to float32/float64 and drop NaN, +-inf and float64 beyond float32's range."""
    flat = np.asarray(values).reshape(-1)
    if flat.dtype != np.float32 and flat.dtype != np.float64:
        small = flat.dtype.kind == "f" and flat.dtype.itemsize < 4
        flat = flat.astype(np.float32 if small else np.float64)
    if flat.size == 0:
        return _Batch(flat, math.inf, -math.inf, 0)
    low, high = float(flat.min()), float(flat.max())
    nonfinite = 0
    if not -_FLOAT32_MAX <= low <= high <= _FLOAT32_MAX:  # NaN, inf or huge float64: slow path
        finite = np.abs(flat) <= _FLOAT32_MAX           # False for NaN
        kept = int(np.count_nonzero(finite))
        nonfinite = flat.size - kept
        flat = flat[finite]
        if kept == 0:
            return _Batch(flat, math.inf, -math.inf, nonfinite)
        low, high = float(flat.min()), float(flat.max())
    return _Batch(flat, low, high, nonfinite)


def _optional_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _read_float(data: dict[str, Any], key: str, default: float) -> float:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CalibrationError(f"observer field {key!r} must be a finite number, got {value!r}")
    return float(value)


def _read_int(data: dict[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CalibrationError(f"observer field {key!r} must be a non-negative integer, got {value!r}")
    return value


def _check_type(data: Any, kind: str) -> None:
    if not isinstance(data, dict) or data.get("type") != kind:
        found = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise CalibrationError(f"expected a serialised {kind} observer, got {found!r}")


# --------------------------------------------------------------------------------------------
# MinMax


class MinMaxObserver:
    """Running minimum and maximum, optionally as an exponential moving average of batch extremes.

    Attributes:
        min: the minimum to quantize with: the smallest value seen, or with ``moving_average``
            the moving average of per-batch minima. ``+inf`` before any finite value.
        max: likewise for the maximum (``-inf`` before any finite value).
        data_min: the smallest finite value seen (whatever ``moving_average`` says).
        data_max: the largest finite value seen.
        count: finite values seen.
        nonfinite: NaN and +-inf values skipped.
        batches: batches that contributed at least one finite value.
    """

    kind = "minmax"

    def __init__(self, moving_average: bool = False, averaging_constant: float = 0.01) -> None:
        """Create an empty observer.

        Args:
            moving_average: track ``min = min + c * (batch_min - min)`` (and the same for the
                maximum) instead of the overall extremes; the first batch sets the start value.
            averaging_constant: ``c``, the weight of the newest batch, in ``(0, 1]``.
        """
        if not 0.0 < averaging_constant <= 1.0:
            raise CalibrationError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.moving_average = bool(moving_average)
        self.averaging_constant = float(averaging_constant)
        self.min, self.max = math.inf, -math.inf
        self.data_min, self.data_max = math.inf, -math.inf
        self.count = 0
        self.nonfinite = 0
        self.batches = 0

    def __repr__(self) -> str:
        return f"MinMaxObserver(min={self.min}, max={self.max}, count={self.count})"

    def update(self, values: np.ndarray) -> None:
        """Fold one batch (any shape, any float dtype) into the statistics."""
        batch = _finite_batch(values)
        self.nonfinite += batch.nonfinite
        if batch.values.size:
            self.update_extremes(batch.low, batch.high, batch.values.size)

    def update_extremes(self, low: float, high: float, count: int, dtype: str = "<f4") -> None:
        """Fold one batch given only its extremes and size (every value finite, within float32's range).

        The same as :meth:`update` on that batch: the engine reduces tensors inside the ONNX graph
        (ReduceMin / ReduceMax) and hands over two scalars instead of the whole activation.
        ``dtype`` (the tensor's numpy dtype string) is not needed here; other observers record it.
        """
        if self.moving_average and self.batches:
            c = self.averaging_constant
            self.min += c * (low - self.min)
            self.max += c * (high - self.max)
        else:
            self.min, self.max = min(self.min, low), max(self.max, high)
        self.data_min, self.data_max = min(self.data_min, low), max(self.data_max, high)
        self.count += count
        self.batches += 1

    def merge(self, other: MinMaxObserver) -> None:
        """Combine, in place, with an observer of other (disjoint) data.

        Without moving average the result equals one observer that saw both data sets. With
        moving average the two averages are combined weighted by their number of batches.
        """
        if not isinstance(other, MinMaxObserver):
            raise CalibrationError(f"cannot merge MinMaxObserver with {type(other).__name__}")
        if other.moving_average != self.moving_average:
            raise CalibrationError("cannot merge MinMax observers with and without moving average")
        self.nonfinite += other.nonfinite
        if other.count == 0:
            return
        if self.moving_average and self.batches:
            total = self.batches + other.batches
            self.min = (self.min * self.batches + other.min * other.batches) / total
            self.max = (self.max * self.batches + other.max * other.batches) / total
        else:
            self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.data_min, self.data_max = min(self.data_min, other.data_min), max(self.data_max, other.data_max)
        self.count += other.count
        self.batches += other.batches

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (``None`` for the extremes of an empty observer)."""
        return {
            "type": self.kind, "moving_average": self.moving_average,
            "averaging_constant": self.averaging_constant,
            "min": _optional_float(self.min), "max": _optional_float(self.max),
            "data_min": _optional_float(self.data_min), "data_max": _optional_float(self.data_max),
            "count": self.count, "nonfinite": self.nonfinite, "batches": self.batches,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MinMaxObserver:
        """Inverse of :meth:`to_dict`; a malformed dict raises ``CalibrationError``."""
        _check_type(data, cls.kind)
        observer = cls(bool(data.get("moving_average", False)), _read_float(data, "averaging_constant", 0.01))
        observer.count, observer.nonfinite = _read_int(data, "count"), _read_int(data, "nonfinite")
        observer.batches = _read_int(data, "batches")
        if observer.count:
            observer.min, observer.max = _read_float(data, "min", math.nan), _read_float(data, "max", math.nan)
            observer.data_min = _read_float(data, "data_min", observer.min)
            observer.data_max = _read_float(data, "data_max", observer.max)
            if not (observer.min <= observer.max and observer.data_min <= observer.data_max):
                raise CalibrationError("serialised MinMax observer has min > max")
        return observer


# --------------------------------------------------------------------------------------------
# Histogram


class HistogramObserver:
    """A fixed-size histogram of the finite values, re-binned when the data outgrows it.

    The histogram has ``num_bins`` equal bins ``[lo + i * width, lo + (i + 1) * width)``. The
    first batch with any spread sets the grid to its own ``[min, max]``. When a later batch
    falls outside the grid, the grid grows: the new width is an integer multiple ``k`` of the
    old one and the new origin lies on an old bin edge, so every old bin falls entirely inside
    one new bin and the old counts move over exactly (no re-distribution error accumulates
    over repeated growth). ``k`` is the smallest factor whose grid covers the occupied old bins
    and the new batch; the slack is split evenly on both sides. While every value seen is the
    same constant, no grid exists yet (``width == 0``): the observer is a point mass, which is
    how a constant tensor is handled without a zero-width bin.

    Attributes:
        num_bins: number of bins.
        min: smallest finite value seen (``+inf`` before any).
        max: largest finite value seen (``-inf`` before any).
        count: finite values seen.
        nonfinite: NaN and +-inf values skipped.
    """

    kind = "histogram"

    def __init__(self, num_bins: int = 2048) -> None:
        """Create an empty histogram with ``num_bins`` bins (at least 2)."""
        if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 2:
            raise CalibrationError(f"num_bins must be an integer >= 2, got {num_bins!r}")
        self.num_bins = int(num_bins)
        self.min, self.max = math.inf, -math.inf
        self.count = 0
        self.nonfinite = 0
        self._lo = 0.0
        self._width = 0.0  # 0.0: no grid yet (empty, or every value so far equal to self.min)
        self._counts = np.zeros(self.num_bins, dtype=np.float64)

    def __repr__(self) -> str:
        return f"HistogramObserver(num_bins={self.num_bins}, min={self.min}, max={self.max}, count={self.count})"

    # ---- public view ------------------------------------------------------------------------

    @property
    def counts(self) -> np.ndarray:
        """Counts per bin, float64, shape ``(num_bins,)`` (a copy)."""
        if self._width > 0.0:
            return self._counts.copy()
        counts = np.zeros(self.num_bins, dtype=np.float64)
        if self.count:
            counts[self.num_bins // 2] = self.count
        return counts

    @property
    def edges(self) -> np.ndarray:
        """Bin edges, float64, shape ``(num_bins + 1,)``.

        Before a grid exists: for a constant ``c`` a narrow grid centred on ``c`` whose middle
        bin holds every value; for an empty observer ``[0, 1]``.
        """
        lo, width = self._lo, self._width
        if width == 0.0:
            lo, width = _point_grid(self.min, self.num_bins) if self.count else (0.0, 1.0 / self.num_bins)
        return lo + width * np.arange(self.num_bins + 1, dtype=np.float64)

    # ---- update / merge ---------------------------------------------------------------------

    def update(self, values: np.ndarray) -> None:
        """Fold one batch (any shape, any float dtype) into the histogram."""
        batch = _finite_batch(values)
        self.nonfinite += batch.nonfinite
        if batch.values.size == 0:
            return
        self._cover(batch.low, batch.high)
        if self._width > 0.0:
            self._counts += _bin_values(batch.values, self._lo, self._width, self.num_bins)
        self.min, self.max = min(self.min, batch.low), max(self.max, batch.high)
        self.count += batch.values.size

    def merge(self, other: HistogramObserver) -> None:
        """Combine, in place, with a histogram of other (disjoint) data.

        The total count is preserved. Other's bins are moved over exactly when they line up
        with this grid and otherwise split in proportion to their overlap with the new bins.
        """
        if not isinstance(other, HistogramObserver):
            raise CalibrationError(f"cannot merge HistogramObserver with {type(other).__name__}")
        if other.num_bins != self.num_bins:
            raise CalibrationError(f"cannot merge histograms of {self.num_bins} and {other.num_bins} bins")
        self.nonfinite += other.nonfinite
        if other.count == 0:
            return
        if self.count == 0:
            self.min, self.max, self.count = other.min, other.max, other.count
            self._lo, self._width, self._counts = other._lo, other._width, other._counts.copy()
            return
        self._cover(other.min, other.max)
        if self._width > 0.0:
            if other._width > 0.0:
                self._counts += _redistribute(other._counts, other._lo, other._width, self._lo, self._width,
                                              self.num_bins)
            else:
                self._counts[self._index(other.min)] += other.count
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count

    # ---- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state: plain floats and ints only."""
        return {
            "type": self.kind, "num_bins": self.num_bins,
            "min": _optional_float(self.min), "max": _optional_float(self.max),
            "count": self.count, "nonfinite": self.nonfinite,
            "lo": float(self._lo), "width": float(self._width),
            "counts": [float(c) for c in self._counts] if self._width > 0.0 else [],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistogramObserver:
        """Inverse of :meth:`to_dict`; a malformed dict raises ``CalibrationError``."""
        _check_type(data, cls.kind)
        num_bins = data.get("num_bins")
        if isinstance(num_bins, bool) or not isinstance(num_bins, int):
            raise CalibrationError(f"observer field 'num_bins' must be an integer, got {num_bins!r}")
        observer = cls(num_bins)
        observer.count, observer.nonfinite = _read_int(data, "count"), _read_int(data, "nonfinite")
        if not observer.count:
            return observer
        observer.min, observer.max = _read_float(data, "min", math.nan), _read_float(data, "max", math.nan)
        observer._lo, observer._width = _read_float(data, "lo", 0.0), _read_float(data, "width", 0.0)
        if not observer.min <= observer.max or observer._width < 0.0:
            raise CalibrationError("serialised histogram has min > max or a negative width")
        if observer._width > 0.0:
            counts = data.get("counts")
            try:
                array = np.asarray(counts, dtype=np.float64)
            except (TypeError, ValueError):
                raise CalibrationError("serialised histogram counts are not numbers") from None
            if array.shape != (num_bins,) or not np.all(np.isfinite(array)) or np.any(array < 0):
                raise CalibrationError(f"serialised histogram needs {num_bins} non-negative counts")
            observer._counts = array
        elif observer.min != observer.max:
            raise CalibrationError("serialised histogram has a spread but no bins")
        return observer

    # ---- grid management --------------------------------------------------------------------

    def _index(self, value: float) -> int:
        """The bin of ``value`` on the current grid (clipped to the grid)."""
        position = (value - self._lo) / self._width
        return int(min(max(position, 0.0), self.num_bins - 1))

    def _cover(self, low: float, high: float) -> None:
        """Make the grid cover ``[low, high]`` (creating it from a point mass when needed)."""
        bins = self.num_bins
        if self._width == 0.0:
            if self.count:
                low, high = min(low, self.min), max(high, self.max)
            if high <= low:
                return  # still a single value: stay a point mass
            self._lo, self._width = _new_grid(low, high, bins)
            self._counts = np.zeros(bins, dtype=np.float64)
            if self.count:
                self._counts[self._index(self.min)] = self.count
            return
        if low >= self._lo and high <= self._lo + bins * self._width:
            return
        self._grow(low, high)

    def _grow(self, low: float, high: float) -> None:
        """Widen the grid by an integer factor so that it covers ``[low, high]`` and the old data."""
        bins, lo, width = self.num_bins, self._lo, self._width
        occupied = np.flatnonzero(self._counts)
        start = (low - lo) / width
        stop = (high - lo) / width
        if occupied.size == 0 or not (abs(start) < _INT_SAFE and abs(stop) < _INT_SAFE):
            self._regrid(low, high)
            return
        first = min(int(occupied[0]), math.floor(start))        # old-bin units, relative to lo
        end = max(int(occupied[-1]) + 1, math.floor(stop) + 1)
        factor = -(-(end - first) // bins)                      # ceil((end - first) / bins)
        origin = first - (factor * bins - (end - first)) // 2    # split the slack on both sides
        moved = (occupied - origin) // factor
        self._counts = np.bincount(moved, weights=self._counts[occupied], minlength=bins).astype(np.float64)
        self._lo, self._width = lo + origin * width, factor * width
        logger.debug("histogram grown by a factor of %d to [%g, %g]", factor, self._lo,
                     self._lo + bins * self._width)

    def _regrid(self, low: float, high: float) -> None:
        """Fallback for extreme growth: a fresh grid, old counts split in proportion to overlap."""
        bins = self.num_bins
        nonzero = np.flatnonzero(self._counts)
        if nonzero.size:
            low = min(low, self._lo + nonzero[0] * self._width)
            high = max(high, self._lo + (nonzero[-1] + 1) * self._width)
        new_lo, new_width = _new_grid(low, high, bins)
        self._counts = _redistribute(self._counts, self._lo, self._width, new_lo, new_width, bins)
        self._lo, self._width = new_lo, new_width


def _new_grid(low: float, high: float, bins: int) -> tuple[float, float]:
    """``(low, width)`` of ``bins`` equal bins from ``low`` (overflow-safe, width > 0).

    The grid starts exactly at ``low`` (a ReLU output's histogram starts exactly at 0) and is a
    hair (2**-19) wider than ``high - low``, so that ``high`` lies inside the last bin rather
    than on the top edge, which a later growth could turn into an inner edge.
    """
    width = (high / bins - low / bins) * (1.0 + 2.0**-19)
    return low, max(width, _MIN_WIDTH, max(abs(low), abs(high)) * _MIN_RELATIVE_WIDTH)


def _point_grid(value: float, bins: int) -> tuple[float, float]:
    """A narrow grid whose middle bin holds ``value`` (display grid of a constant)."""
    half = max(abs(value), 1.0) * 2.0**-10
    width = 2.0 * half / bins
    return value - (bins // 2 + 0.5) * width, width


def _bin_values(values: np.ndarray, lo: float, width: float, bins: int) -> np.ndarray:
    """Counts of ``values`` (all inside the grid, up to rounding) per bin, int64."""
    inv = 1.0 / width
    offset = lo * inv
    use_float32 = (values.dtype == np.float32 and abs(offset) <= _FLOAT32_SAFE_OFFSET
                   and _FLOAT32_TINY <= inv <= _FLOAT32_MAX)
    counts = np.zeros(bins, dtype=np.int64)
    dtype = np.float32 if use_float32 else np.float64
    buffer = np.empty(min(_CHUNK, values.size), dtype=dtype)
    index = np.empty(buffer.size, dtype=np.intp)
    scale, shift = dtype(inv), dtype(offset)
    for start in range(0, values.size, _CHUNK):
        chunk = values[start:start + _CHUNK]
        pos, idx = buffer[:chunk.size], index[:chunk.size]
        if use_float32:  # index = x / width - lo / width: no overflow even for +-3.4e38
            np.multiply(chunk, scale, out=pos)
            np.subtract(pos, shift, out=pos)
        else:            # float64: (x - lo) / width is exact enough for any float input
            np.subtract(chunk, lo, out=pos, dtype=np.float64)
            np.multiply(pos, scale, out=pos)
        np.clip(pos, 0, bins - 1, out=pos)
        idx[...] = pos
        counts += np.bincount(idx, minlength=bins)
    return counts


def _redistribute(counts: np.ndarray, lo: float, width: float, new_lo: float, new_width: float,
                  bins: int) -> np.ndarray:
    """Counts of a histogram moved onto another grid (total preserved).

    Exact when each source bin lies inside one target bin (aligned grids, integer width ratio);
    otherwise each source bin is split in proportion to its overlap with the target bins.
    Mass outside the target grid goes to its first or last bin.
    """
    ratio = new_width / width
    shift = (lo - new_lo) / width
    if not (math.isfinite(ratio) and math.isfinite(shift)):
        raise CalibrationError("histogram grids too far apart to merge")
    factor, offset = round(ratio), round(shift)
    if (factor >= 1 and abs(ratio - factor) <= 1e-9 * factor and abs(shift - offset) <= 1e-6
            and abs(offset) < _INT_SAFE and factor < _INT_SAFE):
        target = np.clip((np.arange(counts.size, dtype=np.int64) + offset) // factor, 0, bins - 1)
        return np.bincount(target, weights=counts, minlength=bins)
    positions = (new_lo - lo) / width + ratio * np.arange(bins + 1, dtype=np.float64)
    cumulative = np.concatenate(([0.0], np.cumsum(counts)))
    at_edges = np.maximum.accumulate(np.interp(positions, np.arange(counts.size + 1), cumulative))
    moved = np.diff(at_edges)
    moved[0] += at_edges[0]
    moved[-1] += cumulative[-1] - at_edges[-1]
    return moved


# --------------------------------------------------------------------------------------------
# factory and range


def make_observer(config: QuantConfig) -> MinMaxObserver | HistogramObserver:
    """The observer ``config.method`` needs: MinMax for ``MINMAX``, a histogram otherwise."""
    if config.method is CalibrationMethod.MINMAX:
        return MinMaxObserver(config.moving_average, config.averaging_constant)
    return HistogramObserver(config.num_bins)


def compute_range(observer: MinMaxObserver | HistogramObserver, config: QuantConfig) -> tuple[float, float]:
    """The ``(low, high)`` range to quantize the observed tensor with.

    ``MINMAX`` uses the observer's ``min``/``max`` (moving averages when configured); the
    histogram methods use :mod:`onnxq.calibration.estimators` and are clipped to the observed
    extremes. ``AUTO`` on an observer alone takes the estimator of :func:`histogram_choice`
    (calibration itself runs :mod:`onnxq.calibration.search`, which also measures the consumers).
    The result always contains 0 (ONNX zero points need it), is finite, has ``low < high`` and
    is rounded outwards to float32-representable numbers. A constant tensor ``c`` gives
    ``(min(0, c), max(0, c))``; an all-zero tensor gives ``(0.0, 1.0)``.

    16-bit activations (16x8): MSE searches with 65536 levels; ENTROPY keeps the observed range,
    because a histogram of ``num_bins`` (< 65536) bins is coarser than the quantization grid and
    the KL search (which needs at least as many bins as levels) has no candidate.

    Args:
        observer: an observer that has seen at least one finite value.
        config: supplies ``method``, ``percentile`` and ``activation_type``.

    Raises:
        CalibrationError: the observer saw no finite value, or a histogram method was asked of a
            ``MinMaxObserver``.
    """
    if observer.count == 0:
        raise CalibrationError(f"no finite values were observed ({observer.nonfinite} non-finite); "
                               "cannot compute a range")
    method = config.method
    if isinstance(observer, MinMaxObserver):
        if method is not CalibrationMethod.MINMAX:
            raise CalibrationError(f"{method.value} calibration needs a HistogramObserver, not MinMaxObserver")
        return _finish(observer.min, observer.max)
    if not isinstance(observer, HistogramObserver):
        raise CalibrationError(f"unsupported observer type {type(observer).__name__}")
    data_min, data_max = observer.min, observer.max
    if method is CalibrationMethod.AUTO and data_min != data_max:
        # the histogram alone; calibration.search also weighs the error at the tensor's consumers
        estimator = histogram_choice(observer, config)
        return compute_range(observer, replace(config, method=CalibrationMethod(estimator)))
    if method is CalibrationMethod.MINMAX or data_min == data_max:
        return _finish(data_min, data_max)
    counts, edges = observer.counts, observer.edges
    levels = 1 << config.activation_type.bits
    if method is CalibrationMethod.ENTROPY and levels > observer.counts.size:
        # 16-bit activations: the histogram is coarser than the quantization grid, so the KL
        # search sees no quantization error at all and has no candidate; keep the observed range
        return _finish(data_min, data_max)
    if method is CalibrationMethod.ENTROPY:
        # symmetric int8 activations spend half their 256 levels on each side of zero
        symmetric = config.activation_type is QuantType.INT8
        low, high = estimators.entropy_range(counts, edges, num_quantized_bins=128 if symmetric else None)
    elif method is CalibrationMethod.PERCENTILE:
        low, high = estimators.percentile_range(counts, edges, config.percentile)
    elif method is CalibrationMethod.MSE:
        low, high = estimators.mse_range(counts, edges, num_levels=levels)  # 65536 for 16-bit
    else:  # pragma: no cover - the enum has no other members
        raise CalibrationError(f"unknown calibration method {method!r}")
    return _finish(max(low, data_min), min(high, data_max))


#: The estimators ``AUTO`` chooses among, in order of preference when two give the same range.
AUTO_CANDIDATES: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")
#: Integer levels of activations as onnxq's QDQ rewrite uses them: int8 is symmetric (S8S8).
ACTIVATION_LIMITS = {QuantType.UINT8: (0, 255), QuantType.INT8: (-127, 127), QuantType.UINT16: (0, 65535),
                     QuantType.INT16: (-32768, 32767)}


@dataclass(frozen=True)
class Grid:
    """An integer quantization grid: levels ``scale * (q - zero_point)`` for ``q`` in ``[qmin, qmax]``."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int


def activation_grid(low: float, high: float, activation_type: QuantType | str) -> Grid:
    """The grid ORT's QDQ quantizer gives an activation with the range ``[low, high]``."""
    kind = QuantType(activation_type)
    qmin, qmax = ACTIVATION_LIMITS[kind]
    scale, zero_point = estimators.quantization_grid(low, high, qmin=qmin, qmax=qmax,
                                                     symmetric=kind is QuantType.INT8)
    return Grid(scale, zero_point, qmin, qmax)


def histogram_errors(observer: HistogramObserver, ranges: dict[str, tuple[float, float]],
                     activation_type: QuantType | str) -> dict[str, float]:
    """Estimator -> expected squared quantization error of the observed values on its range's grid."""
    counts, edges = observer.counts, observer.edges
    errors = {}
    for name, (low, high) in ranges.items():
        grid = activation_grid(low, high, activation_type)
        errors[name] = estimators.quantization_error(counts, edges, scale=grid.scale, zero_point=grid.zero_point,
                                                     qmin=grid.qmin, qmax=grid.qmax)
    return errors


def histogram_choice(observer: HistogramObserver, config: QuantConfig) -> str:
    """The estimator whose range gives the observed values the smallest expected quantization error."""
    ranges = {m: compute_range(observer, replace(config, method=CalibrationMethod(m))) for m in AUTO_CANDIDATES}
    errors = histogram_errors(observer, ranges, config.activation_type)
    return min(errors, key=lambda m: (errors[m], AUTO_CANDIDATES.index(m)))


def _finish(low: float, high: float) -> tuple[float, float]:
    """Contain 0, stay finite, round outwards to float32, keep ``low < high``."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if low == high:  # every value was 0
        return 0.0, 1.0
    low = max(low, -_FLOAT32_MAX)
    high = min(high, _FLOAT32_MAX)
    low32, high32 = np.float32(low), np.float32(high)
    if float(low32) > low:  # compare as Python floats: numpy would compare in float32
        low32 = np.nextafter(low32, np.float32(-np.inf))
    if float(high32) < high:
        high32 = np.nextafter(high32, np.float32(np.inf))
    if not low32 < high32:  # both rounded to 0 (sub-float32 magnitudes)
        high32 = np.nextafter(np.float32(0.0), np.float32(1.0))
    return float(low32), float(high32)
