"""onnxq-keras end to end: Keras models -> tf2onnx -> onnxq.quantize, checked against Keras itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
tf = pytest.importorskip("tensorflow", reason="onnxq-keras tests need tensorflow-cpu (installed by make test)")
pytest.importorskip("tf2onnx", reason="onnxq-keras tests need tf2onnx (installed by make test)")
onnxq_keras = pytest.importorskip("onnxq_keras", reason="install the adapter: pip install -e adapters/keras")
import keras  # noqa: E402

import onnxq  # noqa: E402
from onnxq import AdapterError, QuantConfig  # noqa: E402
from onnxq.adapters import Adapter, adapter_for_data, adapter_for_object  # noqa: E402
from onnxq.api import resolve_model  # noqa: E402
from onnxq.cli import main as cli_main  # noqa: E402
from onnxq.runtime import create_session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
IMAGES = RNG.random((64, 8, 8, 1), dtype=np.float32)
LABELS = RNG.integers(0, 10, 64).astype(np.int64)
TOKENS = RNG.integers(1, 50, (48, 12)).astype(np.int32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def ort_outputs(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return create_session(model).run(None, feeds)


# --------------------------------------------------------------------------- models (built once)


@pytest.fixture(scope="module")
def cnn() -> keras.Model:
    """Conv + batch-norm (non-trivial statistics) + pooling + dense."""
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(image)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    logits = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(image, logits, name="cnn")
    bn = model.layers[2]
    bn.set_weights([RNG.uniform(0.5, 1.5, 8), RNG.normal(0, 0.1, 8), RNG.normal(0, 0.2, 8),
                    RNG.uniform(0.5, 2.0, 8)])
    return model


@pytest.fixture(scope="module")
def text_model() -> keras.Model:
    keras.utils.set_random_seed(1)
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(50, 16)(tokens)
    x = keras.layers.LSTM(24)(x)
    out = keras.layers.Dense(3, name="sentiment")(x)
    return keras.Model(tokens, out, name="text")


@pytest.fixture(scope="module")
def cnn_static(cnn):
    calibration = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(16)
    return onnxq.quantize(cnn, calibration=calibration, latency=False)


# --------------------------------------------------------------------------- contract


def test_adapter_is_registered_and_satisfies_the_protocol(cnn):
    adapter = adapter_for_object(cnn)
    assert isinstance(adapter, Adapter) and adapter.name == "keras" and adapter.package == "onnxq-keras"
    assert adapter_for_data(tf.data.Dataset.from_tensor_slices(IMAGES)) is not None
    assert adapter_for_data({"image": IMAGES}) is None  # numpy needs no adapter


def test_importing_the_adapter_does_not_import_tensorflow():
    code = "import sys, onnxq_keras, onnxq.adapters as a; a.available_adapters(); " \
           "sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# --------------------------------------------------------------------------- CNN


def test_cnn_export_is_verified_with_clean_names(cnn):
    model, notes = resolve_model(cnn)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits"]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # dynamic batch
    assert "tf2onnx" in notes[0] and "opset 17" in notes[0]


def test_cnn_static_int8_matches_keras(cnn, cnn_static):
    reference = cnn.predict(IMAGES, verbose=0)
    (got,) = ort_outputs(cnn_static.model, {"image": IMAGES})
    assert cosine(reference, got) > 0.99
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.9
    assert cnn_static.report.outputs[0].cosine > 0.99
    assert any(n.op_type == "QLinearConv" or n.op_type == "QuantizeLinear" for n in cnn_static.model.graph.node)


def test_cnn_dynamic_int8_matches_keras(cnn):
    config = QuantConfig(mode="dynamic")
    result = onnxq.quantize(cnn, calibration=tf.data.Dataset.from_tensor_slices(IMAGES), config=config,
                            latency=False)  # unbatched dataset: batched by the adapter
    (got,) = ort_outputs(result.model, {"image": IMAGES})
    assert cosine(cnn.predict(IMAGES, verbose=0), got) > 0.99


@pytest.mark.parametrize("batch", [1, 7, 33])
def test_dynamic_batch_at_run_time(cnn_static, cnn, batch):
    images = IMAGES[:batch] if batch <= len(IMAGES) else IMAGES
    (got,) = ort_outputs(cnn_static.model, {"image": images})
    assert got.shape == (batch, 10)
    assert cosine(cnn.predict(images, verbose=0), got) > 0.99


def test_inputs_as_nchw(cnn):
    calibration = tf.data.Dataset.from_tensor_slices(IMAGES).batch(16)  # NHWC, transposed by the adapter
    result = onnxq.quantize(cnn, calibration=calibration, latency=False, export_options={"inputs_as_nchw": True})
    (dims,) = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in result.model.graph.input]
    assert dims[1:] == [1, 8, 8]
    (got,) = ort_outputs(result.model, {"image": IMAGES.transpose(0, 3, 1, 2).copy()})
    assert cosine(cnn.predict(IMAGES, verbose=0), got) > 0.99
    resolve_model(cnn)  # a later export without the option makes data NHWC again
    feeds = list(onnxq_keras.KerasAdapter().to_feeds(calibration, ["image"]))
    assert feeds[0]["image"].shape == (16, 8, 8, 1)


# --------------------------------------------------------------------------- text model


@pytest.mark.parametrize(("mode", "min_cosine"), [("static", 0.98), ("dynamic", 0.99)])
def test_text_model_embedding_lstm(text_model, mode, min_cosine):
    calibration = tf.data.Dataset.from_tensor_slices(({"tokens": TOKENS}, LABELS[:48])).batch(8)
    result = onnxq.quantize(text_model, calibration=calibration, config=QuantConfig(mode=mode), latency=False)
    assert [i.name for i in result.model.graph.input] == ["tokens"]
    (got,) = ort_outputs(result.model, {"tokens": TOKENS})
    assert cosine(text_model.predict(TOKENS, verbose=0), got) > min_cosine
    assert result.report.samples == 48


# --------------------------------------------------------------------------- other model kinds


def test_multiple_inputs_and_outputs():
    keras.utils.set_random_seed(2)
    a, b = keras.Input((6,), name="dense_features"), keras.Input((4, 4, 2), name="patch")
    x = keras.layers.Concatenate()([a, keras.layers.Flatten()(keras.layers.Conv2D(4, 2)(b))])
    score = keras.layers.Dense(1, name="score")(keras.layers.Dense(16, activation="relu")(x))
    kind = keras.layers.Dense(5, name="kind")(x)
    model = keras.Model({"dense_features": a, "patch": b}, [score, kind])
    xa, xb = RNG.random((40, 6), dtype=np.float32), RNG.random((40, 4, 4, 2), dtype=np.float32)
    data = tf.data.Dataset.from_tensor_slices(({"dense_features": xa, "patch": xb}, LABELS[:40])).batch(10)
    result = onnxq.quantize(model, calibration=data, latency=False)
    assert sorted(i.name for i in result.model.graph.input) == ["dense_features", "patch"]
    assert sorted(o.name for o in result.model.graph.output) == ["kind", "score"]
    session = create_session(result.model)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"dense_features": xa, "patch": xb})))
    expected = model.predict({"dense_features": xa, "patch": xb}, verbose=0)
    assert cosine(expected[1], got["kind"]) > 0.99
    assert np.abs(expected[0] - got["score"]).max() < 0.05 * np.abs(expected[0]).max() + 0.02


def test_sequential_model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)], name="seq")
    model.build((None, 10))  # no named Input: the ONNX input is called "input"
    x = RNG.random((32, 10), dtype=np.float32)
    result = onnxq.quantize(model, calibration=tf.constant(x), latency=False)
    assert [i.name for i in result.model.graph.input] == ["input"]
    (got,) = ort_outputs(result.model, {"input": x})
    assert cosine(model.predict(x, verbose=0), got) > 0.99


class Residual(keras.Model):
    """A subclassed model: no model.inputs, the signature comes from the data."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(3)

    def call(self, x):
        return self.head(self.pool(self.conv(x) + x))


