"""method="auto": per-tensor choice among MinMax / percentile / entropy / MSE by the consumers' output error."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.calibration import HistogramObserver, RangeCache, Ranges, TensorRange, compute_range
from onnxq.calibration.estimators import quantization_error
from onnxq.calibration.runner import collect_ranges, range_settings
from onnxq.calibration.observers import histogram_errors
from onnxq.calibration.search import CANDIDATES, activation_grid, fake_quantize, search
from onnxq.config import QuantConfig
from onnxq.errors import CalibrationError
from onnxq.feeds import load_data
from onnxq.runtime import create_session, run


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _matmul_model(dim: int = 16, seed: int = 0) -> onnx.ModelProto:
    """``y = x @ W``: the error that matters for ``x`` is the error of ``y``."""
    w = (np.random.default_rng(seed).standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dim])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dim])],
                  [numpy_helper.from_array(w, "w")])


def _two_branches(channels: int = 16, gain: float = 30.0, seed: int = 0) -> onnx.ModelProto:
    """Two tensors with the same outlier channel (x30); ``t1``'s consumer ignores it, ``t2``'s reads only it."""
    rng = np.random.default_rng(seed)
    spread = (np.eye(channels, dtype=np.float32) * np.where(np.arange(channels) == 0, gain, 1.0))[:, :, None, None]
    mix = (rng.standard_normal((channels, channels)) / np.sqrt(channels)).astype(np.float32)
    ignore, read = mix.copy(), 0.05 * mix
    ignore[:, 0] *= 0.002
    read[:, 0] = 1.0 / gain
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in
             [(spread, "w1"), (spread.copy(), "w1b"), (ignore[:, :, None, None], "w2"), (read[:, :, None, None], "w3")]]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["t1"], name="c1"), n("Conv", ["x", "w1b"], ["t2"], name="c1b"),
             n("Conv", ["t1", "w2"], ["y1"], name="c2"), n("Conv", ["t2", "w3"], ["y2"], name="c3")]
    shape = ["N", channels, 8, 8]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                  [helper.make_tensor_value_info("y1", TensorProto.FLOAT, shape),
                   helper.make_tensor_value_info("y2", TensorProto.FLOAT, shape)], inits)


class _Counting:
    """A Dataset stand-in that counts the batches handed out."""

    def __init__(self, dataset) -> None:
        self.dataset, self.batches = dataset, 0
        self.num_batches = dataset.num_batches

    def __iter__(self):
        for feeds in self.dataset:
            self.batches += 1
            yield feeds


def _output_error(model: onnx.ModelProto, x: np.ndarray, tensor: str, low: float, high: float) -> float:
    """Relative error of the model outputs when only ``tensor`` (a graph input) is fake-quantized."""
    session = create_session(model)
    reference = run(session, {tensor: x})
    quantized = run(session, {tensor: fake_quantize(x, activation_grid(low, high, "uint8"))})
    return sum(float(np.sum((q - r) ** 2) / np.sum(r**2)) for q, r in zip(quantized, reference))


def _single_ranges(x: np.ndarray) -> dict[str, tuple[float, float]]:
    observer = HistogramObserver(2048)
    observer.update(x)
    return {m: compute_range(observer, QuantConfig(method=m)) for m in CANDIDATES}


# ------------------------------------------------------------------------------------ the grid


@pytest.mark.parametrize("kind, low, high", [("uint8", -1.3, 4.2), ("uint8", 0.0, 6.0), ("int8", -0.7, 3.1),
                                             ("uint16", -2.0, 5.0), ("int16", -1.0, 0.25)])
def test_grid_and_fake_quantize_match_ort(kind, low, high):
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    onnx_type = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8, "uint16": TensorProto.UINT16,
                 "int16": TensorProto.INT16}[kind]
    symmetric = kind == "int8"  # onnxq's rewrite: ActivationSymmetric only for int8
    qmin, qmax = get_qmin_qmax_for_qType(onnx_type, symmetric=symmetric)
    zp, scale = compute_scale_zp(np.float32(low), np.float32(high), qmin, qmax, symmetric=symmetric)
    grid = activation_grid(low, high, kind)
    assert (grid.qmin, grid.qmax, grid.zero_point) == (int(qmin), int(qmax), int(zp))
    assert np.float32(grid.scale) == np.float32(scale)
    # against ORT's own QuantizeLinear -> DequantizeLinear
    x = np.linspace(low - 1.0, high + 1.0, 4001, dtype=np.float32)
    qdq = _model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])],
                 [numpy_helper.from_array(np.float32(scale), "s"),
                  numpy_helper.from_array(np.asarray(zp, dtype=zp.dtype), "z")], opset=21)
    expected = run(create_session(qdq), {"x": x})[0]
    np.testing.assert_allclose(fake_quantize(x, grid), expected, rtol=0, atol=1e-6 * float(scale))


@pytest.mark.parametrize("kind", ["uint8", "int8"])
def test_histogram_error_is_the_sampled_error(kind):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(300_000), 12.0 * rng.standard_normal(300)]).astype(np.float32)
    counts, edges = np.histogram(x, bins=2048)
    for low, high in [(float(x.min()), float(x.max())), (-3.0, 3.0), (-0.5, 1.0)]:
        grid = activation_grid(low, high, kind)
        sampled = float(np.mean((fake_quantize(x, grid) - x).astype(np.float64) ** 2))
        estimated = quantization_error(counts, edges, scale=grid.scale, zero_point=grid.zero_point,
                                       qmin=grid.qmin, qmax=grid.qmax)
        assert estimated == pytest.approx(sampled, rel=0.02)


def test_histogram_error_of_exact_zeros_is_small():
    """A post-ReLU spike of zeros sits on a level: it costs (nearly) nothing, unlike ``s**2 / 12``."""
    x = np.concatenate([np.zeros(100_000), np.random.default_rng(0).uniform(0, 6, 100_000)]).astype(np.float32)
    observer = HistogramObserver(2048)
    observer.update(x)
    grid = activation_grid(0.0, 6.0, "uint8")
    estimated = quantization_error(observer.counts, observer.edges, scale=grid.scale, zero_point=grid.zero_point,
                                   qmin=grid.qmin, qmax=grid.qmax)
    sampled = float(np.mean((fake_quantize(x, grid) - x).astype(np.float64) ** 2))
    assert estimated == pytest.approx(sampled, rel=0.1)  # the zeros' bin is spread over its width
    assert estimated < 0.6 * grid.scale**2 / 12


# ------------------------------------------------------------------------------------ choices


def _draw(distribution: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if distribution == "uniform":
        return rng.uniform(-1.0, 3.0, (65536, 16)).astype(np.float32)
    if distribution == "laplace":  # heavy tails: the extremes grow with the number of values
        return rng.laplace(size=(65536, 16)).astype(np.float32)
    x = rng.standard_normal((65536, 16)).astype(np.float32)  # two rare, far outliers
    x[rng.integers(65536), 3], x[rng.integers(65536), 7] = 40.0, -30.0
    return x


@pytest.mark.parametrize("distribution", ["uniform", "laplace", "outliers"])
def test_choice_is_no_worse_than_any_single_method(distribution):
    x = _draw(distribution, 3)
    model = _matmul_model()
    data = load_data({"x": x}, model, batch_size=4096)
    result = search(model, data, ["x"], QuantConfig(method="auto"))  # caches the first 64 rows only
    choice = result.choices["x"]
    singles = _single_ranges(x)
    held_out = _draw(distribution, 4)
    chosen_error = _output_error(model, held_out, "x", choice.low, choice.high)
    for method, (low, high) in singles.items():
        assert chosen_error <= 1.05 * _output_error(model, held_out, "x", low, high), method
    minmax_low, minmax_high = singles["minmax"]
    if distribution == "uniform":   # nothing to clip: the choice is MinMax-like
        assert choice.high == pytest.approx(minmax_high, rel=0.02) and choice.low == pytest.approx(minmax_low, rel=0.02)
        assert choice.scorer in ("consumers", "single")
    else:                           # heavy tails or outliers: a clipped range wins
        assert choice.estimator != "minmax" and choice.high < 0.8 * minmax_high
        assert choice.scorer == "consumers"
    assert result.ranges.chosen == {"x": choice.estimator}


def test_consumers_decide_what_the_histogram_cannot_see():
    """Same histogram for t1 and t2; only the consumers' weights tell that t2's outliers matter."""
    model = _two_branches()
    x = np.random.default_rng(1).standard_normal((32, 16, 8, 8)).astype(np.float32)
    data = load_data({"x": x}, model, batch_size=8)
    choices = search(model, data, ["t1", "t2"], QuantConfig(method="auto")).choices
    assert choices["t1"].high < 0.8 * choices["t2"].high      # t1 clipped, t2 keeps its outlier channel
    assert choices["t2"].estimator == "minmax"
    proxy = search(model, data, ["t1", "t2"], QuantConfig(method="auto"), scorer="histogram").choices
    assert proxy["t1"].estimator == proxy["t2"].estimator and proxy["t1"].scorer == "histogram"


@pytest.mark.parametrize("distribution", ["normal", "student-t"])
def test_end_to_end_sqnr_at_least_the_best_single_method(distribution):
    """Worst-output SQNR vs float; on heavy-tailed inputs auto combines what no single method can."""
    model = _two_branches()
    rng = np.random.default_rng(2)
    draw = ((lambda: rng.standard_normal((32, 16, 8, 8))) if distribution == "normal"
            else (lambda: rng.standard_t(3, (32, 16, 8, 8))))
    calib, evaluation = draw().astype(np.float32), {"x": draw().astype(np.float32)}
    worst = {}
    for method in (*CANDIDATES, "auto"):
        result = onnxq.quantize(model, {"x": calib}, evaluation=evaluation, config=QuantConfig(method=method),
                                latency=False)
        worst[method] = min(o.sqnr_db for o in result.report.outputs)
        if method == "auto":
            assert result.ranges.method == "auto" and set(result.ranges.chosen) == set(result.ranges.tensors)
    best_single = max(worst[m] for m in CANDIDATES)
    assert worst["auto"] >= best_single - 0.25, worst    # measured: +-0.03 dB (normal), +2.1 dB (student-t)
    if distribution == "student-t":
        assert worst["auto"] >= best_single + 1.0, worst


# ------------------------------------------------------------------------------------ one pass, cache


@pytest.mark.parametrize("samples, cached", [(3, 3), (16, 16), (20, 16)])
def test_one_pass_over_the_data_and_a_bounded_cache(samples, cached, caplog):
    model = _two_branches()
    x = np.random.default_rng(1).standard_normal((40, 16, 8, 8)).astype(np.float32)
    counted = _Counting(load_data({"x": x}, model, batch_size=8))
    with caplog.at_level("DEBUG", logger="onnxq.calibration.search"):
        result = search(model, counted, ["t1", "t2"], QuantConfig(method="auto"), samples=samples)
    assert counted.batches == 5 and result.ranges.samples == 40
    assert f"{cached} sample(s) cached" in caplog.text      # whole batches, or the first batch's first samples
    assert {c.scorer for c in result.choices.values()} == {"consumers"}
    counted = _Counting(load_data({"x": x}, model, batch_size=8))
    tiny = search(model, counted, ["t1", "t2"], QuantConfig(method="auto"), cache_bytes=1000)  # < one sample
    assert counted.batches == 5 and {c.scorer for c in tiny.choices.values()} == {"histogram"}


def test_collect_ranges_dispatches_auto():
    model = _matmul_model()
    data = load_data({"x": np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)}, model)
    config = QuantConfig(method="auto")
    ranges = collect_ranges(model, data, ["x", "y"], config)
    assert ranges.method == "auto" and set(ranges.chosen) == {"x", "y"}
    assert set(ranges.chosen.values()) <= set(CANDIDATES)
    settings = range_settings(config)
    assert settings["method"] == "auto" and {"num_bins", "percentile", "activation_type"} <= set(settings)
    assert ranges.settings == settings
    # an observer alone: the estimator with the smallest expected error of the tensor itself
    observer = HistogramObserver(2048)
    observer.update(_draw("outliers", 5))
    singles = {m: compute_range(observer, QuantConfig(method=m)) for m in CANDIDATES}
    errors = histogram_errors(observer, singles, "uint8")
    assert compute_range(observer, config) == singles[min(errors, key=errors.get)] != singles["minmax"]


# ------------------------------------------------------------------------------------ Ranges.chosen


def test_chosen_round_trips_and_old_files_stay_as_they_were(tmp_path):
    tensors = {"a": TensorRange(-1.0, 2.0), "b": TensorRange(0.0, 6.0)}
    auto = Ranges(tensors=dict(tensors), method="auto", samples=8, model_hash="m", data_hash="d",
                  settings={"method": "auto"}, chosen={"a": "mse", "b": "minmax"})
    assert Ranges.from_dict(json.loads(json.dumps(auto.to_dict()))) == auto
    assert Ranges.from_json(auto.to_json(tmp_path / "r.json")) == auto
    plain = Ranges(tensors=dict(tensors), method="minmax")
    assert "chosen" not in plain.to_dict()                      # single-method files unchanged
    assert Ranges.from_dict(plain.to_dict()).chosen == {}
    cache = RangeCache(tmp_path / "cache")
    cache.put(auto)
    assert cache.get("m", "d", {"method": "auto"}).chosen == auto.chosen
    other = Ranges(tensors={"a": TensorRange(-2.0, 1.0)}, method="auto", settings={"method": "auto"},
                   chosen={"a": "entropy"})
    merged = Ranges(tensors=dict(tensors), method="auto", settings={"method": "auto"},
                    chosen={"a": "mse", "b": "minmax"}).merge(other)
    assert merged.chosen == {"b": "minmax"}                     # a: the shards disagree
    with pytest.raises(CalibrationError):
        Ranges.from_dict({**auto.to_dict(), "chosen": {"a": 3}})
