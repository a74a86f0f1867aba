"""Tests of onnxq.model (load / check / save / hash) and onnxq.summary (inspect)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq import model as model_mod
from onnxq.errors import ModelError
from onnxq.model import (ensure_opset, load_model, model_hash, model_size, opset_version,
                         save_model, summarize)

# ------------------------------------------------------------------------------------- models


def conv_matmul_model(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(4x3x3x3, pad 1) -> Relu -> Flatten -> MatMul(256x10) -> y[1,10]."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B")
    dense = numpy_helper.from_array(rng.standard_normal((256, 10)).astype(np.float32), "M")
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "M"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes, "conv_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [weight, bias, dense])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="onnxq-tests", producer_version="1")
    model.ir_version = 8
    return model


def opset11_conv_model() -> onnx.ModelProto:
    """Conv -> Relu -> Unsqueeze(axes attribute, which became an input in opset 13)."""
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Unsqueeze", ["r"], ["y"], name="unsqueeze", axes=[0]),
    ]
    graph = helper.make_graph(
        nodes, "opset11",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 3, 3])],
        [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    return model


def qdq_model() -> onnx.ModelProto:
    """Q/DQ around a Conv (int8 weight through DequantizeLinear), then a float MatMul."""
    rng = np.random.default_rng(2)
    w_q = numpy_helper.from_array(rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "W_q")
    dense = numpy_helper.from_array(rng.standard_normal((256, 10)).astype(np.float32), "M")
    inits = [
        w_q, dense,
        numpy_helper.from_array(np.full(4, 0.02, np.float32), "W_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "W_zp"),
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["W_q", "W_scale", "W_zp"], ["W_dq"], name="dq_w",
                         axis=0),
        helper.make_node("Conv", ["x_dq", "W_dq"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "M"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes, "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def save_external(model: onnx.ModelProto, path: Path, location: str = "weights.bin") -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, os.fspath(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)


def rewrite_locations(path: Path, location: str) -> None:
    """Point every external-data reference of the model file at ``location``."""
    header = onnx.load_model(os.fspath(path), load_external_data=False)
    for tensor in header.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(header.SerializeToString())


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# --------------------------------------------------------------------------------------- load


def test_load_from_path_and_proto_without_mutation(tmp_path: Path) -> None:
    original = conv_matmul_model()
    path = tmp_path / "m.onnx"
    onnx.save_model(original, os.fspath(path))

    from_path = load_model(path)
    assert from_path.SerializeToString() == original.SerializeToString()
    assert load_model(os.fspath(path)).graph.name == "conv_matmul"

    before = original.SerializeToString()
    copy = load_model(original)
    assert copy is not original
    assert copy.SerializeToString() == before
    copy.graph.node[0].name = "changed"
    copy.graph.initializer[0].raw_data = b"\0" * 4 * 108
    assert original.SerializeToString() == before


def test_load_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"cannot read model '.*nope\.onnx': no such file"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="not a file"):
        load_model(tmp_path)


@pytest.mark.parametrize("content, reason", [
    (b"\xff\xfe this is not a protobuf \x00\x01\x02" * 10, "not an ONNX file ("),
    (b"", "not an ONNX file (empty file)"),
])
def test_load_garbage_is_one_line_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"cannot read model '{path}': ")
    assert reason in message
    assert "\n" not in message


def test_load_checker_failure_and_check_false(tmp_path: Path) -> None:
    model = conv_matmul_model()
    model.graph.node[1].input[0] = "missing_tensor"  # Relu reads a tensor nobody produces
    path = tmp_path / "bad.onnx"
    onnx.save_model(model, os.fspath(path))
    expected = r"model '.*bad\.onnx' is not valid ONNX: .*missing_tensor"
    with pytest.raises(ModelError, match=expected) as info:
        load_model(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="the in-memory model is not valid ONNX"):
        load_model(model)
    assert load_model(path, check=False).graph.node[1].input[0] == "missing_tensor"


def test_load_rejects_other_types() -> None:
    with pytest.raises(ModelError, match="expected a path or an onnx.ModelProto, got int"):
        load_model(42)  # type: ignore[arg-type]


def test_load_proto_with_unloaded_external_data(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    save_external(conv_matmul_model(), path)
    header = onnx.load_model(os.fspath(path), load_external_data=False)
    with pytest.raises(ModelError, match="refers to external data that is not loaded"):
        load_model(header)


# ------------------------------------------------------------------------------ external data


def test_external_data_round_trip(tmp_path: Path) -> None:
    original = conv_matmul_model()
    path = tmp_path / "m.onnx"
    save_external(original, path)
    assert (tmp_path / "weights.bin").stat().st_size > 10_000 // 2

    loaded = load_model(path)
    assert all(t.data_location == TensorProto.DEFAULT and not t.external_data
               for t in loaded.graph.initializer)
    for name, array in initializers(original).items():
        np.testing.assert_array_equal(initializers(loaded)[name], array)
    assert model_hash(loaded) == model_hash(original)
    assert model_size(path) == path.stat().st_size + (tmp_path / "weights.bin").stat().st_size


def test_external_data_in_subfolder_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    (tmp_path / "data").mkdir()
    save_external(conv_matmul_model(), path, location="data/w.bin")
    np.testing.assert_array_equal(initializers(load_model(path))["M"],
                                  initializers(conv_matmul_model())["M"])


@pytest.mark.parametrize("location, message", [
    ("../evil.bin", "points outside the model's folder: '../evil.bin' (refused)"),
    ("sub/../../evil.bin", "points outside the model's folder"),
    ("..\\evil.bin", "points outside the model's folder"),
    ("ABSOLUTE", "has an absolute location"),
    ("C:\\evil.bin", "has an absolute location"),
])
def test_external_data_escaping_the_folder_is_refused(tmp_path: Path, location: str,
                                                      message: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "sub").mkdir()
    path = folder / "m.onnx"
    save_external(conv_matmul_model(), path)
    evil = tmp_path / "evil.bin"  # exists, readable, and must never be read
    evil.write_bytes((folder / "weights.bin").read_bytes())
    rewrite_locations(path, os.fspath(evil) if location == "ABSOLUTE" else location)
    with pytest.raises(ModelError, match="external data of tensor") as info:
        load_model(path, check=False)
    assert message in str(info.value)


def test_external_data_symlink_outside_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    save_external(conv_matmul_model(), path)
    outside = tmp_path / "outside.bin"
    os.replace(folder / "weights.bin", outside)
    (folder / "weights.bin").symlink_to(outside)
    with pytest.raises(ModelError, match="points outside the model's folder: 'weights.bin'"):
        load_model(path)


def test_external_data_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    save_external(conv_matmul_model(), path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError, match="file 'weights.bin' not found next to the model"):
        load_model(path)


def test_external_data_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    save_external(conv_matmul_model(), path)
    data = tmp_path / "weights.bin"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelError, match="exceeds the size of 'weights.bin'"):
        load_model(path)


# -------------------------------------------------------------------------------------- opset


def test_ensure_opset_upgrades_and_still_runs() -> None:
    model = opset11_conv_model()
    before = model.SerializeToString()
    upgraded = ensure_opset(model, 13)
    assert opset_version(model) == 11 and model.SerializeToString() == before
    assert opset_version(upgraded) == 13
    load_model(upgraded)  # passes the checker
    x = np.random.default_rng(3).standard_normal((1, 1, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(upgraded, x), run(model, x), rtol=1e-6, atol=1e-6)


def test_ensure_opset_keeps_newer_models() -> None:
    model = conv_matmul_model(opset=17)
    assert ensure_opset(model) is model
    assert ensure_opset(model, 17) is model


def test_ensure_opset_failure_names_the_opset(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
        raise RuntimeError("no adapter for Foo\nmore detail")

    monkeypatch.setattr(onnx.version_converter, "convert_version", fail)
    with pytest.raises(ModelError, match=r"from opset 11 to opset 13: no adapter for Foo more"):
        ensure_opset(opset11_conv_model())


def test_opset_version_domains() -> None:
    model = conv_matmul_model()
    model.opset_import[0].domain = "ai.onnx"
    assert opset_version(model) == 13
    del model.opset_import[:]
    with pytest.raises(ModelError, match="no opset for the default ONNX domain"):
        opset_version(model)


# --------------------------------------------------------------------------------------- save


def test_save_and_reload(tmp_path: Path) -> None:
    model = conv_matmul_model()
    before = model.SerializeToString()
    result = save_model(model, tmp_path / "out.onnx")
    assert result == tmp_path / "out.onnx"
    assert model.SerializeToString() == before
    assert load_model(result).SerializeToString() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    assert model_size(result) == result.stat().st_size == model_size(model)


def _failing_save(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make onnx.save_model write half a file and then fail; return the paths it was given."""
    seen: list[str] = []

    def half_write(proto: onnx.ModelProto, f: str, *args: object, **kwargs: object) -> None:
        seen.append(f)
        with open(f, "wb") as handle:
            handle.write(proto.SerializeToString()[:50])
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", half_write)
    return seen


