"""Observers: MinMax and histogram statistics, merge, growth, odd inputs, compute_range."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxq.calibration import HistogramObserver, MinMaxObserver, compute_range, make_observer
from onnxq.config import CalibrationMethod, QuantConfig
from onnxq.errors import CalibrationError

METHODS = list(CalibrationMethod)
HIST_METHODS = [m for m in METHODS if m is not CalibrationMethod.MINMAX]


def _config(method: CalibrationMethod, **kw) -> QuantConfig:
    return QuantConfig(method=method, **kw)


def _observer_for(method: CalibrationMethod, *batches: np.ndarray):
    observer = make_observer(_config(method))
    for batch in batches:
        observer.update(batch)
    return observer


def _hist_quantile(observer: HistogramObserver, q: float) -> float:
    cum = np.concatenate(([0.0], np.cumsum(observer.counts)))
    return float(np.interp(q * cum[-1], cum, observer.edges))


# ---------------------------------------------------------------------------------------------
# MinMax


def test_minmax_tracks_extremes_and_count():
    observer = MinMaxObserver()
    observer.update(np.array([[1.0, -2.0], [3.0, 0.5]], dtype=np.float32))
    observer.update(np.array([0.0, 7.5], dtype=np.float32))
    assert (observer.min, observer.max, observer.count) == (-2.0, 7.5, 6)
    assert observer.nonfinite == 0


def test_minmax_moving_average():
    observer = MinMaxObserver(moving_average=True, averaging_constant=0.5)
    observer.update(np.array([-1.0, 1.0]))
    observer.update(np.array([-3.0, 5.0]))
    observer.update(np.array([-1.0, 1.0]))
    # min: -1 -> -1 + 0.5 * (-3 + 1) = -2 -> -2 + 0.5 * (-1 + 2) = -1.5
    assert observer.min == pytest.approx(-1.5)
    assert observer.max == pytest.approx(2.0)   # 1 -> 3 -> 2
    assert (observer.data_min, observer.data_max) == (-3.0, 5.0)
    assert compute_range(observer, _config(CalibrationMethod.MINMAX, moving_average=True)) == (-1.5, 2.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minmax_merge_of_halves_equals_whole(seed):
    data = np.random.default_rng(seed).normal(size=(10, 100)).astype(np.float32)
    whole, first, second = MinMaxObserver(), MinMaxObserver(), MinMaxObserver()
    for row in data:
        whole.update(row)
    for row in data[:5]:
        first.update(row)
    for row in data[5:]:
        second.update(row)
    first.merge(second)
    assert (first.min, first.max, first.count) == (whole.min, whole.max, whole.count)


def test_minmax_moving_average_merge_is_weighted_by_batches():
    first, second = MinMaxObserver(True, 0.1), MinMaxObserver(True, 0.1)
    first.update(np.array([-1.0, 1.0]))
    for _ in range(3):
        second.update(np.array([-5.0, 5.0]))
    first.merge(second)
    assert first.min == pytest.approx((-1.0 * 1 + -5.0 * 3) / 4)
    assert first.batches == 4


def test_merge_type_mismatch_raises():
    with pytest.raises(CalibrationError):
        MinMaxObserver().merge(HistogramObserver())
    with pytest.raises(CalibrationError):
        HistogramObserver(256).merge(HistogramObserver(512))
    with pytest.raises(CalibrationError):
        MinMaxObserver(True).merge(MinMaxObserver(False))


# ---------------------------------------------------------------------------------------------
# odd inputs, both observers


@pytest.mark.parametrize("cls", [MinMaxObserver, HistogramObserver])
def test_nan_and_inf_are_skipped_and_counted(cls):
    observer = cls()
    observer.update(np.array([1.0, np.nan, -np.inf, 2.0, np.inf, -3.0], dtype=np.float32))
    assert (observer.min, observer.max, observer.count, observer.nonfinite) == (-3.0, 2.0, 3, 3)
    observer.update(np.full(4, np.nan))
    assert observer.count == 3 and observer.nonfinite == 7


@pytest.mark.parametrize("cls", [MinMaxObserver, HistogramObserver])
def test_float64_beyond_float32_range_counts_as_nonfinite(cls):
    observer = cls()
    observer.update(np.array([1e300, -1.0, 2.0, -1e39]))
    assert (observer.min, observer.max, observer.count, observer.nonfinite) == (-1.0, 2.0, 2, 2)


@pytest.mark.parametrize("cls", [MinMaxObserver, HistogramObserver])
def test_empty_and_all_nan_leave_observer_empty(cls):
    observer = cls()
    observer.update(np.zeros((0, 3), dtype=np.float32))
    observer.update(np.array([np.nan, np.inf]))
    assert observer.count == 0 and observer.nonfinite == 2
    method = CalibrationMethod.MINMAX if cls is MinMaxObserver else CalibrationMethod.ENTROPY
    with pytest.raises(CalibrationError, match="no finite values"):
        compute_range(observer, _config(method))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32])
@pytest.mark.parametrize("cls", [MinMaxObserver, HistogramObserver])
def test_dtypes(cls, dtype):
    observer = cls()
    observer.update(np.arange(-5, 11).astype(dtype).reshape(4, 4))
    assert (observer.min, observer.max, observer.count) == (-5.0, 10.0, 16)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value, expected", [(3.5, (0.0, 3.5)), (-2.0, (-2.0, 0.0)), (0.0, (0.0, 1.0))])
def test_constant_tensor(method, value, expected):
    observer = _observer_for(method, np.full((2, 1000), value, dtype=np.float32),
                             np.full(10, value, dtype=np.float32))
    assert observer.count == 2010
    if isinstance(observer, HistogramObserver):
        assert observer.counts.sum() == 2010
        assert observer.edges.shape == (observer.num_bins + 1,)
    assert compute_range(observer, _config(method)) == expected


def test_histogram_point_mass_then_spread():
    observer = HistogramObserver(256)
    observer.update(np.full(1000, 2.0, dtype=np.float32))
    observer.update(np.linspace(0.0, 4.0, 1001, dtype=np.float32))
    assert observer.counts.sum() == 2001
    peak = int(np.argmax(observer.counts))
    assert observer.edges[peak] <= 2.0 < observer.edges[peak + 1]
    assert observer.counts[peak] >= 1000


@pytest.mark.parametrize("method", METHODS)
def test_huge_magnitudes_do_not_overflow(method):
    rng = np.random.default_rng(0)
    batch = rng.normal(size=10_000).astype(np.float32)
    batch[:100] = np.finfo(np.float32).min      # attention-mask fill
    observer = _observer_for(method, batch, -batch)
    assert observer.count == 20_000
    if isinstance(observer, HistogramObserver):
        assert np.all(np.isfinite(observer.edges))
        assert observer.counts.sum() == 20_000
    low, high = compute_range(observer, _config(method))
    assert np.isfinite(low) and np.isfinite(high) and low <= 0.0 <= high and low < high
    assert np.isfinite(np.float32(low)) and np.isfinite(np.float32(high))


# ---------------------------------------------------------------------------------------------
# histogram growth and merge


def test_histogram_first_batch_matches_numpy():
    data = np.random.default_rng(0).normal(size=50_000).astype(np.float32)
    observer = HistogramObserver(512)
    observer.update(data)
    expected, _ = np.histogram(data.astype(np.float64), bins=observer.edges)
    assert np.abs(observer.counts - expected).sum() <= 2


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 2), (np.float32, 10)])
def test_histogram_growth_merges_old_bins_exactly(dtype, tolerance):
    rng = np.random.default_rng(1)
    batches = [(rng.normal(scale=s, size=20_000) + c).astype(dtype)
               for s, c in [(1.0, 0.0), (3.0, 1.0), (0.5, 20.0), (10.0, -5.0), (1.0, 0.0)]]
    observer = HistogramObserver(1024)
    for batch in batches:
        observer.update(batch)
    data = np.concatenate(batches).astype(np.float64)
    assert observer.counts.sum() == data.size == observer.count
    expected, _ = np.histogram(data, bins=observer.edges)
    # old bins fold exactly into new ones. Only values on an edge may differ: the first batch's
    # minimum sits on the first grid's lower edge, which the re-computed edges here miss by a
    # rounding error; float32 binning may also move a value within rounding distance of an edge
    assert np.abs(observer.counts - expected).sum() <= tolerance
    width = observer.edges[1] - observer.edges[0]
    for q in (0.01, 0.25, 0.5, 0.75, 0.99):
        assert _hist_quantile(observer, q) == pytest.approx(np.quantile(data, q), abs=2 * width)


def test_histogram_many_small_growths_stay_accurate():
    rng = np.random.default_rng(2)
    observer = HistogramObserver(2048)
    batches = [rng.normal(size=5_000).astype(np.float32) * (1.0 + 0.05 * k) for k in range(40)]
    for batch in batches:
        observer.update(batch)
    data = np.concatenate(batches)
    assert observer.counts.sum() == data.size
    assert observer.min == data.min() and observer.max == data.max()
    occupied = np.flatnonzero(observer.counts)
    assert occupied[-1] - occupied[0] > 2048 // 3     # resolution kept: the data spans many bins
    width = observer.edges[1] - observer.edges[0]
    for q in (0.001, 0.5, 0.999):
        assert _hist_quantile(observer, q) == pytest.approx(np.quantile(data, q), abs=2 * width)


@pytest.mark.parametrize("method", HIST_METHODS)
def test_histogram_merge_of_halves_close_to_whole(method):
    rng = np.random.default_rng(3)
    batches = [rng.laplace(size=20_000).astype(np.float32) * (1 + k % 3) for k in range(6)]
    whole = _observer_for(method, *batches)
    first = _observer_for(method, *batches[:3])
    second = _observer_for(method, *batches[3:])
    first.merge(second)
    assert first.count == whole.count and first.counts.sum() == pytest.approx(whole.count)
    assert (first.min, first.max) == (whole.min, whole.max)
    config = _config(method, percentile=99.9)
    low_m, high_m = compute_range(first, config)
    low_w, high_w = compute_range(whole, config)
    span = whole.max - whole.min
    assert low_m == pytest.approx(low_w, abs=0.03 * span)
    assert high_m == pytest.approx(high_w, abs=0.03 * span)


def test_histogram_merge_of_aligned_grids_is_exact():
    observer = HistogramObserver(256)
    observer.update(np.random.default_rng(4).normal(size=10_000))
    copy = HistogramObserver.from_dict(observer.to_dict())
    copy.merge(observer)
    np.testing.assert_array_equal(copy.counts, 2 * observer.counts)
    assert copy.count == 20_000


def test_histogram_merge_with_point_masses():
    constant, spread, empty = HistogramObserver(128), HistogramObserver(128), HistogramObserver(128)
    constant.update(np.full(50, 1.0))
    spread.update(np.linspace(-2, 2, 100))
    constant.merge(spread)
    constant.merge(empty)
    assert constant.count == 150 and constant.counts.sum() == pytest.approx(150)
    assert (constant.min, constant.max) == (-2.0, 2.0)
    empty.merge(constant)
    np.testing.assert_array_equal(empty.counts, constant.counts)


# ---------------------------------------------------------------------------------------------
# serialisation


@pytest.mark.parametrize("cls, kwargs", [(MinMaxObserver, {}), (MinMaxObserver, {"moving_average": True}),
                                         (HistogramObserver, {"num_bins": 128})])
@pytest.mark.parametrize("data", [None, np.full(5, 2.5), np.linspace(-1.5, 3.0, 1000)])
def test_observer_json_round_trip(cls, kwargs, data):
    observer = cls(**kwargs)
    if data is not None:
        observer.update(data.astype(np.float32))
    observer.update(np.array([np.nan]))
    text = json.dumps(observer.to_dict(), allow_nan=False)
    restored = cls.from_dict(json.loads(text))
    assert (restored.min, restored.max, restored.count, restored.nonfinite) == \
        (observer.min, observer.max, observer.count, observer.nonfinite)
    if cls is HistogramObserver:
        np.testing.assert_array_equal(restored.counts, observer.counts)
        np.testing.assert_array_equal(restored.edges, observer.edges)


@pytest.mark.parametrize("bad", [{"type": "minmax", "count": 3, "min": "x", "max": 1.0},
                                 {"type": "histogram", "num_bins": 4, "count": 3, "min": 0.0, "max": 1.0,
                                  "lo": 0.0, "width": 0.25, "counts": [1, 2]},
                                 {"type": "other"}, []])
def test_observer_from_dict_rejects_garbage(bad):
    cls = HistogramObserver if isinstance(bad, dict) and bad.get("type") == "histogram" else MinMaxObserver
    with pytest.raises(CalibrationError):
        cls.from_dict(bad)


# ---------------------------------------------------------------------------------------------
# factory and compute_range


@pytest.mark.parametrize("method, cls", [(CalibrationMethod.MINMAX, MinMaxObserver),
                                         (CalibrationMethod.ENTROPY, HistogramObserver),
                                         (CalibrationMethod.PERCENTILE, HistogramObserver),
                                         (CalibrationMethod.MSE, HistogramObserver)])
def test_make_observer(method, cls):
    observer = make_observer(_config(method, num_bins=512, moving_average=True, averaging_constant=0.2))
    assert type(observer) is cls
    if cls is HistogramObserver:
        assert observer.num_bins == 512
    else:
        assert observer.moving_average and observer.averaging_constant == 0.2


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shift", [-10.0, -1.0, 0.0, 5.0])
def test_compute_range_contains_zero_and_data_bounds(method, shift):
    data = (np.random.default_rng(5).normal(size=30_000) + shift).astype(np.float32)
    observer = _observer_for(method, data)
    low, high = compute_range(observer, _config(method))
    assert isinstance(low, float) and isinstance(high, float)
    assert low <= 0.0 <= high and low < high
    assert low >= min(0.0, float(data.min())) and high <= max(0.0, float(data.max()))
    assert float(np.float32(low)) == low and float(np.float32(high)) == high


def test_compute_range_relu_output_is_one_sided():
    data = np.maximum(np.random.default_rng(6).normal(size=100_000), 0).astype(np.float32)
    for method in HIST_METHODS:
        low, high = compute_range(_observer_for(method, data), _config(method))
        assert low == 0.0 and 2.0 < high <= data.max()


def test_compute_range_needs_histogram_for_histogram_methods():
    observer = MinMaxObserver()
    observer.update(np.arange(5.0))
    with pytest.raises(CalibrationError, match="HistogramObserver"):
        compute_range(observer, _config(CalibrationMethod.ENTROPY))
