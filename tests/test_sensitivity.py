"""Revert-one sensitivity (onnxq.sensitivity) and the fallback ranking built on it (onnxq.tune)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import cnn_data, tiny_cnn

import onnxq.pipelines as pipelines
from onnxq import QuantConfig
from onnxq.feeds import load_data
from onnxq.prepare import prepare
from onnxq.runtime import create_session, run
from onnxq.sensitivity import TENSOR_GATE, ErrorSplit, emulation_model, node_sensitivities, output_error
from onnxq.tune import keep_float, sensitivity_ranking, tune
from test_analyze import mlp_data, outlier_mlp

CONFIG = QuantConfig(bias_correction=True)


@pytest.fixture(scope="module")
def cnn() -> tuple[onnx.ModelProto, pipelines.Built, object]:
    model = prepare(tiny_cnn(), CONFIG)
    data = load_data(cnn_data(32), model, batch_size=8)
    return model, pipelines.static(pipelines.Job(model, CONFIG, data)), data


def _outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs as its graph defines them (no ORT fusion into integer kernels)."""
    return run(create_session(model, optimize=False), feeds)


def _switch(gates: dict[str, str], off: set[str]) -> dict[str, np.ndarray]:
    return {g: np.array(key not in off) for key, g in gates.items()}


def test_all_gates_on_is_the_int8_model_and_all_off_is_float(cnn) -> None:
    model, built, _ = cnn
    recipe = built.recipe
    emulation, gates = emulation_model(recipe.model, built.model, unbiased=recipe.unbiased, tensor_gates=True)
    onnx.checker.check_model(emulation)
    feeds = cnn_data(16, seed=5)
    quantized = _outputs(built.model, feeds)[0]
    on = run(create_session(emulation), {**feeds, **_switch(gates, set())})[0]
    # the same arithmetic up to float rounding order
    np.testing.assert_allclose(on, quantized, rtol=1e-5, atol=1e-5)
    off = run(create_session(emulation), {**feeds, **_switch(gates, set(gates))})[0]
    np.testing.assert_allclose(off, _outputs(model, feeds)[0], rtol=1e-5, atol=1e-5)
    assert any(k.startswith(TENSOR_GATE) for k in gates) and "conv1" in gates and "fc" in gates


def test_one_gate_off_is_the_rebuilt_model_with_that_node_float(cnn) -> None:
    """A node kept float in the real rebuild (own float weights, original bias, shared tensors still
    quantized) computes what the emulation computes with that node's gate off."""
    model, built, _ = cnn
    recipe = built.recipe
    emulation, gates = emulation_model(recipe.model, built.model, unbiased=recipe.unbiased)
    feeds = cnn_data(16, seed=6)
    for node in ("conv2", "fc"):
        plan = keep_float(built.plan, recipe.model, [node], built.ranges)
        assert plan is not None
        rebuilt = _outputs(recipe.build(plan), feeds)[0]
        emulated = run(create_session(emulation), {**feeds, **_switch(gates, {node})})[0]
        np.testing.assert_allclose(emulated, rebuilt, rtol=1e-5, atol=1e-5, err_msg=node)


def test_ranks_the_layer_with_the_outlier_weights_first() -> None:
    """outlier_mlp's fc1 has one huge weight: its int8 weights are coarse, keeping it float removes most error."""
    config = QuantConfig(reduce_range=False)
    model = prepare(outlier_mlp(), config)
    data = load_data(mlp_data(seed=1), model, batch_size=16)
    built = pipelines.static(pipelines.Job(model, config, data))
    emulation, gates = emulation_model(built.recipe.model, built.model, unbiased=built.recipe.unbiased)
    base, ranked = node_sensitivities(model, emulation, gates, data, list(gates), samples=32)
    assert ranked[0].node == "fc1" and ranked[0].op_type == "MatMul"
    assert ranked[0].gain > 0.5 * base > 0  # most of the output error
    assert all(r.gain <= ranked[0].gain for r in ranked)
    candidates, split = sensitivity_ranking(model, built.recipe.model, built.model, data,
                                            unbiased=built.recipe.unbiased)
    assert candidates[0].nodes == ["fc1"] and candidates[0].tensor == "w1"
    assert all(c.nodes for c in candidates)
    # every weight float removes what fc1's weights cost (and more); every activation float much less
    assert split.base == pytest.approx(base, rel=1e-6) and split.samples == 32
    assert split.share(split.weights) >= ranked[0].gain / base > 0.5
    assert split.share(split.activations) < split.share(split.weights)


