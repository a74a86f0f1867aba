"""Quantize a Keras CNN to int8 ONNX in one call (needs: pip install onnxq onnxq-keras).

Trains a small CNN on scikit-learn's 8x8 digits (1797 real images) for a few seconds, then
``onnxq.quantize(model, calibration=tf_dataset)`` exports it through tf2onnx, calibrates, writes
a static U8S8 model and validates it. Prints float vs int8 accuracy, size and speed.

    python examples/keras_quickstart.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import onnxq  # noqa: E402
from onnxq.runtime import create_session  # noqa: E402


def build_model() -> keras.Model:
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def accuracy_of(session, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Accuracy and milliseconds per batch of 256 for an ONNX Runtime session."""
    name = session.get_inputs()[0].name
    logits = session.run(None, {name: images})[0]
    batch = images[:256]
    session.run(None, {name: batch})
    start, runs = time.perf_counter(), 50
    for _ in range(runs):
        session.run(None, {name: batch})
    return float((logits.argmax(1) == labels).mean()), (time.perf_counter() - start) / runs * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for digits_int8.onnx (default: a temporary folder)")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]  # NHWC, [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(images, digits.target, test_size=0.25,
                                                        random_state=0, stratify=digits.target)
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(5e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=32, epochs=args.epochs, verbose=0)
    print(f"trained {model.name} in {time.perf_counter() - start:.1f}s")

    calibration = tf.data.Dataset.from_tensor_slices((x_train[:256], y_train[:256])).batch(32)
    evaluation = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(64)
    result = onnxq.quantize(model, calibration=calibration, evaluation=evaluation)  # the one call

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or tmp
        path = result.save(os.path.join(folder, "digits_int8.onnx"))
        keras_acc = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())
        float_onnx, _ = onnxq.api.resolve_model(model)
        float_acc, float_ms = accuracy_of(create_session(float_onnx, threads=1), x_test, y_test)
        int8_acc, int8_ms = accuracy_of(create_session(result.model, threads=1), x_test, y_test)
        report = result.report
        print(f"keras float accuracy: {keras_acc:.4f}")
        print(f"float accuracy: {float_acc:.4f}   int8 accuracy: {int8_acc:.4f}   "
              f"(test set, {len(y_test)} digits)")
        print(f"size: {report.float_size_bytes / 1024:.1f} KiB -> {report.quant_size_bytes / 1024:.1f} KiB "
              f"({report.size_ratio:.2f}x smaller)")
        print(f"speed (1 thread, batch 256): {float_ms:.3f} ms -> {int8_ms:.3f} ms "
              f"({float_ms / max(int8_ms, 1e-9):.2f}x)")
        print(f"cosine(float, int8) on the logits: {report.outputs[0].cosine:.4f}")
        print(f"wrote {path}" if args.out else "(pass --out DIR to keep the model)")


if __name__ == "__main__":
    main()