def test_save_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _failing_save(monkeypatch)
    with pytest.raises(ModelError, match=r"cannot save model to '.*out\.onnx': disk full"):
        save_model(conv_matmul_model(), tmp_path / "out.onnx")
    assert seen and Path(seen[0]).parent == tmp_path  # the temp file was in the target folder
    assert list(tmp_path.iterdir()) == []


def test_save_failure_keeps_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.onnx"
    save_model(conv_matmul_model(seed=0), target)
    old = target.read_bytes()
    _failing_save(monkeypatch)
    with pytest.raises(ModelError, match="disk full"):
        save_model(conv_matmul_model(seed=1), target)
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_save_refuses_to_overwrite_input(tmp_path: Path) -> None:
    source = tmp_path / "in.onnx"
    onnx.save_model(conv_matmul_model(), os.fspath(source))
    old = source.read_bytes()
    with pytest.raises(ModelError, match="refusing to overwrite the input model .*in.onnx"):
        save_model(conv_matmul_model(seed=1), source, protect=[source])
    (tmp_path / "sub").mkdir()
    with pytest.raises(ModelError, match="refusing to overwrite the input model"):
        save_model(conv_matmul_model(seed=1), tmp_path / "sub" / ".." / "in.onnx",
                   protect=[os.fspath(source)])
    (tmp_path / "link.onnx").symlink_to(source)
    with pytest.raises(ModelError, match="refusing to overwrite the input model"):
        save_model(conv_matmul_model(seed=1), tmp_path / "link.onnx", protect=[source])
    assert source.read_bytes() == old
    save_model(conv_matmul_model(seed=1), tmp_path / "out.onnx", protect=[source])


