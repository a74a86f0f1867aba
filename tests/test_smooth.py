"""SmoothQuant pre-transform: float equivalence, graph surgery, plan update, effect on int8."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import cnn_data, encoder_data, tiny_cnn, tiny_encoder
from onnx import numpy_helper

from onnxq import ConfigError, QuantConfig, load_data, rewrite, validate
from onnxq.calibration.runner import collect_ranges
from onnxq.plan import make_plan, refine_plan
from onnxq.prepare import prepare
from onnxq.runtime import create_session, run
from onnxq.smooth import SCALE_MAX, SCALE_MIN, channel_abs_max, smooth, smoothing_targets

CONFIG = QuantConfig()
OUTLIER_CHANNEL = 3


def _planned(model: onnx.ModelProto):
    prepared = prepare(model, CONFIG)
    return prepared, make_plan(prepared, CONFIG, supported_op_types=rewrite.static_op_types())


def _outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return run(create_session(model), feeds)


def _nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node}


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def _outlier_data(n: int, seed: int) -> dict[str, np.ndarray]:
    data = encoder_data(n, seed=seed)
    data["x"][..., OUTLIER_CHANNEL] *= 50.0
    return data


@pytest.fixture(scope="module")
def encoder():
    prepared, plan = _planned(tiny_encoder())
    data = load_data(_outlier_data(32, seed=1), prepared, batch_size=8)
    before = prepared.SerializeToString()
    smoothed, new_plan = smooth(prepared, plan, data, alpha=0.75)
    return prepared, plan, data, smoothed, new_plan, before


def test_targets_group_the_matmuls_by_activation(encoder):
    prepared, plan, *_ = encoder
    assert smoothing_targets(prepared, plan) == {
        "x": ["q_proj", "k_proj", "v_proj"], "ctx": ["o_proj"], "h": ["ffn_up"], "g4": ["ffn_down"]}


def test_channel_abs_max_streams_the_per_channel_maximum(encoder):
    prepared, _, data, *_ = encoder
    maxima = channel_abs_max(prepared, data, ["x", "h"])
    raw = _outlier_data(32, seed=1)["x"]
    np.testing.assert_allclose(maxima["x"], np.abs(raw).reshape(-1, raw.shape[-1]).max(axis=0))
    assert maxima["h"].shape == (32,)
    assert int(np.argmax(maxima["x"])) == OUTLIER_CHANNEL


def test_smoothing_preserves_the_float_outputs_and_the_input_model(encoder):
    prepared, _, _, smoothed, _, before = encoder
    assert prepared.SerializeToString() == before  # input not mutated
    onnx.checker.check_model(smoothed, full_check=True)
    feeds = _outlier_data(16, seed=5)
    (ref,), (got,) = _outputs(prepared, feeds), _outputs(smoothed, feeds)
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_qkv_share_one_mul_and_their_weights_are_rescaled(encoder):
    prepared, _, _, smoothed, _, _ = encoder
    nodes = _nodes(smoothed)
    muls = [n for n in smoothed.graph.node if n.op_type == "Mul" and n.name.endswith("_smooth")]
    assert sorted(n.name for n in muls) == ["ctx_smooth", "g4_smooth", "h_smooth", "x_smooth"]
    x_mul = nodes["x_smooth"]
    assert x_mul.input[0] == "x"
    assert {nodes[m].input[0] for m in ("q_proj", "k_proj", "v_proj")} == {x_mul.output[0]}
    inv_scale = _init(smoothed, x_mul.input[1])
    scale = 1.0 / inv_scale
    assert scale.shape == (32,) and np.all((scale >= SCALE_MIN * 0.999) & (scale <= SCALE_MAX * 1.001))
    assert int(np.argmax(scale)) == OUTLIER_CHANNEL  # the outlier channel migrates into the weights
    for proj, weight in (("q_proj", "Wq"), ("k_proj", "Wk"), ("v_proj", "Wv")):
        new_weight = nodes[proj].input[1]
        assert new_weight != weight
        np.testing.assert_allclose(_init(smoothed, new_weight), scale[:, None] * _init(prepared, weight),
                                   rtol=1e-5)
    # the originals are no longer read, so they are dropped rather than doubling the model size
    names = {i.name for i in smoothed.graph.initializer}
    assert not names & {"Wq", "Wk", "Wv", "Wo", "W1", "W2"}
    # order is topological and shapes stay known
    infos = {vi.name: vi for vi in smoothed.graph.value_info}
    assert infos[x_mul.output[0]].type == next(i for i in smoothed.graph.input if i.name == "x").type


def test_other_consumers_keep_reading_the_original_tensor(encoder):
    _, _, _, smoothed, _, _ = encoder
    nodes = _nodes(smoothed)
    assert list(nodes["residual1"].input) == ["x", "o"]
    assert list(nodes["residual2"].input)[0] == "h"
    assert "ctx" in nodes["o_proj"].input[0] and nodes["o_proj"].input[0] != "ctx"


def test_plan_calibrates_the_new_tensors_and_lists_the_muls(encoder):
    _, plan, _, smoothed, new_plan, _ = encoder
    assert plan.tensors_to_calibrate == ["x", "ctx", "h", "g4"]
    assert new_plan.tensors_to_calibrate == ["x_smoothed", "ctx_smoothed", "h_smoothed", "g4_smoothed"]
    assert new_plan.nodes_to_quantize == plan.nodes_to_quantize
    assert [d.name for d in new_plan.decisions] == [n.name for n in smoothed.graph.node]
    mul_decisions = [d for d in new_plan.decisions if d.reason == "SmoothQuant scale"]
    assert len(mul_decisions) == 4
    assert all(d.op_type == "Mul" and not d.quantize and not d.candidate for d in mul_decisions)
    assert not set(new_plan.float_nodes) & {d.name for d in mul_decisions}


def test_tensor_kept_when_another_quantized_node_still_reads_it():
    config = QuantConfig(op_types=("MatMul", "Add"), transformer_policy=False)
    prepared = prepare(tiny_encoder(), config)
    plan = make_plan(prepared, config, supported_op_types=rewrite.static_op_types())
    assert "residual1" in plan.nodes_to_quantize
    data = load_data(encoder_data(16), prepared, batch_size=8)
    _, new_plan = smooth(prepared, plan, data)
    assert "x" in new_plan.tensors_to_calibrate and "x_smoothed" in new_plan.tensors_to_calibrate


def test_cnn_without_matmul_targets_is_returned_unchanged():
    prepared, plan = _planned(tiny_cnn())
    data = load_data(cnn_data(16), prepared, batch_size=8)
    assert smoothing_targets(prepared, plan) == {}
    smoothed, new_plan = smooth(prepared, plan, data)
    assert smoothed is prepared and new_plan is plan


def test_alpha_out_of_range_is_refused(encoder):
    prepared, plan, data, *_ = encoder
    with pytest.raises(ConfigError):
        smooth(prepared, plan, data, alpha=1.5)


def _quantized_cosine(model: onnx.ModelProto, alpha: float | None) -> float:
    prepared, plan = _planned(model)
    data = load_data(_outlier_data(32, seed=1), prepared, batch_size=8)
    if alpha is not None:
        prepared, plan = smooth(prepared, plan, data, alpha=alpha)
    ranges = collect_ranges(prepared, data, plan.tensors_to_calibrate, CONFIG)
    plan = refine_plan(plan, prepared, ranges)
    quantized = rewrite.quantize_static(prepared, plan, ranges, CONFIG)
    report = validate(model, quantized, _outlier_data(32, seed=2), latency=False)
    return report.outputs[0].cosine


def test_smoothing_recovers_accuracy_lost_to_an_outlier_channel():
    model = tiny_encoder()
    plain = _quantized_cosine(model, None)
    smoothed = _quantized_cosine(model, 0.75)
    assert smoothed > plain
    assert 1.0 - smoothed < 0.5 * (1.0 - plain)  # at least halves the error (0.9906 -> 0.9993 here)
