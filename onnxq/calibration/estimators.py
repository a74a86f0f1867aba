"""Range estimators: pure functions from a histogram to a clipping range.

Every estimator takes ``counts`` (one number per bin) and ``edges`` (one more than ``counts``,
increasing) and treats the values inside a bin as spread uniformly over it. They return
``(low, high)`` inside the occupied part of the histogram; they do not force ``0`` into the
range (``observers.compute_range`` does that).

Signed data is handled the same way by all three estimators: they search a single threshold
``t`` on ``|x|`` and return ``(max(low_data, -t), min(high_data, t))``. For non-negative data
(post-ReLU) this is the one-sided search on ``[0, t]``; for data of both signs the histogram
is folded onto ``|x|``, so that one threshold clips both tails.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import CalibrationError

#: Upper bound of (candidate thresholds x quantized bins) processed at once by the entropy search.
_ENTROPY_CHUNK_CELLS = 1 << 18

# Largest share of the values an entropy threshold may clip (outliers are rare by definition).
MAX_CLIPPED_MASS = 1e-3


def entropy_range(counts: np.ndarray, edges: np.ndarray, *, num_quantized_bins: int | None = None,
                  num_levels: int = 256) -> tuple[float, float]:
    """The range whose threshold minimises the KL divergence to the histogram (TensorRT style).

    The histogram is folded onto ``|x|`` (see the module docstring). For each candidate
    threshold ``t`` (every bin edge of the folded histogram) the reference distribution ``P``
    is the histogram on ``[0, t]`` with the clipped mass added to its last bin, and ``Q`` is
    ``P``'s bins merged into ``num_quantized_bins`` groups and spread back over the bins that
    were non-zero. The ``t`` with the smallest ``KL(P || Q)`` wins. All candidates are
    evaluated at once from cumulative sums (no per-candidate Python loop).

    As in NVIDIA's pytorch-quantization, the first ``|x|`` bin is cut down to the count of the
    second before the search: it holds the exact zeros, which every range represents without error,
    and a spike of them (post-ReLU tensors are often half zeros) would otherwise dominate the
    divergence and drag the threshold far down. Groups are split evenly (``j * i // n``, not
    ``i // n`` bins per group with the remainder in the last group as in ONNX Runtime), and
    there is no epsilon smoothing: a candidate whose last group is empty while it receives
    clipped mass has infinite divergence. Thresholds that clip more than ``MAX_CLIPPED_MASS``
    (0.1 %) of the values are not candidates: KL cannot see the shape of what is clipped, so it
    would cut a whole mode of two-valued data (MNIST pixels lose their strokes), and a ``P`` that
    is nothing but the clipped mass in one bin would win with divergence 0.

    Args:
        counts: histogram counts, shape ``(n,)``.
        edges: bin edges, shape ``(n + 1,)``.
        num_quantized_bins: quantization levels on ``[0, t]``. ``None`` (default) derives it per
            candidate from the asymmetric ``num_levels`` grid that the range
            ``(max(low, -t), min(high, t))`` gets: ``(num_levels - 1) * t / width``. That is
            255 for one-sided (non-negative) data and 128 when both tails reach ``t``, the
            TensorRT value for signed int8. Pass an int to use the same value for every
            candidate (128 reproduces TensorRT).
        num_levels: integer levels of the quantized type (256 for 8 bits).

    Returns:
        ``(low, high)``, the occupied range clipped at ``-t`` and ``t``.

    Raises:
        CalibrationError: the histogram is malformed or empty.
    """
    counts, edges = _check_histogram(counts, edges)
    if num_levels < 2:
        raise CalibrationError(f"num_levels must be at least 2, got {num_levels}")
    if num_quantized_bins is not None and num_quantized_bins < 1:
        raise CalibrationError(f"num_quantized_bins must be at least 1, got {num_quantized_bins}")
    low, high = _occupied(counts, edges)
    most = num_quantized_bins if num_quantized_bins is not None else num_levels - 1
    abs_counts, abs_edges = _fold(counts, edges, min_bins=most)
    other_side = min(abs(low), abs(high)) if low < 0.0 < high else 0.0
    divergence = _kl_divergences(abs_counts, abs_edges, other_side=other_side,
                                 num_quantized_bins=num_quantized_bins, num_levels=num_levels)
    threshold = float(abs_edges[int(np.argmin(divergence)) + 1])
    return _clip(low, high, threshold)


def percentile_range(counts: np.ndarray, edges: np.ndarray, percentile: float) -> tuple[float, float]:
    """The range clipped at the ``percentile`` of ``|x|``.

    One threshold ``t`` on the absolute values (not a separate low and high percentile), as
    ``CalibrationMethod.PERCENTILE`` documents: ``percentile`` per cent of the values satisfy
    ``|x| <= t``. ``t`` is interpolated inside the bin it falls in.

    Args:
        counts: histogram counts, shape ``(n,)``.
        edges: bin edges, shape ``(n + 1,)``.
        percentile: in ``(0, 100]``; 100 keeps the whole occupied range.

    Returns:
        ``(low, high)``, the occupied range clipped at ``-t`` and ``t``.

    Raises:
        CalibrationError: the histogram is malformed or the percentile out of range.
    """
    counts, edges = _check_histogram(counts, edges)
    if not 0.0 < percentile <= 100.0:
        raise CalibrationError(f"percentile must be in (0, 100], got {percentile}")
    low, high = _occupied(counts, edges)
    extent = max(abs(low), abs(high))
    points = np.unique(np.abs(edges))
    points = np.concatenate(([0.0], points[(points > 0.0) & (points < extent)], [extent]))
    mass = _abs_cdf(counts, edges, points)
    target = percentile / 100.0 * mass[-1]
    if percentile >= 100.0:
        return _clip(low, high, extent)
    i = int(np.searchsorted(mass, target, side="left"))
    i = min(max(i, 1), len(points) - 1)
    step = mass[i] - mass[i - 1]
    frac = (target - mass[i - 1]) / step if step > 0 else 1.0
    threshold = float(points[i - 1] + frac * (points[i] - points[i - 1]))
    return _clip(low, high, threshold)


def mse_range(counts: np.ndarray, edges: np.ndarray, *, num_levels: int = 256) -> tuple[float, float]:
    """The range whose threshold minimises the expected squared quantization error.

    For each candidate threshold ``t`` (every ``|edge|`` of the histogram), the range is
    ``(a, b) = (max(low, -t), min(high, t))`` widened to contain 0 and quantized with
    ``num_levels`` evenly spaced levels (step ``s = (b - a) / (num_levels - 1)``). The expected
    error is the clipping error of the values outside ``[a, b]`` (squared distance from the bin
    centre to the bound plus the in-bin variance) plus ``s**2 / 12`` for every value inside.
    All candidates are evaluated at once from prefix sums.

    Args:
        counts: histogram counts, shape ``(n,)``.
        edges: bin edges, shape ``(n + 1,)``.
        num_levels: integer levels of the quantized type (256 for 8 bits).

    Returns:
        ``(low, high)``, the occupied range clipped at ``-t`` and ``t``.

    Raises:
        CalibrationError: the histogram is malformed or empty.
    """
    counts, edges = _check_histogram(counts, edges)
    if num_levels < 2:
        raise CalibrationError(f"num_levels must be at least 2, got {num_levels}")
    low, high = _occupied(counts, edges)
    scale = max(abs(low), abs(high))  # work in units of the largest |x| to keep numbers O(1)
    mass = counts / counts.sum()
    left, right = edges[:-1] / scale, edges[1:] / scale
    centre, var = (left + right) / 2.0, (right - left) ** 2 / 12.0
    s0 = np.concatenate(([0.0], np.cumsum(mass)))
    s1 = np.concatenate(([0.0], np.cumsum(mass * centre)))
    s2 = np.concatenate(([0.0], np.cumsum(mass * (centre**2 + var))))
    cand = np.unique(np.abs(edges)) / scale
    cand = cand[(cand > 0.0) & (cand <= 1.0)]
    if cand.size == 0 or cand[-1] < 1.0:
        cand = np.append(cand, 1.0)
    a = np.minimum(0.0, np.maximum(low / scale, -cand))
    b = np.maximum(0.0, np.minimum(high / scale, cand))
    above = np.searchsorted(centre, b, side="right")    # bins [above, n) are clipped to b
    below = np.searchsorted(centre, a, side="left")     # bins [0, below) are clipped to a
    t0, t1, t2 = s0[-1] - s0[above], s1[-1] - s1[above], s2[-1] - s2[above]
    h0, h1, h2 = s0[below], s1[below], s2[below]
    clip_error = (t2 - 2.0 * b * t1 + b * b * t0) + (h2 - 2.0 * a * h1 + a * a * h0)
    step = (b - a) / (num_levels - 1)
    error = np.maximum(clip_error, 0.0) + (1.0 - t0 - h0) * step * step / 12.0
    threshold = float(cand[int(np.argmin(error))] * scale)
    return _clip(low, high, threshold)


def quantization_grid(low: float, high: float, *, qmin: int, qmax: int, symmetric: bool = False) -> tuple[float, int]:
    """``(scale, zero_point)`` of the range ``[low, high]`` on the integer levels ``[qmin, qmax]``.

    Mirrors ``onnxruntime.quantization.quant_utils.compute_scale_zp``, which writes the Q/DQ
    nodes: the range is rounded to float32 and widened to contain 0, made ``[-m, m]`` when
    ``symmetric``, the scale is stored as float32 (1.0 for an empty range) and the zero point
    rounded half to even from the unrounded scale.
    """
    rmin, rmax = min(float(np.float32(low)), 0.0), max(float(np.float32(high)), 0.0)
    if symmetric:
        rmax = max(abs(rmin), abs(rmax))
        rmin = -rmax
    scale = (rmax - rmin) / (qmax - qmin)
    if float(np.float32(scale)) < float(np.finfo(np.float32).tiny):
        return 1.0, 0
    if symmetric:
        zero_point = int(np.round((qmin + qmax) / 2.0))
    else:
        zero_point = int(np.clip(np.round(qmin - rmin / scale), qmin, qmax))
    return float(np.float32(scale)), zero_point


def quantization_error(counts: np.ndarray, edges: np.ndarray, *, scale: float, zero_point: int, qmin: int,
                       qmax: int) -> float:
    """The expected squared error of quantizing the histogrammed values on one integer grid.

    The grid is ONNX's ``QuantizeLinear``/``DequantizeLinear`` pair: levels ``scale * (q - zero_point)``
    for ``q`` in ``[qmin, qmax]``; a value rounds to the nearest level and values beyond the end
    levels are clipped to them. Unlike the ``s**2 / 12`` rounding model of :func:`mse_range`, the
    error is integrated exactly over each bin (values uniform inside a bin), so a bin much
    narrower than a step, such as the spike of exact zeros of a post-ReLU tensor, costs what it
    really costs (nearly nothing when it sits on a level).

    Args:
        counts: histogram counts, shape ``(n,)``.
        edges: bin edges, shape ``(n + 1,)``.
        scale: quantization step (> 0).
        zero_point: integer zero point, in ``[qmin, qmax]``.
        qmin: smallest integer level.
        qmax: largest integer level (``> qmin``).

    Returns:
        The mean squared error per value (0 for a grid that represents every value exactly).

    Raises:
        CalibrationError: the histogram or the grid is malformed.
    """
    counts, edges = _check_histogram(counts, edges)
    if not (math.isfinite(scale) and scale > 0.0) or not qmin <= zero_point <= qmax or qmax <= qmin:
        raise CalibrationError(f"invalid grid: scale={scale}, zero_point={zero_point}, [{qmin}, {qmax}]")
    lowest, steps = scale * (qmin - zero_point), qmax - qmin
    integral = _error_integral((edges - lowest) / scale, steps)  # in units of scale**3
    per_bin = np.diff(integral) / np.diff(edges / scale)         # mean error of each bin, units scale**2
    return float(np.sum(counts * np.maximum(per_bin, 0.0)) / counts.sum() * scale * scale)


def _error_integral(u: np.ndarray, steps: int) -> np.ndarray:
    """``H(u) = integral from 0 to u of e(t)**2 dt`` for levels at the integers ``0..steps``.

    ``e(t)`` is the error of rounding ``t`` to the nearest level (``t - round(t)`` inside
    ``[0, steps]``) and of clipping to the end levels outside it. ``H`` is signed (negative below 0).
    """
    inside = np.clip(u, 0.0, float(steps))
    level = np.floor(inside + 0.5)
    rounding = level / 12.0 - 1.0 / 24.0 + ((inside - level) ** 3 + 0.125) / 3.0
    below = np.minimum(u, 0.0) ** 3 / 3.0
    above = np.maximum(u - steps, 0.0) ** 3 / 3.0
    return rounding + below + above


# --------------------------------------------------------------------------------------------
# shared helpers


def _check_histogram(counts: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 copies of ``counts`` and ``edges``."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    edges = np.asarray(edges, dtype=np.float64).reshape(-1)
    if counts.size == 0 or edges.size != counts.size + 1:
        raise CalibrationError(f"histogram needs n counts and n + 1 edges, got {counts.size} and {edges.size}")
    if not (np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0)):
        raise CalibrationError("histogram edges must be finite and strictly increasing")
    if not (np.all(np.isfinite(counts)) and np.all(counts >= 0)):
        raise CalibrationError("histogram counts must be finite and non-negative")
    if not counts.sum() > 0:
        raise CalibrationError("histogram is empty: no values were observed")
    return counts, edges


def _occupied(counts: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """Lower edge of the first and upper edge of the last non-empty bin."""
    nonzero = np.flatnonzero(counts)
    return float(edges[nonzero[0]]), float(edges[nonzero[-1] + 1])


def _clip(low: float, high: float, threshold: float) -> tuple[float, float]:
    return max(low, -threshold), min(high, threshold)


def _cdf(counts: np.ndarray, edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mass of the values ``<= x`` (piecewise linear: uniform inside each bin)."""
    cumulative = np.concatenate(([0.0], np.cumsum(counts)))
    return np.interp(x, edges, cumulative)


def _abs_cdf(counts: np.ndarray, edges: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Mass of the values with ``|x| <= t`` for ``t >= 0``, non-decreasing in ``t``."""
    mass = _cdf(counts, edges, t) - _cdf(counts, edges, -t)
    return np.maximum.accumulate(np.maximum(mass, 0.0))


def _fold(counts: np.ndarray, edges: np.ndarray, *, min_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The histogram of ``|x|`` on ``[0, max|x|]`` with bins about as wide as the input's.

    Non-negative data whose histogram starts at 0 comes back unchanged (same bins); otherwise
    the counts are re-distributed assuming uniform values inside each bin. The result has at
    least ``min_bins`` and at most ``max(len(counts), min_bins)`` bins.
    """
    low, high = _occupied(counts, edges)
    extent = max(abs(low), abs(high))
    width = (edges[-1] - edges[0]) / counts.size
    ratio = extent / width
    wanted = int(round(ratio)) if math.isfinite(ratio) else counts.size
    n_abs = max(min(wanted, counts.size), min_bins, 1)
    abs_edges = np.linspace(0.0, extent, n_abs + 1)
    return np.diff(_abs_cdf(counts, edges, abs_edges)), abs_edges


def _xlogx(x: np.ndarray) -> np.ndarray:
    """``x * log(x)`` with ``0 * log(0) = 0``."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    positive = x > 0
    out[positive] = x[positive] * np.log(x[positive])
    return out


def _quantized_bins(candidates: np.ndarray, widths: np.ndarray, *, other_side: float,
                    num_quantized_bins: int | None, num_levels: int) -> np.ndarray:
    """Quantization levels on ``[0, t]`` for each candidate threshold ``t = widths``."""
    if num_quantized_bins is not None:
        return np.full(candidates.shape, num_quantized_bins, dtype=np.int64)
    t = widths
    span = t + np.minimum(other_side, t)
    return np.floor((num_levels - 1) * t / span + 0.5).astype(np.int64)


def _kl_divergences(abs_counts: np.ndarray, abs_edges: np.ndarray, *, other_side: float,
                    num_quantized_bins: int | None, num_levels: int) -> np.ndarray:
    """``KL(P || Q)`` for the threshold at every upper bin edge (``inf`` where not a candidate).

    Entry ``i - 1`` belongs to the threshold ``abs_edges[i]`` (the first ``i`` bins kept).
    """
    hist = abs_counts.astype(np.float64)
    if hist.size > 1 and hist[1:].sum() > 0:
        hist[0] = min(hist[0], hist[1])  # 0 is exact in every range: a spike of zeros must not dominate
    hist /= hist.sum()
    n = hist.size
    cum = np.concatenate(([0.0], np.cumsum(hist)))
    tail = np.concatenate((np.cumsum(hist[::-1])[::-1], [0.0]))  # tail[k] = sum(hist[k:])
    nonzero = np.concatenate(([0], np.cumsum(hist > 0)))
    plogp = np.concatenate(([0.0], np.cumsum(_xlogx(hist))))
    kept = np.arange(1, n + 1)
    levels = _quantized_bins(kept, abs_edges[1:], other_side=other_side,
                             num_quantized_bins=num_quantized_bins, num_levels=num_levels)
    divergence = np.full(n, np.inf)
    # clipping is for rare outliers: a threshold that clips more than MAX_CLIPPED_MASS of the
    # values is never a candidate. KL cannot see the shape of what it clips: on two-valued data
    # (MNIST pixels: background + strokes) it would otherwise cut the whole upper mode, and a P
    # that is one spike of clipped mass has divergence 0 against any Q
    valid = np.flatnonzero((kept >= levels) & (cum[1:] >= 1.0 - MAX_CLIPPED_MASS))
    if valid.size == 0:
        return divergence
    width = int(levels.max()) + 1
    chunk = max(1, _ENTROPY_CHUNK_CELLS // width)
    for start in range(0, valid.size, chunk):
        rows = valid[start:start + chunk]
        divergence[rows] = _kl_chunk(kept[rows], levels[rows], width, cum, tail, nonzero, plogp, hist)
    return divergence


def _kl_chunk(kept: np.ndarray, levels: np.ndarray, width: int, cum: np.ndarray, tail: np.ndarray,
              nonzero: np.ndarray, plogp: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """KL divergences for one chunk of candidates (``kept`` bins, ``levels`` groups each).

    Group ``j`` of a candidate covers the bins ``[j * kept // levels, (j + 1) * kept // levels)``;
    groups past ``levels`` are empty. ``Q_j`` (mass) and ``nz_j`` (non-zero bins) come from the
    cumulative sums ``cum`` and ``nonzero`` at the group bounds. The last group, which also
    receives the clipped mass, is summed from the tail sums ``tail`` instead: a tiny last group
    far out in the tail would lose its digits to cancellation in ``cum[b] - cum[a]``.
    """
    rows = np.arange(kept.size)
    kept_f = kept.astype(np.float64)
    # floor(j * kept / levels) computed in float64 is exact: j * kept is an exact integer and a
    # correctly rounded quotient cannot cross an integer.
    bounds = np.arange(width, dtype=np.float64)[None, :] * kept_f[:, None]
    bounds /= levels[:, None]
    np.floor(bounds, out=bounds)
    np.minimum(bounds, kept_f[:, None], out=bounds)
    index = bounds.astype(np.intp)
    at = cum.take(index)
    mass = at[:, 1:] - at[:, :-1]                                   # Q_j
    at = nonzero.take(index)
    count = at[:, 1:] - at[:, :-1]                                  # nz_j (float64)
    empty = mass <= 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        # sum_j Q_j log(Q_j / nz_j); empty groups contribute 0 (log 1)
        cross = (mass * np.log((mass + empty) / np.maximum(count, 1.0))).sum(axis=1)
        # the last group also receives the clipped mass; its non-zero count may grow by one
        last = levels - 1
        last_mass, last_count = mass[rows, last], count[rows, last]
        outliers = tail[kept]
        exact_mass = tail[index[rows, last]] - outliers
        last_bin = hist[kept - 1]
        new_count = last_count + ((last_bin == 0) & (outliers > 0))
        old_term = np.where(last_mass > 0, last_mass * np.log(last_mass / np.maximum(last_count, 1.0)), 0.0)
        new_mass = exact_mass + outliers
        new_term = np.where(new_mass > 0, new_mass * np.log(exact_mass / np.maximum(new_count, 1.0)), 0.0)
        cross += new_term - old_term                                # -inf: clipped mass onto Q = 0
        p_entropy = plogp[kept] - _xlogx(last_bin) + _xlogx(last_bin + outliers)
        kl = p_entropy - cross + np.log1p(-outliers)
    return np.where(np.isfinite(kl), np.maximum(kl, 0.0), np.inf)
