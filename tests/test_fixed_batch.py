"""Models with a fixed batch dimension in compare / validate / analyze (issue 12 item 2).

A model fixed to batch 4 and 10 samples: full batches of 4, the remainder (2 samples) padded with
copies of its last sample and cut away again, so every one of the 10 samples is compared once.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import CNN_INPUT, make_cnn_model, make_images, make_labels

from onnxq import QuantConfig, analyze, quantize, validate
from onnxq.cli import ExitCode
from onnxq.compare import compare
from onnxq.errors import ModelError
from onnxq.runtime import create_session, run

SAMPLES = 10


def _fix_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in list(fixed.graph.input) + list(fixed.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch
    del fixed.graph.value_info[:]
    return fixed


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """``dynamic`` and ``fixed`` (batch 4) versions of one float/quantized pair, same weights."""
    folder = tmp_path_factory.mktemp("fixed_batch")
    float_model = make_cnn_model()
    quant = quantize(float_model, {CNN_INPUT: make_images(16)}, config=QuantConfig(), latency=False).model
    paths = {}
    for kind, batch in (("dynamic", None), ("fixed", 4)):
        f, q = (m if batch is None else _fix_batch(m, batch) for m in (float_model, quant))
        paths[kind] = (folder / f"{kind}.onnx", folder / f"{kind}.q.onnx")
        onnx.save_model(f, paths[kind][0])
        onnx.save_model(q, paths[kind][1])
    return paths


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fixed_batch_data") / "eval.npz"
    np.savez(path, image=make_images(SAMPLES, seed=7), labels=make_labels(SAMPLES, seed=8))
    return path


@pytest.mark.parametrize("batch_size", [3, 4, 8])
def test_validate_compares_every_sample_of_a_fixed_batch_model(pairs, data_file: Path, batch_size: int) -> None:
    fixed = validate(*pairs["fixed"], data_file, batch_size=batch_size, latency=False)
    dynamic = validate(*pairs["dynamic"], data_file, batch_size=batch_size, latency=False)
    assert fixed.samples == SAMPLES
    assert fixed.quant_accuracy == dynamic.quant_accuracy
    for a, b in zip(fixed.outputs, dynamic.outputs):
        assert a.cosine == pytest.approx(b.cosine, rel=1e-6)
        assert a.max_abs_error == pytest.approx(b.max_abs_error, rel=1e-4, abs=1e-6)
        assert a.top1_agreement == b.top1_agreement


def test_compare_on_a_fixed_batch_model(pairs, data_file: Path) -> None:
    result = compare(*pairs["fixed"], data_file, metric="cosine", threshold=0.9, batch_size=4)
    assert result.passed and result.report.samples == SAMPLES


def test_analyze_uses_every_sample_of_a_fixed_batch_model(pairs, data_file: Path) -> None:
    fixed = {m.tensor: m for m in analyze(*pairs["fixed"], data_file)}
    dynamic = {m.tensor: m for m in analyze(*pairs["dynamic"], data_file)}
    assert fixed.keys() == dynamic.keys()
    for name, m in dynamic.items():
        if m.kind == "activation":
            assert fixed[name].model_sqnr_db == pytest.approx(m.model_sqnr_db, rel=1e-4), name


def test_cli_compare_fixed_batch_with_junit(pairs, data_file: Path, tmp_path: Path,
                                             run_cli: Callable[..., tuple[int, str, str]]) -> None:
    junit = tmp_path / "out.xml"
    code, out, err = run_cli("compare", *pairs["fixed"], "--data", data_file, "--threshold", "0.9",
                             "--batch-size", "4", "--junit", junit, "-q")
    assert code == ExitCode.OK, err
    assert ET.parse(junit).getroot().find(".//testcase") is not None


def test_ort_error_keeps_expected_and_got() -> None:
    """ORT's message after its first line (which dimension, expected vs got) is kept."""
    session = create_session(_fix_batch(make_cnn_model(), 4))
    with pytest.raises(ModelError) as info:
        run(session, {CNN_INPUT: make_images(3)})
    assert "Got: 3" in str(info.value) and "Expected: 4" in str(info.value)


@pytest.mark.parametrize("case", ["missing_data", "missing_model", "labels_mismatch"])
def test_cli_compare_writes_junit_on_errors(pairs, data_file: Path, tmp_path: Path, case: str,
                                            run_cli: Callable[..., tuple[int, str, str]]) -> None:
    junit = tmp_path / "out.xml"
    args = {"missing_data": ["--data", tmp_path / "missing.npz", "--threshold", "0.9"],
            "missing_model": ["--data", data_file, "--threshold", "0.9"],
            "labels_mismatch": ["--data", data_file, "--threshold", "0.5", "--metric", "accuracy",
                                "--labels", _labels(tmp_path, 3)]}[case]
    models = (pairs["fixed"][0], tmp_path / "missing.onnx") if case == "missing_model" else pairs["fixed"]
    code, _, err = run_cli("compare", *models, *args, "--junit", junit, "-q")
    assert code == ExitCode.USAGE_ERROR, err
    errors = ET.parse(junit).getroot().findall(".//error")
    assert len(errors) == 1 and errors[0].get("message")


def _labels(folder: Path, count: int) -> Path:
    path = folder / "labels.npy"
    np.save(path, np.zeros(count, dtype=np.int64))
    return path


def test_quantize_validates_every_sample_of_a_fixed_batch_model(pairs, data_file: Path) -> None:
    result = quantize(pairs["fixed"][0], {CNN_INPUT: make_images(16)}, evaluation=data_file,
                      config=QuantConfig(bias_correction=False), latency=False)
    assert result.report.samples == SAMPLES and result.report.quant_accuracy is not None
