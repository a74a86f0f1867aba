"""Tests of onnxq.validate: metrics against numpy, streaming, labels, I/O checks, latency."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.errors import ConfigError, DataError, ModelError
from onnxq.feeds import load_data
from onnxq.report import Report
from onnxq.validate import (AccuracyAccumulator, OutputAccumulator, compare_outputs,
                            is_class_scores, validate)

# --------------------------------------------------------------------------------------- fixtures


class _ListDataset:
    """A Dataset-like object of fixed batches (validate accepts any object with ``batches()``)."""

    def __init__(self, batches: list[tuple[dict[str, np.ndarray], np.ndarray | None]]) -> None:
        self._batches = batches
        self.num_batches = len(batches)
        self.num_samples = sum(next(iter(b[0].values())).shape[0] for b in batches)
        self.has_labels = any(b[1] is not None for b in batches)

    def batches(self):
        yield from self._batches


def _split(arrays: dict[str, np.ndarray], labels: np.ndarray | None, batch_size: int):
    n = next(iter(arrays.values())).shape[0]
    return _ListDataset([({k: v[i:i + batch_size] for k, v in arrays.items()},
                          None if labels is None else labels[i:i + batch_size])
                         for i in range(0, n, batch_size)])


def gemm_model(weight: np.ndarray, bias: np.ndarray, *, input_name: str = "x",
               output_name: str = "logits") -> onnx.ModelProto:
    """A classifier [N, in] -> [N, out]: y = x @ W + b."""
    n_in, n_out = weight.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", [input_name, "W", "b"], [output_name])],
        "gemm",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", n_out])],
        [numpy_helper.from_array(weight.astype(np.float32), "W"),
         numpy_helper.from_array(bias.astype(np.float32), "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def elementwise_model(scale: float, shift: float) -> onnx.ModelProto:
    """Two outputs, both batch-size independent: y = x * scale + shift ([N, 6]); z = Relu(y)
    reshaped to [N, 2, 3] (not class scores)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["xs"]),
         helper.make_node("Add", ["xs", "t"], ["y"]),
         helper.make_node("Relu", ["y"], ["r"]),
         helper.make_node("Reshape", ["r", "shape"], ["z"])],
        "elementwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2, 3])],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"),
         numpy_helper.from_array(np.array(shift, np.float32), "t"),
         numpy_helper.from_array(np.array([-1, 2, 3], np.int64), "shape")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def classifier():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 10)).astype(np.float32)
    bias = rng.standard_normal(10).astype(np.float32)
    noisy_w = (weight + 0.05 * rng.standard_normal(weight.shape)).astype(np.float32)
    x = rng.standard_normal((23, 16)).astype(np.float32)
    return {"float": gemm_model(weight, bias), "quant": gemm_model(noisy_w, bias), "x": x,
            "ref": x.astype(np.float64) @ weight + bias, "cand": x.astype(np.float64) @ noisy_w + bias}


def numpy_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    """Reference implementation, one sample at a time."""
    ref = ref.astype(np.float64)
    cand = cand.astype(np.float64)
    cosines = []
    for r, c in zip(ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)):
        nr, nc = np.linalg.norm(r), np.linalg.norm(c)
        cosines.append(1.0 if nr == nc == 0 else 0.0 if nr * nc == 0 else r @ c / (nr * nc))
    d = ref - cand
    return {"max_abs_error": np.abs(d).max(), "mean_abs_error": np.abs(d).mean(),
            "cosine": float(np.mean(cosines)), "min_cosine": float(np.min(cosines)),
            "sqnr_db": 10 * np.log10((ref ** 2).sum() / (d ** 2).sum())}


# ------------------------------------------------------------------------------ per-batch metrics


def test_compare_outputs_matches_numpy():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((9, 4, 5)).astype(np.float32)
    cand = ref + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)
    metrics = compare_outputs(ref, cand, name="feat")
    expected = numpy_metrics(ref, cand)
    assert metrics.name == "feat"
    for key, value in expected.items():
        assert getattr(metrics, key) == pytest.approx(value, rel=1e-12), key
    assert metrics.top1_agreement is None and metrics.top5_agreement is None  # rank 3


