"""Input names a new user meets (issue 12 item 1): one array feeds a one-input model under any
name, ``label`` and ``labels`` both hold labels, Keras input names are checked before the export,
and ``onnxq inspect`` shows the inputs of framework model files."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from builders import cnn_data, tiny_cnn
from onnxq import DataError
from onnxq.data import load_data

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- core data readers


def _images(n: int = 10) -> np.ndarray:
    return cnn_data(n)["image"]


def test_npz_with_one_unnamed_array_feeds_the_only_input(tmp_path, caplog):
    path = tmp_path / "calib.npz"
    np.savez(path, _images())  # stored as arr_0
    with caplog.at_level(logging.DEBUG, logger="onnxq.data"):
        data = load_data(path, tiny_cnn(), batch_size=4)
    batches = list(data)
    assert [list(b) for b in batches] == [["image"]] * 3
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), _images())
    assert any("'arr_0' is read as 'image'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("source", ["dict", "list", "stream", "array"])
def test_one_array_under_another_name_feeds_the_only_input(source):
    images = _images(6)
    made = {"dict": lambda: {"pixels": images},
            "list": lambda: [{"pixels": images[:3]}, {"pixels": images[3:]}],
            "stream": lambda: ({"pixels": images[i:i + 2]} for i in range(0, 6, 2)),
            "array": lambda: images}[source]()
    data = load_data(made, tiny_cnn(), batch_size=6)
    (batch,) = list(data)
    np.testing.assert_array_equal(batch["image"], images)


def test_two_arrays_for_a_one_input_model_are_still_refused():
    with pytest.raises(DataError, match=r"unknown input.*model inputs: 'image'"):
        load_data({"pixels": _images(), "other": _images()}, tiny_cnn())


@pytest.mark.parametrize("key", ["label", "labels"])
@pytest.mark.parametrize("source", ["dict", "stream", "npz"])
def test_label_and_labels_both_hold_labels(key, source, tmp_path):
    images, labels = _images(8), np.arange(8)
    if source == "npz":
        np.savez(tmp_path / "d.npz", image=images, **{key: labels})
        made = tmp_path / "d.npz"
    elif source == "dict":
        made = {"image": images, key: labels}
    else:
        made = ({"image": images[i:i + 4], key: labels[i:i + 4]} for i in (0, 4))
    data = load_data(made, tiny_cnn(), batch_size=8)
    assert data.has_labels
    ((inputs, got),) = list(data.batches())
    assert list(inputs) == ["image"]
    np.testing.assert_array_equal(got, labels)


def test_unnamed_array_with_labels(tmp_path):
    """``{"x": images, "label": labels}``: the one non-label array is the input."""
    data = load_data({"x": _images(8), "label": np.arange(8)}, tiny_cnn(), batch_size=8)
    ((inputs, labels),) = list(data.batches())
    assert list(inputs) == ["image"] and labels.tolist() == list(range(8))


# --------------------------------------------------------------------------- Keras models


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow", reason="needs tensorflow-cpu")
    pytest.importorskip("tf2onnx", reason="needs tf2onnx")
    pytest.importorskip("onnxq_keras", reason="install the adapter: pip install -e adapters/keras")
    import keras

    return keras


@pytest.fixture(scope="module")
def keras_files(keras, tmp_path_factory):
    """A Sequential model whose Keras input is ``input_layer``, saved as .keras and .h5."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)], name="seq")
    folder = tmp_path_factory.mktemp("keras_names")
    model.save(folder / "m.keras")
    model.save(folder / "m.h5")
    return model, folder


def test_keras_data_keyed_otherwise_feeds_the_only_input(keras_files):
    import onnxq

    model, folder = keras_files
    x = RNG.random((16, 6), dtype=np.float32)
    np.savez(folder / "unnamed.npz", x)  # arr_0
    for calibration in ({"image": x, "label": np.zeros(16, np.int64)}, folder / "unnamed.npz"):
        result = onnxq.quantize(folder / "m.keras", calibration=calibration, latency=False)
        (graph_input,) = result.model.graph.input  # Keras's automatic name: input_layer, input_layer_1 ...
        assert graph_input.name.startswith("input_layer")
        assert result.report.samples == 16


def test_keras_input_names_are_checked_before_the_export(keras, monkeypatch):
    import tf2onnx

    import onnxq

    a, b = keras.Input((4,), name="left"), keras.Input((4,), name="right")
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))

    def no_export(*args, **kwargs):
        raise AssertionError("the export ran before the data names were checked")

    monkeypatch.setattr(tf2onnx.convert, "from_function", no_export)
    x = RNG.random((8, 4), dtype=np.float32)
    with pytest.raises(DataError, match=r"^unknown input 'image'; model inputs: 'left', 'right'$"):
        onnxq.quantize(model, calibration={"image": x, "right": x}, latency=False)


@pytest.mark.parametrize("name", ["m.keras", "m.h5", "saved"])
def test_inspect_shows_the_inputs_of_a_keras_file(keras_files, name, run_cli):
    model, folder = keras_files
    if name == "saved" and not (folder / "saved").exists():
        model.export(folder / "saved", verbose=False)
    code, out, err = run_cli("inspect", folder / name)
    assert code == 0, err
    assert "not an ONNX file" not in out + err
    assert any(line.split()[1:] == ["float32", "[?,", "6]"] for line in out.splitlines()), out
    code, out, _ = run_cli("inspect", folder / name, "--json")
    (entry,) = __import__("json").loads(out)["inputs"]
    assert entry["shape"] == [None, 6] and entry["dtype"] == "float32"


# --------------------------------------------------------------------------- torch .pt2


def test_inspect_shows_the_inputs_of_a_pt2_file(tmp_path, run_cli):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxq_torch", reason="install the adapter: pip install -e adapters/torch")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(5, 2)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.fc(features)

    program = torch.export.export(Net().eval(), (torch.randn(3, 5),))
    torch.export.save(program, tmp_path / "net.pt2")
    code, out, err = run_cli("inspect", tmp_path / "net.pt2")
    assert code == 0, err
    assert any(line.split() == ["features", "float32", "[batch,", "5]"] for line in out.splitlines()), out
