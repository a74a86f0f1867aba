"""Integer-only inputs and outputs (io_type): graph dtypes, metadata, validation, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import cnn_data, encoder_data, tiny_cnn, tiny_encoder
from onnx import TensorProto

import onnxq
from onnxq.errors import ConfigError
from onnxq.rewrite.io_types import METADATA_PREFIX, dequantize_outputs, float_interface, quantize_feeds

_TYPES = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((ref - got).astype(np.float64) ** 2).sum()))


CASES = [
    ("cnn", "uint8", "uint8"), ("cnn", "int8", "int8"), ("cnn", "uint8", "int8"),
    ("encoder", "uint8", "uint8"), ("encoder", "int8", "int8"),
]


@pytest.mark.parametrize("which, activation_type, io_type", CASES)
def test_integer_io_model(which, activation_type, io_type):
    model, data = (tiny_cnn(), cnn_data(32)) if which == "cnn" else (tiny_encoder(), encoder_data(16))
    result = onnxq.quantize(model, data, config=onnxq.QuantConfig(activation_type=activation_type,
                                                                   io_type=io_type), latency=False)
    graph = result.model.graph
    assert {i.name: i.type.tensor_type.elem_type for i in graph.input} == {n: _TYPES[io_type] for n in data}
    assert [o.type.tensor_type.elem_type for o in graph.output] == [_TYPES[io_type]]
    if which == "cnn" and activation_type == io_type:  # the input Q and output DQ are gone, nothing added
        first = [n for n in graph.node if "image" in n.input]
        assert [n.op_type for n in first] == ["DequantizeLinear"]
        assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "image" for n in graph.node)
        assert graph.node[-1].op_type != "DequantizeLinear"

    params = onnxq.io_params(result.model)
    assert set(params) == set(data) | {graph.output[0].name}
    keys = {p.key: json.loads(p.value) for p in result.model.metadata_props if p.key.startswith(METADATA_PREFIX)}
    assert set(keys) == {METADATA_PREFIX + name for name in params}
    assert all(v["dtype"] == io_type and v["scale"] > 0 for v in keys.values())

    # quantize float inputs with the recorded parameters, run, dequantize: close to float
    float_out = _run(model, data)[0]
    int_out = _run(result.model, quantize_feeds(params, data))
    assert int_out[0].dtype == np.dtype(io_type)
    name = graph.output[0].name
    got = dequantize_outputs(params, {name: int_out[0]})[name]
    assert _sqnr(float_out, got) > 30.0
    # the report compares exactly that (float interface from the metadata)
    assert result.report.outputs[0].sqnr_db == pytest.approx(_sqnr(float_out, got), abs=0.01)
    assert result.report.quant_size_bytes < result.report.float_size_bytes


def test_float_interface_takes_floats():
    model, data = tiny_cnn(), cnn_data(8)
    result = onnxq.quantize(model, data, config=onnxq.QuantConfig(io_type="uint8"), latency=False)
    wrapped = float_interface(result.model)
    assert wrapped.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    out = _run(wrapped, data)[0]
    assert out.dtype == np.float32 and _sqnr(_run(model, data)[0], out) > 30.0


def test_16bit_activations_with_uint8_io_are_requantized():
    result = onnxq.quantize(tiny_cnn(), cnn_data(16),
                            config=onnxq.QuantConfig(activation_type="int16", io_type="uint8"), latency=False)
    assert result.model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert any("requantized" in note for note in result.report.notes)


def test_io_params_of_a_float_model_is_empty():
    assert onnxq.io_params(tiny_cnn()) == {}


@pytest.mark.parametrize("changes, message", [
    ({"io_type": "int16"}, "io_type"),
    ({"io_type": "float"}, "io_type"),
    ({"io_type": "uint8", "mode": "dynamic"}, "mode='static'"),
])
def test_io_type_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        onnxq.QuantConfig(**changes)


def test_cli_io_type_prints_params(cnn_files, run_cli, tmp_path):
    out = tmp_path / "q.onnx"
    code, stdout, _ = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                              "--io-type", "uint8", "--no-latency")
    assert code == 0
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    params = onnxq.io_params(out)
    line = next(line for line in stdout.splitlines() if line.startswith("input image"))
    assert "uint8" in line and f"zero point {params['image'].zero_point}" in line
    assert "output logits: uint8" in stdout
    code, _, stderr = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                              "--io-type", "int16")
    assert code == 2 and "invalid choice" in stderr
