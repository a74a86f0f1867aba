"""Adaptive rounding: exact im2col rows, a better reconstruction than nearest, ORT's scales kept."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq import ConfigError, QuantConfig, load_data, rewrite
from onnxq.calibration.runner import collect_ranges
from onnxq.passes.adaround import (InputStatistics, RoundingLayer, _problem, adaround, find_layers, from_canonical,
                                   positions, rows, to_canonical)
from onnxq.plan import make_plan, refine_plan
from onnxq.prepare import prepare
from onnxq.rewrite.weights import read_quantized_weights
from onnxq.runtime import create_session, run

SIZE = 10


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def small_net(seed: int = 0) -> onnx.ModelProto:
    """x [N,3,10,10] -> Conv 3x3 -> Relu -> depthwise Conv 3x3 /2 -> Relu -> Conv 1x1 -> Relu
    -> Transpose to NHWC -> MatMul(12) -> Relu -> ReduceMean(H, W) -> Gemm(6, W as [K, N]) -> y."""
    rng = np.random.default_rng(seed)
    inits = [_init("c1_w", rng.standard_normal((8, 3, 3, 3)) / 4), _init("c1_b", 0.1 * rng.standard_normal(8)),
             _init("dw_w", rng.standard_normal((8, 1, 3, 3)) / 3), _init("dw_b", 0.1 * rng.standard_normal(8)),
             _init("pw_w", rng.standard_normal((16, 8, 1, 1)) / 3), _init("pw_b", 0.1 * rng.standard_normal(16)),
             _init("mm_w", rng.standard_normal((16, 12)) / 4),
             _init("fc_w", rng.standard_normal((12, 6)) / 3), _init("fc_b", 0.1 * rng.standard_normal(6))]
    n = helper.make_node
    nodes = [n("Conv", ["x", "c1_w", "c1_b"], ["c1"], pads=[1, 1, 1, 1], name="conv"),
             n("Relu", ["c1"], ["r1"], name="relu1"),
             n("Conv", ["r1", "dw_w", "dw_b"], ["dw"], group=8, strides=[2, 2], pads=[1, 1, 1, 1], name="depthwise"),
             n("Relu", ["dw"], ["r2"], name="relu2"),
             n("Conv", ["r2", "pw_w", "pw_b"], ["pw"], name="pointwise"),
             n("Relu", ["pw"], ["r3"], name="relu3"),
             n("Transpose", ["r3"], ["t"], perm=[0, 2, 3, 1], name="nhwc"),
             n("MatMul", ["t", "mm_w"], ["m"], name="matmul"),
             n("Relu", ["m"], ["r4"], name="relu4"),
             n("ReduceMean", ["r4"], ["f"], axes=[1, 2], keepdims=0, name="pool"),
             n("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def images(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)
    return {"x": ((x + np.roll(x, 1, axis=2) + np.roll(x, 1, axis=3)) / 3).astype(np.float32)}


def _static(model: onnx.ModelProto, calibration: dict[str, np.ndarray], config: QuantConfig = QuantConfig()):
    """Prepared float model, its calibration Dataset and ORT's QDQ rewrite (nearest rounding)."""
    prepared = prepare(model, config)
    plan = make_plan(prepared, config, supported_op_types=rewrite.static_op_types())
    data = load_data(calibration, prepared, batch_size=16)
    ranges = collect_ranges(prepared, data, plan.tensors_to_calibrate, config)
    plan = refine_plan(plan, prepared, ranges)
    return prepared, data, rewrite.quantize_static(prepared, plan, ranges, config)


@pytest.fixture(scope="module")
def setup():
    prepared, data, qdq = _static(small_net(), images(128))
    return prepared, data, qdq


