"""onnxq.profile: per-node int8 vs float kernel times and the latency-aware plan (--optimize).

The decisions are tested on fixed timings (never on this machine's speed); the profiler itself is
only checked for pairing every quantized node with its float kernel.
"""

from __future__ import annotations

import pytest

import onnxq
from builders import cnn_data, tiny_cnn
from onnxq.config import QuantConfig
from onnxq.errors import ConfigError
from onnxq.prepare import prepare
from onnxq.profile import OPTIMIZE, NodeTiming, latency_plan, node_timings, rejected_nodes
from onnxq.strict import float_nodes


def _timing(node: str, float_us: float, int8_us: float) -> NodeTiming:
    return NodeTiming(node, "Conv", float_us, int8_us)


def test_settings_reject_by_ratio() -> None:
    timings = [_timing("slow", 100, 150), _timing("even", 100, 95), _timing("fast", 100, 50),
               _timing("tiny", 2, 6)]  # 3x slower but too short to judge
    assert [t.node for t in rejected_nodes(timings, "balanced")] == ["slow"]
    assert [t.node for t in rejected_nodes(timings, "latency")] == ["slow", "even"]
    assert rejected_nodes(timings, "accuracy") == []
    with pytest.raises(ConfigError, match="optimize='fast'"):
        rejected_nodes(timings, "fast")
    assert set(OPTIMIZE) == {"accuracy", "balanced", "latency"}
    assert _timing("slow", 100, 150).format() == "slow (Conv): int8 150 us vs float 100 us (x1.50 slower)"


def test_profiler_pairs_every_quantized_node() -> None:
    result = onnxq.quantize(tiny_cnn(), cnn_data(32), latency=False)
    prepared = prepare(tiny_cnn(), QuantConfig())
    nodes = list(result.plan.nodes_to_quantize)
    timings = node_timings(prepared, result.model, cnn_data(8), nodes, threads=1, runs=3)
    paired = {t.node for t in timings}
    assert {"conv1", "conv2", "fc"} <= paired  # Conv+Relu fused in float counts as the Conv
    assert all(t.float_us > 0 and t.int8_us > 0 for t in timings)


@pytest.fixture
def built() -> dict:
    """What api.quantize hands latency_plan: the prepared model, plan, model, rebuild and ranges."""
    captured: dict = {}
    import onnxq.api as api

    original = api.pipelines.PIPELINES[onnxq.config.Mode.STATIC]

    def spy(job):  # noqa: ANN001, ANN202 - the pipeline's own types
        out = original(job)
        captured.update(prepared=job.prepared, plan=out.plan, model=out.model, recipe=out.recipe, ranges=out.ranges)
        return out

    patch = pytest.MonkeyPatch()
    patch.setitem(api.pipelines.PIPELINES, onnxq.config.Mode.STATIC, spy)
    try:
        onnxq.quantize(tiny_cnn(), cnn_data(32), latency=False)
    finally:
        patch.undo()
    return captured


@pytest.mark.parametrize("before_ms, after_ms, used", [(2.0, 1.0, True), (1.0, 2.0, False), (1.0, 0.97, False)])
def test_slower_int8_node_kept_float_only_when_the_model_gets_faster(built: dict, monkeypatch: pytest.MonkeyPatch,
                                                                     before_ms: float, after_ms: float,
                                                                     used: bool) -> None:
    monkeypatch.setattr("onnxq.profile.node_timings", lambda *a, **k: [_timing("conv1", 100, 400),
                                                                        _timing("conv2", 100, 60)])
    monkeypatch.setattr("onnxq.profile._whole_model_ms", lambda *a, **k: (before_ms, after_ms))
    plan, model, decided = latency_plan(built["prepared"], built["plan"], built["model"], cnn_data(8),
                                        setting="balanced", rebuild=built["recipe"].build, ranges=built["ranges"])
    assert [t.node for t in decided.rejected] == ["conv1"]
    assert (decided.before_ms, decided.after_ms) == (before_ms, after_ms)
    assert any("conv1 (Conv): int8 400 us vs float 100 us (x4.00 slower)" in n for n in decided.notes)
    if used:
        assert "conv1" in decided.kept_float and "conv1" not in plan.nodes_to_quantize
        assert "conv2" in plan.nodes_to_quantize
        assert "conv1" in {n.name for n in float_nodes(model)}  # really runs float (keep-float mechanism)
    else:
        assert plan is built["plan"] and model is built["model"] and decided.kept_float == []


def test_accuracy_setting_changes_nothing(built: dict) -> None:
    plan, model, decided = latency_plan(built["prepared"], built["plan"], built["model"], cnn_data(8),
                                        setting="accuracy", rebuild=built["recipe"].build)
    assert plan is built["plan"] and model is built["model"] and decided.timings == []


def test_optimize_option_in_config_and_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxq.cli import _config, build_parser

    assert QuantConfig().optimize == "accuracy"
    with pytest.raises(ConfigError, match="optimize='fast'"):
        QuantConfig(optimize="fast")
    args = build_parser().parse_args(["quantize", "m.onnx", "-o", "q.onnx", "--optimize", "latency"])
    assert _config(args).optimize == "latency"
    result = onnxq.quantize(tiny_cnn(), cnn_data(16), config=QuantConfig(optimize="balanced"), latency=False)
    assert any(note.startswith("latency plan (balanced)") for note in result.report.notes)


def test_a_model_that_cannot_be_profiled_is_left_as_it_is(built: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxq.errors import ModelError

    def fail(*args: object, **kwargs: object) -> None:
        raise ModelError("ONNX Runtime cannot profile the model: no kernel")

    monkeypatch.setattr("onnxq.profile.node_timings", fail)
    plan, model, decided = latency_plan(built["prepared"], built["plan"], built["model"], cnn_data(8),
                                        setting="latency", rebuild=built["recipe"].build)
    assert plan is built["plan"] and model is built["model"]
    assert decided.notes == ["latency plan (latency): cannot profile with ONNX Runtime's CPU provider "
                             "(ONNX Runtime cannot profile the model: no kernel); plan left as it is"]
