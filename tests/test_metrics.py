"""The one metric registry (onnxq.metrics): names, directions, units, labels, and one target parser
whose words mean the same in QuantConfig(target=...), onnxq compare, the report and onnxq.testing."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxq
from onnxq import ConfigError, QuantConfig
from onnxq.cli import ExitCode
from onnxq.compare import METRICS as COMPARE_METRICS
from onnxq.compare import check_metric, check_report, compare
from onnxq.metrics import METRICS, Target, get_metric, metric_names, parse_target, worst_value
from onnxq.report.schema import OutputMetrics, Report
from onnxq.testing import SUPPORTED_METRICS
from onnxq.tune import metric_value
from conftest import CNN_INPUT, make_cnn_model, make_images, make_labels

# ------------------------------------------------------------------------------ the registry


def test_every_report_field_is_a_registered_metric() -> None:
    fields = {f.name for f in dataclasses.fields(OutputMetrics)} - {"name"}
    assert fields == {m.field for m in METRICS.values() if m.kind == "output"}
    assert {m.name for m in METRICS.values() if m.needs_labels} == {"accuracy", "accuracy_drop"}
    assert [m.name for m in METRICS.values() if not m.higher_is_better] == \
        ["max_abs", "mean_abs", "accuracy_drop", "metric_drop"]
    assert get_metric("sqnr").unit == "dB" and get_metric("accuracy_drop").unit == "points"
    assert metric_names("user") == ["metric", "metric_drop"]


def test_names_aliases_and_spellings() -> None:
    for spelling in ("min-cosine", "MIN_COSINE", " min_cosine ", "min_cos"):
        assert get_metric(spelling) is METRICS["min_cosine"]
    assert get_metric("sqnr_db").name == "sqnr" and get_metric("top1_agreement").name == "top1"
    assert get_metric("accuracy").name == "accuracy"  # absolute accuracy, never an alias of the drop
    assert get_metric("acc_drop").name == "accuracy_drop"
    aliases = [a for m in METRICS.values() for a in (m.name, *m.aliases)]
    assert len(aliases) == len(set(aliases))
    with pytest.raises(ConfigError, match="unknown metric 'psnr'"):
        get_metric("psnr")


@pytest.mark.parametrize("text, expected", [
    ("accuracy>=0.98", Target("accuracy", ">=", 0.98)), ("accuracy >= 98%", Target("accuracy", ">=", 0.98)),
    ("top1>=0.97", Target("top1", ">=", 0.97)), ("top5>=99%", Target("top5", ">=", 0.99)),
    ("accuracy_drop<=0.5%", Target("accuracy_drop", "<=", 0.5)), ("max-abs<=0.1", Target("max_abs", "<=", 0.1)),
    ("mean_abs_error<0.01", Target("mean_abs", "<", 0.01)), ("min-cosine>0.9", Target("min_cosine", ">", 0.9)),
])
def test_parse_target(text: str, expected: Target) -> None:
    assert parse_target(text) == expected
    assert QuantConfig(target=text).target == str(expected)


@pytest.mark.parametrize("text, message", [
    ("accuracy<=0.9", "better when higher, use >="), ("max_abs>=0.1", "better when lower, use <="),
    ("accuracy>=98", "did you mean 0.98"), ("cosine>=99%", "'%' only fits"), ("psnr>=30", "unknown metric"),
    ("top1 = 0.9", "is not 'METRIC>=VALUE'"),
])
def test_bad_targets(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_target(text)
    with pytest.raises(ConfigError, match=message):
        QuantConfig(target=text)


def test_thresholds_are_checked_alike() -> None:
    for check in (lambda: check_metric("accuracy", 98), lambda: get_metric("top1").check_threshold(97.0)):
        with pytest.raises(ConfigError, match="did you mean 0.98|did you mean 0.97"):
            check()
    with pytest.raises(ConfigError, match="finite"):
        get_metric("sqnr").check_threshold(math.inf)
    assert get_metric("sqnr").check_threshold(300) == 300.0  # dB: not a fraction


def _report(*outputs: OutputMetrics, **kw: float) -> Report:
    return Report(outputs=list(outputs), samples=10, float_size_bytes=4, quant_size_bytes=1, size_ratio=4.0, **kw)


def _output(name: str, cosine: float, max_abs: float, top1: float | None = None) -> OutputMetrics:
    return OutputMetrics(name=name, max_abs_error=max_abs, mean_abs_error=max_abs / 10, cosine=cosine,
                         min_cosine=cosine, sqnr_db=30.0, top1_agreement=top1)


def test_worst_value_and_report_worst_agree() -> None:
    report = _report(_output("a", 0.99, 0.5, top1=0.9), _output("b", 0.95, 0.1), float_accuracy=0.9,
                     quant_accuracy=0.85)
    assert worst_value(report, "cosine") == 0.95 and report.worst("cosine").name == "b"
    assert worst_value(report, "max-abs") == 0.5 and report.worst("max_abs_error").name == "a"
    assert report.worst("max_abs").name == "a" and report.worst("sqnr_db").name == "a"
    assert worst_value(report, "top1") == 0.9
    assert worst_value(report, "accuracy") == 0.85
    assert worst_value(report, "accuracy_drop") == pytest.approx(5.0)
    assert math.isnan(worst_value(_report(_output("a", math.nan, 0.1), _output("b", 1.0, 0.1)), "cosine"))
    with pytest.raises(ConfigError, match="labels"):
        worst_value(_report(_output("a", 0.99, 0.5)), "accuracy")
    with pytest.raises(ConfigError, match="class scores"):
        worst_value(_report(_output("a", 0.99, 0.5)), "top1")
    with pytest.raises(ConfigError, match="metric function"):
        worst_value(report, "metric")
    with pytest.raises(ConfigError, match="unknown metric"):
        report.worst("accuracy")


def test_compare_and_testing_use_registry_names() -> None:
    assert list(COMPARE_METRICS) == ["cosine", "min-cosine", "sqnr", "max-abs", "mean-abs", "top1", "accuracy",
                                     "accuracy-drop"]
    assert all(COMPARE_METRICS[name] is get_metric(name) for name in COMPARE_METRICS)
    assert set(SUPPORTED_METRICS) == {m.cli_name for m in METRICS.values() if m.kind == "output"}


def test_metrics_module_imports_only_errors() -> None:
    path = Path(onnxq.__file__).parent / "metrics.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    relative = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.level}
    assert relative == {"errors"}  # the report is imported for type hints only (TYPE_CHECKING)


# ------------------------------------------------- one target string, quantize and compare alike

TARGETS = ["cosine>=0.999", "min_cosine>=0.99", "sqnr>=30", "max_abs<=0.5", "mean-abs<=0.05", "top1>=0.97",
           "top1>=97%", "accuracy>=0.98", "accuracy>=0.05", "accuracy_drop<=0.5", "accuracy-drop<=50"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("metrics")
    paths = {"float": folder / "model.onnx", "quant": folder / "model.q.onnx", "eval": folder / "eval.npz"}
    model = make_cnn_model()
    onnx.save_model(model, paths["float"])
    onnxq.quantize(model, {CNN_INPUT: make_images(seed=1)}, config=QuantConfig(), latency=False).save(paths["quant"])
    np.savez(paths["eval"], **{CNN_INPUT: make_images(seed=3), "labels": make_labels(seed=4)})
    return paths


@pytest.fixture(scope="module")
def report(files: dict[str, Path]) -> Report:
    return compare(files["float"], files["quant"], files["eval"], metric="accuracy", threshold=0.0).report


@pytest.mark.parametrize("text", TARGETS)
def test_same_target_string_in_quantize_and_compare(text: str, report: Report) -> None:
    target = parse_target(text)
    assert QuantConfig(target=text).target == str(target)  # accepted by quantize --target
    checks = check_report(report, target.metric, target.value)  # accepted by compare --metric/--threshold
    values = [c.value for c in checks if c.value is not None]
    measured = metric_value(report, target)  # what the fallback measures
    worst = min(values) if target.spec.higher_is_better else max(values)
    assert measured == pytest.approx(worst)
    assert all(c.passed is not False for c in checks) == target.holds(measured)


def test_same_target_string_through_the_cli(run_cli, files: dict[str, Path], report: Report) -> None:
    for text in ("accuracy>=0.05", "top1>=97%", "accuracy_drop<=0.5"):
        target = parse_target(text)
        code, _, err = run_cli("compare", files["float"], files["quant"], "--data", files["eval"], "--metric",
                               target.spec.cli_name, "--threshold", str(target.value), "-q")
        expected = ExitCode.OK if target.holds(metric_value(report, target)) else ExitCode.CHECK_FAILED
        assert code == expected, (text, err)
    direct = compare(files["float"], files["quant"], files["eval"], metric="accuracy_drop", threshold=50)
    assert direct.metric == "accuracy-drop" and direct.passed


def test_absolute_accuracy_target_drives_quantize(files: dict[str, Path]) -> None:
    evaluation = {CNN_INPUT: make_images(seed=3), "labels": make_labels(seed=4)}
    result = onnxq.quantize(make_cnn_model(), {CNN_INPUT: make_images(seed=1)}, evaluation=evaluation,
                            config=QuantConfig(target="accuracy>=5%"), latency=False)
    assert result.report.target == "accuracy>=0.05" and result.report.target_met is True
    assert result.report.fallback[0].metric_value == pytest.approx(result.report.quant_accuracy)
    with pytest.raises(ConfigError, match="labels"):
        onnxq.quantize(make_cnn_model(), {CNN_INPUT: make_images(seed=1)},
                       evaluation={CNN_INPUT: make_images(seed=3)},
                       config=QuantConfig(target="accuracy>=0.5"), latency=False)