def test_sqnr_of_a_known_perturbation():
    ref = np.full((4, 8), 2.0, np.float32)
    metrics = compare_outputs(ref, ref * np.float32(1.1))  # noise = 0.1 * signal -> 20 dB
    assert metrics.sqnr_db == pytest.approx(20.0, abs=1e-5)
    assert metrics.cosine == pytest.approx(1.0) and metrics.min_cosine == pytest.approx(1.0)
    assert metrics.max_abs_error == pytest.approx(0.2, rel=1e-6)
    assert metrics.mean_abs_error == pytest.approx(0.2, rel=1e-6)


def test_cosine_special_cases():
    ref = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [3.0, 0.0]], np.float32)
    cand = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, -2.0], [0.0, 4.0]], np.float32)
    metrics = compare_outputs(ref, cand)
    # both zero -> 1; one zero -> 0; opposite -> -1; orthogonal -> 0
    assert metrics.cosine == pytest.approx((1 + 0 - 1 + 0) / 4)
    assert metrics.min_cosine == pytest.approx(-1.0)


def test_identical_outputs():
    ref = np.arange(12, dtype=np.float32).reshape(3, 4)
    metrics = compare_outputs(ref, ref.copy())
    assert metrics.cosine == 1.0 and metrics.min_cosine == 1.0
    assert metrics.sqnr_db == math.inf
    assert metrics.max_abs_error == 0.0 and metrics.top1_agreement == 1.0
    assert compare_outputs(np.zeros((2, 3)), np.ones((2, 3))).sqnr_db == -math.inf


@pytest.mark.parametrize("k", [0, 1, 3, 10])
def test_top1_agreement_when_k_samples_flip(k):
    n, c = 10, 6
    ref = np.tile(np.arange(c, dtype=np.float32), (n, 1))  # argmax = class 5 everywhere
    cand = ref.copy()
    cand[:k, 0] = 100.0  # k samples now predict class 0; class 5 is second -> still in top 5
    metrics = compare_outputs(ref, cand)
    assert metrics.top1_agreement == pytest.approx((n - k) / n)
    assert metrics.top5_agreement == 1.0


def test_top5_agreement_counts_samples_that_drop_out_of_the_top5():
    n, c = 8, 10
    ref = np.tile(np.arange(c, dtype=np.float32), (n, 1))  # float top-1 = class 9
    cand = ref.copy()
    cand[0, 9] = -1.0  # rank 10 of 10
    cand[1, 9] = 4.5   # classes 5..8 higher: rank 5 -> still within top 5
    cand[2, 9] = 3.5   # classes 4..8 higher: rank 6 -> out
    metrics = compare_outputs(ref, cand)
    assert metrics.top1_agreement == pytest.approx(5 / 8)
    assert metrics.top5_agreement == pytest.approx(6 / 8)


def test_topk_only_for_class_scores():
    assert is_class_scores(np.zeros((3, 2), np.float32))
    assert not is_class_scores(np.zeros((3, 1), np.float32))
    assert not is_class_scores(np.zeros((3, 4), np.int64))
    assert not is_class_scores(np.zeros((3, 4, 2), np.float32))
    four = compare_outputs(np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32))
    assert four.top1_agreement == 1.0 and four.top5_agreement is None  # C < 5
    ints = compare_outputs(np.arange(6).reshape(3, 2), np.arange(6).reshape(3, 2))
    assert ints.top1_agreement is None and ints.cosine == 1.0