def test_save_bad_destinations(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"folder '.*missing' does not exist"):
        save_model(conv_matmul_model(), tmp_path / "missing" / "out.onnx")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(ModelError, match="it is a directory"):
        save_model(conv_matmul_model(), tmp_path / "dir.onnx")
    assert not (tmp_path / "missing").exists()


def test_save_large_model_uses_one_side_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_mod, "LARGE_MODEL_BYTES", 4096)
    model = conv_matmul_model()
    assert model.ByteSize() > 4096
    before = model.SerializeToString()
    target = save_model(model, tmp_path / "big.onnx")
    assert model.SerializeToString() == before  # the caller's model keeps its data
    data = tmp_path / "big.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert target.stat().st_size < 4096

    header = onnx.load_model(os.fspath(target), load_external_data=False)
    dense = next(t for t in header.graph.initializer if t.name == "M")
    assert {e.key: e.value for e in dense.external_data}["location"] == "big.onnx.data"

    reloaded = load_model(target)  # checked by path: the threshold is still low
    assert reloaded.SerializeToString() == before
    assert model_size(target) == target.stat().st_size + data.stat().st_size
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(os.fspath(target), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], run(model, x), rtol=1e-6)

    # an in-memory model above the threshold is checked through a temporary folder
    assert load_model(model).SerializeToString() == before


