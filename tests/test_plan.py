"""QuantPlan: node selection rules and JSON round trip."""

from __future__ import annotations

import json

import pytest
from builders import tiny_cnn, tiny_encoder

from onnxq import QuantConfig
from onnxq.calibration.ranges import TensorRange
from onnxq.plan import QuantPlan, is_transformer, make_plan, matches, refine_plan
from onnxq.prepare import prepare
from onnxq.rewrite import dynamic_op_types, static_op_types


@pytest.mark.parametrize(("name", "patterns", "expected"), [
    ("conv1", ["conv1"], True), ("conv1", ["conv*"], True), ("conv12", ["conv?"], False),
    ("layer.3/attn", ["layer.[0-3]/*"], True), ("fc", [], False),
])
def test_matches_names_and_globs(name, patterns, expected):
    assert matches(name, patterns) is expected


def test_plan_round_trips_through_json():
    model = prepare(tiny_cnn(), QuantConfig())
    plan = make_plan(model, QuantConfig(exclude_nodes=("fc",)), supported_op_types=static_op_types())
    again = QuantPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.float_nodes == ["fc"]


def test_transformer_detection():
    assert is_transformer(tiny_encoder()) and not is_transformer(tiny_cnn())


def test_dynamic_plan_keeps_only_weight_matmuls():
    config = QuantConfig(mode="dynamic")
    model = prepare(tiny_encoder(), config)
    plan = make_plan(model, config, supported_op_types=dynamic_op_types())
    assert set(plan.nodes_to_quantize) == {"q_proj", "k_proj", "v_proj", "o_proj", "ffn_up", "ffn_down"}
    assert plan.tensors_to_calibrate == []


def test_unknown_op_types_are_reported():
    config = QuantConfig(op_types=("Conv", "NoSuchOp"))
    plan = make_plan(prepare(tiny_cnn(), config), config, supported_op_types=static_op_types())
    assert plan.op_types == ["Conv"] and any("NoSuchOp" in note for note in plan.notes)


def test_refine_keeps_sentinel_tensors_float():
    config = QuantConfig(transformer_policy=False)
    model = prepare(tiny_encoder(), config)
    plan = make_plan(model, config, supported_op_types=static_op_types())
    assert "mask_add" in plan.nodes_to_quantize
    ranges = {name: TensorRange(-1.0, 1.0) for name in plan.tensors_to_calibrate}
    ranges["madd"] = TensorRange(-3.4e38, 0.0)
    refined = refine_plan(plan, model, ranges)
    assert "mask_add" in refined.float_nodes and "madd" not in refined.tensors_to_calibrate
    assert refine_plan(plan, model, {n: TensorRange(-1.0, 1.0) for n in plan.tensors_to_calibrate}) is plan


def test_folded_relu_inputs_borrow_the_activation_range():
    """With uint8 activations ORT folds Relu into the Conv's output quantization: the pre-Relu
    tensor is not calibrated (the largest tensors of a CNN), its range is borrowed."""
    model = prepare(tiny_cnn(), QuantConfig())
    plan = make_plan(model, QuantConfig(), supported_op_types=static_op_types())
    conv2_out = next(n.output[0] for n in model.graph.node if n.name == "conv2")
    relu2_out = next(n.output[0] for n in model.graph.node if n.name == "relu2")
    assert plan.range_aliases[conv2_out] == relu2_out
    assert conv2_out not in plan.tensors_to_calibrate and relu2_out in plan.tensors_to_calibrate
    symmetric = make_plan(model, QuantConfig(activation_type="int8"), supported_op_types=static_op_types())
    assert symmetric.range_aliases == {} and conv2_out in symmetric.tensors_to_calibrate


def test_transformer_policy_quantizes_embedding_tables_not_activation_gathers():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(0, np.int64), "first")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
             helper.make_node("LayerNormalization", ["emb", "g", "b"], ["h"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["h", "w"], ["y0"], name="proj"),
             helper.make_node("Gather", ["y0", "first"], ["y"], axis=1, name="cls")]
    inits += [numpy_helper.from_array(np.ones(8, np.float32), "g"), numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plan = make_plan(prepare(model, QuantConfig()), QuantConfig(), supported_op_types=static_op_types())
    assert set(plan.nodes_to_quantize) == {"embed", "proj"}
    assert "cls" in plan.float_nodes and "ln" in plan.float_nodes
