"""Exact sharded histograms: replay the single-process grid growth from per-batch extremes.

A :class:`~onnxq.calibration.observers.HistogramObserver` fed batch after batch grows its grid by
integer factors with the new origin on an old bin edge, so every count it holds at the end is a
batch's count on the grid of that time, moved by exact integer maps ``i -> (i - origin) // factor``.
Which grids it uses depends only on each batch's extremes (the first and last occupied bins are
the bins of the smallest and largest value seen, since binning is monotonic). So:

1. pass 1 (:class:`Extremes`): the workers record each batch's finite extremes, count and dtype;
2. :func:`replay` feeds ``[low, high]`` of every batch, in the single-process order, to an
   observer and records the grid each batch was binned on and the composite integer map from that
   grid to the final one;
3. pass 2 (:class:`Binner`): each worker bins its batches on their grids
   (``HistogramObserver.update`` on an observer placed on that grid) and maps the counts to the
   final grid; the client adds the shards' counts (integer-valued float64: exact in any order).

The result equals the single-process histogram bin for bin. A growth too large for the integer
re-binning (the observer's proportional ``_regrid`` fallback, beyond 2**52 old bins) cannot be
replayed: :func:`replay` returns ``None`` and the caller calibrates in-process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..calibration.observers import HistogramObserver, MinMaxObserver

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Extremes:
    """Pass-1 observer: per batch ``(low, high, finite count, non-finite count, dtype)``, nothing else."""

    batches: list[tuple[float, float, int, int, str]] = field(default_factory=list)
    count: int = 0

    def update(self, values: np.ndarray) -> None:
        """Record one batch's finite extremes, as ``HistogramObserver.update`` would see them."""
        flat = np.asarray(values).reshape(-1)
        if flat.dtype != np.float32 and flat.dtype != np.float64:
            small = flat.dtype.kind == "f" and flat.dtype.itemsize < 4
            flat = flat.astype(np.float32 if small else np.float64)
        nonfinite = 0
        if flat.size:
            low, high = float(flat.min()), float(flat.max())
            if not -_FLOAT32_MAX <= low <= high <= _FLOAT32_MAX:
                finite = np.abs(flat) <= _FLOAT32_MAX
                nonfinite = flat.size - int(np.count_nonzero(finite))
                flat = flat[finite]
        low, high = (float(flat.min()), float(flat.max())) if flat.size else (math.inf, -math.inf)
        self.batches.append((low, high, int(flat.size), nonfinite, flat.dtype.str))
        self.count += int(flat.size)

    def update_extremes(self, low: float, high: float, count: int, dtype: str = "<f4") -> None:
        """Record one batch reduced inside the graph (every value finite; float32 or float64 ``dtype``)."""
        self.batches.append((low, high, int(count), 0, dtype))
        self.count += int(count)

    def merge(self, other: Extremes) -> None:
        """Append the batches of the shard that follows."""
        self.batches.extend(other.batches)
        self.count += other.count


@dataclass
class Plan:
    """The replayed grids of one tensor: per global batch, its grid and map to the final grid."""

    num_bins: int
    lo: np.ndarray          # per batch: grid origin (NaN: not binned -- empty or point mass)
    width: np.ndarray
    origin: np.ndarray      # int64 composite map to the final grid: (i - origin) // factor
    factor: np.ndarray
    final: dict[str, Any]   # HistogramObserver.to_dict() of the replay, without counts
    point_counts: np.ndarray  # counts on the final grid that came from the point-mass phase

    def shard(self, first: int, stop: int) -> Plan:
        """The grids of global batches ``[first, stop)`` (what one worker needs)."""
        return Plan(self.num_bins, self.lo[first:stop], self.width[first:stop], self.origin[first:stop],
                    self.factor[first:stop], self.final, self.point_counts)


