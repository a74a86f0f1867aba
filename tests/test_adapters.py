"""The adapter registry: entry points, disabling, broken plug-ins, and install hints."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from builders import cnn_data, tiny_cnn

import onnxq
import onnxq.adapters as adapters
from onnxq import AdapterError
from onnxq.adapters import Adapter, ExportResult


class FakeModel:
    """Stands in for a framework model object that the fake adapter exports."""


class FakeBatches(list):
    """Stands in for a framework data loader."""


class FakeAdapter:
    name = "fake"
    package = "onnxq-fake"

    def can_export(self, obj):
        return isinstance(obj, FakeModel)

    def can_load(self, path: Path):
        return path.suffix == ".fake"

    def load(self, path, *, allow_pickle=False):
        return FakeModel()

    def export(self, obj, *, example_inputs=None, data=None, **options):
        return ExportResult(model=tiny_cnn(), exporter="fake exporter", opset=17, max_abs_error=0.0)

    def owns_data(self, data):
        return isinstance(data, FakeBatches)

    def to_feeds(self, data, input_names, *, transform=None):
        return [{input_names[0]: batch} for batch in data]


def _entry(name, loader):
    return SimpleNamespace(name=name, load=lambda: loader)


@pytest.fixture
def registry(monkeypatch):
    entries = [_entry("fake", FakeAdapter)]
    monkeypatch.setattr(adapters, "entry_points", lambda group: entries if group == adapters.ENTRY_POINT_GROUP else [])
    monkeypatch.delenv(adapters.DISABLE_ENV, raising=False)
    return entries


def test_fake_adapter_satisfies_the_protocol():
    assert isinstance(FakeAdapter(), Adapter)


def test_framework_object_and_data_go_through_the_adapter(registry):
    batches = FakeBatches(np.split(cnn_data(16)["image"], 2))
    result = onnxq.quantize(FakeModel(), batches, latency=False)
    assert result.report.samples == 16
    assert any("fake exporter" in note for note in result.report.notes)


def test_framework_file_goes_through_the_adapter(registry, tmp_path):
    path = tmp_path / "model.fake"
    path.write_bytes(b"")
    result = onnxq.quantize(path, cnn_data(8), latency=False)
    assert result.report.outputs[0].cosine > 0.99


def test_broken_plugin_is_skipped_with_a_warning(registry, caplog):
    def broken():
        raise ImportError("No module named 'torch'")

    registry.insert(0, _entry("broken", broken))
    found = adapters.available_adapters()
    assert [a.name for a in found] == ["fake"]
    assert "'broken' could not be loaded" in caplog.text


@pytest.mark.parametrize("value", ["fake", "all", "other,fake"])
def test_adapters_can_be_disabled(registry, monkeypatch, value):
    monkeypatch.setenv(adapters.DISABLE_ENV, value)
    assert adapters.available_adapters() == []


def test_unknown_object_error_names_the_packages(registry):
    with pytest.raises(AdapterError, match="pip install onnxq-torch"):
        onnxq.quantize(object(), cnn_data(4))


def test_framework_object_without_adapter_names_its_package(registry):
    torch_like = type("Module", (), {"__module__": "torch.nn.modules.module"})()
    with pytest.raises(AdapterError, match=r"needs the onnxq-torch adapter: pip install onnxq-torch"):
        adapters.adapter_for_object(torch_like)


@pytest.mark.parametrize(("name", "package"), [("m.pt2", "onnxq-torch"), ("m.pt", "onnxq-torch"),
                                               ("m.keras", "onnxq-keras"), ("m.h5", "onnxq-keras")])
def test_framework_file_without_adapter_names_its_package(registry, tmp_path, name, package):
    with pytest.raises(AdapterError, match=f"pip install {package}"):
        adapters.adapter_for_path(tmp_path / name)


def test_saved_model_folder_without_adapter_names_onnxq_keras(registry, tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(AdapterError, match="pip install onnxq-keras"):
        adapters.adapter_for_path(tmp_path)


def test_numpy_data_needs_no_adapter(registry):
    assert adapters.adapter_for_data({"x": np.zeros(2)}) is None
    assert adapters.adapter_for_data([{"x": np.zeros(2)}]) is None
    assert adapters.adapter_for_data("data.npz") is None
