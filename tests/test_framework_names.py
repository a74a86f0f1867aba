"""Layer names the user can trace (issue 12 item 4): each ONNX node's framework name (torch module
path, Keras layer) beside its ONNX name in analyze, reports and HTML; ``--exclude`` /
``--keep-float`` / ``force_quantize`` accept either name; size ratios leave exporter metadata out."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import helper

from builders import cnn_data, fed_by_dequantize, tiny_cnn
from onnxq import QuantConfig, quantize
from onnxq.model import model_size
from onnxq.names import FRAMEWORK_NAME_KEY, display_name, framework_name, framework_names
from onnxq.plan import node_matches, user_choice
from onnxq.report import Report

RNG = np.random.default_rng(0)


def _node(name: str, **meta: str) -> onnx.NodeProto:
    node = helper.make_node("Relu", ["a"], ["b"], name=name)
    for key, value in meta.items():
        entry = node.metadata_props.add()
        entry.key, entry.value = key, value
    return node


# --------------------------------------------------------------------------- deriving names


@pytest.mark.parametrize("node, expected", [
    (_node("node_conv2d_1", **{"pkg.torch.onnx.name_scopes": "['', 'layer2', 'layer2.conv1', 'conv2d_1']",
                               "pkg.torch.onnx.class_hierarchy": "['M', 'B', 'torch.nn.modules.conv.Conv2d', "
                                                                 "'aten.conv2d.default']"}), "layer2.conv1"),
    (_node("node_add", **{"pkg.torch.onnx.name_scopes": "['', 'layer2', 'add']",
                          "pkg.torch.onnx.class_hierarchy": "['__main__.M', '__main__.Block', 'aten.add.Tensor']"}),
     "layer2/add"),
    (_node("node_mean", **{"pkg.torch.onnx.name_scopes": "['', 'mean']"}), "mean"),
    (_node("/layer1/conv2/Conv"), "layer1.conv2"),                      # TorchScript exporter
    (_node("cnn_1/stem_conv_1/convolution"), "stem_conv_1"),            # tf2onnx, no adapter metadata
    (_node("cnn_1/stem_bn_1/mul", **{FRAMEWORK_NAME_KEY: "stem_conv"}), "stem_conv"),  # adapter metadata first
    (_node("conv1"), None),
    (_node("x", **{"pkg.torch.onnx.name_scopes": "not a list"}), None),
])
def test_framework_name_from_metadata_then_patterns(node, expected):
    assert framework_name(node) == expected


def test_display_and_selection_accept_either_name():
    node = _node("node_conv2d_1", **{FRAMEWORK_NAME_KEY: "layer2.conv1"})
    assert display_name("node_conv2d_1", {"node_conv2d_1": "layer2.conv1"}) == "node_conv2d_1 (layer2.conv1)"
    assert display_name("other", {}) == "other"
    for patterns in (["node_conv2d_1"], ["layer2.conv1"], ["layer2.*"], ["node_conv*"]):
        assert node_matches(node, patterns)
        assert user_choice(node, QuantConfig(keep_float=tuple(patterns))) == "pinned to float by the user (keep_float)"
        assert user_choice(node, QuantConfig(exclude_nodes=tuple(patterns))) == "excluded by the user"
    assert not node_matches(node, ["layer3*"]) and user_choice(node, QuantConfig(keep_float=("layer3*",))) is None


# --------------------------------------------------------------------------- size ratio


def _with_debug_info(model: onnx.ModelProto, size: int = 3000) -> onnx.ModelProto:
    """``model`` with torch-exporter-like stack traces in every node's metadata and doc string."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        entry = node.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.stack_trace", f"File model.py, in forward {node.name}\n" * (size // 40)
        node.doc_string = "doc " * 20
    return copy


def test_debug_info_is_left_out_of_compared_sizes(tmp_path):
    plain = tiny_cnn()
    heavy = _with_debug_info(plain)
    assert model_size(heavy) > model_size(plain) + 8 * 2000
    assert model_size(heavy, debug_info=False) == model_size(plain) == plain.ByteSize()
    onnx.save(heavy, tmp_path / "heavy.onnx")
    assert model_size(tmp_path / "heavy.onnx", debug_info=False) == model_size(plain)


def test_size_ratio_is_the_same_with_or_without_exporter_metadata():
    data = cnn_data(32)
    plain = quantize(tiny_cnn(), data, latency=False).report
    heavy = quantize(_with_debug_info(tiny_cnn()), data, latency=False).report
    assert heavy.float_size_bytes == plain.float_size_bytes
    assert heavy.quant_size_bytes == plain.quant_size_bytes
    assert heavy.size_ratio == pytest.approx(plain.size_ratio, rel=1e-12)


# --------------------------------------------------------------------------- report schema


def test_report_framework_names_are_optional_and_round_trip():
    report = Report(outputs=[], samples=0, float_size_bytes=10, quant_size_bytes=5, size_ratio=2.0,
                    float_nodes=["node_conv2d_1"], framework_names={"node_conv2d_1": "layer2.conv1"})
    data = report.to_dict()
    assert Report.from_dict(json.loads(json.dumps(data))).framework_names == {"node_conv2d_1": "layer2.conv1"}
    assert "float nodes (1): node_conv2d_1 (layer2.conv1)" in report.format()
    del data["framework_names"]  # a report written before the field existed
    assert Report.from_dict(data).framework_names == {}


# --------------------------------------------------------------------------- torch end to end


