"""Case 3: task accuracy, agreement with float, size and latency on the shipped digits demo model.

Model ``examples/data/digits_cnn.onnx`` (input ``image`` [N,1,8,8] float32, output ``logits``
[N,10]); calibration ``examples/data/digits_calib.npz`` (256 samples), evaluation
``examples/data/digits_eval.npz`` (500 held-out samples, keys ``image`` and ``labels``).

Variants, each quantized in its own process:
    * onnxq default static (``QuantConfig()``: QDQ, per-channel, U8S8, MinMax)
    * onnxq entropy (``QuantConfig(method="entropy")``, 2048 bins; 512 in --tiny)
    * ORT ``quantize_static`` defaults as documented for x86 (QDQ, per_channel=True, QUInt8 / QInt8,
      MinMax) after ORT's recommended ``quant_pre_process``
    * ORT ``quantize_static`` with ``CalibrationMethod.Entropy`` (its default 128 bins)
    * ORT entropy with 2048 bins (512 in --tiny): ORT's own calibrator (``num_bins``), its ranges handed to
      ``quantize_static`` through ``calibration_cache_path`` (``quantize_static`` forwards no bin
      count to the calibrator in this onnxruntime)
Every model, float included, is then scored by one evaluation process with the same code:
accuracy on the labels, top-1 agreement with float, the SQNR of the logits against float (dB;
more sensitive than accuracy on this easy task), file size, and ORT latency (2 threads,
median after warm-up) at batch 1 and batch 32.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .classifier import merge_scores
from .harness import REPO_ROOT, ort_session, run_job

MODEL = REPO_ROOT / "examples" / "data" / "digits_cnn.onnx"
CALIB = REPO_ROOT / "examples" / "data" / "digits_calib.npz"
EVAL = REPO_ROOT / "examples" / "data" / "digits_eval.npz"
INPUT, OUTPUT = "image", "logits"

VARIANTS = [
    # name, tool, method, description
    ("onnxq-default", "onnxq", "minmax", "onnxq default static (MinMax)"),
    ("onnxq-entropy", "onnxq", "entropy", "onnxq entropy ({bins} bins)"),
    ("ort-default", "ort", "minmax", "ORT quantize_static default (MinMax)"),
    ("ort-entropy", "ort", "entropy", "ORT quantize_static Entropy (its 128 bins)"),
    ("ort-entropy-bins", "ort", "entropy_bins", "ORT Entropy, {bins} bins (own calibrator + cache)"),
]

QUICK_SKIP = ("ort-entropy-bins",)  # --quick leaves out the slowest ORT variant (20 s of pure-Python KL search)

LATENCY_RUNS = {  # (warm-up, timed) runs per batch size
    "full": {1: (50, 500), 32: (20, 200)},
    "quick": {1: (20, 100), 32: (10, 50)},
    "tiny": {1: (2, 5), 32: (1, 3)},
}


# ------------------------------------------------------------------------------------ child tasks

def task_quantize_onnxq(p: dict[str, Any]) -> dict[str, Any]:
    import onnxq

    config = onnxq.QuantConfig(method=p["method"], num_bins=p["num_bins"])
    start = time.perf_counter()
    result = onnxq.quantize(p["model"], p["calib"], config=config, evaluation=p["eval"], latency=False)
    elapsed = time.perf_counter() - start
    result.save(p["out"])
    report = result.report
    return {"quantize_s": round(elapsed, 3), "onnxq_report_quant_accuracy": report.quant_accuracy,
            "onnxq_report_float_accuracy": report.float_accuracy,
            "float_nodes": list(getattr(result.plan, "float_nodes", []) or [])}


class _ArrayReader:
    def __init__(self, images: np.ndarray, batch_size: int = 8) -> None:
        self.images, self.batch_size, self.pos = images, batch_size, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.images):
            return None
        batch = self.images[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return {INPUT: batch}


def task_quantize_ort(p: dict[str, Any]) -> dict[str, Any]:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          create_calibrator, quant_pre_process, quantize_static,
                                          save_tensors_data)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    class Reader(_ArrayReader, CalibrationDataReader):
        pass

    with np.load(p["calib"]) as npz:
        images = np.ascontiguousarray(npz[INPUT], dtype=np.float32)
    work = Path(p["out"]).parent
    pre = work / f"{Path(p['out']).stem}.pre.onnx"
    start = time.perf_counter()
    quant_pre_process(p["model"], pre)
    kwargs: dict[str, Any] = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                                  weight_type=QuantType.QInt8)
    if p["method"] == "entropy_bins":
        calibrator = create_calibrator(pre, sorted(set(QDQRegistry) | set(QLinearOpsRegistry)),
                                       augmented_model_path=str(work / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy,
                                       extra_options={"num_bins": p["num_bins"], "num_quantized_bins": 128})
        calibrator.collect_data(Reader(images))
        cache = work / f"{Path(p['out']).stem}.ranges.json"
        save_tensors_data(calibrator.compute_data(), cache)
        quantize_static(pre, p["out"], None, calibrate_method=CalibrationMethod.Entropy,
                        calibration_cache_path=cache, **kwargs)
    else:
        method = CalibrationMethod.Entropy if p["method"] == "entropy" else CalibrationMethod.MinMax
        quantize_static(pre, p["out"], Reader(images), calibrate_method=method, **kwargs)
    elapsed = time.perf_counter() - start
    pre.unlink(missing_ok=True)
    return {"quantize_s": round(elapsed, 3)}


def _latency_ms(session: Any, batch: np.ndarray, warmup: int, runs: int) -> float:
    feeds = {INPUT: batch}
    for _ in range(warmup):
        session.run([OUTPUT], feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run([OUTPUT], feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def task_evaluate(p: dict[str, Any]) -> dict[str, Any]:
    """Score every model on the evaluation set with the same code; float first."""
    import onnx

    with np.load(p["eval"]) as npz:
        images = np.ascontiguousarray(npz[INPUT], dtype=np.float32)
        labels = np.asarray(npz["labels"])
    float_top1: np.ndarray | None = None
    float_logits = np.zeros(0)
    out: dict[str, Any] = {}
    for name, path in p["models"].items():
        session = ort_session(path, p["threads"])
        logits = np.concatenate([session.run([OUTPUT], {INPUT: images[i:i + 64]})[0]
                                 for i in range(0, len(images), 64)])
        top1 = logits.argmax(axis=1)
        if float_top1 is None:
            float_top1, float_logits = top1, logits.astype(np.float64)
        noise = float(np.sum((logits.astype(np.float64) - float_logits) ** 2))
        signal = float(np.sum(float_logits ** 2))
        sqnr_db = None if noise == 0.0 else 10.0 * float(np.log10(signal / noise))
        model = onnx.load(path)
        ops = [n.op_type for n in model.graph.node]
        latency = {}
        for batch_size, (warmup, runs) in p["latency_runs"].items():
            latency[str(batch_size)] = round(_latency_ms(session, images[:int(batch_size)], warmup, runs), 4)
        out[name] = {
            "accuracy": float((top1 == labels).mean()),
            "top1_agreement": float((top1 == float_top1).mean()),
            "logit_sqnr_db": sqnr_db,
            "bytes": Path(path).stat().st_size,
            "latency_ms": latency,
            "quantize_linear_nodes": ops.count("QuantizeLinear"),
            "dequantize_linear_nodes": ops.count("DequantizeLinear"),
        }
    return {"models": out, "samples": int(len(labels))}


# ----------------------------------------------------------------------------------------- parent

def run(mode: str, workdir: Path, *, caps: dict[str, float], log: Callable[[str], None]) -> dict[str, Any]:
    job = {"workdir": workdir, "mem_cap_gib": caps["mem_gib"], "timeout_s": caps["timeout_s"], "log": log}
    threads = 2
    bins = 512 if mode == "tiny" else 2048
    models = {"float": str(MODEL)}
    variants: list[dict[str, Any]] = []
    for name, tool, method, description in VARIANTS:
        if mode == "quick" and name in QUICK_SKIP:
            continue
        out = workdir / f"digits_{name}.onnx"
        params = {"model": str(MODEL), "calib": str(CALIB), "eval": str(EVAL), "method": method, "out": str(out),
                  "num_bins": bins}
        description = description.format(bins=bins)
        task = "bench.digits_accuracy:task_quantize_onnxq" if tool == "onnxq" else "bench.digits_accuracy:task_quantize_ort"
        row = run_job(task, params, label=f"digits-{name}", **job)
        variants.append({"name": name, "tool": tool, "method": method, "description": description, **row})
        if row["status"] == "ok" and out.exists():
            models[name] = str(out)
    runs = {str(k): v for k, v in LATENCY_RUNS[mode].items()}
    evaluation = run_job("bench.digits_accuracy:task_evaluate",
                         {"models": models, "eval": str(EVAL), "threads": threads, "latency_runs": runs},
                         label="digits-evaluate", **job)
    scores = evaluation.get("models", {}) if evaluation["status"] == "ok" else {}
    base = merge_scores(variants, scores)
    return {
        "model": str(MODEL.relative_to(REPO_ROOT)),
        "calibration": f"{CALIB.relative_to(REPO_ROOT)} (256 samples)",
        "evaluation": f"{EVAL.relative_to(REPO_ROOT)} ({evaluation.get('samples', '?')} held-out samples)",
        "threads": threads,
        "num_bins": bins,
        "latency_runs": runs,
        "evaluation_status": evaluation["status"],
        "evaluation_error": evaluation.get("error"),
        "float": base,
        "variants": variants,
    }