def test_accumulator_is_batch_size_independent():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((50, 12)).astype(np.float32)
    cand = (ref + 0.1 * rng.standard_normal(ref.shape)).astype(np.float32)
    whole = compare_outputs(ref, cand)
    for batch in (1, 7):
        acc = OutputAccumulator("output")
        for i in range(0, len(ref), batch):
            acc.update(ref[i:i + batch], cand[i:i + batch])
        parts = acc.result()
        assert acc.samples == 50
        for key, value in vars(whole).items():
            if isinstance(value, float):
                assert getattr(parts, key) == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_compare_outputs_rejects_bad_input():
    with pytest.raises(ModelError, match="shape"):
        compare_outputs(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ModelError, match="non-numeric"):
        compare_outputs(np.array(["a", "b"]), np.array(["a", "b"]))
    with pytest.raises(DataError, match="no samples"):
        OutputAccumulator("y").result()


def test_accuracy_accumulator_label_forms():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    for labels in (np.array([0, 1, 1, 1]), np.array([[0], [1], [1], [1]]),
                   np.array([0.0, 1.0, 1.0, 1.0]), np.eye(2)[[0, 1, 1, 1]]):
        acc = AccuracyAccumulator()
        acc.update(scores, labels)
        assert acc.result() == pytest.approx(0.75)
    with pytest.raises(DataError, match="labels"):
        AccuracyAccumulator().update(scores, np.array([0, 1]))
    with pytest.raises(DataError, match="class indices"):
        AccuracyAccumulator().update(scores, np.array([0.5, 1, 1, 1]))
    assert AccuracyAccumulator().result() is None


# ------------------------------------------------------------------------------------- validate


def test_validate_matches_numpy(classifier):
    report = validate(classifier["float"], classifier["quant"], {"x": classifier["x"]},
                      batch_size=5, latency=False)
    assert report.samples == 23
    assert [o.name for o in report.outputs] == ["logits"]
    metrics = report.outputs[0]
    expected = numpy_metrics(classifier["ref"], classifier["cand"])
    for key, value in expected.items():  # ORT computes in float32: compare loosely
        assert getattr(metrics, key) == pytest.approx(value, rel=1e-4), key
    ref, cand = classifier["ref"], classifier["cand"]
    agree = np.mean(ref.argmax(1) == cand.argmax(1))
    assert metrics.top1_agreement == pytest.approx(agree)
    assert metrics.top5_agreement is not None
    assert report.latency is None and report.float_accuracy is None
    assert report.float_size_bytes == classifier["float"].ByteSize()
    assert report.size_ratio == pytest.approx(report.float_size_bytes / report.quant_size_bytes)


def test_identical_models_round_trip_infinite_sqnr(classifier):
    report = validate(classifier["float"], classifier["float"], {"x": classifier["x"]},
                      latency=False)
    out = report.outputs[0]
    assert out.cosine == 1.0 and out.min_cosine == 1.0
    assert out.sqnr_db == math.inf and out.max_abs_error == 0.0 and out.top1_agreement == 1.0
    text = report.to_json()
    assert json.loads(text)["outputs"][0]["sqnr_db"] == "inf"
    assert Report.from_json(text) == report
    assert "inf" in report.format()


def test_validate_is_batch_size_independent():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 6)).astype(np.float32)
    reports = [validate(elementwise_model(1.5, 0.25), elementwise_model(1.49, 0.26), {"x": x},
                        batch_size=b, latency=False) for b in (1, 7)]
    assert [o.name for o in reports[0].outputs] == ["y", "z"]
    assert reports[0].samples == reports[1].samples == 20
    for a, b in zip(reports[0].outputs, reports[1].outputs):
        for key, value in vars(a).items():
            if isinstance(value, float):
                assert getattr(b, key) == pytest.approx(value, rel=1e-9, abs=1e-12), key
    y, z = reports[0].outputs
    assert y.top1_agreement is not None and y.top5_agreement is not None  # [N, 6] float
    assert z.top1_agreement is None  # [N, 2, 3] is not class scores
    ref = x.astype(np.float64) * np.float32(1.5) + np.float32(0.25)
    cand = x.astype(np.float64) * np.float32(1.49) + np.float32(0.26)
    assert y.sqnr_db == pytest.approx(numpy_metrics(ref, cand)["sqnr_db"], rel=1e-4)


