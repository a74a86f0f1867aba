"""Float16 mode: ORT's float16 converter, float32 I/O kept by default, block lists, validation, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq import ConfigError, Mode, QuantConfig, quantize
from onnxq.rewrite.float16 import default_block_list, float32_facade

from builders import cnn_data, encoder_data, tiny_cnn, tiny_encoder

FP16 = QuantConfig(mode=Mode.FLOAT16)
MODELS = {"cnn": (tiny_cnn, lambda: cnn_data(32)), "encoder": (tiny_encoder, lambda: encoder_data(32))}


def _elem_types(values) -> list[int]:
    return [v.type.tensor_type.elem_type for v in values]


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_float16_keeps_float32_io_and_stays_close(name: str) -> None:
    build, data = MODELS[name]
    result = quantize(build(), data(), config=FP16, latency=False)
    model = result.model
    assert _elem_types(model.graph.input) == [TensorProto.FLOAT] * len(model.graph.input)
    assert _elem_types(model.graph.output) == [TensorProto.FLOAT]
    weights = [t for t in model.graph.initializer if len(t.dims) >= 1 and np.prod(t.dims) > 1]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights
                           if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16))
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) >= len(model.graph.input) + 1  # one per float32 input and output
    onnx.checker.check_model(model)  # topologically sorted, valid
    (out,) = _run(model, data())
    assert out.dtype == np.float32
    report = result.report
    assert report.mode == "float16" and report.samples == 32
    assert report.outputs[0].cosine > 0.9999
    assert report.size_ratio > 1.7  # tiny graphs: the proto overhead is not halved, weights are


def test_float16_io_when_not_kept() -> None:
    config = QuantConfig(mode="float16", float16_keep_io_types=False)
    data = encoder_data(16)
    result = quantize(tiny_encoder(), data, config=config, latency=False)
    model = result.model
    assert _elem_types(model.graph.input) == [TensorProto.FLOAT16, TensorProto.FLOAT16]
    assert _elem_types(model.graph.output) == [TensorProto.FLOAT16]
    (out,) = _run(model, {k: v.astype(np.float16) for k, v in data.items()})
    assert out.dtype == np.float16
    # validated through a float32 facade of the same graph
    assert result.report.outputs[0].cosine > 0.9999
    assert result.report.quant_size_bytes == model.ByteSize()


def test_float32_facade_wraps_float16_io_only() -> None:
    fp32 = quantize(tiny_cnn(), None, config=FP16, latency=False).model
    assert float32_facade(fp32) is fp32
    fp16 = quantize(tiny_cnn(), None, config=FP16.replace(float16_keep_io_types=False), latency=False).model
    facade = float32_facade(fp16)
    assert _elem_types(facade.graph.input) == [TensorProto.FLOAT]
    data = cnn_data(4)
    # equal up to one float16 rounding: ORT's optimiser removes the facade's Cast pairs around float32 kernels
    np.testing.assert_allclose(_run(facade, data)[0],
                               _run(fp16, {"image": data["image"].astype(np.float16)})[0].astype(np.float32),
                               rtol=2e-3, atol=2e-3)


def test_user_block_list_keeps_ops_float32() -> None:
    config = FP16.replace(float16_op_block_list=("Softmax", "LayerNormalization"))
    result = quantize(tiny_encoder(), encoder_data(16), config=config, latency=False)
    model = result.model
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("Softmax", "LayerNormalization"):
            source = producers[node.input[0]]
            assert source.op_type == "Cast" and source.attribute[0].i == TensorProto.FLOAT
    kept = {d.op_type for d in result.plan.decisions if not d.quantize}
    assert kept == {"Softmax", "LayerNormalization"}
    assert result.report.outputs[0].cosine > 0.9999


def _pow_model() -> onnx.ModelProto:
    """y = MatMul(x, W) ** 2: Pow is in the default block list (squares overflow float16)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "W")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"), helper.make_node("Pow", ["h", "two"], ["y"],
                                                                                     name="square")],
        "pow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w, two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_default_block_list_keeps_fragile_ops_float32() -> None:
    assert {"Pow", "TopK", "NonMaxSuppression"} <= set(default_block_list())
    x = np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32)
    result = quantize(_pow_model(), {"x": x}, config=FP16, latency=False)
    decisions = {d.name: d for d in result.plan.decisions}
    assert not decisions["square"].quantize and decisions["mm"].quantize
    inits = {t.name: t.data_type for t in result.model.graph.initializer}
    assert inits["W"] == TensorProto.FLOAT16 and inits["two"] == TensorProto.FLOAT
    assert result.report.outputs[0].cosine > 0.9999


@pytest.mark.parametrize("fields", [{"float16_keep_io_types": False}, {"float16_op_block_list": ("Softmax",)}])
def test_float16_fields_need_float16_mode(fields: dict) -> None:
    with pytest.raises(ConfigError, match="mode='float16'"):
        QuantConfig(mode="dynamic", **fields)


def test_float16_block_list_must_be_strings() -> None:
    with pytest.raises(ConfigError, match="float16_op_block_list"):
        QuantConfig(mode="float16", float16_op_block_list=(1, 2))


def test_cli_float16(run_cli, tmp_path: Path) -> None:
    model_path, data_path = tmp_path / "enc.onnx", tmp_path / "data.npz"
    onnx.save_model(tiny_encoder(), model_path)
    np.savez(data_path, **encoder_data(16))
    out = tmp_path / "enc.fp16.onnx"
    code, stdout, _ = run_cli("quantize", model_path, "-o", out, "--mode", "float16", "--eval", data_path,
                              "--no-latency", "--fp16-block-ops", "Softmax")
    assert code == 0, stdout
    model = onnx.load(out)
    assert _elem_types(model.graph.input) == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert any(n.op_type == "Softmax" for n in model.graph.node)
    out16 = tmp_path / "enc.io16.onnx"
    code, _, err = run_cli("quantize", model_path, "-o", out16, "--mode", "float16", "--no-keep-io-types",
                           "--no-latency", "-q")
    assert code == 0, err
    assert _elem_types(onnx.load(out16).graph.output) == [TensorProto.FLOAT16]
    code, _, err = run_cli("quantize", model_path, "-o", tmp_path / "x.onnx", "--mode", "dynamic",
                           "--no-keep-io-types", "-q")
    assert code == 2 and "float16" in err