@pytest.fixture(scope="module")
def torch_model():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxq_torch", reason="install the adapter: pip install -e adapters/torch")

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.relu = torch.nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv1(x)) + x

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.layer2 = Block()
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.layer2(self.stem(x)).mean((2, 3)))

    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def torch_onnx(torch_model):
    """The dynamo export of the torch model (module paths in node metadata) and data for it."""
    import torch

    from onnxq.api import resolve_model

    x = RNG.standard_normal((16, 3, 12, 12)).astype(np.float32)
    model, _ = resolve_model(torch_model, example_inputs=torch.from_numpy(x[:2]))
    return model, {"x": x}


def test_torch_export_carries_module_paths(torch_onnx):
    model, _ = torch_onnx
    names = framework_names(model)
    assert {"stem", "layer2.conv1", "fc"} <= set(names.values())


def test_keep_float_by_module_path_and_names_in_the_report(torch_onnx, tmp_path, run_cli):
    model, data = torch_onnx
    result = quantize(model, data, config=QuantConfig(keep_float=("layer2.conv1",)), latency=False)
    (kept,) = [d for d in result.plan.decisions if d.reason.startswith("pinned to float")]
    assert kept.op_type == "Conv"
    assert result.report.framework_names[kept.name] == "layer2.conv1"
    assert f"{kept.name} (layer2.conv1)" in result.report.format()
    loaded = Report.from_dict(json.loads(result.report.to_json()))
    assert loaded.framework_names[kept.name] == "layer2.conv1"
    pytest.importorskip("matplotlib")
    from onnxq.report.html import write_html

    page = write_html(result.report, tmp_path / "r.html").read_text()
    assert f"{kept.name} (layer2.conv1)" in page

    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **data)
    code, out, err = run_cli("quantize", tmp_path / "m.onnx", "-o", tmp_path / "q.onnx", "--calib",
                             tmp_path / "calib.npz", "--no-latency", "--exclude", "stem", "fc")
    assert code == 0, err
    quantized = onnx.load(tmp_path / "q.onnx")
    by_layer = {v: k for k, v in framework_names(model).items()}
    assert not fed_by_dequantize(quantized, by_layer["stem"], 1)  # float weights: excluded
    assert not fed_by_dequantize(quantized, by_layer["fc"], 1)
    assert fed_by_dequantize(quantized, by_layer["layer2.conv1"], 1)  # quantized


def test_analyze_shows_the_module_path(torch_onnx, run_cli, tmp_path):
    from onnxq.analyze import analyze, format_layers

    model, data = torch_onnx
    quantized = quantize(model, data, latency=False).model
    layers = analyze(model, quantized, data)
    by_node = {m.node: m.framework_name for m in layers if m.node}
    assert "layer2.conv1" in by_node.values() and "stem" in by_node.values()
    table = format_layers(layers).splitlines()
    assert table[0].replace("|", " ").split()[:2] == ["tensor", "layer"]
    onnx.save(model, tmp_path / "m.onnx")
    onnx.save(quantized, tmp_path / "q.onnx")
    np.savez(tmp_path / "d.npz", **data)
    code, out, err = run_cli("analyze", tmp_path / "m.onnx", tmp_path / "q.onnx", "--data", tmp_path / "d.npz",
                             "--json")
    assert code == 0, err
    assert "layer2.conv1" in {entry.get("framework_name") for entry in json.loads(out)}


def test_size_ratio_api_and_pt2_agree(torch_model, torch_onnx, tmp_path):
    """The same model through the Python API and through a .pt2 file: one size ratio."""
    import torch

    _, data = torch_onnx
    program = torch.export.export(torch_model, (torch.from_numpy(data["x"][:2]),))
    torch.export.save(program, tmp_path / "m.pt2")
    from_api = quantize(torch_model, data, latency=False, example_inputs=torch.from_numpy(data["x"][:2]))
    from_file = quantize(tmp_path / "m.pt2", data, latency=False)
    assert from_file.report.size_ratio == pytest.approx(from_api.report.size_ratio, rel=0.01)


# --------------------------------------------------------------------------- Keras


@pytest.fixture(scope="module")
def keras_onnx():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    pytest.importorskip("tensorflow", reason="needs tensorflow-cpu")
    pytest.importorskip("tf2onnx", reason="needs tf2onnx")
    pytest.importorskip("onnxq_keras", reason="install the adapter: pip install -e adapters/keras")
    import keras

    from onnxq.api import resolve_model

    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(image)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="act")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.Sequential([keras.layers.Dense(6, name="hidden")], name="head")
    logits = keras.layers.Dense(10, name="logits")(head(x))
    model, _ = resolve_model(keras.Model(image, logits, name="cnn"))
    return model


def test_keras_layer_names(keras_onnx):
    by_op = {}
    for name, layer in framework_names(keras_onnx).items():
        op = next(n.op_type for n in keras_onnx.graph.node if n.name == name)
        by_op.setdefault(op, set()).add(layer)
    assert by_op["Conv"] == {"stem_conv"}  # the folded BatchNorm does not rename the Conv
    assert by_op["MatMul"] == {"head/hidden", "logits"}
    assert by_op["Relu"] == {"act"}


def test_keras_exclude_by_layer_name(keras_onnx):
    x = RNG.random((16, 8, 8, 1), dtype=np.float32)
    result = quantize(keras_onnx, {"image": x}, config=QuantConfig(exclude_nodes=("logits",)), latency=False)
    excluded = [d for d in result.plan.decisions if d.reason == "excluded by the user"]
    assert [d.op_type for d in excluded] == ["MatMul"]
    assert result.report.framework_names.get(excluded[0].name) == "logits"