@pytest.mark.parametrize("how", ["dict", "dataset", "duck", "one-hot"])
def test_validate_with_labels_reports_accuracies(classifier, how):
    x, ref, cand = classifier["x"], classifier["ref"], classifier["cand"]
    labels = ref.argmax(1)
    labels[:6] = (labels[:6] + 1) % 10  # float model is right on 17 of 23
    if how == "dict":
        data = {"x": x, "labels": labels}
    elif how == "dataset":
        data = load_data({"x": x, "labels": labels}, classifier["float"], batch_size=4)
    elif how == "duck":
        data = _split({"x": x}, labels, 4)
    else:
        data = {"x": x, "labels": np.eye(10, dtype=np.float32)[labels]}
    report = validate(classifier["float"], classifier["quant"], data, batch_size=3, latency=False)
    assert report.samples == 23
    assert report.float_accuracy == pytest.approx(17 / 23)
    assert report.quant_accuracy == pytest.approx(np.mean(cand.argmax(1) == labels))
    assert report.notes == []
    assert f"{100 * 17 / 23:.2f}%" in report.format()


def test_limit_applies_to_raw_data_and_datasets(classifier):
    x = classifier["x"]
    for data in ({"x": x}, load_data({"x": x}, classifier["float"], batch_size=4)):
        report = validate(classifier["float"], classifier["quant"], data, limit=10, latency=False)
        assert report.samples == 10


def test_labels_without_class_scores_leave_a_note():
    model = elementwise_model(1.0, 0.0)
    del model.graph.output[0]  # keep only z: [N, 2, 3], not class scores
    data = _split({"x": np.ones((4, 6), np.float32)}, np.zeros(4, np.int64), 2)
    report = validate(model, model, data, latency=False)
    assert report.float_accuracy is None and report.quant_accuracy is None
    assert any("no output looks like class scores" in n for n in report.notes)


def test_mismatched_io_raises_model_error(classifier):
    rng = np.random.default_rng(4)
    w, b = rng.standard_normal((16, 10)), rng.standard_normal(10)
    other_out = gemm_model(w, b, output_name="scores")
    with pytest.raises(ModelError, match=r"outputs.*\['logits'\].*\['scores'\]"):
        validate(classifier["float"], other_out, {"x": classifier["x"]}, latency=False)
    other_in = gemm_model(w, b, input_name="pixels")
    with pytest.raises(ModelError, match=r"inputs.*\['x'\].*\['pixels'\]"):
        validate(classifier["float"], other_in, {"x": classifier["x"]}, latency=False)


def test_latency_and_sizes_from_paths(classifier, tmp_path):
    float_path, quant_path = tmp_path / "float.onnx", tmp_path / "quant.onnx"
    onnx.save_model(classifier["float"], float_path)
    onnx.save_model(classifier["quant"], quant_path)
    report = validate(str(float_path), quant_path, {"x": classifier["x"]}, batch_size=8,
                      latency_runs=3, threads=1, progress=True)
    lat = report.latency
    assert lat is not None
    assert lat.float_ms > 0 and lat.quant_ms > 0 and lat.speedup > 0
    assert lat.speedup == pytest.approx(lat.float_ms / lat.quant_ms)
    assert lat.batch_size == 8 and lat.threads == 1 and lat.runs == 3
    assert report.float_size_bytes == float_path.stat().st_size
    assert report.quant_size_bytes == quant_path.stat().st_size
    assert "latency" in report.format()


def test_validate_rejects_bad_arguments(classifier):
    with pytest.raises(ConfigError, match="latency_runs"):
        validate(classifier["float"], classifier["quant"], {"x": classifier["x"]}, latency_runs=0)
    with pytest.raises(DataError, match="no batch"):
        validate(classifier["float"], classifier["quant"], _ListDataset([]), latency=False)