def test_save_large_model_failure_leaves_nothing(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_mod, "LARGE_MODEL_BYTES", 4096)
    _failing_save(monkeypatch)
    with pytest.raises(ModelError, match="disk full"):
        save_model(conv_matmul_model(), tmp_path / "big.onnx")
    assert list(tmp_path.iterdir()) == []


def test_save_large_refuses_protected_side_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_mod, "LARGE_MODEL_BYTES", 4096)
    data = tmp_path / "out.onnx.data"
    data.write_bytes(b"input weights")
    with pytest.raises(ModelError, match="external data file 'out.onnx.data'"):
        save_model(conv_matmul_model(), tmp_path / "out.onnx", protect=[data])
    assert data.read_bytes() == b"input weights"


# ---------------------------------------------------------------------------------- hash, size


def test_model_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = model_hash(conv_matmul_model())
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert model_hash(conv_matmul_model()) == digest
    assert model_hash(conv_matmul_model(seed=1)) != digest

    monkeypatch.setattr(model_mod, "_HASH_CHUNK_BYTES", 256)  # field-by-field path
    chunked = model_hash(conv_matmul_model())
    assert chunked == model_hash(conv_matmul_model())
    assert chunked != model_hash(conv_matmul_model(seed=1))


def test_model_size_of_proto() -> None:
    model = conv_matmul_model()
    assert model_size(model) == len(model.SerializeToString())


# ------------------------------------------------------------------------------------ summary


def test_summarize_float_model() -> None:
    summary = summarize(conv_matmul_model())
    assert [(i.name, i.dtype, i.shape) for i in summary.inputs] == [("x", "float32",
                                                                     ["N", 3, 8, 8])]
    assert [(o.name, o.shape) for o in summary.outputs] == [("y", ["N", 10])]
    assert summary.opset == 13 and summary.ir_version == 8
    assert summary.producer == "onnxq-tests 1"
    assert summary.op_counts == {"Conv": 1, "Flatten": 1, "MatMul": 1, "Relu": 1}
    assert summary.num_parameters == 4 * 27 + 4 + 2560
    assert summary.size_bytes == conv_matmul_model().ByteSize()
    assert summary.quantized_ops == 0
    assert summary.quantized_compute_share == 0.0
    assert summary.estimated_macs == 4 * 8 * 8 * 27 + 256 * 10

    data = summary.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert list(data["op_counts"]) == ["Conv", "Flatten", "MatMul", "Relu"]
    text = summary.format()
    assert "x" in text and "[N, 3, 8, 8]" in text and "Conv" in text and "0.0%" in text


def test_summarize_op_counts_sorted_by_count() -> None:
    model = conv_matmul_model()
    model.graph.node.append(helper.make_node("Relu", ["y"], ["y2"], name="relu2"))
    model.graph.output[0].name = "y2"
    assert list(summarize(model).op_counts.items())[0] == ("Relu", 2)


def test_summarize_qdq_model() -> None:
    model = qdq_model()
    load_model(model)  # a valid model
    summary = summarize(model)
    assert summary.op_counts["DequantizeLinear"] == 2
    # Conv (fed by DequantizeLinear) counts; Q/DQ themselves and the float MatMul do not
    assert summary.quantized_ops == 1
    conv_macs, matmul_macs = 4 * 8 * 8 * 27, 256 * 10
    assert summary.quantized_compute_share == pytest.approx(conv_macs / (conv_macs + matmul_macs))
    assert 0 < summary.quantized_compute_share < 1
    assert "quantized:   1 nodes" in summary.format()


def test_summarize_integer_ops() -> None:
    """Dynamic quantization style: DynamicQuantizeLinear + MatMulInteger count as quantized."""
    b_q = numpy_helper.from_array(np.ones((16, 4), np.int8), "B_q")
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_s", "x_zp"]),
        helper.make_node("MatMulInteger", ["x_q", "B_q"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 4])], [b_q])
    summary = summarize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert summary.quantized_ops == 2
    assert summary.estimated_macs == 2 * 4 * 16
    assert summary.quantized_compute_share == 1.0
    assert summary.outputs[0].dtype == "int32"