def test_error_split_says_when_the_error_is_spread() -> None:
    concentrated = ErrorSplit(base=1.0, weights=0.1, activations=0.8, samples=8)
    assert concentrated.describe() == ("where the error is (revert-all on 8 sample(s)): every weight float would "
                                       "remove 90% of the output error, every shared activation float 20%")
    spread = ErrorSplit(base=1.0, weights=0.45, activations=0.7, samples=8)
    assert "55%" in spread.describe() and "30%" in spread.describe()
    assert "spread over the weights and activations of many layers" in spread.describe()
    assert ErrorSplit(base=0.0, weights=0.0, activations=0.0, samples=8).share(0.0) == 0.0
    assert spread.share(1.2) == 0.0  # more error than all-int8 (cancelling errors) removes nothing


def test_output_error_follows_class_scores_and_energy() -> None:
    ref = [[np.array([[4.0, 0.0, 0.0]], np.float32)]]
    assert output_error(ref, ref) == pytest.approx(0.0, abs=1e-12)
    near = [[np.array([[3.9, 0.0, 0.1]], np.float32)]]
    far = [[np.array([[0.0, 4.0, 0.0]], np.float32)]]
    assert 0 < output_error(ref, near) < output_error(ref, far)  # KL of the softmax for [N, C] scores
    vec = [[np.array([[1.0], [2.0]], np.float32)]]
    assert output_error(vec, [[np.array([[1.0], [1.0]], np.float32)]]) == pytest.approx(1 / 5)


def test_a_step_that_makes_things_worse_is_undone(cnn) -> None:
    """A step that makes the metric worse (here: a rebuild that breaks the model) is undone, not returned."""
    model, built, data = cnn
    calls = []

    def rebuild(plan):
        calls.append(plan)
        quantized = built.recipe.build(plan)
        if len(calls) >= 2:  # from the second step on, sabotage the output
            out = quantized.graph.output[0].name
            producer = next(n for n in quantized.graph.node if out in n.output)
            producer.output[list(producer.output).index(out)] = out + "_x"
            quantized.graph.node.append(onnx.helper.make_node("Neg", [out + "_x"], [out]))
        return quantized

    config = QuantConfig(target="cosine>=0.9999999", max_fallback_steps=3, bias_correction=True, reduce_range=False)
    result = tune(model, built.recipe.model, built.plan, built.model, data, config, ranges=built.ranges,
                  rebuild=rebuild, unbiased=built.recipe.unbiased)
    assert not result.target_met and len(result.steps) >= 3
    values = [s.metric_value for s in result.steps]
    assert result.best_step == int(np.argmax(values)) and result.best_step <= 1
    assert values[2] < 0  # the sabotaged step
    assert [s.kept for s in result.steps[2:]] == [False] * (len(result.steps) - 2)
    first_float = {d.name for d in result.plan.decisions if not d.quantize}
    assert first_float == set(result.steps[result.best_step].nodes)
    assert result.report is not None and result.report.outputs[0].cosine == pytest.approx(values[result.best_step])


def test_screening_measures_only_the_groups_that_matter() -> None:
    """Screening by groups finds the one bad layer with fewer runs than one per candidate."""
    from onnxq import sensitivity

    gains = {f"n{k}": (5.0 if k == 13 else 0.01) for k in range(100)}
    measured: list[list[str]] = []

    def gains_of(groups: list[list[str]]) -> list[float]:
        measured.extend(list(group) for group in groups)
        return [sum(gains[n] for n in group) for group in groups]

    kept = sensitivity._screened(list(gains), gains_of)
    assert len(measured) == 10  # groups of sqrt(100) = 10 neighbours, one run each
    assert "n13" in kept and len(kept) == 30  # the 3 groups kept at least; n13's holds 5.09 of 5.90
