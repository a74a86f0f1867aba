"""End-to-end tests of the PyTorch adapter (onnxq-torch): export, feeds, files, CLI, QAT, example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch adapter tests need torch (pip install onnxq-torch)")
pytest.importorskip("onnxq_torch", reason="the torch adapter is not installed (pip install -e adapters/torch)")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import onnxq  # noqa: E402
from onnxq import AdapterError, QuantConfig  # noqa: E402
from onnxq.runtime import create_session  # noqa: E402
from onnxq_torch import TorchAdapter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- tiny models


class Cnn(nn.Module):
    """conv + batch-norm + pooling + dense: image [N,1,8,8] -> logits [N,10]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(image))), 2)
        return self.fc(x.flatten(1))


class TextLstm(nn.Module):
    """embedding + LSTM: tokens int64 [N,S] -> logits [N,4]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 24, batch_first=True)
        self.head = nn.Linear(24, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed(tokens))
        return self.head(hidden.mean(dim=1))


class TwoInputs(nn.Module):
    """image [N,1,8,8] + meta [N,3] -> scores [N,5]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.meta = nn.Linear(3, 8)
        self.fc = nn.Linear(4 * 8 * 8 + 8, 5)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(image)).flatten(1)
        return self.fc(torch.cat([x, torch.relu(self.meta(meta))], dim=1))


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _trained_bn(model: nn.Module, batches: int = 3) -> nn.Module:
    """Give batch-norm real running statistics (a few forward passes in train mode)."""
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand(16, 1, 8, 8))
    return model.eval()


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return _trained_bn(Cnn())


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def _ort(model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return create_session(model).run(None, feeds)[0]


# --------------------------------------------------------------------------- export + quantize


def test_cnn_export_and_quantize_static_and_dynamic(cnn, images):
    loader = DataLoader(TensorDataset(images), batch_size=8)
    expected = cnn(images).detach().numpy()
    static = onnxq.quantize(cnn, calibration=loader, example_inputs=images[:2], latency=False)
    assert any("torch.onnx dynamo" in n for n in static.report.notes)
    assert static.report.samples == 48
    ops = {n.op_type for n in static.model.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    got = _ort(static.model, {"image": images.numpy()})
    assert _cosine(got, expected) > 0.99
    assert static.report.outputs[0].cosine > 0.99

    dynamic = onnxq.quantize(cnn, example_inputs=images[:2], config=QuantConfig(mode="dynamic"),
                             evaluation=loader, latency=False)
    assert _cosine(_ort(dynamic.model, {"image": images.numpy()}), expected) > 0.99
    assert cnn.training is False


def test_export_restores_training_mode_and_fills_the_result(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = Cnn().train()
    result = TorchAdapter().export(model, example_inputs=torch.rand(2, 1, 8, 8))
    assert list(tmp_path.iterdir()) == []  # exported in a private temporary folder
    assert model.training and model.bn.training
    assert result.exporter == "torch.onnx dynamo"
    assert result.opset == {o.domain: o.version for o in result.model.opset_import}[""]
    assert result.max_abs_error is not None and result.max_abs_error < 1e-4
    assert [i.name for i in result.model.graph.input] == ["image"]


def test_text_lstm_export_and_quantize():
    torch.manual_seed(0)
    model = TextLstm().eval()
    tokens = torch.randint(0, 50, (16, 6), generator=torch.Generator().manual_seed(3))
    expected = model(tokens).detach().numpy()
    loader = DataLoader(TensorDataset(tokens), batch_size=8)
    static = onnxq.quantize(model, calibration=loader, example_inputs=tokens[:2], latency=False)
    assert _cosine(_ort(static.model, {"tokens": tokens.numpy()}), expected) > 0.95
    dynamic = onnxq.quantize(model, example_inputs=tokens[:2], config=QuantConfig(mode="dynamic"),
                             evaluation=loader, latency=False)
    assert _cosine(_ort(dynamic.model, {"tokens": tokens.numpy()}), expected) > 0.98


def test_dict_inputs_static_and_dynamic():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    data = {"image": torch.rand(24, 1, 8, 8), "meta": torch.rand(24, 3)}
    expected = model(**data).detach().numpy()
    example = {k: v[:2] for k, v in data.items()}
    batches = [{k: v[i:i + 8] for k, v in data.items()} for i in range(0, 24, 8)]
    static = onnxq.quantize(model, calibration=batches, example_inputs=example, latency=False)
    assert [i.name for i in static.model.graph.input] == ["image", "meta"]
    feeds = {k: v.numpy() for k, v in data.items()}
    assert _cosine(_ort(static.model, feeds), expected) > 0.99
    dynamic = onnxq.quantize(model, config=QuantConfig(mode="dynamic"), evaluation=data,
                             example_inputs=example, latency=False)
    assert _cosine(_ort(dynamic.model, feeds), expected) > 0.99


def test_dynamic_batch_at_run_time_and_example_inputs_from_data():
    torch.manual_seed(0)
    model = Mlp().eval()
    x = torch.randn(20, 6)
    result = TorchAdapter().export(model, data=DataLoader(TensorDataset(x, torch.zeros(20)), batch_size=2))
    assert any("first batch" in n for n in result.notes)
    got = _ort(result.model, {"x": x[:5].numpy()})  # exported with batch 2, run with 5
    np.testing.assert_allclose(got, model(x[:5]).detach().numpy(), rtol=1e-4, atol=1e-5)
    batch = result.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param  # symbolic


def test_batch_of_one_still_exports_a_dynamic_batch():
    model = Mlp().eval()
    result = TorchAdapter().export(model, example_inputs=torch.randn(1, 6))
    assert _ort(result.model, {"x": np.ones((3, 6), np.float32)}).shape == (3, 3)


def test_names_dynamic_axes_and_opset_options():
    torch.manual_seed(0)
    model = TextLstm().eval()
    result = TorchAdapter().export(model, example_inputs=torch.randint(0, 50, (2, 5)), input_names=["ids"],
                                   output_names=["logits"], dynamic_axes={"ids": {1: "seq"}}, opset=18)
    assert result.opset == 18
    assert [o.name for o in result.model.graph.output] == ["logits"]
    assert _ort(result.model, {"ids": np.ones((3, 9), np.int64)}).shape == (3, 4)
    with pytest.raises(AdapterError, match="unknown torch export option.*'opset_version'"):
        TorchAdapter().export(model, example_inputs=torch.randint(0, 50, (2, 5)), opset_version=17)


def test_old_opset_is_refused_clearly_by_dynamo_and_met_by_torchscript():
    model = Mlp().eval()
    with pytest.raises(AdapterError, match=r"opset 12 was requested but torch.onnx dynamo wrote opset 18"):
        TorchAdapter().export(model, example_inputs=torch.randn(2, 6), opset=12, exporter="dynamo")
    result = TorchAdapter().export(model, example_inputs=torch.randn(2, 6), opset=13, exporter="torchscript")
    assert result.opset == 13 and result.exporter == "torch.onnx TorchScript"


def test_fallback_to_torchscript_when_torch_export_cannot_trace():
    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent Python control flow: torch.export refuses it
                return x * 2
            return x - 1

    result = TorchAdapter().export(Branchy(), example_inputs=torch.ones(2, 3))
    assert result.exporter == "torch.onnx TorchScript"
    assert any("fell back to the TorchScript exporter" in n for n in result.notes)


# --------------------------------------------------------------------------- data


def test_dataloader_with_labels_gives_accuracy(cnn, images):
    labels = torch.from_numpy(np.argmax(cnn(images).detach().numpy(), 1))
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    result = onnxq.quantize(cnn, calibration=loader, latency=False)  # example inputs from the loader
    assert result.report.float_accuracy == pytest.approx(1.0)
    assert result.report.quant_accuracy is not None and result.report.quant_accuracy > 0.8


def test_to_feeds_sources():
    adapter = TorchAdapter()
    x, y = torch.rand(10, 3), torch.arange(10)
    dataset = TensorDataset(x, y)
    assert adapter.owns_data(dataset) and adapter.owns_data(x) and adapter.owns_data([x[:5], x[5:]])
    assert not adapter.owns_data([{"x": np.zeros(2)}])
    feeds = adapter.to_feeds(dataset, ["x"])
    first = list(feeds)  # re-iterable: a Dataset is batched lazily, twice
    assert len(first) == len(list(feeds)) == 2
    np.testing.assert_array_equal(first[0]["x"], x[:8].numpy())
    np.testing.assert_array_equal(first[1]["labels"], y[8:].numpy())
    whole = adapter.to_feeds(x, ["x"])
    assert isinstance(whole["x"], np.ndarray)
    doubled = list(adapter.to_feeds([x[:4], x[4:]], ["x"], transform=lambda b: b * 2))
    np.testing.assert_allclose(doubled[1]["x"], x[4:].numpy() * 2)
    stream = adapter.to_feeds(iter([(x[:5], y[:5])]), ["x"])
    assert next(stream)["labels"].tolist() == [0, 1, 2, 3, 4]
    two = list(adapter.to_feeds([(x, x, y)], ["a", "b"]))[0]
    assert sorted(two) == ["a", "b", "labels"]


# --------------------------------------------------------------------------- files and CLI


@pytest.fixture(scope="module")
def files(tmp_path_factory, cnn, images):
    folder = tmp_path_factory.mktemp("torch_files")
    example = images[:4]
    program = torch.export.export(cnn, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, folder / "cnn.pt2")
    torch.jit.trace(cnn, (example,)).save(str(folder / "cnn_ts.pt"))
    torch.save(cnn, folder / "cnn_pickled.pt")
    np.savez(folder / "calib.npz", image=images.numpy())
    (folder / "corrupt.pt2").write_bytes(b"this is not a zip archive" * 4)
    return folder


def test_pt2_and_torchscript_files_through_quantize(files, cnn, images):
    expected = cnn(images).detach().numpy()
    for name in ("cnn.pt2", "cnn_ts.pt"):
        result = onnxq.quantize(files / name, files / "calib.npz", latency=False)
        assert _cosine(_ort(result.model, {"image": images.numpy()}), expected) > 0.99, name
    assert any("TorchScript" in n for n in result.report.notes)


def test_cli_export_and_quantize_framework_files(files, tmp_path, run_cli, cnn, images):
    out = tmp_path / "cnn.onnx"
    code, stdout, _ = run_cli("export", files / "cnn.pt2", "-o", out, "--data", files / "calib.npz")
    assert code == 0 and out.exists() and "torch.onnx dynamo" in stdout
    np.testing.assert_allclose(_ort(str(out), {"image": images[:5].numpy()}), cnn(images[:5]).detach().numpy(),
                               rtol=1e-4, atol=1e-4)
    code, stdout, _ = run_cli("export", files / "cnn_ts.pt", "-o", tmp_path / "ts.onnx", "--data",
                              files / "calib.npz")
    assert code == 0 and "TorchScript" in stdout
    code, _, _ = run_cli("quantize", files / "cnn_ts.pt", "-o", tmp_path / "q.onnx", "--calib",
                         files / "calib.npz", "--no-latency", "-q")
    assert code == 0 and (tmp_path / "q.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx", "q.onnx", "ts.onnx"]


def test_pickled_module_needs_allow_pickle(files, run_cli, tmp_path):
    with pytest.raises(AdapterError, match=r"pickled Python object.*--allow-pickle"):
        onnxq.quantize(files / "cnn_pickled.pt", files / "calib.npz", latency=False)
    code, _, stderr = run_cli("export", files / "cnn_pickled.pt", "-o", tmp_path / "p.onnx",
                              "--data", files / "calib.npz")
    assert code != 0 and "--allow-pickle" in stderr and len(stderr.strip().splitlines()) == 1
    result = onnxq.quantize(files / "cnn_pickled.pt", files / "calib.npz", allow_pickle=True, latency=False)
    assert result.report.outputs[0].cosine > 0.99


def test_state_dict_file_is_refused(tmp_path):
    torch.save(Mlp().state_dict(), tmp_path / "weights.pth")
    with pytest.raises(AdapterError, match="state_dict"):
        TorchAdapter().load(tmp_path / "weights.pth")


# --------------------------------------------------------------------------- bad inputs


def test_unsupported_object():
    with pytest.raises(AdapterError, match="cannot quantize a dict"):
        onnxq.quantize({"not": "a model"}, {"x": np.zeros((2, 3), np.float32)})


def test_model_that_fails_both_exporters():
    class Eigen(nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x).real

    with pytest.raises(AdapterError, match=r"cannot export Eigen to ONNX: torch.export: .*TorchScript "
                                           r"exporter: .*linalg_eigvals"):
        TorchAdapter().export(Eigen(), example_inputs=torch.randn(2, 3, 3))


def test_model_returning_a_non_tensor():
    class Words(nn.Module):
        def forward(self, x):
            return "positive"

    with pytest.raises(AdapterError, match="forward returns a str"):
        TorchAdapter().export(Words(), example_inputs=torch.randn(2, 3))


def test_example_inputs_of_the_wrong_shape(cnn):
    with pytest.raises(AdapterError, match=r"Cnn fails on the example inputs \(image: \[2, 3, 8, 8\] float32\)"):
        onnxq.quantize(cnn, calibration=torch.rand(4, 1, 8, 8), example_inputs=torch.rand(2, 3, 8, 8))


def test_corrupt_pt2_file(files, run_cli, tmp_path):
    with pytest.raises(AdapterError, match=r"corrupt.pt2 is not a readable torch.export .pt2 file"):
        onnxq.quantize(files / "corrupt.pt2", files / "calib.npz")
    code, _, stderr = run_cli("export", files / "corrupt.pt2", "-o", tmp_path / "c.onnx")
    assert code != 0 and len(stderr.strip().splitlines()) == 1


def test_mismatch_between_ort_and_torch_is_an_error():
    class Counter(nn.Module):  # Python state: the exported constant differs from the next eager call
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x + self.calls

    with pytest.raises(AdapterError, match=r"disagrees with torch on output 'output': max abs error 1"):
        TorchAdapter().export(Counter(), example_inputs=torch.zeros(2, 3))


# --------------------------------------------------------------------------- QAT pass-through


def test_torchao_qat_model_exports_as_qdq(images):
    pytest.importorskip("torchao", reason="torchao PT2E QAT is optional (pip install torchao)")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    torch.manual_seed(0)
    # conv + relu + dense (torchao's conv-bn QAT fusion works too but takes ~20 s to pattern-match)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    batch = {0: torch.export.Dim("batch")}
    graph = torch.export.export(model, (images[:4],), dynamic_shapes=(batch,)).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
    prepared = prepare_qat_pt2e(graph, quantizer)
    for start in range(0, 48, 8):
        prepared(images[start:start + 8])
    converted = convert_pt2e(prepared)
    result = TorchAdapter().export(converted, example_inputs=images[:2])
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and "DequantizeLinear" in ops
    assert result.max_abs_error is not None and result.max_abs_error < 1e-3
    assert _ort(result.model, {"input": images[:5].numpy()}).shape == (5, 10)
    # one call from torch: recognised as already quantized and passed through, not quantized twice
    passed = onnxq.quantize(converted, calibration=images[:16], example_inputs=images[:2], latency=False)
    assert passed.plan.mode == "qat" and passed.plan.nodes_to_quantize == []
    assert [n.op_type for n in passed.model.graph.node] == ops


# --------------------------------------------------------------------------- example


def test_torch_quickstart_example_runs():
    done = subprocess.run([sys.executable, str(REPO / "examples" / "torch_quickstart.py")], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "float accuracy" in done.stdout and "int8 accuracy" in done.stdout
