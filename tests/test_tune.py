"""Accuracy-driven fallback: QuantConfig.target, keep_float, force_quantize, `onnxq quantize --target`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxq
from onnxq import ConfigError, QuantConfig, Report
from onnxq.cli import ExitCode
from onnxq.tune import Target, parse_target
from test_analyze import mlp_data, outlier_mlp

GOAL = "cosine>=0.999"


def run(config: QuantConfig) -> onnxq.QuantResult:
    return onnxq.quantize(outlier_mlp(), mlp_data(seed=1), evaluation=mlp_data(seed=2), config=config, latency=False)


@pytest.fixture(scope="module")
def baseline() -> onnxq.QuantResult:
    return run(QuantConfig())


@pytest.fixture(scope="module")
def tuned() -> onnxq.QuantResult:
    return run(QuantConfig(target=GOAL))


def test_without_target_the_goal_is_missed(baseline: onnxq.QuantResult) -> None:
    assert baseline.report.outputs[0].cosine < 0.99  # measured 0.9816
    assert baseline.report.target is None and baseline.report.target_met is None
    assert baseline.report.fallback == [] and baseline.report.float_nodes == []


def test_target_keeps_exactly_the_bad_layer_float(tuned: onnxq.QuantResult, baseline: onnxq.QuantResult) -> None:
    report = tuned.report
    assert report.target == GOAL and report.target_met is True
    assert report.float_nodes == ["fc1", "relu1"]  # the MatMul and the Relu folded into it
    steps = report.fallback
    assert [s.step for s in steps] == [0, 1]
    assert steps[0].node is None and not steps[0].goal_met
    assert steps[0].metric_value == pytest.approx(baseline.report.outputs[0].cosine)
    assert (steps[1].node, steps[1].op_type, steps[1].nodes, steps[1].tensor) == ("fc1", "MatMul", ["fc1", "relu1"], "w1")
    assert steps[1].goal_met and steps[1].metric_value >= 0.999  # measured 0.99984
    assert report.outputs[0].cosine >= 0.999
    assert report.layers == []  # ranked by revert-one sensitivity, not by the per-layer analysis
    assert any(n.startswith("fallback ranking: revert-one sensitivity") for n in report.notes)
    assert any("target cosine>=0.999 met" in n for n in report.notes)
    assert not any(n.startswith("where the error is") for n in report.notes)  # said only when missed
    decisions = {d.name: d for d in tuned.plan.decisions}
    assert not decisions["fc1"].quantize and "fallback" in decisions["fc1"].reason
    assert decisions["fc0"].quantize and decisions["fc2"].quantize


def test_force_quantize_makes_the_target_unreachable() -> None:
    result = run(QuantConfig(target=GOAL, force_quantize=("fc1",), max_fallback_steps=2))
    report = result.report
    # every candidate that helps involves fc1 (its weights, or the Relu folded into it): the steps
    # taken on the others do not help and are undone
    assert report.target_met is False and len(report.fallback) == 3
    assert [s.kept for s in report.fallback[1:]] == [False, False]
    assert all("fc1" not in s.nodes for s in report.fallback)
    assert "fc1" not in report.float_nodes and report.outputs[0].cosine < 0.99
    # a missed goal says where the error lives: here in one layer's weights, not spread out
    where = [n for n in report.notes if n.startswith("where the error is")]
    assert len(where) == 1 and "every weight float would remove" in where[0] and "spread" not in where[0]
    share = int(where[0].split("would remove ")[1].split("%")[0])
    assert share >= 80  # fc1's outlier weights hold most of the output error


def test_keep_float_pins_nodes(baseline: onnxq.QuantResult) -> None:
    result = run(QuantConfig(keep_float=("fc3",)))
    decision = next(d for d in result.plan.decisions if d.name == "fc3")
    assert not decision.quantize and "keep_float" in decision.reason
    assert result.report.float_nodes == ["fc3"]
    # pinned nodes are not fallback steps: with the target already met, no step is taken
    pinned = run(QuantConfig(keep_float=("fc1", "relu1"), target=GOAL))
    assert pinned.report.target_met is True and len(pinned.report.fallback) == 1
    assert pinned.report.float_nodes == ["fc1", "relu1"]


def test_sqnr_target_and_step_budget() -> None:
    result = run(QuantConfig(target="sqnr>=30", max_fallback_steps=0))
    assert result.report.target_met is False and len(result.report.fallback) == 1
    assert result.report.float_nodes == []


def test_accuracy_drop_needs_labels() -> None:
    with pytest.raises(ConfigError, match="labels"):
        run(QuantConfig(target="accuracy_drop<=0.5"))


@pytest.mark.parametrize("text, expected", [
    ("cosine>=0.999", Target("cosine", ">=", 0.999)), (" sqnr_db >= 30 ", Target("sqnr", ">=", 30.0)),
    ("top1>=99%", Target("top1", ">=", 0.99)), ("accuracy_drop<=0.5", Target("accuracy_drop", "<=", 0.5)),
])
def test_parse_target(text: str, expected: Target) -> None:
    assert parse_target(text) == expected
    assert QuantConfig(target=text).target == str(expected)


@pytest.mark.parametrize("text", ["cosine", "cosine>=", "foo>=1", "cosine<=0.9", "accuracy_drop>=1",
                                  "cosine>=2", "sqnr>=30%", ">=0.9"])
def test_bad_target_text(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        QuantConfig(target=text)
    assert "\n" not in str(info.value)


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="max_fallback_steps"):
        QuantConfig(max_fallback_steps=-1)
    with pytest.raises(ConfigError, match="both"):
        QuantConfig(keep_float=("a",), force_quantize=("a",))
    with pytest.raises(ConfigError, match="mode"):
        QuantConfig(mode="float16", target=GOAL)
    config = QuantConfig(target="cos>=0.99", keep_float=["x"])
    assert config.keep_float == ("x",) and QuantConfig.from_dict(config.to_dict()) == config


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"model": tmp_path / "mlp.onnx", "calib": tmp_path / "calib.npz", "eval": tmp_path / "eval.npz",
             "out": tmp_path / "q.onnx", "report": tmp_path / "report.json"}
    onnx.save_model(outlier_mlp(), paths["model"])
    np.savez(paths["calib"], **mlp_data(seed=1))
    np.savez(paths["eval"], **mlp_data(seed=2))
    return paths


def _quantize_cli(run_cli, files: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    return run_cli("quantize", files["model"], "-o", files["out"], "--calib", files["calib"], "--eval",
                   files["eval"], "--report", files["report"], "--no-latency", "-q", *extra)


def test_cli_target_met(run_cli, files: dict[str, Path]) -> None:
    code, _, err = _quantize_cli(run_cli, files, "--target", GOAL)
    assert code == ExitCode.OK, err
    report = Report.from_json(files["report"])
    assert report.target_met is True and report.float_nodes == ["fc1", "relu1"]


def test_cli_target_missed_writes_files_and_exits_1(run_cli, files: dict[str, Path]) -> None:
    code, _, err = _quantize_cli(run_cli, files, "--target", "cosine>=0.999999", "--max-steps", "1")
    assert code == ExitCode.CHECK_FAILED  # one step gives 0.99975
    assert err.strip().count("\n") == 0 and "target cosine>=0.999999 not met after 1 fallback step(s)" in err
    assert files["out"].is_file() and Report.from_json(files["report"]).target_met is False


def test_cli_keep_float_and_bad_target(run_cli, files: dict[str, Path]) -> None:
    code, _, err = _quantize_cli(run_cli, files, "--keep-float", "fc3")
    assert code == ExitCode.OK, err
    assert Report.from_json(files["report"]).float_nodes == ["fc3"]
    files["out"].unlink()
    code, _, err = _quantize_cli(run_cli, files, "--target", "cosine=>0.9")
    assert code == ExitCode.USAGE_ERROR and "target" in err and "Traceback" not in err
    assert not files["out"].exists()


# ----------------------------------------------------------------------------- user metric function


def _labelled_eval() -> dict[str, np.ndarray]:
    """Evaluation data whose labels are the float model's classes (a stand-in for a task)."""
    from onnxq.runtime import create_session

    data = mlp_data(seed=2)
    return {**data, "labels": create_session(outlier_mlp()).run(None, data)[0].argmax(1)}


