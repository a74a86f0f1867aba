"""The accuracy fallback composes with integer I/O and QAT rest-quantization; never with strict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import cnn_data, tiny_cnn
from onnx import TensorProto

import onnxq
from onnxq import ConfigError, QuantConfig, Report
from onnxq.cli import ExitCode
from onnxq.rewrite.io_types import io_params
from test_analyze import mlp_data, outlier_mlp
from test_tune import _quantize_cli, files  # noqa: F401 -- the same model files and CLI call

GOAL = "cosine>=0.999"
INTEGER = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}


def _io_types(model: onnx.ModelProto) -> set[int]:
    return {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}


@pytest.mark.parametrize("io_type", ["int8", "uint8"])
def test_target_with_integer_io(io_type: str) -> None:
    result = onnxq.quantize(outlier_mlp(), mlp_data(seed=1), evaluation=mlp_data(seed=2),
                            config=QuantConfig(target=GOAL, io_type=io_type), latency=False)
    report = result.report
    assert report.target_met is True and len(report.fallback) >= 2  # at least one step was needed
    assert not report.fallback[0].goal_met  # measured 0.918 through the integer interface
    assert report.float_nodes == ["fc1", "relu1"]
    assert _io_types(result.model) == {INTEGER[io_type]}  # the final model takes and returns integers
    assert set(io_params(result.model)) == {"x", "logits"}
    # the report validated the integer model through its recorded parameters, the fallback too
    assert report.outputs[0].cosine == pytest.approx(report.fallback[-1].metric_value)
    assert report.outputs[0].cosine >= 0.999
    assert sum(n.startswith(f"Integer-only I/O ({io_type})") for n in report.notes) == 1
    assert any("per-layer error (analyze)" in n for n in report.notes)


@pytest.fixture(scope="module")
def qat_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """tiny_cnn with all but its last layer (fc) quantized: a QAT-style model (as in test_qat_import)."""
    data = cnn_data(32)
    first = onnxq.quantize(tiny_cnn(), data, config=QuantConfig(exclude_nodes=("fc",)), latency=False)
    return first.model, data


def test_target_with_qat_quantize_rest(qat_model) -> None:
    model, data = qat_model
    qat_nodes = [n.name for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    result = onnxq.quantize(model, data, evaluation=cnn_data(16, seed=3), latency=False,
                            config=QuantConfig(qat_quantize_rest=True, target="sqnr>=60"))
    report = result.report
    steps = report.fallback
    assert [s.step for s in steps] == [0, 1] and not steps[0].goal_met  # measured 39 dB with fc quantized
    assert steps[1].nodes == ["fc"] and steps[1].goal_met and report.target_met is True
    assert result.plan.nodes_to_quantize == []
    # the model's own Q/DQ stay as they were; only fc went back to float
    assert [n.name for n in result.model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")] \
        == qat_nodes
    assert any("per-layer error (analyze)" in n for n in report.notes)


def test_strict_with_target_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError) as info:
        QuantConfig(target=GOAL, strict=True)
    message = str(info.value)
    assert "strict forbids any float compute node" in message and "only tool" in message
    assert "\n" not in message
    QuantConfig(target=GOAL, io_type="int8", qat_quantize_rest=True)  # no longer refused


@pytest.mark.parametrize("io_type", ["int8", "uint8"])
def test_cli_target_with_io_type(run_cli, files: dict[str, Path], io_type: str) -> None:
    code, _, err = _quantize_cli(run_cli, files, "--target", GOAL, "--io-type", io_type)
    assert code == ExitCode.OK, err
    report = Report.from_json(files["report"])
    assert report.target_met is True and len(report.fallback) >= 2
    assert _io_types(onnx.load(files["out"])) == {INTEGER[io_type]}


def test_cli_target_with_qat_quantize_rest(run_cli, files: dict[str, Path], qat_model) -> None:
    model, data = qat_model
    onnx.save_model(model, files["model"])
    np.savez(files["calib"], **data)
    np.savez(files["eval"], **cnn_data(16, seed=3))
    code, _, err = _quantize_cli(run_cli, files, "--target", "sqnr>=60", "--qat-quantize-rest")
    assert code == ExitCode.OK, err
    report = Report.from_json(files["report"])
    assert report.target_met is True and report.fallback[-1].nodes == ["fc"]


def test_cli_strict_with_target_is_a_usage_error(run_cli, files: dict[str, Path]) -> None:
    code, _, err = _quantize_cli(run_cli, files, "--target", GOAL, "--strict")
    assert code == ExitCode.USAGE_ERROR and "strict forbids any float compute node" in err
    assert err.strip().count("\n") == 0 and not files["out"].exists()
