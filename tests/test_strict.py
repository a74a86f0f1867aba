"""Strict integer mode: which nodes stay float, StrictModeError, CLI exit code and messages."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import cnn_data, encoder_data, tiny_cnn, tiny_encoder
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.errors import ConfigError, StrictModeError
from onnxq.strict import FloatNode, float_nodes


def mlp_with_float_ops() -> onnx.ModelProto:
    """x [N,16] -> MatMul -> LayerNormalization -> Erf -> MatMul -> y [N,8]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 16)) / 4).astype(np.float32), "w1"),
             numpy_helper.from_array(np.ones(16, np.float32), "g"),
             numpy_helper.from_array(np.zeros(16, np.float32), "b"),
             numpy_helper.from_array((rng.standard_normal((16, 8)) / 4).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], axis=-1, name="norm"),
             helper.make_node("Erf", ["n"], ["e"], name="erf"),
             helper.make_node("MatMul", ["e", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _data(n: int = 16) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((n, 16)).astype(np.float32)}


def _config(**changes) -> onnxq.QuantConfig:
    return onnxq.QuantConfig(transformer_policy=False, **changes)


def test_cnn_is_fully_integer_and_strict_passes():
    result = onnxq.quantize(tiny_cnn(), cnn_data(16), config=onnxq.QuantConfig(strict=True), latency=False)
    assert float_nodes(result.model) == [] and result.report.float_node_details == []


def test_strict_error_lists_exactly_the_float_nodes():
    with pytest.raises(StrictModeError) as info:
        onnxq.quantize(mlp_with_float_ops(), _data(), config=_config(strict=True), latency=False)
    error = info.value
    assert [(n.name, n.op_type) for n in error.nodes] == [("norm", "LayerNormalization"), ("erf", "Erf")]
    assert all("no integer kernel" in n.reason for n in error.nodes)
    message = str(error)
    assert "\n" not in message and message.startswith("strict integer mode: 2 node(s) would run in float")


def test_without_strict_the_report_lists_them():
    result = onnxq.quantize(mlp_with_float_ops(), _data(), config=_config(), latency=False)
    assert [(d["name"], d["op_type"]) for d in result.report.float_node_details] == [
        ("norm", "LayerNormalization"), ("erf", "Erf")]
    again = onnxq.Report.from_json(result.report.to_json())
    assert again.float_node_details == result.report.float_node_details


def test_excluded_node_is_reported_with_its_reason():
    result = onnxq.quantize(tiny_cnn(), cnn_data(16), config=onnxq.QuantConfig(exclude_nodes=("fc",)),
                            latency=False)
    assert float_nodes(result.model) == [
        FloatNode("fc", "Gemm", "input 'fc_w' is float (a constant, not produced by DequantizeLinear)")]


def test_transformer_policy_leaves_softmax_layernorm_and_gelu_float():
    result = onnxq.quantize(tiny_encoder(), encoder_data(8), latency=False)
    found = {n["name"]: n for n in result.report.float_node_details}
    assert {"softmax", "ln1", "ln2", "gelu_erf", "residual1"} <= set(found)
    assert "q_proj" not in found and "ffn_up" not in found  # int8 linear layers (MatMulIntegerToFloat)
    assert found["softmax"]["reason"].startswith("input 's2' is float")


def test_strict_needs_static_mode():
    with pytest.raises(ConfigError, match="strict"):
        onnxq.QuantConfig(strict=True, mode="dynamic")


def test_cli_strict_exit_code_and_lines(tmp_path, run_cli):
    model_path, data_path = tmp_path / "mlp.onnx", tmp_path / "calib.npz"
    onnx.save_model(mlp_with_float_ops(), model_path)
    np.savez(data_path, **_data())
    out = tmp_path / "q.onnx"
    code, _, stderr = run_cli("quantize", model_path, "-o", out, "--calib", data_path, "--strict",
                              "--no-transformer-policy", "--no-latency")
    assert code == 2 and not out.exists()
    lines = stderr.strip().splitlines()
    assert lines[-3].startswith("onnxq: error: strict integer mode: 2 node(s)")
    assert lines[-2].strip().startswith("norm (LayerNormalization): ")
    assert lines[-1].strip().startswith("erf (Erf): ")
    assert "Traceback" not in stderr
    code, _, _ = run_cli("quantize", model_path, "-o", out, "--calib", data_path, "--no-transformer-policy",
                         "--no-latency")
    assert code == 0 and out.exists()