def task_accuracy(outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> float:
    """A user's metric: top-1 accuracy of the only output against the labels."""
    (scores,) = outputs.values()
    return float(np.mean(scores.argmax(1) == labels))


@pytest.mark.parametrize("goal", ["metric>=0.95", "metric_drop<=0.05"])
def test_user_metric_function_drives_the_fallback(goal: str) -> None:
    result = onnxq.quantize(outlier_mlp(), mlp_data(seed=1), evaluation=_labelled_eval(), latency=False,
                            config=QuantConfig(target=goal), metric=task_accuracy)
    steps = result.report.fallback
    assert steps[0].goal_met is False  # int8 everywhere: 86 % of the float classes kept
    assert result.report.target_met is True and "fc1" in result.report.float_nodes
    expected = steps[-1].metric_value
    assert (expected >= 0.95) if goal.startswith("metric>=") else (expected <= 0.05)


def test_user_metric_target_without_function_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs a metric function"):
        onnxq.quantize(outlier_mlp(), mlp_data(seed=1), evaluation=_labelled_eval(), latency=False,
                       config=QuantConfig(target="metric>=0.9"))


def test_cli_metric_fn(run_cli, files: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_task_metric.py").write_text(
        "import numpy as np\n"
        "def accuracy(outputs, labels):\n"
        "    (scores,) = outputs.values()\n"
        "    return float(np.mean(scores.argmax(1) == labels))\n")
    np.savez(files["eval"], **_labelled_eval())
    monkeypatch.chdir(tmp_path)
    code, _, err = _quantize_cli(run_cli, files, "--target", "metric>=0.95", "--metric-fn", "my_task_metric:accuracy")
    assert code == ExitCode.OK, err
    assert Report.from_json(files["report"]).target_met is True
    code, _, err = _quantize_cli(run_cli, files, "--target", "metric>=0.95", "--metric-fn", "no_such_module:f")
    assert code == ExitCode.USAGE_ERROR and "cannot import it" in err
