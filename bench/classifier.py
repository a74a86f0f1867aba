"""Child tasks shared by the image-classifier cases (MNIST CNN, Keras CNN): quantize with onnxq or
with ``onnxruntime.quantization`` as a user runs it, then score every model with the same code.

Data files are ``.npz`` with the model's input (key = the ONNX input name, float32) and ``labels``
(int64), written by the case's prepare task.

``task_quantize_onnxq``  ``onnxq.quantize(model_path, calib_npz, config=QuantConfig(**config))``
``task_quantize_ort``    ORT's recommended ``quant_pre_process`` (falls back to ``skip_symbolic_shape=True``,
                         the fallback is reported), then ``quantize_static`` (QDQ, ``per_channel=True``,
                         QUInt8 activations, QInt8 weights) with MinMax / Entropy / Percentile fed by a
                         ``CalibrationDataReader`` in batches of :data:`CALIB_BATCH`, or ``quantize_dynamic``
                         with its defaults. Runs in a private cwd (ORT drops side files there).
``task_evaluate``        accuracy, top-1 agreement with float, logit SQNR, size, QuantizeLinear count and
                         ORT CPU latency (``threads`` intra-op threads, default session options) at batch 1
                         and 32, in rounds: each round opens one session per model in turn (float, model A,
                         model B, ...), warms it up, times ``per_round`` runs and closes it, so that drifting
                         load from other work on the machine hits all models alike; the median of all timed
                         runs is reported. Only one session is alive while timing: ORT's intra-op threads
                         spin after each run, and with several live sessions taking turns run by run, the
                         spinning threads of the others slowed a 2 ms run to 6-13 ms on a 2-core machine.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from .harness import ort_pre_process, ort_session

CALIB_BATCH = 8  # onnxq's default QuantConfig.batch_size; ORT's reader uses the same
ORT_KINDS = ("minmax", "entropy", "percentile", "dynamic")


def _read(path: str, key: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as npz:
        x = np.ascontiguousarray(npz[key][:limit], dtype=np.float32)
        y = np.asarray(npz["labels"][:limit], dtype=np.int64)
    return x, y


def task_quantize_onnxq(p: dict[str, Any]) -> dict[str, Any]:
    """onnxq on the exported ONNX file, calibration data given as the ``.npz`` path."""
    import onnxq

    config = onnxq.QuantConfig(**p.get("config", {}))
    start = time.perf_counter()
    calib = p["calib"] if config.mode.value != "dynamic" else None
    result = onnxq.quantize(p["model"], calib, config=config, evaluation=p["calib"], latency=False)
    elapsed = time.perf_counter() - start
    result.save(p["out"])
    return _onnxq_summary(result, elapsed)


def _onnxq_summary(result: Any, elapsed: float) -> dict[str, Any]:
    report = result.report
    return {"quantize_s": round(elapsed, 3),
            "onnxq_report_float_accuracy": getattr(report, "float_accuracy", None),
            "onnxq_report_quant_accuracy": getattr(report, "quant_accuracy", None),
            "nodes_quantized": len(getattr(result.plan, "nodes_to_quantize", []) or []),
            "float_nodes": [str(n) for n in (getattr(result.plan, "float_nodes", []) or [])][:20]}


def task_quantize_ort(p: dict[str, Any]) -> dict[str, Any]:
    """ORT as a user runs it; ``p["kind"]`` is one of :data:`ORT_KINDS`."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    kind, key = p["kind"], p["input"]
    images, _ = _read(p["calib"], key) if kind != "dynamic" else (np.zeros((0,), np.float32), None)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.pos = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= len(images):
                return None
            batch = images[self.pos:self.pos + CALIB_BATCH]
            self.pos += CALIB_BATCH
            return {key: batch}

    start = time.perf_counter()
    model, note = ort_pre_process(p["model"], Path.cwd() / "pre.onnx")
    pre_s = time.perf_counter() - start
    if kind == "dynamic":
        quantize_dynamic(model, p["out"])
    else:
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[kind]
        quantize_static(model, p["out"], Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method)
    elapsed = time.perf_counter() - start
    return {"quantize_s": round(elapsed, 3), "pre_process_s": round(pre_s, 3), "pre_process": note}


def task_evaluate(p: dict[str, Any]) -> dict[str, Any]:
    """Score every model in ``p["models"]`` (float first) on ``p["eval"]`` with the same code."""
    import onnx

    key, output = p["input"], p["output"]
    images, labels = _read(p["eval"], key, p.get("limit"))
    threads = p["threads"]
    sessions = {name: ort_session(path, threads) for name, path in p["models"].items()}
    float_top1: np.ndarray | None = None
    float_logits = np.zeros(0)
    out: dict[str, Any] = {}
    for name, path in p["models"].items():
        session = sessions[name]
        logits = np.concatenate([session.run([output], {key: images[i:i + 256]})[0]
                                 for i in range(0, len(images), 256)]).astype(np.float64)
        top1 = logits.argmax(axis=1)
        if float_top1 is None:
            float_top1, float_logits = top1, logits
        noise = float(np.sum((logits - float_logits) ** 2))
        sqnr_db = None if noise == 0.0 else 10.0 * float(np.log10(float(np.sum(float_logits ** 2)) / noise))
        ops = [n.op_type for n in onnx.load(path, load_external_data=False).graph.node]
        out[name] = {
            "accuracy": float((top1 == labels).mean()),
            "correct": int((top1 == labels).sum()),
            "top1_agreement": float((top1 == float_top1).mean()),
            "logit_sqnr_db": sqnr_db,
            "bytes": Path(path).stat().st_size,
            "op_sequence_sha1": hashlib.sha1(",".join(ops).encode()).hexdigest()[:12],
            "quantize_linear_nodes": ops.count("QuantizeLinear"),
            "integer_ops": sum(op in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul",
                                      "DynamicQuantizeLinear", "MatMulIntegerToFloat") for op in ops),
            "latency_ms": {},
        }
    del sessions  # latency: one live session at a time (see the module docstring)
    for batch_size, (warmup, rounds, per_round) in p["latency_runs"].items():
        feeds = {key: np.ascontiguousarray(images[:int(batch_size)])}
        times: dict[str, list[float]] = {name: [] for name in p["models"]}
        for _ in range(rounds):
            for name, path in p["models"].items():
                session = ort_session(path, threads)
                for _ in range(warmup):
                    session.run([output], feeds)
                for _ in range(per_round):
                    start = time.perf_counter()
                    session.run([output], feeds)
                    times[name].append(time.perf_counter() - start)
                del session
        for name in p["models"]:
            out[name]["latency_ms"][str(batch_size)] = round(statistics.median(times[name]) * 1000.0, 4)
    return {"models": out, "samples": int(len(labels))}


def merge_scores(variants: list[dict[str, Any]], scores: dict[str, Any]) -> dict[str, Any] | None:
    """Copy each variant's scores into its row and add size / latency ratios (float / quantized)."""
    base = scores.get("float")
    for variant in variants:
        score = scores.get(variant["name"])
        if score is None:
            continue
        variant.update(score)
        if base:
            variant["size_ratio"] = base["bytes"] / score["bytes"]
            variant["latency_ratio"] = {b: base["latency_ms"][b] / score["latency_ms"][b]
                                        for b in score["latency_ms"] if score["latency_ms"][b] > 0}
    return base