def _sqnr(float_model: onnx.ModelProto, quantized: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    expected = run(create_session(float_model), feeds)[0].astype(np.float64)
    error = run(create_session(quantized), feeds)[0].astype(np.float64) - expected
    return float(10 * np.log10((expected**2).sum() / (error**2).sum()))


def _layer_errors(float_model: onnx.ModelProto, qdq: onnx.ModelProto, layers: list[RoundingLayer],
                  feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Per layer ``sum ||W_q x_q - W x_f||^2`` over every output position of ``feeds`` (rows, no Gram)."""
    from onnxq.calibration.tapping import tap

    inner = [l.float_input for l in layers if l.float_input != "x"]
    floats = dict(zip(inner, run(create_session(tap(float_model, inner)), feeds, inner)))
    floats["x"] = feeds["x"]
    names = [l.quant_input for l in layers]
    quants = dict(zip(names, run(create_session(tap(qdq, names)), feeds, names)))
    inits = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    nodes = {n.name: n for n in float_model.graph.node}
    weights = read_quantized_weights(qdq)
    errors = {}
    for layer in layers:
        x_f, x_q = floats[layer.float_input], quants[layer.quant_input]
        index = np.arange(positions(layer, x_f.shape))
        w = to_canonical(layer, inits[nodes[layer.node].input[1]]).astype(np.float64)
        w_q = to_canonical(layer, weights[layer.node].dequantize()).astype(np.float64)
        y_f = np.matmul(rows(layer, x_f, index), w.transpose(0, 2, 1))
        y_q = np.matmul(rows(layer, x_q, index), w_q.transpose(0, 2, 1))
        errors[layer.node] = float(((y_q - y_f) ** 2).sum())
    return errors


# --------------------------------------------------------------------------- rows and statistics


def _single(op: str, w: np.ndarray, x_shape: list, **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["x", "w"], ["y"], name="layer", **attrs)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_empty_tensor_value_info("y")], [_init("w", w)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


CONVS = [((6, 3, 3, 3), (2, 3, 9, 8), {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
         ((6, 2, 3, 2), (2, 6, 9, 8), {"group": 3, "dilations": [2, 1], "strides": [1, 2]}),
         ((4, 1, 5, 5), (1, 4, 7, 7), {"group": 4, "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
         ((4, 1, 4, 4), (1, 4, 7, 7), {"group": 4, "auto_pad": "SAME_LOWER"}),
         ((5, 3, 3), (2, 3, 11), {"pads": [1, 1], "strides": [3]}),
         ((2, 2, 2, 2, 2), (1, 2, 4, 4, 3), {"pads": [0, 1, 0, 1, 0, 1]})]


@pytest.mark.parametrize("w_shape,x_shape,attrs", CONVS)
def test_im2col_rows_reproduce_onnx_runtime_conv(w_shape, x_shape, attrs):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(w_shape).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    model = _single("Conv", w, list(x_shape), **attrs)
    y = run(create_session(model), {"x": x})[0]
    layer = find_layers_of(model, w)
    index = np.arange(positions(layer, x.shape))
    got = np.matmul(rows(layer, x, index), to_canonical(layer, w).transpose(0, 2, 1))  # [g, P, c]
    expected = y.reshape(y.shape[0], layer.groups, layer.channels, -1).transpose(1, 0, 3, 2)
    np.testing.assert_allclose(got, expected.reshape(got.shape), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(from_canonical(layer, to_canonical(layer, w), w.shape), w)


@pytest.mark.parametrize("op,w_shape,x_shape,attrs", [
    ("Gemm", (5, 7), (4, 5), {"transB": 0, "alpha": 0.5}), ("Gemm", (7, 5), (5, 4), {"transA": 1, "transB": 1}),
    ("MatMul", (5, 7), (2, 3, 5), {})])
def test_rows_of_gemm_and_matmul(op, w_shape, x_shape, attrs):
    rng = np.random.default_rng(1)
    w = rng.standard_normal(w_shape).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = run(create_session(_single(op, w, list(x_shape), **attrs)), {"x": x})[0]
    layer = find_layers_of(_single(op, w, list(x_shape), **attrs), w)
    got = rows(layer, x, np.arange(positions(layer, x.shape)))[0] @ to_canonical(layer, w)[0].T
    np.testing.assert_allclose(got, y.reshape(-1, layer.channels), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(from_canonical(layer, to_canonical(layer, w), w.shape), w)


def find_layers_of(model: onnx.ModelProto, w: np.ndarray) -> RoundingLayer:
    """The RoundingLayer of a one-node model (its weight quantized by hand, per tensor)."""
    from onnxq.passes.adaround import _layer

    return _layer(model.graph.node[0], w.shape, "x")


def test_gram_loss_equals_the_loss_on_rows(setup, monkeypatch):
    monkeypatch.setattr("onnxq.passes.adaround.ROWS_PER_FEATURE", 10**6)  # every row of every batch
    prepared, data, qdq = setup
    layers, _ = find_layers(prepared, qdq)
    stats = _measure_all(prepared, qdq, layers, data, max_patches=10**6)
    feeds = images(128)
    direct = _layer_errors(prepared, qdq, layers, feeds)
    weights = read_quantized_weights(qdq)
    inits = {i.name: numpy_helper.to_array(i) for i in prepared.graph.initializer}
    nodes = {n.name: n for n in prepared.graph.node}
    for layer in layers:
        rows_seen = stats[layer.node].rows
        problem = _problem(layer, weights[layer.node], inits[nodes[layer.node].input[1]], stats[layer.node])
        gram_loss = problem.loss(to_canonical(layer, weights[layer.node].q.astype(np.float64)))
        assert gram_loss * rows_seen == pytest.approx(direct[layer.node], rel=1e-3)


def _measure_all(prepared, qdq, layers, data, **options):
    inputs = InputStatistics(prepared, qdq, layers, data, **options)
    return {layer.node: inputs.measure(index, qdq) for index, layer in enumerate(layers)}


# --------------------------------------------------------------------------- the pass


def test_finds_every_weight_layer(setup):
    prepared, _, qdq = setup
    layers, skipped = find_layers(prepared, qdq)
    assert [l.node for l in layers] == ["conv", "depthwise", "pointwise", "matmul", "fc"]
    assert skipped == {}
    depthwise = layers[1]
    assert (depthwise.groups, depthwise.channels, depthwise.fan_in) == (8, 1, 9)


def test_beats_nearest_rounding_on_held_out_data(setup):
    prepared, data, qdq = setup
    rounded, record = adaround(prepared, qdq, data, iterations=400)
    layers, _ = find_layers(prepared, qdq)
    held_out = images(128, seed=7)
    before, after = _layer_errors(prepared, qdq, layers, held_out), _layer_errors(prepared, rounded, layers, held_out)
    for layer in layers:
        assert after[layer.node] < before[layer.node], layer.node
    assert sum(after.values()) < 0.8 * sum(before.values())
    assert _sqnr(prepared, rounded, held_out) > _sqnr(prepared, qdq, held_out) + 0.5
    assert record.name == "adaptive_rounding" and record.seconds > 0
    assert sorted(record.changed) == sorted(l.node for l in layers)
    for entry in record.details["nodes"].values():
        assert entry["relative_error_adaptive"] < entry["relative_error_nearest"]
        assert 0 < entry["flipped"] < 0.5


def test_output_is_ort_qdq_with_the_same_scales_and_floor_or_ceil(setup):
    prepared, data, qdq = setup
    before = (prepared.SerializeToString(), qdq.SerializeToString())
    rounded, _ = adaround(prepared, qdq, data, iterations=100)
    assert (prepared.SerializeToString(), qdq.SerializeToString()) == before  # inputs never mutated
    onnx.checker.check_model(rounded)
    run(create_session(rounded), images(4))
    assert [(n.op_type, list(n.input), list(n.output)) for n in rounded.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in qdq.graph.node]
    old, new = read_quantized_weights(qdq), read_quantized_weights(rounded)
    inits = {i.name: numpy_helper.to_array(i) for i in prepared.graph.initializer}
    nodes = {n.name: n for n in prepared.graph.node}
    changed = 0
    for name, weight in new.items():
        np.testing.assert_array_equal(weight.scale, old[name].scale)
        np.testing.assert_array_equal(weight.zero_point, old[name].zero_point)
        assert weight.q.dtype == old[name].q.dtype and weight.axis == old[name].axis
        w = inits[nodes[name].input[1]].astype(np.float64)
        shape = [1] * w.ndim
        shape[weight.axis] = -1
        ratio = w / weight.scale.reshape(shape) + weight.zero_point.reshape(shape)
        assert np.all(weight.q >= np.floor(ratio)) and np.all(weight.q <= np.ceil(ratio))
        assert weight.q.min() >= old[name].q.min() and weight.q.max() <= old[name].q.max()
        changed += int(np.sum(weight.q != old[name].q))
    assert changed > 0


def test_a_spent_time_budget_leaves_nearest_rounding(setup):
    prepared, data, qdq = setup
    rounded, record = adaround(prepared, qdq, data, time_budget_s=1e-9)
    assert rounded.SerializeToString() == qdq.SerializeToString()
    assert record.changed == [] and record.details["passes"] == 0
    assert record.details["kept_nearest"] == ["conv", "depthwise", "pointwise", "matmul", "fc"]
    assert "kept nearest" in record.summary


def test_statistics_do_not_grow_with_the_data(setup):
    prepared, _, qdq = setup
    layers, _ = find_layers(prepared, qdq)
    peaks, stats = [], []
    for samples in (32, 256):
        data = load_data(images(samples), prepared, batch_size=16)
        tracemalloc.start()
        stats.append(_measure_all(prepared, qdq, layers, data, max_patches=50, cache_bytes=0))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.3 * peaks[0]
    for layer in layers:
        small, large = stats[0][layer.node], stats[1][layer.node]
        for name in ("qq", "dq", "dd"):
            assert getattr(small, name).shape == getattr(large, name).shape == (layer.groups, layer.fan_in,
                                                                                 layer.fan_in)
        per_batch = min(50, positions(layer, _input_shape(layer)))
        assert large.rows == 16 * per_batch and small.rows == 2 * per_batch


def _input_shape(layer: RoundingLayer) -> tuple[int, ...]:
    shapes = {"conv": (16, 3, SIZE, SIZE), "depthwise": (16, 8, SIZE, SIZE), "pointwise": (16, 8, 5, 5),
              "matmul": (16, 5, 5, 16), "fc": (16, 12)}
    return shapes[layer.node]


def test_the_frontier_cache_changes_the_cost_not_the_result(setup):
    prepared, data, qdq = setup
    cached, with_cache = adaround(prepared, qdq, data, iterations=50)
    fresh, without = adaround(prepared, qdq, data, iterations=50, cache_bytes=0)
    assert cached.SerializeToString() == fresh.SerializeToString()
    assert with_cache.details["passes"] == without.details["passes"] == 5
    assert without.details["cached_passes"] == 0 and with_cache.details["cached_passes"] == 4


def test_the_frontier_cache_stays_within_its_bound(setup):
    prepared, data, qdq = setup
    layers, _ = find_layers(prepared, qdq)
    bound = 300_000  # holds the cut before the 1x1 conv and later ones, not the one before the depthwise
    inputs = InputStatistics(prepared, qdq, layers, data, cache_bytes=bound)
    cached = []
    for index in range(len(layers)):
        before = inputs.cached_passes
        inputs.measure(index, qdq)
        cached.append(inputs.cached_passes > before)
        assert inputs.frontier.nbytes <= bound
    assert cached == [False, False, False, True, True]


def test_rejects_bad_arguments(setup):
    prepared, data, qdq = setup
    with pytest.raises(ConfigError):
        adaround(prepared, qdq, data, iterations=0)
    with pytest.raises(ConfigError):
        adaround(prepared, qdq, data, max_patches=0)


def test_low_rank_quadratic_term_matches_the_dense_one():
    from onnxq.passes.adaround import _quadratic

    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 256))
    h = (x.T @ x / 40)[np.newaxis]
    v = rng.standard_normal((1, 7, 256)).astype(np.float32)
    times_h, rank = _quadratic(h)
    assert rank <= 40 and _quadratic(h[:, :64, :64])[1] == 64  # a factor where it pays, else dense
    np.testing.assert_allclose(times_h(v), v @ h.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_the_static_pipeline_runs_it_when_asked():
    import onnxq

    config = QuantConfig(weight_rounding="adaptive")
    result = onnxq.quantize(small_net(), images(64), config=config, evaluation=images(32, seed=9), latency=False)
    (record,) = [p for p in result.report.passes if p["name"] == "adaptive_rounding"]
    assert record["changed"] and record["details"]["passes"] == 5


def test_rows_per_batch_follow_the_size_of_the_statistics(setup):
    prepared, data, qdq = setup
    layers, _ = find_layers(prepared, qdq)
    inputs = InputStatistics(prepared, qdq, layers, data, max_patches=10**6)  # 8 batches
    assert [inputs.rows_per_batch(layer) for layer in layers[:2]] == [512 * 54 // 8, 512 * 18 // 8]
    assert InputStatistics(prepared, qdq, layers, data, max_patches=100).rows_per_batch(layers[0]) == 100
