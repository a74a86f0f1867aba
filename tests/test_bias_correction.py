"""Bias correction: removes a systematic int8 error, leaves exact weights alone, streams its data."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
from builders import cnn_data, tiny_cnn
from onnx import TensorProto, helper, numpy_helper

from onnxq import ConfigError, QuantConfig, load_data, rewrite
from onnxq.calibration.runner import collect_ranges
from onnxq.passes.bias_correction import (apply_corrections, correct_biases, find_targets, float_bias, measure,
                                          quantized_bias)
from onnxq.plan import make_plan, refine_plan
from onnxq.prepare import prepare
from onnxq.runtime import create_session, run

CHANNELS, CLASSES, SIZE = 8, 4, 12


#: full 8-bit weights (``reduce_range`` otherwise follows the CPU and the kind of Conv), so the
#: weights below sit on ORT's grid exactly
CONFIG = QuantConfig(reduce_range=False)
QMAX = 127


def _biased_weights(shape: tuple[int, ...], step: float, offset: float, seed: int) -> np.ndarray:
    """Weights on ``step * (k + offset)``: symmetric int8 rounds every one by ``-offset`` steps.

    One entry per output channel is ``QMAX * step``, so ORT's scale is exactly ``step``.
    """
    k = np.random.default_rng(seed).integers(-30, 31, size=shape)
    weights = step * (k + offset)
    weights.reshape(shape[0], -1)[:, 0] = QMAX * step
    return weights.astype(np.float32)


def biased_model(offset: float = 0.45, conv_bias: bool = True, gemm_bias: bool = True) -> onnx.ModelProto:
    """x [N,8,12,12] -> depthwise Conv 3x3 -> Relu -> Conv 1x1 -> Relu -> GlobalAveragePool -> Flatten
    -> Gemm(4) -> y. Every weight rounds down by ``offset`` steps (``offset=0``: exact weights)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(_biased_weights((CHANNELS, 1, 3, 3), 0.01, offset, 1), "dw_w"),
             numpy_helper.from_array(_biased_weights((CHANNELS, CHANNELS, 1, 1), 0.01, offset, 2), "pw_w"),
             numpy_helper.from_array((0.1 * rng.standard_normal(CHANNELS)).astype(np.float32), "pw_b"),
             numpy_helper.from_array(_biased_weights((CLASSES, CHANNELS), 0.02, offset, 3), "fc_w")]
    dw_inputs, fc_inputs = ["x", "dw_w"], ["f", "fc_w"]
    if conv_bias:
        inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(CHANNELS)).astype(np.float32), "dw_b"))
        dw_inputs.append("dw_b")
    if gemm_bias:
        inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(CLASSES)).astype(np.float32), "fc_b"))
        fc_inputs.append("fc_b")
    n = helper.make_node
    nodes = [n("Conv", dw_inputs, ["dw"], group=CHANNELS, pads=[1, 1, 1, 1], name="depthwise"),
             n("Relu", ["dw"], ["r1"], name="relu1"),
             n("Conv", ["r1", "pw_w", "pw_b"], ["pw"], name="pointwise"),
             n("Relu", ["pw"], ["r2"], name="relu2"),
             n("GlobalAveragePool", ["r2"], ["g"], name="pool"),
             n("Flatten", ["g"], ["f"], name="flatten"),
             n("Gemm", fc_inputs, ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "biased", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              ["N", CHANNELS, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def biased_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).random((n, CHANNELS, SIZE, SIZE), dtype=np.float32)}


def _static(model: onnx.ModelProto, calibration: dict[str, np.ndarray], config: QuantConfig = CONFIG,
            batch_size: int = 16):
    """The static pipeline up to the rewrite: prepared model, data, and the rewrite as a function."""
    prepared = prepare(model, config)
    plan = make_plan(prepared, config, supported_op_types=rewrite.static_op_types())
    data = load_data(calibration, prepared, batch_size=batch_size)
    ranges = collect_ranges(prepared, data, plan.tensors_to_calibrate, config)
    plan = refine_plan(plan, prepared, ranges)
    return prepared, data, lambda m: rewrite.quantize_static(m, plan, ranges, config)


def _output_error(float_model: onnx.ModelProto, quantized: onnx.ModelProto,
                  feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """Mean |E[y_q - y_f]| over the output channels, and SQNR in dB, of the first output."""
    expected = run(create_session(float_model), feeds)[0].astype(np.float64)
    got = run(create_session(quantized), feeds)[0].astype(np.float64)
    error = got - expected
    return float(np.abs(error.mean(axis=0)).mean()), float(10 * np.log10((expected**2).sum() / (error**2).sum()))


@pytest.mark.parametrize("per_channel", [True, False])
def test_removes_a_systematic_weight_rounding_error(per_channel: bool):
    config = CONFIG.replace(per_channel=per_channel)
    prepared, data, quantize_fn = _static(biased_model(), biased_data(64), config)
    corrected, record = correct_biases(prepared, data, quantize_fn)
    held_out = biased_data(64, seed=5)
    bias_before, sqnr_before = _output_error(prepared, quantize_fn(prepared), held_out)
    bias_after, sqnr_after = _output_error(prepared, quantize_fn(corrected), held_out)
    assert bias_after < bias_before / 10
    assert sqnr_after > sqnr_before + 6
    assert sorted(record.changed) == ["depthwise", "fc", "pointwise"]
    for entry in record.details["nodes"].values():
        assert entry["mean_abs_error_after"] < entry["mean_abs_error_before"] / 5
    assert record.details["passes"] == 2 and record.seconds > 0


@pytest.mark.parametrize("estimate,rounds,factor", [("weights", 1, 3), ("output", 2, 3), ("output", 1, 1)])
def test_every_variant_reduces_the_error(estimate: str, rounds: int, factor: float):
    """One-shot output correction counts upstream errors twice (each layer also removes what its
    inputs' corrections already remove), so it gains least; a second round removes the excess."""
    prepared, data, quantize_fn = _static(biased_model(), biased_data(64))
    corrected, record = correct_biases(prepared, data, quantize_fn, estimate=estimate, rounds=rounds)
    assert record.details["mean_abs_error_after"] < record.details["mean_abs_error_before"] / factor
    assert record.details["passes"] == rounds + 1


def test_never_touches_a_model_whose_quantized_weights_are_exact():
    prepared, data, quantize_fn = _static(biased_model(offset=0.0), biased_data(32))
    before = prepared.SerializeToString()
    corrected, record = correct_biases(prepared, data, quantize_fn)
    assert corrected.SerializeToString() == before
    assert record.changed == []
    assert set(record.details["skipped"].values()) == {"quantized weights are exact"}


def test_never_mutates_its_input_and_adds_missing_biases():
    prepared, data, quantize_fn = _static(biased_model(conv_bias=False, gemm_bias=False), biased_data(32))
    before = prepared.SerializeToString()
    corrected, record = correct_biases(prepared, data, quantize_fn, rounds=1)
    assert prepared.SerializeToString() == before
    nodes = {n.name: n for n in corrected.graph.node}
    assert len(nodes["depthwise"].input) == 3 and len(nodes["fc"].input) == 3
    assert record.details["nodes"]["depthwise"]["bias_added"]
    onnx.checker.check_model(corrected)
    quantized = quantize_fn(corrected)
    assert {n.name for n in quantized.graph.node} >= {"depthwise", "fc"}


def test_shared_bias_is_copied_not_edited_in_place():
    prepared, data, quantize_fn = _static(biased_model(), biased_data(16))
    targets, _ = find_targets(prepared, quantize_fn(prepared))
    shared = onnx.ModelProto()
    shared.CopyFrom(prepared)
    fc = next(n for n in shared.graph.node if n.name == "fc")
    shared.graph.node.append(helper.make_node("Add", ["y", fc.input[2]], ["y2"], name="reuse"))
    target = next(t for t in targets if t.node == "fc")
    out = apply_corrections(shared, [target], {"fc": np.full(CLASSES, 0.5)})
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    new_fc = next(n for n in out.graph.node if n.name == "fc")
    assert new_fc.input[2] != target.bias
    np.testing.assert_allclose(inits[new_fc.input[2]], inits[target.bias] - 0.5, rtol=1e-6)


def matmul_model() -> onnx.ModelProto:
    """x [N,6,8] -> MatMul -> Add(b) -> Relu -> MatMul (no bias) -> y [N,6,4]."""
    inits = [numpy_helper.from_array(_biased_weights((8, 8), 0.01, 0.45, 4).T.copy(), "w1"),
             numpy_helper.from_array(np.linspace(-0.1, 0.1, 8, dtype=np.float32), "b1"),
             numpy_helper.from_array(_biased_weights((4, 8), 0.01, 0.45, 5).T.copy(), "w2")]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w1"], ["m1"], name="mm1"), n("Add", ["m1", "b1"], ["a1"], name="add1"),
             n("Relu", ["a1"], ["r1"], name="relu"), n("MatMul", ["r1", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_matmul_bias_lives_in_its_add():
    data = {"x": np.random.default_rng(0).random((48, 6, 8), dtype=np.float32)}
    prepared, dataset, quantize_fn = _static(matmul_model(), data)
    targets, skipped = find_targets(prepared, quantize_fn(prepared))
    assert [(t.node, t.bias_node, t.output) for t in targets] == [("mm1", "add1", "a1")]
    assert skipped == {"mm2": "MatMul has no bias Add of its own"}
    _, record = correct_biases(prepared, dataset, quantize_fn)
    entry = record.details["nodes"]["mm1"]
    assert entry["mean_abs_error_after"] < entry["mean_abs_error_before"] / 3


def test_measured_means_match_the_pre_activations():
    """W applied to the batch-mean input gives the mean pre-activation error of every node exactly."""
    images = cnn_data(24)
    prepared, data, quantize_fn = _static(tiny_cnn(), images, batch_size=5)
    quantized = quantize_fn(prepared)
    targets, _ = find_targets(prepared, quantized)
    means = measure(prepared, quantized, targets, data)
    for target in targets:
        f_out = run(create_session(_tap(prepared, target.output)), images)[-1]
        q_name = next(n for n in quantized.graph.node if n.name == target.node).output[0]
        q_out = run(create_session(_tap(quantized, q_name)), images)[-1]
        axes = (0, 2, 3) if target.op_type == "Conv" else (0,)
        measured = (means[target.node].mean("quant") + quantized_bias(quantized, target)
                    - means[target.node].mean("float") - float_bias(prepared, target))
        np.testing.assert_allclose(measured, (q_out - f_out).mean(axis=axes), atol=2e-5)


def _tap(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    from onnxq.calibration.runner import tap

    return tap(model, [name])


def test_memory_does_not_grow_with_the_data():
    def peak(samples: int) -> int:
        prepared, data, quantize_fn = _static(biased_model(), biased_data(samples), batch_size=16)
        tracemalloc.start()
        correct_biases(prepared, data, quantize_fn, rounds=1, verify=False)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(32), peak(512)
    assert large < 1.5 * small + (1 << 20), (small, large)


def test_bad_arguments():
    prepared, data, quantize_fn = _static(biased_model(), biased_data(16))
    with pytest.raises(ConfigError):
        correct_biases(prepared, data, quantize_fn, rounds=0)
    with pytest.raises(ConfigError):
        correct_biases(prepared, data, quantize_fn, estimate="magic")


def test_a_node_kept_float_gets_its_own_bias_back() -> None:
    """Bias correction compensates quantized weights: a node the fallback keeps float must not keep it."""
    from dataclasses import replace as dc_replace

    from onnx import numpy_helper as nh

    import onnxq.feeds
    import onnxq.pipelines as pipelines
    import onnxq.prepare
    from onnxq.plan import NodeDecision

    config = QuantConfig(bias_correction=True, reduce_range=False)
    model = onnxq.prepare.prepare(tiny_cnn(), config)
    data = onnxq.feeds.load_data(cnn_data(32), model, batch_size=8)
    built = pipelines.static(pipelines.Job(model, config, data))
    assert built.recipe is not None and built.recipe.unbiased is not None and built.passes
    corrected = set(built.passes[0].changed)
    name = next(n.name for n in model.graph.node if n.name in corrected and n.op_type == "Conv")
    plan = dc_replace(built.plan, decisions=[NodeDecision(d.name, d.op_type, False, "test", d.candidate)
                                             if d.name == name else d for d in built.plan.decisions])
    rebuilt = built.recipe.build(plan)
    node = next(n for n in rebuilt.graph.node if n.name == name)
    original = next(n for n in model.graph.node if n.name == name)
    inits = {i.name: nh.to_array(i) for i in rebuilt.graph.initializer}
    before = {i.name: nh.to_array(i) for i in model.graph.initializer}
    np.testing.assert_array_equal(inits[node.input[2]], before[original.input[2]])
