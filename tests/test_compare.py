"""``onnxq compare`` and :mod:`onnxq.compare`: the CI gate, its exit codes, JSON and JUnit XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from conftest import CNN_OUTPUT, CnnFiles, make_images, make_labels, perturbed_cnn
from onnxq.cli import ExitCode
from onnxq.compare import METRICS, Comparison, check_report, compare, junit_error
from onnxq.errors import ConfigError, DataError
from onnxq.report.schema import OutputMetrics, Report

RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def perturbed_path(cnn_files: CnnFiles) -> Path:
    path = cnn_files.folder / "perturbed.onnx"
    onnx.save_model(perturbed_cnn(), path)
    return path


#: Jenkins' xunit JUnit schema, restated in tests/data (see the file's header).
JUNIT_XSD = Path(__file__).parent / "data" / "junit.xsd"


@pytest.fixture(scope="module")
def junit_schema() -> Any:
    import xmlschema

    return xmlschema.XMLSchema(JUNIT_XSD)


def parse_junit(path: Path, schema: Any = None) -> ET.Element:
    if schema is not None:
        schema.validate(str(path))  # raises with the element and the reason when invalid
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    return suites[0]


# ------------------------------------------------------------------------------ exit codes


def test_passing_gate_exits_0_and_writes_junit(run_cli: RunCli, cnn_files: CnnFiles,
                                               quantized_cnn_path: Path, junit_schema: Any) -> None:
    junit = cnn_files.folder / "onnxq.xml"
    code, out, err = run_cli("compare", cnn_files.model, quantized_cnn_path, "--data", cnn_files.eval,
                             "--metric", "cosine", "--threshold", "0.99", "--junit", junit, "-q")
    assert code == ExitCode.OK, err
    assert err == ""
    suite = parse_junit(junit, junit_schema)
    assert suite.get("name") == "onnxq compare"
    counts = tuple(suite.get(k) for k in ("tests", "failures", "errors", "skipped"))
    assert counts == ("1", "0", "0", "0")
    case = suite.find("testcase")
    assert case is not None and case.get("name") == CNN_OUTPUT and case.get("classname") == "onnxq.compare.cosine"
    assert case.find("failure") is None
    system_out = case.findtext("system-out")
    assert "cosine: " in system_out and "sqnr_db: " in system_out and "samples: 64" in system_out
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["metric"] == "cosine" and props["threshold"] == "0.99" and props["operator"] == ">="
    assert not list(cnn_files.folder.glob(".*.tmp"))


def test_missed_threshold_exits_1_with_failure_in_junit(run_cli: RunCli, cnn_files: CnnFiles,
                                                        perturbed_path: Path, junit_schema: Any) -> None:
    junit = cnn_files.folder / "onnxq.xml"
    code, out, err = run_cli("compare", cnn_files.model, perturbed_path, "--data", cnn_files.eval,
                             "--threshold", "0.999", "--junit", junit)
    assert code == ExitCode.CHECK_FAILED == 1
    value = compare(cnn_files.model, perturbed_path, cnn_files.eval, threshold=0.999).report.outputs[0].cosine
    assert value < 0.999
    # one line on stderr naming the output, the metric, the value and the threshold
    [line] = [ln for ln in err.splitlines() if ln.startswith("onnxq: check failed")]
    assert line == f"onnxq: check failed: {CNN_OUTPUT}: cosine {value:.6g} < threshold 0.999"
    assert f"FAIL {CNN_OUTPUT}: cosine" in out and "onnxq compare FAILED: 0 of 1 output(s)" in out
    suite = parse_junit(junit, junit_schema)  # written although the gate failed
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")
    failure = suite.find("testcase/failure")
    assert failure is not None
    assert failure.get("message") == f"{CNN_OUTPUT}: cosine {value:.6g} < threshold 0.999"
    assert failure.get("type") == "ThresholdNotMet"


@pytest.mark.parametrize("metric, threshold, expected", [
    ("sqnr", "20", ExitCode.OK), ("sqnr", "200", ExitCode.CHECK_FAILED),
    ("max-abs", "10", ExitCode.OK), ("max-abs", "1e-9", ExitCode.CHECK_FAILED),
    ("mean-abs", "1", ExitCode.OK), ("min-cosine", "0.9", ExitCode.OK),
    ("top1", "0.9", ExitCode.OK), ("top1", "1.0", ExitCode.OK),
])
def test_each_metric(run_cli: RunCli, cnn_files: CnnFiles, quantized_cnn_path: Path, metric: str,
                     threshold: str, expected: int) -> None:
    code, _, err = run_cli("compare", cnn_files.model, quantized_cnn_path, "--data", cnn_files.eval,
                           "--metric", metric, "--threshold", threshold, "-q")
    assert code == expected, err


def test_accuracy_metrics_with_labels_in_the_data(run_cli: RunCli, cnn_files: CnnFiles,
                                                  quantized_cnn_path: Path) -> None:
    code, out, _ = run_cli("compare", cnn_files.model, quantized_cnn_path, "--data", cnn_files.eval,
                           "--metric", "accuracy", "--threshold", "0", "--json")
    assert code == ExitCode.OK
    data = json.loads(out)
    report = data["report"]
    assert data["checks"][0]["value"] == pytest.approx(report["quant_accuracy"])
    drop = 100 * (report["float_accuracy"] - report["quant_accuracy"])
    code, out, _ = run_cli("compare", cnn_files.model, quantized_cnn_path, "--data", cnn_files.eval,
                           "--metric", "accuracy-drop", "--threshold", str(drop + 1e-6), "--json")
    assert code == ExitCode.OK
    assert json.loads(out)["checks"][0]["value"] == pytest.approx(drop)


def test_labels_file(run_cli: RunCli, cnn_files: CnnFiles, quantized_cnn_path: Path) -> None:
    data = cnn_files.folder / "images.npz"
    np.savez(data, image=make_images(seed=3))
    labels = make_labels(seed=4)
    np.save(cnn_files.folder / "labels.npy", labels)
    code, out, _ = run_cli("compare", cnn_files.model, quantized_cnn_path, "--data", data, "--metric", "accuracy",
                           "--threshold", "0", "--labels", cnn_files.folder / "labels.npy", "--json")
    assert code == ExitCode.OK
    with_file = json.loads(out)["report"]["quant_accuracy"]
    direct = compare(cnn_files.model, quantized_cnn_path, cnn_files.eval, metric="accuracy", threshold=0)
    assert with_file == pytest.approx(direct.report.quant_accuracy)  # same images, same labels
    np.save(cnn_files.folder / "short.npy", labels[:10])
    code, _, err = run_cli("compare", cnn_files.model, quantized_cnn_path, "--data", data, "--metric", "accuracy",
                           "--threshold", "0", "--labels", cnn_files.folder / "short.npy")
    assert code == ExitCode.USAGE_ERROR and "10 labels for 64 evaluation samples" in err


@pytest.mark.parametrize("extra, message", [
    (["--metric", "accuracy", "--threshold", "98"], "did you mean 0.98"),
    (["--metric", "cosine", "--threshold", "nan"], "finite number"),
])
def test_bad_requests_exit_2(run_cli: RunCli, cnn_files: CnnFiles, quantized_cnn_path: Path,
                             extra: list[str], message: str) -> None:
    data = cnn_files.folder / "images.npz"
    np.savez(data, image=make_images(seed=3))
    junit = cnn_files.folder / "out.xml"
    code, _, err = run_cli("compare", cnn_files.model, quantized_cnn_path, "--data", data, *extra, "--junit", junit)
    assert code == ExitCode.USAGE_ERROR == 2
    assert err.startswith("onnxq: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not junit.exists()  # the request itself is wrong: nothing ran, nothing to report


def test_error_while_comparing_writes_junit_error(run_cli: RunCli, cnn_files: CnnFiles, quantized_cnn_path: Path,
                                                  junit_schema: Any) -> None:
    data = cnn_files.folder / "images.npz"
    np.savez(data, image=make_images(seed=3))  # no labels: found only once the data is read
    junit = cnn_files.folder / "out.xml"
    code, _, err = run_cli("compare", cnn_files.model, quantized_cnn_path, "--data", data, "--metric", "accuracy",
                           "--threshold", "0.5", "--junit", junit)
    assert code == ExitCode.USAGE_ERROR and "needs labels" in err
    suite = parse_junit(junit, junit_schema)
    assert tuple(suite.get(k) for k in ("tests", "failures", "errors", "skipped")) == ("1", "0", "1", "0")
    error = suite.find("testcase/error")
    assert error is not None and error.get("type") == "DataError" and "needs labels" in error.get("message")
    assert suite.find("testcase/failure") is None


def test_every_junit_outcome_is_schema_valid(junit_schema: Any, tmp_path: Path) -> None:
    passed = _report(_metrics("scores", 0.999, top1=1.0), _metrics("embedding", 0.99))
    failed = _report(_metrics("a", 0.5), _metrics("b\x01<&>", 0.9999))
    outcomes = [Comparison(metric="top1", threshold=0.99, checks=check_report(passed, "top1", 0.99), report=passed),
                Comparison(metric="cosine", threshold=0.999, checks=check_report(failed, "cosine", 0.999),
                           report=failed, float_model="f.onnx", quant_model="q.onnx", seconds=1234.5)]
    texts = [c.to_junit() for c in outcomes]
    texts.append(junit_error(ValueError("line one\nline two \x00 with a NUL"), tmp_path / "e.xml", metric="sqnr",
                             threshold=30.0, float_model=tmp_path / "f.onnx", seconds=0.25))
    assert (tmp_path / "e.xml").read_text() == texts[-1]
    for text in texts:
        junit_schema.validate(text)
        root = ET.fromstring(text)
        assert root.get("skipped") is None  # Jenkins' xunit schema has no 'skipped' on <testsuites>
        suite = root.find("testsuite")
        assert suite is not None and "+" not in suite.get("timestamp")
    error = ET.fromstring(texts[-1]).find("testsuite/testcase/error")
    assert error is not None and error.get("type") == "ValueError"
    assert error.get("message") == "line one line two ? with a NUL" and error.text.startswith("line one\n")


def test_batch_junit_is_schema_valid(junit_schema: Any) -> None:
    from onnxq.distributed.batch import ERROR, FAILED, OK, BatchOutcome, to_junit

    outcomes = [BatchOutcome("ok", "ok.onnx", OK, 1.5, output="ok.quant.onnx", cosine=0.999),
                BatchOutcome("missed", "m.onnx", FAILED, 2.0, message="target cosine>=0.999 not met"),
                BatchOutcome("broken\x01", "b.onnx", ERROR, 0.1, message="cannot read b.onnx: \x00 bytes",
                             error_type="ModelError")]
    text = to_junit(outcomes)
    junit_schema.validate(text)
    suite = ET.fromstring(text).find("testsuite")
    assert suite is not None and (suite.get("failures"), suite.get("errors")) == ("1", "1")


def test_schema_rejects_the_old_layout(junit_schema: Any) -> None:
    import xmlschema

    old = ('<testsuites name="onnxq" tests="1" failures="0" errors="0" skipped="0" time="0.1">'
           '<testsuite name="onnxq compare" tests="1" failures="0" errors="0"/></testsuites>')
    with pytest.raises(xmlschema.XMLSchemaValidationError, match="skipped"):
        junit_schema.validate(old)


def test_bad_input_exits_2(run_cli: RunCli, cnn_files: CnnFiles, quantized_cnn_path: Path) -> None:
    code, _, err = run_cli("compare", cnn_files.model, cnn_files.folder / "missing.onnx", "--data", cnn_files.eval,
                           "--threshold", "0.9")
    assert code == 2 and err.startswith("onnxq: error:")
    code, _, err = run_cli("compare", cnn_files.model, quantized_cnn_path, "--data", cnn_files.folder / "nope.npz",
                           "--threshold", "0.9")
    assert code == 2 and err.startswith("onnxq: error:")
    code, _, _ = run_cli("compare", cnn_files.model, quantized_cnn_path, "--data", cnn_files.eval,
                         "--metric", "psnr", "--threshold", "0.9")
    assert code == 2  # argparse: invalid choice
    code, _, err = run_cli("compare", cnn_files.model, quantized_cnn_path, "--data", cnn_files.eval,
                           "--threshold", "0.9", "--junit", cnn_files.eval)
    assert code == 2 and "refusing to overwrite" in err


def test_json_output(run_cli: RunCli, cnn_files: CnnFiles, perturbed_path: Path) -> None:
    code, out, _ = run_cli("compare", cnn_files.model, perturbed_path, "--data", cnn_files.eval,
                           "--metric", "sqnr", "--threshold", "60", "--json")
    assert code == ExitCode.CHECK_FAILED
    data = json.loads(out)  # stdout is JSON only
    assert data["metric"] == "sqnr" and data["threshold"] == 60 and data["passed"] is False
    [check] = data["checks"]
    assert check["output"] == CNN_OUTPUT and check["passed"] is False
    assert check["value"] == pytest.approx(data["report"]["outputs"][0]["sqnr_db"])
    again = Comparison.from_dict(data)
    assert again.to_dict() == data


def test_help_lists_every_metric(run_cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli("compare", "--help")
    assert code == 0
    for name in METRICS:
        assert f"  {name} " in out
    assert "percentage points" in out and "a fraction (0.98 = 98%)" in out


# ------------------------------------------------------------------------------ API


def _report(*outputs: OutputMetrics, **kw: float) -> Report:
    return Report(outputs=list(outputs), samples=10, float_size_bytes=4, quant_size_bytes=1, size_ratio=4.0, **kw)


def _metrics(name: str, cosine: float, top1: float | None = None) -> OutputMetrics:
    return OutputMetrics(name=name, max_abs_error=0.1, mean_abs_error=0.01, cosine=cosine, min_cosine=cosine,
                         sqnr_db=30.0, top1_agreement=top1)


def test_check_report_rules() -> None:
    report = _report(_metrics("a", 0.995, top1=0.9), _metrics("b", float("nan")), _metrics("c", 0.999))
    checks = check_report(report, "cosine", 0.99)
    assert [c.passed for c in checks] == [True, False, True]  # NaN fails
    checks = check_report(report, "top1", 0.95)  # only class-score outputs are checked
    assert [c.passed for c in checks] == [False, None, None]
    assert "not applicable" in checks[1].message
    with pytest.raises(DataError, match="needs labels"):
        check_report(report, "accuracy", 0.5)
    report = _report(_metrics("a", 0.995, top1=0.9), float_accuracy=0.95, quant_accuracy=0.94)
    [check] = check_report(report, "accuracy-drop", 0.5)
    assert check.value == pytest.approx(1.0) and check.passed is False
    assert check.message == "a: accuracy-drop 1 points > threshold 0.5 points"
    with pytest.raises(DataError, match="class scores"):
        check_report(_report(_metrics("a", 0.99)), "top1", 0.5)
    with pytest.raises(ConfigError, match="unknown metric"):
        check_report(report, "psnr", 1.0)


def test_junit_with_skipped_output() -> None:
    report = _report(_metrics("scores", 0.999, top1=1.0), _metrics("embedding", 0.99))
    comparison = Comparison(metric="top1", threshold=0.99, checks=check_report(report, "top1", 0.99), report=report)
    assert comparison.passed
    suite = ET.fromstring(comparison.to_junit()).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("2", "0", "1")
    assert suite.find("testcase[@name='embedding']/skipped") is not None
