"""16x8: int16 activations with int8 weights (static QDQ at opset 21)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import cnn_data, encoder_data, tiny_cnn, tiny_encoder
from onnx import TensorProto

import onnxq
from onnxq.calibration.observers import HistogramObserver, compute_range
from onnxq.errors import ConfigError
from onnxq.model import opset_version


def _quantize(model, data, **config):
    return onnxq.quantize(model, data, config=onnxq.QuantConfig(**config), latency=False)


def _zero_point_types(model: onnx.ModelProto) -> set[int]:
    inits = {i.name: i for i in model.graph.initializer}
    return {inits[n.input[2]].data_type for n in model.graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits}


@pytest.fixture(scope="module")
def cnn_results():
    model, data = tiny_cnn(), cnn_data(48)
    return {t: _quantize(model, data, activation_type=t) for t in ("uint8", "int8", "int16")}


def test_16x8_cnn_graph_is_opset21_with_int16_activations(cnn_results):
    result = cnn_results["int16"]
    assert opset_version(result.model) == 21
    # every activation QuantizeLinear has an int16 zero point; weights stay int8
    assert _zero_point_types(result.model) == {TensorProto.INT16}
    inits = {i.name: i for i in result.model.graph.initializer}
    weight_types = {inits[n.input[0]].data_type for n in result.model.graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    assert TensorProto.INT8 in weight_types and TensorProto.INT16 not in weight_types
    ops = {n.op_type for n in result.model.graph.node}
    assert {"Conv", "Gemm", "QuantizeLinear", "DequantizeLinear"} <= ops
    assert all(n.domain in ("", "ai.onnx") for n in result.model.graph.node)  # standard Q/DQ, not contrib
    assert any("accuracy, not speed" in note for note in result.report.notes)


def test_16x8_cnn_is_closer_to_float_than_8bit(cnn_results):
    sqnr = {t: r.report.outputs[0].sqnr_db for t, r in cnn_results.items()}
    assert sqnr["int16"] > sqnr["uint8"] and sqnr["int16"] > sqnr["int8"]
    assert sqnr["int16"] > 40.0
    assert cnn_results["int16"].report.outputs[0].cosine > 0.9999


def test_16x8_encoder_without_transformer_policy_beats_8bit():
    model, data = tiny_encoder(), encoder_data(24)
    r8 = _quantize(model, data, transformer_policy=False)
    r16 = _quantize(model, data, transformer_policy=False, activation_type="int16")
    assert opset_version(r16.model) == 21
    assert TensorProto.INT16 in _zero_point_types(r16.model)
    assert r16.report.outputs[0].sqnr_db > r8.report.outputs[0].sqnr_db + 3.0
    assert r16.report.outputs[0].cosine > 0.9999


def test_16x8_nodes_are_reported_as_float():
    result = _quantize(tiny_cnn(), cnn_data(16), activation_type="int16")
    details = {d["name"]: d["reason"] for d in result.report.float_node_details}
    assert "16 bits" in details["conv1"] and "16 bits" in details["fc"]


def test_entropy_and_mse_ranges_for_16bit_activations():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(20000), [12.0]]).astype(np.float32)
    observer = HistogramObserver(num_bins=2048)
    observer.update(values)
    low16, high16 = compute_range(observer, onnxq.QuantConfig(method="entropy", activation_type="int16"))
    assert (low16, high16) == pytest.approx((observer.min, observer.max))  # the observed range
    low8, high8 = compute_range(observer, onnxq.QuantConfig(method="entropy"))
    assert high8 < 12.0  # 8-bit entropy clips the outlier
    mse16 = compute_range(observer, onnxq.QuantConfig(method="mse", activation_type="int16"))
    mse8 = compute_range(observer, onnxq.QuantConfig(method="mse"))
    assert mse16[1] >= mse8[1]  # a finer grid clips less


@pytest.mark.parametrize("changes, message", [
    ({"mode": "dynamic", "activation_type": "int16"}, "mode='static'"),
    ({"weight_type": "int16"}, "16-bit is for activations"),
])
def test_16bit_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        onnxq.QuantConfig(**changes)


def test_cli_activation_type_int16(cnn_files, run_cli, tmp_path):
    out = tmp_path / "q16.onnx"
    code, stdout, _ = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                              "--activation-type", "int16", "--no-latency")
    assert code == 0, stdout
    assert opset_version(onnx.load(out)) == 21
    assert "accuracy, not speed" in stdout
