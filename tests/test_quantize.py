"""End-to-end quantization through the public API: static QDQ, dynamic, policies, exclusions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import cnn_data, encoder_data, fed_by_dequantize, tiny_cnn, tiny_encoder

import onnxq
import onnxq.api
import onnxq.pipelines
from onnxq import CalibrationMethod, ConfigError, ModelError, QuantConfig


def op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


@pytest.fixture(scope="module")
def cnn() -> onnx.ModelProto:
    return tiny_cnn()


def test_static_default_cnn_is_qdq_and_close_to_float(cnn):
    result = onnxq.quantize(cnn, cnn_data(64), evaluation=cnn_data(64, seed=2), latency=False)
    ops = op_types(result.model)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert fed_by_dequantize(result.model, "conv1") and fed_by_dequantize(result.model, "conv2")
    assert fed_by_dequantize(result.model, "fc")
    logits = result.report.outputs[0]
    assert logits.cosine > 0.995 and logits.sqnr_db > 25
    assert logits.top1_agreement >= 0.95
    assert result.report.samples == 64
    assert result.report.size_ratio > 1.5
    assert result.plan.float_nodes == []
    # per-channel int8 weights: the conv weight's DequantizeLinear has one scale per output channel
    dq_scales = [n for n in result.model.graph.node if n.op_type == "DequantizeLinear" and "c2_w" in n.input[0]]
    scale = next(i for i in result.model.graph.initializer if i.name == dq_scales[0].input[1])
    assert list(scale.dims) == [16]


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_every_calibration_method_stays_close(cnn, method):
    config = QuantConfig(method=method)
    result = onnxq.quantize(cnn, cnn_data(64), config=config, latency=False)
    assert result.ranges is not None and result.ranges.method == method.value
    assert result.report.outputs[0].cosine > 0.99


def test_int8_activations_and_per_tensor(cnn):
    config = QuantConfig(activation_type="int8", per_channel=False)
    result = onnxq.quantize(cnn, cnn_data(32), config=config, latency=False)
    activation_zero_points = {n.input[2] for n in result.model.graph.node if n.op_type == "QuantizeLinear"}
    zero_points = [i for i in result.model.graph.initializer if i.name in activation_zero_points]
    assert zero_points and all(z.data_type == onnx.TensorProto.INT8 for z in zero_points)
    assert result.report.outputs[0].cosine > 0.99


def test_dynamic_leaves_conv_float_and_quantizes_the_dense_layer(cnn):
    result = onnxq.quantize(cnn, config=QuantConfig(mode="dynamic"), evaluation=cnn_data(32), latency=False)
    ops = op_types(result.model)
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert "ConvInteger" not in ops and "Conv" in ops
    assert any("ConvInteger is slower" in note for note in result.report.notes)
    assert result.report.outputs[0].cosine > 0.99


def test_dynamic_conv_on_request(cnn):
    config = QuantConfig(mode="dynamic", quantize_conv_dynamic=True)
    result = onnxq.quantize(cnn, config=config, evaluation=cnn_data(16), latency=False)
    assert "ConvInteger" in op_types(result.model)


def test_dynamic_without_data_reports_sizes_only(cnn):
    result = onnxq.quantize(cnn, config=QuantConfig(mode="dynamic"), latency=False)
    assert result.report.outputs == [] and result.report.size_ratio > 1.5


@pytest.mark.parametrize(("config", "float_node"), [
    (QuantConfig(exclude_nodes=("conv*",)), "conv2"),
    (QuantConfig(exclude_nodes=("fc",)), "fc"),
    (QuantConfig(exclude_op_types=("Gemm",)), "fc"),
    (QuantConfig(include_nodes=("conv1",)), "conv2"),
])
def test_exclusions_keep_nodes_float(cnn, config, float_node):
    result = onnxq.quantize(cnn, cnn_data(32), config=config, latency=False)
    assert not fed_by_dequantize(result.model, float_node, 1), "the weight of a float node stays float"
    assert float_node in result.plan.float_nodes
    assert result.report.outputs[0].cosine > 0.99


def test_static_needs_calibration_data(cnn):
    with pytest.raises(ConfigError, match="needs calibration data"):
        onnxq.quantize(cnn)


def test_opset_11_model_is_upgraded_for_per_channel():
    result = onnxq.quantize(tiny_cnn(opset=11), cnn_data(16), latency=False)
    opset = next(o.version for o in result.model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 13
    assert result.report.outputs[0].cosine > 0.99


def test_calibrate_then_quantize_with_ranges_and_cache(cnn, tmp_path, monkeypatch):
    config = QuantConfig(method="entropy")
    ranges = onnxq.calibrate(cnn, cnn_data(32), config=config, cache_dir=tmp_path / "cache")
    assert len(ranges) > 0 and ranges.method == "entropy" and ranges.samples == 32
    for r in ranges.tensors.values():
        assert r.low <= 0.0 <= r.high and r.low < r.high
    # the second calibration on the same model and data comes from the cache, without running ORT

    def fail(*args, **kwargs):
        raise AssertionError("calibration ran although the ranges were cached")

    monkeypatch.setattr(onnxq.pipelines, "collect_ranges", fail)
    cached = onnxq.calibrate(cnn, cnn_data(32), config=config, cache_dir=tmp_path / "cache")
    assert cached.tensors == ranges.tensors
    result = onnxq.quantize(cnn, config=config, ranges=ranges, evaluation=cnn_data(16), latency=False)
    assert result.report.outputs[0].cosine > 0.99


def test_result_save_is_atomic_and_protects_the_input(cnn, tmp_path):
    source = tmp_path / "float.onnx"
    onnx.save_model(cnn, source)
    before = source.read_bytes()
    result = onnxq.quantize(source, cnn_data(16), latency=False)
    with pytest.raises(ModelError, match="refusing to overwrite"):
        result.save(source)
    assert source.read_bytes() == before
    saved = result.save(tmp_path / "int8.onnx")
    assert onnx.load(saved).graph.node


def test_nothing_left_in_the_working_directory(cnn, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    onnxq.quantize(cnn, cnn_data(16), latency=False)
    onnxq.quantize(cnn, config=QuantConfig(mode="dynamic"), latency=False)
    assert list(tmp_path.iterdir()) == []


def test_caller_model_is_not_mutated(cnn):
    before = cnn.SerializeToString()
    onnxq.quantize(cnn, cnn_data(16), latency=False)
    assert cnn.SerializeToString() == before


class TestTransformerPolicy:
    """Static int8 on an encoder keeps only linear layers int8 (see plan.py for why)."""

    @pytest.fixture(scope="class")
    def encoder(self):
        return tiny_encoder()

    @pytest.fixture(scope="class")
    def result(self, encoder):
        return onnxq.quantize(encoder, encoder_data(48), evaluation=encoder_data(48, seed=7), latency=False)

    def test_default_static_stays_close_to_float(self, result):
        assert result.report.outputs[0].cosine >= 0.99
        assert result.report.outputs[0].min_cosine >= 0.98

    @pytest.mark.parametrize("name", ["q_proj", "k_proj", "v_proj", "o_proj", "ffn_up", "ffn_down"])
    def test_linear_layers_are_int8(self, result, name):
        assert fed_by_dequantize(result.model, name, 0) and fed_by_dequantize(result.model, name, 1)

    @pytest.mark.parametrize("name", ["scores", "context", "softmax", "ln1", "ln2", "mask_add", "gelu_erf"])
    def test_statistics_and_attention_stay_float(self, result, name):
        assert not fed_by_dequantize(result.model, name, 0)

    @pytest.mark.parametrize("tensor", ["r1", "r2", "s2", "p", "h2", "madd", "q0", "f0"])
    def test_residuals_masks_and_norms_are_never_quantized(self, result, tensor):
        quantized = {n.input[0] for n in result.model.graph.node if n.op_type == "QuantizeLinear"}
        assert tensor not in quantized

    def test_policy_beats_quantizing_every_op(self, encoder, result):
        naive = onnxq.quantize(encoder, encoder_data(48), config=QuantConfig(transformer_policy=False),
                               evaluation=encoder_data(48, seed=7), latency=False)
        assert naive.report.outputs[0].cosine < result.report.outputs[0].cosine


def test_sentinel_ranges_stay_float():
    """A tensor holding the -3.4e38 mask fill is never quantized, even without the transformer policy."""
    result = onnxq.quantize(tiny_encoder(), encoder_data(16), config=QuantConfig(transformer_policy=False),
                            latency=False)
    huge = [name for name, r in result.ranges.tensors.items() if max(abs(r.low), abs(r.high)) > 1e30]
    assert huge
    quantized_inputs = {n.input[0] for n in result.model.graph.node if n.op_type == "QuantizeLinear"}
    assert not set(huge) & quantized_inputs
    assert np.isfinite(result.report.outputs[0].cosine)


def test_failed_preprocessing_falls_back_and_leaves_nothing(cnn, tmp_path, monkeypatch, caplog):
    """ORT's symbolic shape inference fails on some exported transformers and dumps files into the
    working directory; onnxq falls back to ONNX shape inference + ORT basic optimisation."""
    import onnxq.rewrite.qdq

    def failing_pre_process(model, output, **kwargs):
        with open("sym_shape_infer_temp.onnx", "wb") as dump:  # what ORT does on failure
            dump.write(b"junk")
        raise Exception("Incomplete symbolic shape inference")

    monkeypatch.setattr(onnxq.rewrite.qdq, "quant_pre_process", failing_pre_process)
    monkeypatch.chdir(tmp_path)
    result = onnxq.quantize(cnn, cnn_data(16), latency=False)
    assert "Incomplete symbolic shape inference" in caplog.text
    assert "BatchNormalization" not in op_types(result.model), "basic optimisation folded the BatchNorm"
    assert result.report.outputs[0].cosine > 0.99
    assert list(tmp_path.iterdir()) == []


def test_prequantized_model_is_passed_through(cnn):
    """A model that already holds Q/DQ (a QAT export) is not quantized twice."""
    once = onnxq.quantize(cnn, cnn_data(16), latency=False).model
    again = onnxq.quantize(once, latency=False)
    assert again.plan.mode == "qat" and again.plan.nodes_to_quantize == []
    assert [n.op_type for n in again.model.graph.node] == [n.op_type for n in once.graph.node]
    assert any("quantization-aware training" in note for note in again.report.notes)