def test_subclassed_model_signature_from_the_data():
    keras.utils.set_random_seed(4)
    model = Residual()
    x = RNG.random((32, 6, 6, 4), dtype=np.float32)
    result = onnxq.quantize(model, calibration=tf.data.Dataset.from_tensor_slices((x, LABELS[:32])).batch(8),
                            latency=False)
    assert any("Input signature taken from the example inputs" in n for n in result.report.notes)
    (got,) = ort_outputs(result.model, {"input": x[:5]})  # another batch size
    assert cosine(model.predict(x[:5], verbose=0), got) > 0.99


def test_tf_function_with_input_signature():
    weights = tf.Variable(RNG.normal(size=(5, 3)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32, name="features")])
    def project(features):
        return {"projected": tf.nn.relu(tf.matmul(features, weights))}

    model, _ = resolve_model(project)
    assert [i.name for i in model.graph.input] == ["features"]
    assert [o.name for o in model.graph.output] == ["projected"]


def test_py_dataset_and_tensor_feeds():
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return IMAGES[index * 8:(index + 1) * 8], LABELS[index * 8:(index + 1) * 8]

    adapter = onnxq_keras.KerasAdapter()
    assert adapter.owns_data(Batches())
    feeds = list(adapter.to_feeds(Batches(), ["image"]))
    assert len(feeds) == 3 and feeds[0]["image"].shape == (8, 8, 8, 1) and feeds[0]["labels"].shape == (8,)
    feed = adapter.to_feeds((tf.constant(IMAGES), tf.constant(LABELS)), ["image"])
    assert feed["image"].shape == (64, 8, 8, 1) and feed["labels"].shape == (64,)
    stream = adapter.to_feeds(tf.data.Dataset.from_tensor_slices(IMAGES).batch(16), ["image"])
    assert [len(f["image"]) for f in stream] == [16] * 4 == [len(f["image"]) for f in stream]  # re-iterable


