"""QAT import: a model that already holds Q/DQ is recognised, reported, never quantized twice."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from builders import cnn_data, encoder_data, tiny_cnn, tiny_encoder
from onnx import numpy_helper

import onnxq
from onnxq.qat import qat_nodes, qat_tensors


def _qdq_params(model: onnx.ModelProto) -> dict[str, tuple]:
    """Q/DQ node name -> (scale, zero point) values; a per-axis parameter repeating one value (onnxq's
    keep-float guard in front of a float Conv/Gemm) counts as that value."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def value(array):
        return np.unique(array).tobytes() if array.ndim == 1 and np.unique(array).size == 1 else array.tobytes()

    return {n.name: tuple(value(inits[t]) for t in n.input[1:3] if t in inits)
            for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}


@pytest.fixture(scope="module")
def partly_quantized():
    """tiny_cnn quantized by onnxq with its last layer (fc) left in float: a stand-in for a QAT export."""
    data = cnn_data(32)
    first = onnxq.quantize(tiny_cnn(), data, config=onnxq.QuantConfig(exclude_nodes=("fc",)), latency=False)
    return first.model, data


def test_qat_model_is_passed_through_and_reported(partly_quantized):
    model, data = partly_quantized
    result = onnxq.quantize(model, data, latency=False)
    assert result.plan.mode == "qat" and result.plan.nodes_to_quantize == []
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in model.graph.node]
    tensors = {t["name"]: t for t in result.report.qat_tensors}
    assert tensors["image"]["kind"] == "activation" and tensors["image"]["dtype"] == "uint8"
    weights = [t for t in tensors.values() if t["kind"] == "weight" and t["dtype"] == "int8"]
    assert len(weights) == 2 and all(len(t["scale"]) in (8, 16) and t["axis"] == 0 for t in weights)
    assert any("carry QAT quantization parameters" in n for n in result.report.notes)
    onnxq.Report.from_json(result.report.to_json())  # the structured field round-trips


def test_qat_tensors_match_the_graph(partly_quantized):
    model, _ = partly_quantized
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image")
    image = next(t for t in qat_tensors(model) if t.name == "image")
    assert image.scale == pytest.approx(float(inits[q.input[1]]))
    assert image.zero_point == int(inits[q.input[2]])
    assert {"conv1", "conv2", "pool", "flatten"} <= qat_nodes(model) and "fc" not in qat_nodes(model)


def test_rest_quantization_adds_qdq_only_to_the_float_part(partly_quantized):
    model, data = partly_quantized
    result = onnxq.quantize(model, data, config=onnxq.QuantConfig(qat_quantize_rest=True), latency=False)
    assert result.plan.nodes_to_quantize == ["fc"]
    before, after = _qdq_params(model), _qdq_params(result.model)
    assert all(after[name] == params for name, params in before.items())  # existing Q/DQ untouched
    added = [n for n in result.model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
             and n.name not in before]
    assert {t for n in added for t in n.input[:1]} & {"fc_w", "fc_b"} or any("fc_w" in n.input[0] for n in added)
    before_ops, after_ops = Counter(n.op_type for n in model.graph.node), Counter(n.op_type for n in result.model.graph.node)
    assert after_ops["Gemm"] == before_ops["Gemm"] == 1 and after_ops["DequantizeLinear"] > before_ops["DequantizeLinear"]
    fc = next(n for n in result.model.graph.node if n.name == "fc")
    producers = {o: n for n in result.model.graph.node for o in n.output}
    assert all(producers[t].op_type == "DequantizeLinear" for t in fc.input)
    # validated against the QAT-only model: what the extra quantization changed
    metrics = result.report.outputs[0]
    assert metrics.sqnr_db > 30.0 and metrics.cosine > 0.999
    assert any("QAT-only model" in n for n in result.report.notes)
    assert result.report.qat_tensors


def test_rest_quantization_of_a_fully_quantized_model_changes_nothing():
    data = cnn_data(16)
    full = onnxq.quantize(tiny_cnn(), data, latency=False).model
    result = onnxq.quantize(full, data, config=onnxq.QuantConfig(qat_quantize_rest=True), latency=False)
    assert result.plan.nodes_to_quantize == []
    assert _qdq_params(result.model) == _qdq_params(full)
    assert result.report.outputs[0].sqnr_db == float("inf")


def test_qat_encoder_rest_quantization():
    data = encoder_data(12)
    qat = onnxq.quantize(tiny_encoder(), data, config=onnxq.QuantConfig(smooth_alpha=None), latency=False).model
    result = onnxq.quantize(qat, data, config=onnxq.QuantConfig(qat_quantize_rest=True, transformer_policy=False),
                            latency=False)
    assert _qdq_params(qat).items() <= _qdq_params(result.model).items()
    assert "q_proj" not in result.plan.nodes_to_quantize  # already quantized
    names = [n.name for n in result.model.graph.node]
    assert len(names) == len(set(names))
    producers = {o: n for n in result.model.graph.node for o in n.output}
    for node in result.model.graph.node:  # no second Q/DQ pair in front of the model's own Q nodes
        if node.op_type == "QuantizeLinear" and node.input[0] in producers:
            assert producers[node.input[0]].op_type != "DequantizeLinear", node.name
    assert result.report.outputs[0].cosine > 0.99


def test_cli_qat_rest_with_labels(cnn_files, run_cli, tmp_path, partly_quantized):
    model, _ = partly_quantized
    source = tmp_path / "qat.onnx"
    onnx.save_model(model, source)
    out = tmp_path / "rest.onnx"
    report = tmp_path / "report.json"
    np.savez(tmp_path / "calib.npz", image=cnn_data(32)["image"], labels=np.arange(32) % 10)
    code, stdout, stderr = run_cli("quantize", source, "-o", out, "--calib", tmp_path / "calib.npz",
                                   "--qat-quantize-rest", "--report", report, "--no-latency")
    assert code == 0, stderr
    loaded = onnxq.Report.from_json(report)
    assert loaded.qat_tensors and loaded.float_accuracy is not None and loaded.quant_accuracy is not None
    assert "accuracy:" in stdout
