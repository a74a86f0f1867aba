"""Range estimators on histograms: entropy (against brute-force loops), percentile, MSE."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.calibration import HistogramObserver, entropy_range, mse_range, percentile_range
from onnxq.calibration import estimators
from onnxq.errors import CalibrationError


def _histogram(data: np.ndarray, bins: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    observer = HistogramObserver(bins)
    observer.update(data)
    return observer.counts, observer.edges


def _gaussian_with_outliers(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=200_000)
    data[:4] = [20.0, -19.0, 18.5, -20.0]
    return data.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# brute-force references: one candidate threshold at a time, the textbook way


def _groups(kept: int, levels: int) -> np.ndarray:
    """Group of each of the ``kept`` bins: group j covers [j * kept // levels, (j+1) * kept // levels)."""
    bounds = [j * kept // levels for j in range(levels + 1)]
    return np.searchsorted(bounds, np.arange(kept), side="right") - 1


def _p_and_q(hist: np.ndarray, kept: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    p = hist[:kept].copy()
    p[-1] += hist[kept:].sum()
    group = _groups(kept, levels)
    mass = np.bincount(group, weights=hist[:kept], minlength=levels)    # Q_j, without the clipped mass
    nonzero = np.bincount(group, weights=p != 0, minlength=levels)
    q = np.where(p != 0, mass[group] / np.maximum(nonzero[group], 1), 0.0)
    return p, q


def _kl_unsmoothed(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    if np.any((p > 0) & (q == 0)):
        return np.inf
    keep = p > 0
    return float(np.sum(p[keep] * np.log(p[keep] / q[keep])))


def _smooth(dist: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """ONNX Runtime's ``smooth_distribution``: eps into the zeros, taken from the non-zeros."""
    zeros = dist == 0
    n_zeros = zeros.sum()
    eps1 = eps * n_zeros / (dist.size - n_zeros)
    return dist.astype(np.float64) + eps * zeros - eps1 * ~zeros


def _kl_smoothed(p: np.ndarray, q: np.ndarray) -> float:
    p, q = _smooth(p), _smooth(q)
    if np.any(p <= 0) or np.any(q <= 0):  # eps taken from a bin smaller than eps
        return np.inf
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def _reference_threshold(abs_counts: np.ndarray, abs_edges: np.ndarray, levels: int) -> float:
    hist = abs_counts.copy()
    hist[0] = min(hist[0], hist[1])
    divergences = {kept: _kl_smoothed(*_p_and_q(hist, kept, levels)) for kept in range(levels, hist.size + 1)
                   if hist[:kept].sum() >= 0.5 * hist.sum()}
    return float(abs_edges[min(divergences, key=divergences.get)])


# ---------------------------------------------------------------------------------------------
# entropy


def test_entropy_kl_curve_matches_brute_force():
    counts, edges = _histogram(_gaussian_with_outliers(), 512)
    abs_counts, abs_edges = estimators._fold(counts, edges, min_bins=128)
    fast = estimators._kl_divergences(abs_counts, abs_edges, other_side=19.0, num_quantized_bins=128,
                                      num_levels=256)
    hist = abs_counts.copy()
    hist[0] = min(hist[0], hist[1])
    for kept in range(1, hist.size + 1):
        below_median = hist[:kept].sum() < 0.5 * hist.sum()
        expected = _kl_unsmoothed(*_p_and_q(hist, kept, 128)) if kept >= 128 and not below_median else np.inf
        if np.isinf(expected):
            assert np.isinf(fast[kept - 1])
        else:
            assert fast[kept - 1] == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_entropy_gaussian_with_outliers_matches_reference_loop():
    counts, edges = _histogram(_gaussian_with_outliers())
    low, high = entropy_range(counts, edges)
    abs_counts, abs_edges = estimators._fold(counts, edges, min_bins=255)
    reference = _reference_threshold(abs_counts, abs_edges, 128)
    assert high == pytest.approx(reference, rel=0.05)
    assert low == -high
    assert 2.5 < high < 8.0                      # well below the outliers at +-20
    fixed_low, fixed_high = entropy_range(counts, edges, num_quantized_bins=128)
    assert fixed_high == pytest.approx(high, rel=0.02)


def test_entropy_one_sided_relu_ignores_zero_spike():
    data = np.maximum(_gaussian_with_outliers(1), 0.0)
    counts, edges = _histogram(data)
    low, high = entropy_range(counts, edges)
    abs_counts, abs_edges = estimators._fold(counts, edges, min_bins=255)
    assert low == 0.0
    assert 3.0 < high < 8.0
    assert high == pytest.approx(_reference_threshold(abs_counts, abs_edges, 255), rel=0.05)


def test_entropy_without_outliers_keeps_nearly_everything():
    data = np.random.default_rng(2).uniform(-1.0, 1.0, size=100_000)
    counts, edges = _histogram(data)
    low, high = entropy_range(counts, edges)
    assert low == pytest.approx(-1.0, abs=0.02) and high == pytest.approx(1.0, abs=0.02)


def test_entropy_sparse_activations_are_not_clipped_to_a_spike():
    # zeros plus a block far from zero: P of "everything clipped into one bin" must not win
    data = np.concatenate([np.zeros(50_000), np.random.default_rng(10).uniform(5.0, 10.0, 50_000)])
    low, high = entropy_range(*_histogram(data))
    assert low == 0.0 and high > 9.0
    assert entropy_range(np.array([1.0, 0.0, 0.0, 1.0]), np.linspace(-1.0, 1.0, 5))[1] >= 0.75


@pytest.mark.parametrize("bins", [128, 256, 2048])
def test_entropy_small_histograms(bins):
    counts, edges = _histogram(np.random.default_rng(3).laplace(size=50_000), bins)
    low, high = entropy_range(counts, edges)
    assert edges[0] <= low < 0.0 < high <= edges[-1]


# ---------------------------------------------------------------------------------------------
# percentile


@pytest.mark.parametrize("percentile, expected", [(99.0, 9.9), (90.0, 9.0), (50.0, 5.0), (100.0, 10.0)])
def test_percentile_uniform_one_sided(percentile, expected):
    data = np.random.default_rng(4).uniform(0.0, 10.0, size=400_000)
    data[:2] = [0.0, 10.0]
    low, high = percentile_range(*_histogram(data), percentile)
    assert low == pytest.approx(0.0, abs=0.01)
    assert high == pytest.approx(expected, abs=0.03)


def test_percentile_is_on_absolute_values():
    # |x| for x ~ U(-1, 3): density 1/2 on [0, 1], 1/4 on [1, 3] -> 99% point at 1 + 4 * 0.49 = 2.96
    data = np.random.default_rng(5).uniform(-1.0, 3.0, size=400_000)
    low, high = percentile_range(*_histogram(data), 99.0)
    assert low == pytest.approx(-1.0, abs=0.01)
    assert high == pytest.approx(2.96, abs=0.02)


def test_percentile_interpolates_inside_a_bin():
    counts, edges = np.array([0.0, 10.0, 0.0]), np.array([-1.0, 0.0, 1.0, 2.0])
    assert percentile_range(counts, edges, 50.0) == pytest.approx((0.0, 0.5))


# ---------------------------------------------------------------------------------------------
# MSE


def _quant_error(data: np.ndarray, low: float, high: float, levels: int = 256) -> float:
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / (levels - 1)
    zero = np.round(-low / scale)
    q = np.clip(np.round(data / scale) + zero, 0, levels - 1)
    return float(np.mean(((q - zero) * scale - data) ** 2))


@pytest.mark.parametrize("seed", [6, 7])
def test_mse_beats_minmax_on_laplacian(seed):
    data = np.random.default_rng(seed).laplace(scale=1.0, size=200_000)
    low, high = mse_range(*_histogram(data))
    minmax_error = _quant_error(data, data.min(), data.max())
    mse_error = _quant_error(data, low, high)
    assert high < data.max() and low > data.min()
    assert mse_error < 0.9 * minmax_error
    # close to the best symmetric threshold found by brute force on the data itself
    grid = np.linspace(1.0, 12.0, 111)
    best = min(_quant_error(data, max(data.min(), -t), min(data.max(), t)) for t in grid)
    assert mse_error <= 1.1 * best


def test_mse_keeps_uniform_data_unclipped():
    data = np.random.default_rng(8).uniform(-2.0, 2.0, size=100_000)
    low, high = mse_range(*_histogram(data))
    assert low == pytest.approx(-2.0, abs=0.02) and high == pytest.approx(2.0, abs=0.02)


# ---------------------------------------------------------------------------------------------
# shared checks


@pytest.mark.parametrize("estimate", [
    lambda c, e: entropy_range(c, e),
    lambda c, e: percentile_range(c, e, 99.99),
    lambda c, e: mse_range(c, e),
])
@pytest.mark.parametrize("shift", [-50.0, -2.0, 0.0, 3.0, 50.0])
def test_estimates_stay_inside_occupied_range(estimate, shift):
    data = np.random.default_rng(9).normal(size=20_000) + shift
    counts, edges = _histogram(data, 512)
    low, high = estimate(counts, edges)
    assert edges[0] <= low <= high <= edges[-1]
    assert np.isfinite(low) and np.isfinite(high)


@pytest.mark.parametrize("counts, edges", [
    (np.array([1.0, 2.0]), np.array([0.0, 1.0])),            # edges too short
    (np.array([0.0, 0.0]), np.array([0.0, 1.0, 2.0])),       # empty
    (np.array([1.0, -1.0]), np.array([0.0, 1.0, 2.0])),      # negative count
    (np.array([1.0, 1.0]), np.array([0.0, 2.0, 1.0])),       # edges not increasing
    (np.array([1.0, 1.0]), np.array([0.0, 1.0, np.inf])),    # infinite edge
])
def test_malformed_histograms_raise(counts, edges):
    for estimate in (entropy_range, mse_range, lambda c, e: percentile_range(c, e, 99.0)):
        with pytest.raises(CalibrationError):
            estimate(counts, edges)


def test_bad_arguments_raise():
    counts, edges = np.ones(4), np.arange(5.0)
    with pytest.raises(CalibrationError):
        percentile_range(counts, edges, 0.0)
    with pytest.raises(CalibrationError):
        entropy_range(counts, edges, num_quantized_bins=0)
    with pytest.raises(CalibrationError):
        mse_range(counts, edges, num_levels=1)


def test_entropy_never_clips_a_whole_mode_of_two_valued_data():
    """MNIST-like pixels: 80 % background at -0.42, strokes spread up to 2.8. KL alone would cut
    the strokes off (a threshold just above the background); onnxq keeps >= 99.9 % of the mass."""
    rng = np.random.default_rng(0)
    background = np.full(80_000, -0.424)
    strokes = rng.uniform(0.5, 2.82, 20_000)
    values = np.concatenate([background, strokes])
    counts, edges = np.histogram(values, bins=2048)
    low, high = entropy_range(counts.astype(np.float64), edges)
    assert high >= np.quantile(np.abs(values), 0.999) - (edges[1] - edges[0])
    assert low <= -0.42
