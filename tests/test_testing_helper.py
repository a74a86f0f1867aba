"""``onnxq.testing.assert_quantized_close`` and the CI examples in ``examples/ci/``."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import CNN_INPUT, CNN_OUTPUT, make_cnn_model, make_images, perturbed_cnn
from onnxq.errors import ConfigError
from onnxq.testing import SUPPORTED_METRICS, assert_quantized_close

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RunCli = Callable[..., tuple[int, str, str]]


def outputs_of(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([CNN_OUTPUT], {CNN_INPUT: images})[0].astype(np.float64)


def test_passes_on_a_good_pair(quantized_cnn_path: Path) -> None:
    data = {CNN_INPUT: make_images(seed=3)}
    values = assert_quantized_close(make_cnn_model(), quantized_cnn_path, data, threshold=0.99)
    assert list(values) == [CNN_OUTPUT] and 0.99 <= values[CNN_OUTPUT] <= 1.0
    assert_quantized_close(make_cnn_model(), quantized_cnn_path, data, metric="top1", threshold=0.9)
    assert_quantized_close(make_cnn_model(), quantized_cnn_path, data, metric="max-abs", threshold=1.0)
    # a model against itself is exact on every metric
    for metric, threshold in (("cosine", 1.0), ("sqnr", 1e9), ("max-abs", 0.0), ("top1", 1.0)):
        assert_quantized_close(make_cnn_model(), make_cnn_model(), data, metric=metric, threshold=threshold)


def test_fails_with_output_metric_threshold_and_worst_sample() -> None:
    images = make_images(seed=3)
    float_model, quant_model = make_cnn_model(), perturbed_cnn()
    ref, cand = outputs_of(float_model, images), outputs_of(quant_model, images)
    cosines = np.sum(ref * cand, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1))
    worst = int(np.argmin(cosines))
    with pytest.raises(AssertionError) as info:
        assert_quantized_close(float_model, quant_model, {CNN_INPUT: images}, threshold=0.999, batch_size=5)
    message = str(info.value)
    assert message.splitlines()[0] == ("quantized model is not close enough to the float model "
                                       "(cosine >= 0.999 required):")
    match = re.search(r"output 'logits': cosine ([0-9.]+) < threshold 0.999 over 64 samples; "
                      r"worst sample #(\d+): cosine ([0-9.]+)$", message)
    assert match, message
    assert float(match.group(1)) == pytest.approx(cosines.mean(), abs=1e-5)
    assert int(match.group(2)) == worst  # the index across batches, not within one
    assert float(match.group(3)) == pytest.approx(cosines[worst], abs=1e-5)


def test_failure_details_for_top1_and_max_abs() -> None:
    images = make_images(seed=3)
    float_model, quant_model = make_cnn_model(), perturbed_cnn(scale=0.3)
    ref, cand = outputs_of(float_model, images), outputs_of(quant_model, images)
    first_disagreement = int(np.argmax(ref.argmax(1) != cand.argmax(1)))
    with pytest.raises(AssertionError, match=(
            rf"worst sample #{first_disagreement}: top1 0 \(float class {ref[first_disagreement].argmax()}, "
            rf"quantized class {cand[first_disagreement].argmax()}\)")):
        assert_quantized_close(float_model, quant_model, {CNN_INPUT: images}, metric="top1", threshold=1.0)
    worst = int(np.argmax(np.abs(ref - cand).max(axis=1)))
    with pytest.raises(AssertionError, match=rf"max-abs [0-9.]+ > threshold 0.01 .* worst sample #{worst}: "):
        assert_quantized_close(float_model, quant_model, {CNN_INPUT: images}, metric="max-abs", threshold=0.01)


def test_bad_requests() -> None:
    data = {CNN_INPUT: make_images(8)}
    with pytest.raises(ConfigError, match="unknown metric"):
        assert_quantized_close(make_cnn_model(), make_cnn_model(), data, metric="psnr")
    with pytest.raises(ConfigError, match="onnxq.compare"):
        assert_quantized_close(make_cnn_model(), make_cnn_model(), data, metric="accuracy", threshold=0.5)
    with pytest.raises(ConfigError, match="unknown output"):
        assert_quantized_close(make_cnn_model(), make_cnn_model(), data, outputs=["nope"])
    assert "accuracy" not in SUPPORTED_METRICS and "cosine" in SUPPORTED_METRICS


# ------------------------------------------------------------------------------ examples/ci


def test_example_pytest_file_passes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "--basetemp", str(tmp_path / "basetemp"), str(EXAMPLES / "ci" / "test_quantized_model.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout


def test_example_workflow_commands_run(tmp_path: Path, run_cli: RunCli,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((EXAMPLES / "ci" / "onnxq-compare.yml").read_text())
    steps = workflow["jobs"]["quantize-and-compare"]["steps"]
    commands = [shlex.split(line) for step in steps if "run" in step
                for line in step["run"].replace("\\\n", " ").splitlines() if line.startswith("onnxq ")]
    assert [c[1] for c in commands] == ["quantize", "compare", "compare"]
    assert any(s.get("uses", "").startswith("mikepenz/action-junit-report") for s in steps)
    # run them as CI would, from a checkout whose examples/ is this repository's
    (tmp_path / "examples").symlink_to(EXAMPLES)
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    for command in commands:
        code, _, err = run_cli(*command[1:], "-q")
        assert code == 0, (command, err)
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    for name in ("onnxq-cosine.xml", "onnxq-accuracy.xml"):
        suite = ET.parse(tmp_path / "out" / name).getroot().find("testsuite")
        assert suite is not None and suite.get("failures") == "0"
