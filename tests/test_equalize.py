"""Cross-layer equalization: float-equivalent on Conv/Gemm pairs and chains, Clip handled, int8 error removed."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import ConfigError, QuantConfig, load_data
from onnxq.passes.equalize import equalize, find_pairs, in_ranges, out_ranges
from onnxq.runtime import create_session, run

SIZE = 8


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x_shape: list, y_shape: list,
           opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "eq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _w(rng: np.random.Generator, *shape: int, spread: float = 1.0) -> np.ndarray:
    """Weights whose output channels differ in range by up to ``spread`` (log-uniform)."""
    w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    return w * np.exp(rng.uniform(0, np.log(spread), size=(shape[0],) + (1,) * (len(shape) - 1)))


def conv_chain(act: str = "Relu", depthwise: bool = True, groups: int = 1, seed: int = 0,
               opset: int = 17) -> onnx.ModelProto:
    """x [N,4,8,8] -> Conv 1x1 (16) -> act -> [Conv 3x3 grouped/depthwise (16) -> act ->] Conv 1x1 (8) -> y."""
    rng = np.random.default_rng(seed)
    c = 16
    inits = {"w1": _w(rng, c, 4, 1, 1, spread=30), "b1": 0.3 * rng.standard_normal(c) + 0.5,
             "w3": _w(rng, 8, c // groups, 1, 1, spread=5), "b3": 0.1 * rng.standard_normal(8)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["h1"], name="conv1")]
    tail = "h1"
    if act:
        nodes += _act(act, "h1", "a1", inits)
        tail = "a1"
    if depthwise:
        inits |= {"w2": _w(rng, c, 1, 3, 3, spread=20), "b2": 0.2 * rng.standard_normal(c)}
        nodes.append(n("Conv", [tail, "w2", "b2"], ["h2"], group=c, pads=[1, 1, 1, 1], name="dw"))
        nodes += _act(act, "h2", "a2", inits) if act else []
        tail = "a2" if act else "h2"
    nodes.append(n("Conv", [tail, "w3", "b3"], ["y"], group=groups, name="conv3"))
    return _model(nodes, inits, ["N", 4, SIZE, SIZE], ["N", 8, SIZE, SIZE], opset)


def _act(act: str, x: str, y: str, inits: dict[str, np.ndarray]) -> list[onnx.NodeProto]:
    if act == "Clip":
        inits |= {"lo": np.array(0.0), "hi": np.array(6.0)}
        return [helper.make_node("Clip", [x, "lo", "hi"], [y], name=f"clip_{x}")]
    if act == "LeakyRelu":
        return [helper.make_node("LeakyRelu", [x], [y], alpha=0.1, name=f"leaky_{x}")]
    return [helper.make_node(act, [x], [y], name=f"{act.lower()}_{x}")]


def gemm_pair(trans_b: bool = True, seed: int = 0) -> onnx.ModelProto:
    """x [N,12] -> Gemm (20) -> Relu -> Gemm (5) -> y, ``transB`` as given."""
    rng = np.random.default_rng(seed)
    w1, w2 = _w(rng, 20, 12, spread=50), _w(rng, 5, 20)
    inits = {"w1": w1 if trans_b else w1.T, "b1": rng.standard_normal(20), "w2": w2 if trans_b else w2.T,
             "b2": rng.standard_normal((1, 5))}
    n = helper.make_node
    nodes = [n("Gemm", ["x", "w1", "b1"], ["h"], transB=int(trans_b), alpha=0.5, name="fc1"),
             n("Relu", ["h"], ["a"], name="relu"),
             n("Gemm", ["a", "w2", "b2"], ["y"], transB=int(trans_b), beta=2.0, name="fc2")]
    return _model(nodes, inits, ["N", 12], ["N", 5])


def _data(model: onnx.ModelProto, n: int = 64, seed: int = 1) -> dict[str, np.ndarray]:
    shape = [d.dim_value or n for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def _outputs(model: onnx.ModelProto, data: dict[str, np.ndarray]) -> np.ndarray:
    return run(create_session(model), data)[0]


def _assert_equivalent(before: onnx.ModelProto, after: onnx.ModelProto, data: dict[str, np.ndarray]) -> None:
    a, b = _outputs(before, data), _outputs(after, data)
    assert np.abs(b - a).max() <= 1e-4 * np.abs(a).max()


def _spread(model: onnx.ModelProto, weight: str) -> float:
    """max / min per-output-channel range of a Conv weight."""
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}[weight]
    r = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    return float(r.max() / r.min())


# --------------------------------------------------------------------------- float equivalence


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", ""])
@pytest.mark.parametrize("with_data", [False, True])
def test_conv_pair_is_float_equivalent(act: str, with_data: bool) -> None:
    model = conv_chain(act, depthwise=False)
    data = _data(model)
    new, record = equalize(model, data=load_data(data, model, batch_size=16) if with_data else None)
    _assert_equivalent(model, new, data)
    assert list(record.details["pairs"]) == [f"conv1 -> {act or '-'} -> conv3"]
    assert set(record.changed) == {"conv1", "conv3"}
    assert _spread(new, "w1") < _spread(model, "w1") / 3
    if with_data:
        assert record.details["max_relative_output_change"] < 1e-5
        assert record.details["bias_absorption"] == ("done" if not act else "none")  # Relu: no channel >= 0
    else:
        assert record.details["max_relative_output_change"] is None


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu"])
def test_bias_absorbed_through_relu_where_always_active(act: str) -> None:
    model = conv_chain(act, depthwise=False)
    bias = next(i for i in model.graph.initializer if i.name == "b1")
    values = numpy_helper.to_array(bias).copy()
    values[[0, 5]] += 50.0  # these two channels never reach the Relu's kink
    bias.CopyFrom(numpy_helper.from_array(values, "b1"))
    data = _data(model)
    new, record = equalize(model, data=load_data(data, model, batch_size=16))
    _assert_equivalent(model, new, data)
    assert record.details["pairs"][f"conv1 -> {act} -> conv3"]["bias_shifted_channels"] == 2
    plain, _ = equalize(model, data=load_data(data, model, batch_size=16), absorb_bias=False)
    shifted, kept = ({i.name: numpy_helper.to_array(i) for i in m.graph.initializer}["b1"] for m in (new, plain))
    assert np.all(shifted[[0, 5]] < kept[[0, 5]] - 1.0)
    np.testing.assert_array_equal(np.delete(shifted, [0, 5]), np.delete(kept, [0, 5]))


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_conv_depthwise_conv_chain_converges_and_is_equivalent(opset: int) -> None:
    model = conv_chain("Relu", depthwise=True, opset=opset)
    data = _data(model)
    new, record = equalize(model, data=load_data(data, model, batch_size=16), iterations=50)
    _assert_equivalent(model, new, data)
    assert len(record.details["pairs"]) == 2 and record.details["converged"]
    inits = {i.name: numpy_helper.to_array(i) for i in new.graph.initializer}
    pairs, _ = find_pairs(new)
    for pair in pairs:  # converged: both sides of every pair have equal per-channel ranges
        r1 = out_ranges(pair.first, inits[pair.first.weight])
        r2 = in_ranges(pair.second, inits[pair.second.weight])
        np.testing.assert_allclose(r1, r2, rtol=1e-3)
    assert record.details["max_relative_output_change"] < 1e-5


def test_grouped_conv_pair() -> None:
    model = conv_chain("Relu", depthwise=False, groups=4)
    data = _data(model)
    new, record = equalize(model, data=load_data(data, model, batch_size=16))
    _assert_equivalent(model, new, data)
    assert len(record.details["pairs"]) == 1


@pytest.mark.parametrize("trans_b", [True, False])
def test_gemm_relu_gemm(trans_b: bool) -> None:
    model = gemm_pair(trans_b)
    data = _data(model, 256)
    new, record = equalize(model, data=load_data(data, model, batch_size=32))
    _assert_equivalent(model, new, data)
    assert set(record.changed) == {"fc1", "fc2"}
    # without data: weights only, no bias absorption
    plain, record = equalize(model)
    _assert_equivalent(model, plain, data)
    assert record.details["bias_absorption"] == "needs data"


def test_clip_pairs_untouched_in_skip_mode() -> None:
    model = conv_chain("Clip", depthwise=True)
    data = _data(model)
    new, record = equalize(model, data=load_data(data, model, batch_size=16), bounded="skip")
    assert record.changed == [] and not record.details["pairs"]
    assert all("Clip" in reason for reason in record.details["skipped"].values())
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for init in new.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(init), before[init.name])


def test_clip_pairs_measure_mode_is_equivalent_on_the_data() -> None:
    model = conv_chain("Clip", depthwise=True)
    data = _data(model, 128)
    new, record = equalize(model, data=load_data(data, model, batch_size=16), bounded="measure")
    assert len(record.details["pairs"]) == 2 and record.changed
    _assert_equivalent(model, new, data)
    assert record.details["max_relative_output_change"] < 1e-5
    held = [e["channels_held"] for e in record.details["pairs"].values()]
    assert all(0 <= h <= 16 for h in held)


@pytest.mark.parametrize("bounds", [(0.0, 6.0), (-1.0, 2.0)])
def test_clip_pairs_rebound_mode_is_exact_for_any_input(bounds: tuple[float, float]) -> None:
    model = conv_chain("Clip", depthwise=True)
    for init in model.graph.initializer:
        if init.name in ("lo", "hi"):
            init.CopyFrom(numpy_helper.from_array(np.array(bounds[init.name == "hi"], np.float32), init.name))
    new, record = equalize(model, bounded="rebound")  # no data needed
    assert sorted(record.details["rebound_clips"]) == ["clip_h1", "clip_h2"]
    ops = [n.op_type for n in new.graph.node]
    assert ops.count("Clip") == 0 and ops.count("Min") == 2 and ops.count("Max" if bounds[0] else "Relu") == 2
    for scale in (1.0, 10.0):  # also far outside anything a calibration set would show
        data = _data(model)
        _assert_equivalent(model, new, {"x": data["x"] * scale})


def test_bad_arguments_and_input_not_mutated() -> None:
    model = conv_chain("Relu")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with pytest.raises(ConfigError, match="needs calibration data"):
        equalize(model, bounded="measure")
    with pytest.raises(ConfigError, match="bounded"):
        equalize(model, bounded="clip")
    equalize(model, data=load_data(_data(model), model, batch_size=16))
    assert model == copy


def test_branches_and_shared_weights_are_not_paired() -> None:
    rng = np.random.default_rng(0)
    n = helper.make_node
    inits = {"w1": _w(rng, 8, 4, 1, 1), "w2": _w(rng, 8, 8, 1, 1), "w3": _w(rng, 8, 8, 1, 1)}
    nodes = [n("Conv", ["x", "w1"], ["h1"], name="c1"), n("Relu", ["h1"], ["a1"], name="r1"),
             n("Conv", ["a1", "w2"], ["h2"], name="c2"), n("Relu", ["h2"], ["a2"], name="r2"),
             n("Conv", ["a2", "w3"], ["h3"], name="c3"), n("Conv", ["h3", "w3"], ["h4"], name="c4"),
             n("Add", ["h4", "a1"], ["y"], name="add")]  # a1 has two consumers; w3 is shared
    model = _model(nodes, inits, ["N", 4, 4, 4], ["N", 8, 4, 4])
    pairs, skipped = find_pairs(model)
    assert pairs == []
    assert "shared" in skipped["c2"]
    new, record = equalize(model)
    assert record.changed == []


# --------------------------------------------------------------------------- the error it removes


def unequal_model(seed: int = 0) -> onnx.ModelProto:
    """Conv 1x1 -> Relu -> Conv 1x1 -> y, where one channel of the first is 100x larger, compensated by the second."""
    rng = np.random.default_rng(seed)
    w1, w2 = _w(rng, 16, 8, 1, 1), _w(rng, 8, 16, 1, 1)
    b1 = 0.1 * rng.standard_normal(16)
    w1[3] *= 100.0
    b1[3] *= 100.0
    w2[:, 3] /= 100.0
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["h"], name="conv1"), n("Relu", ["h"], ["a"], name="relu"),
             n("Conv", ["a", "w2"], ["y"], name="conv2")]
    return _model(nodes, {"w1": w1, "b1": b1, "w2": w2}, ["N", 8, SIZE, SIZE], ["N", 8, SIZE, SIZE])


@pytest.mark.parametrize("per_channel", [False, True])
def test_equalization_reduces_int8_error(per_channel: bool) -> None:
    model = unequal_model()
    calib, evaluation = _data(model, 64, seed=1), _data(model, 64, seed=2)
    config = QuantConfig(per_channel=per_channel)
    reference = _outputs(model, evaluation)

    def error(float_model: onnx.ModelProto) -> float:
        quantized = onnxq.quantize(float_model, calib, config=config, latency=False).model
        return float(np.sqrt(np.mean((_outputs(quantized, evaluation) - reference) ** 2)))

    equalized, record = equalize(model, data=load_data(calib, model, batch_size=16))
    before, after = error(model), error(equalized)
    assert after < 0.5 * before, (before, after)


# --------------------------------------------------------------------------- memory


def _peak(samples: int) -> int:
    model = conv_chain("Clip", depthwise=True)
    data = load_data(_data(model, samples), model, batch_size=16)
    tracemalloc.start()
    try:
        equalize(model, data=data, bounded="measure")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_measure_mode_streams_one_batch_at_a_time() -> None:
    small, large = _peak(32), _peak(512)
    assert large < 1.5 * small + 256 * 1024, (small, large)
