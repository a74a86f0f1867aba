"""Per-layer error analysis (onnxq.analyze, `onnxq analyze`) and the report's new fields."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import FallbackStep, LayerMetrics, QuantConfig, Report
from onnxq.analyze import _fake_quant, _fake_quant_dynamic, rank
from onnxq.report import SCHEMA_VERSION


def outlier_mlp(seed: int = 0, outlier: float = 100.0,
                widths: tuple[int, ...] = (32, 256, 64, 64, 10)) -> onnx.ModelProto:
    """``x [N,32]`` -> MatMul fc0 -> Relu -> fc1 -> Relu -> fc2 -> Relu -> fc3 -> ``logits [N,10]``.

    fc1 is the bad layer: the first input row of its weight (it reads relu0's unit 0, which is
    always 0 because fc0's column 0 is zero) holds one huge value per output column. Per-channel
    int8 then spends its whole grid on those dead outliers, and fc1's useful weights lose most of
    their precision.
    """
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    x = "x"
    for i in range(len(widths) - 1):
        k, m = widths[i], widths[i + 1]
        w = (rng.standard_normal((k, m)) / np.sqrt(k)).astype(np.float32)
        if i == 0:
            w[:, 0] = 0.0
        if i == 1:
            w[0, :] = outlier * np.sign(rng.standard_normal(m)) / np.sqrt(k)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        last = i == len(widths) - 2
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], ["logits" if last else f"a{i}"], name=f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"], name=f"relu{i}"))
            x = f"h{i}"
    graph = helper.make_graph(nodes, "outlier_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", widths[0]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", widths[-1]])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def mlp_data(n: int = 64, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 32)).astype(np.float32)}


@pytest.fixture(scope="module")
def quantized() -> onnxq.QuantResult:
    return onnxq.quantize(outlier_mlp(), mlp_data(seed=1), evaluation=mlp_data(seed=2), latency=False)


@pytest.fixture(scope="module")
def layers(quantized: onnxq.QuantResult) -> list[LayerMetrics]:
    return onnxq.analyze(outlier_mlp(), quantized.model, mlp_data(seed=2))


def test_bad_layer_ranked_first(layers: list[LayerMetrics]) -> None:
    first = layers[0]
    assert (first.tensor, first.kind, first.node, first.op_type) == ("w1", "weight", "fc1", "MatMul")
    assert first.fallback_nodes == ["fc1"]
    others = [m.sqnr_db for m in layers[1:]]
    assert first.sqnr_db < 31 and min(others) > first.sqnr_db + 8  # measured: 28.9 dB vs >= 41 dB


def test_every_quantized_tensor_is_listed(layers: list[LayerMetrics]) -> None:
    by_name = {m.tensor: m for m in layers}
    assert {"w0", "w1", "w2", "w3"} <= set(by_name)
    assert {"x", "h0", "h1", "h2", "logits"} <= set(by_name)
    assert all(m.kind == "weight" and m.model_sqnr_db is None for m in layers if m.tensor.startswith("w"))
    # Relu folded into the MatMul: the tensor keeps the Relu output's name; both nodes must stay float
    assert by_name["h1"].op_type == "Relu" and by_name["h1"].fallback_nodes == ["fc1", "relu1", "fc2"]
    assert by_name["x"].node is None and by_name["x"].fallback_nodes == ["fc0"]  # graph input
    assert by_name["logits"].fallback_nodes == ["fc3"]  # graph output (name on the DequantizeLinear)
    assert [m.sqnr_db for m in layers] == sorted(m.sqnr_db for m in layers)


def test_model_error_drops_at_the_bad_layer(layers: list[LayerMetrics]) -> None:
    by_name = {m.tensor: m for m in layers}
    # what the quantized model computes: fine up to fc1's input, wrecked from fc1's output on
    assert by_name["h0"].model_sqnr_db > 35
    assert by_name["h1"].model_sqnr_db < 20
    # a tensor's own quantization error never exceeds the accumulated one
    for m in layers:
        if m.kind == "activation":
            assert m.sqnr_db >= m.model_sqnr_db - 1e-6


def test_weights_only_without_data(quantized: onnxq.QuantResult) -> None:
    layers = onnxq.analyze(outlier_mlp(), quantized.model)
    assert {m.kind for m in layers} == {"weight"} and layers[0].tensor == "w1"


def test_dynamic_model(tmp_path: Path) -> None:
    result = onnxq.quantize(outlier_mlp(), config=QuantConfig(mode="dynamic"), latency=False)
    layers = onnxq.analyze(outlier_mlp(), result.model, mlp_data(seed=2))
    assert layers[0].tensor == "w1" and layers[0].fallback_nodes == ["fc1"]
    acts = {m.tensor: m for m in layers if m.kind == "activation"}
    assert {"x", "h0", "h1", "h2"} <= set(acts)
    assert acts["h1"].fallback_nodes == ["fc2"] and acts["h1"].model_sqnr_db < 20


def test_fake_quant_matches_onnx_rounding() -> None:
    x = np.array([-1.0, 0.0, 0.25, 0.75, 1.25, 300.0], np.float32)
    out = _fake_quant(x, np.array(0.5, np.float32), np.array(2, np.uint8), 1)
    # round half to even: 0.25/0.5 = 0.5 -> 0, 0.75/0.5 = 1.5 -> 2, 1.25/0.5 = 2.5 -> 2; saturate at 255
    np.testing.assert_allclose(out, [-1.0, 0.0, 0.0, 1.0, 1.0, 126.5])
    y = np.array([[-1.0, 3.0]], np.float32)
    np.testing.assert_allclose(_fake_quant_dynamic(y), y, atol=4 / 255)


def test_rank_puts_nan_first_and_lossless_last() -> None:
    def metric(name: str, sqnr: float) -> LayerMetrics:
        return LayerMetrics(name, None, None, "weight", sqnr, 1.0)

    ranked = rank([metric("a", math.inf), metric("b", 20.0), metric("c", math.nan), metric("d", 10.0)])
    assert [m.tensor for m in ranked] == ["c", "d", "b", "a"]


def test_cli_analyze(tmp_path: Path, quantized: onnxq.QuantResult, run_cli) -> None:
    float_path, quant_path, data = tmp_path / "f.onnx", tmp_path / "q.onnx", tmp_path / "d.npz"
    onnx.save_model(outlier_mlp(), float_path)
    quantized.save(quant_path)
    np.savez(data, **mlp_data(seed=2))
    code, out, err = run_cli("analyze", float_path, quant_path, "--data", data, "--top", "3", "-q")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["tensor", "|", "op", "|", "kind"] and lines[2].startswith("w1 ")
    assert len(lines) == 2 + 3 + 1 and "more" in lines[-1]
    code, out, _ = run_cli("analyze", float_path, quant_path, "--data", data, "--json")
    rows = json.loads(out)
    assert code == 0 and rows[0]["tensor"] == "w1" and rows[0]["fallback_nodes"] == ["fc1"]
    code, _, err = run_cli("analyze", float_path, quant_path, "--data", tmp_path / "missing.npz")
    assert code == 2 and "Traceback" not in err


def test_report_with_layers_and_fallback_round_trips() -> None:
    report = Report(outputs=[], samples=3, float_size_bytes=10, quant_size_bytes=5, size_ratio=2.0,
                    layers=[LayerMetrics("w1", "fc1", "MatMul", "weight", 28.9, 0.9993, ["fc1"]),
                            LayerMetrics("h1", "relu1", "Relu", "activation", math.inf, 1.0, ["fc1", "relu1"],
                                         model_sqnr_db=13.6, model_cosine=0.979)],
                    fallback=[FallbackStep(0, None, None, 0.98, False),
                              FallbackStep(1, "fc1", "MatMul", 0.9998, True, ["fc1", "relu1"], "w1")],
                    target="cosine>=0.999", target_met=True)
    text = report.to_json()
    assert '"inf"' in text and json.loads(text)["schema_version"] == SCHEMA_VERSION == 2
    back = Report.from_json(text)
    assert back == report
    assert "target:   cosine>=0.999 met after 1 fallback step(s)" in back.format()


def test_version_1_report_still_loads() -> None:
    old = {"schema_version": 1, "outputs": [{"name": "y", "max_abs_error": 0.1, "mean_abs_error": 0.01,
                                              "cosine": 0.99, "min_cosine": 0.9, "sqnr_db": "inf"}],
           "samples": 4, "float_size_bytes": 100, "quant_size_bytes": 30, "size_ratio": 3.3,
           "float_nodes": ["fc"]}
    report = Report.from_dict(old)
    assert report.layers == [] and report.fallback == [] and report.target is None and report.target_met is None
    assert report.outputs[0].sqnr_db == math.inf and report.schema_version == SCHEMA_VERSION