def replay(batches: list[tuple[float, float, int, int, str]], num_bins: int) -> Plan | None:
    """The grids a single-process ``HistogramObserver(num_bins)`` uses for ``batches``, in order.

    Returns:
        The plan, or ``None`` when a growth was not an integer re-binning (cannot be replayed).
    """
    n = len(batches)
    lo, width = np.full(n, np.nan), np.full(n, np.nan)
    origin, factor = np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)
    observer = HistogramObserver(num_bins)
    binned: list[int] = []          # batches binned so far (their maps follow each growth)
    points, point_value = 0, 0.0    # values seen while the observer is a point mass, and the constant
    point_bin: int | None = None
    current: tuple[float, float] | None = None
    seen = (math.inf, -math.inf)
    for k, (low, high, count, _, dtype) in enumerate(batches):
        if count == 0:
            continue
        if not seen[0] <= low <= high <= seen[1]:  # inside what was seen, the grid cannot change
            observer.update(np.array([low, high], dtype=np.dtype(dtype)))
            seen = (min(seen[0], low), max(seen[1], high))
            state = observer.to_dict()
        if state["width"] == 0.0:
            points, point_value = points + count, low
            continue
        grid = (float(state["lo"]), float(state["width"]))
        if current is None and points:  # the grid is created: the constant's values go to its bin
            point_bin = int(min(max((point_value - grid[0]) / grid[1], 0.0), num_bins - 1))
        elif current is not None and grid != current:
            step = _growth(current, grid)
            if step is None:
                return None
            o, f = step
            origin[binned] += o * factor[binned]
            factor[binned] *= f
            if point_bin is not None:
                point_bin = (point_bin - o) // f
        current = grid
        lo[k], width[k] = grid
        binned.append(k)
    final = observer.to_dict()
    final.pop("counts", None)
    point_counts = np.zeros(num_bins)
    if point_bin is not None:
        point_counts[point_bin] = points
    return Plan(num_bins, lo, width, origin, factor, final, point_counts)


def _growth(old: tuple[float, float], new: tuple[float, float]) -> tuple[int, int] | None:
    """``(origin, factor)`` of an integer growth ``new = (lo + origin * width, factor * width)``."""
    (lo, width), (new_lo, new_width) = old, new
    f, o = round(new_width / width), round((new_lo - lo) / width)
    if f < 1 or abs(o) >= 2**52 or f >= 2**52 or f * width != new_width or lo + o * width != new_lo:
        return None
    return int(o), int(f)


@dataclass
class Binner:
    """Pass-2 observer of one tensor on one shard: counts on the final grid of :func:`replay`.

    Consecutive batches binned on the same grid go into one ``HistogramObserver`` placed on that
    grid (exactly the updates the single process made); its counts move to the final grid when
    the grid changes and at the end.
    """

    plan: Plan
    counts: np.ndarray = field(init=False)
    batch: int = 0
    count: int = 0
    _open: tuple[HistogramObserver, tuple[float, float, int, int]] | None = None  # observer, its grid and map

    def __post_init__(self) -> None:
        self.counts = np.zeros(self.plan.num_bins)

    def update(self, values: np.ndarray) -> None:
        """Bin one batch on its grid, as the single process did."""
        k = self.batch
        self.batch += 1
        lo, width = float(self.plan.lo[k]), float(self.plan.width[k])
        if math.isnan(lo):
            return
        grid_map = (lo, width, int(self.plan.origin[k]), int(self.plan.factor[k]))
        if self._open is None or self._open[1] != grid_map:
            self._flush()
            bins = self.plan.num_bins
            grid = HistogramObserver.from_dict({"type": "histogram", "num_bins": bins, "min": lo, "max": lo,
                                                "count": 1, "nonfinite": 0, "lo": lo, "width": width,
                                                "counts": [0.0] * bins})
            self._open = (grid, grid_map)
        self._open[0].update(values)

    def _flush(self) -> None:
        if self._open is None:
            return
        grid, (_, _, origin, factor) = self._open
        counts = grid.counts
        occupied = np.flatnonzero(counts)
        np.add.at(self.counts, (occupied - origin) // factor, counts[occupied])
        self.count += int(counts.sum())
        self._open = None

    def totals(self) -> np.ndarray:
        """The counts on the final grid of every batch seen."""
        self._flush()
        return self.counts

    def merge(self, other: Binner) -> None:
        """Add the counts of another shard."""
        self._flush()
        other._flush()
        self.counts += other.counts
        self.count += other.count

    def __getstate__(self) -> dict[str, Any]:
        """Flushed before pickling (a worker returns it to the client)."""
        self._flush()
        return self.__dict__.copy()


def histogram(plan: Plan, extremes: Extremes, counts: np.ndarray) -> HistogramObserver:
    """The single-process observer: the replay's grid with the shards' counts and pass 1's totals."""
    lows = [b[0] for b in extremes.batches if b[2]]
    highs = [b[1] for b in extremes.batches if b[2]]
    state = dict(plan.final, count=extremes.count, nonfinite=sum(b[3] for b in extremes.batches),
                 min=min(lows) if lows else None, max=max(highs) if highs else None)
    if state["width"]:
        state["counts"] = (counts + plan.point_counts).tolist()
    return HistogramObserver.from_dict(state)


def minmax(extremes: Extremes, moving_average: bool, averaging_constant: float) -> MinMaxObserver:
    """The single-process MinMax observer (moving averages included), replayed from the batch extremes."""
    observer = MinMaxObserver(moving_average, averaging_constant)
    for low, high, count, nonfinite, _ in extremes.batches:
        observer.nonfinite += nonfinite
        if count:
            observer.update_extremes(low, high, count)
    return observer