# --------------------------------------------------------------------------- files and CLI


@pytest.fixture(scope="module")
def keras_files(cnn, tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras_files")
    cnn.save(folder / "m.keras")
    np.savez(folder / "calib.npz", image=IMAGES, labels=LABELS)
    return folder


def test_keras_file_through_quantize(keras_files, cnn):
    result = onnxq.quantize(keras_files / "m.keras", calibration=keras_files / "calib.npz", latency=False)
    (got,) = ort_outputs(result.model, {"image": IMAGES})
    assert cosine(cnn.predict(IMAGES, verbose=0), got) > 0.99


def test_cli_export_and_quantize_a_keras_file(keras_files, cnn, capsys, monkeypatch):
    monkeypatch.chdir(keras_files)
    before = set(os.listdir(keras_files))
    assert cli_main(["export", "m.keras", "-o", "m.onnx"]) == 0
    assert "tf2onnx" in capsys.readouterr().out
    (got,) = ort_outputs("m.onnx", {"image": IMAGES})
    np.testing.assert_allclose(got, cnn.predict(IMAGES, verbose=0), atol=1e-4)
    assert cli_main(["quantize", "m.keras", "-o", "q.onnx", "--calib", "calib.npz", "--no-latency"]) == 0
    (got,) = ort_outputs("q.onnx", {"image": IMAGES})
    assert cosine(cnn.predict(IMAGES, verbose=0), got) > 0.99
    assert set(os.listdir(keras_files)) - before == {"m.onnx", "q.onnx"}  # nothing else left behind


def test_saved_model_folder(cnn, tmp_path):
    cnn.export(tmp_path / "saved", verbose=False)
    model, notes = resolve_model(tmp_path / "saved")
    (got,) = ort_outputs(model, {model.graph.input[0].name: IMAGES})
    np.testing.assert_allclose(got, cnn.predict(IMAGES, verbose=0), atol=1e-4)


# --------------------------------------------------------------------------- errors


def test_opset_above_tf2onnx_range_is_refused(cnn):
    with pytest.raises(AdapterError, match=r"opset 19 is not supported by tf2onnx: choose 13 to 18"):
        resolve_model(cnn, export_options={"opset": 19})


def test_unknown_export_option_is_refused(cnn):
    with pytest.raises(AdapterError, match=r"unknown Keras export option\(s\) 'opsett'"):
        resolve_model(cnn, export_options={"opsett": 17})


def test_unsupported_tf_object():
    with pytest.raises(AdapterError, match=r"onnxq-keras cannot export a \w*Variable: pass a keras.Model"):
        onnxq.quantize(tf.Variable(1.0), {"x": IMAGES}, latency=False)


def test_model_that_fails_to_export():
    class Opaque(keras.Model):
        def call(self, x):
            return tf.numpy_function(lambda a: a * 2, [x], tf.float32)

    with pytest.raises(AdapterError, match=r"tf2onnx could not export the subclassed model .*PyFunc"):
        resolve_model(Opaque(), example_inputs=IMAGES[:2])


def test_example_inputs_of_the_wrong_shape(cnn):
    with pytest.raises(AdapterError, match=r"input 'image' has shape \(2, 9, 9, 1\), the model expects "
                                           r"float32 \(None, 8, 8, 1\)"):
        resolve_model(cnn, example_inputs=np.zeros((2, 9, 9, 1), np.float32))


def test_subclassed_model_without_any_inputs():
    with pytest.raises(AdapterError, match="has no input signature"):
        resolve_model(Residual())


def test_corrupt_keras_file(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(AdapterError, match=r"cannot load broken.keras as a Keras model: not a .keras archive") as info:
        onnxq.quantize(path, {"image": IMAGES}, latency=False)
    assert "\n" not in str(info.value)


def test_truncated_keras_file(keras_files, tmp_path):
    data = (keras_files / "m.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match=r"cannot load cut.keras as a Keras model: ") as info:
        resolve_model(tmp_path / "cut.keras")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- example


def test_quickstart_example_runs(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "keras_quickstart.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "int8 accuracy:" in done.stdout
    accuracy = float(done.stdout.split("int8 accuracy:")[1].split()[0])
    assert accuracy > 0.9
    assert (tmp_path / "digits_int8.onnx").is_file()
