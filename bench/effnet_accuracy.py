"""Case 8 (issue 10): a real ImageNet CNN, EfficientNet-Lite1, on seeded random crops of real photos.

Model and data come from :mod:`bench.cases.effnet`: EfficientNet-Lite1 with its real ImageNet weights,
exported through onnxq's torch adapter (dynamic batch, input ``image`` float32 [N,3,240,240] in [-1, 1],
output ``logits`` [N,1000]); calibration crops (128) and evaluation crops (512; 256 in --quick) of the
photos of scikit-image and scikit-learn, drawn with DIFFERENT seeds. There are no labels: every model is
scored by its agreement with the float model (top-1, top-5 = float top-1 in the quantized top-5, mean
|logit difference|), plus batch-32 latency and file size.

Variants, each quantized in its own capped process with a private working folder:
    onnxq: ``onnxq.quantize(model, calib.npz, config=QuantConfig(**kwargs))`` for every keyword dict of
    :data:`ONNXQ_VARIANTS` (add a pass switch there, e.g. ``{"bias_correction": True}``); a dict that
    ``QuantConfig`` does not accept is recorded as ``skipped: not available``.
    ORT: ``quant_pre_process`` + ``quantize_static`` (QDQ, ``per_channel=True``, weights QInt8) for U8S8 and S8S8
    x MinMax / Entropy / Percentile (:data:`ORT_SETTINGS`) with ``reduce_range`` as this CPU needs it
    (``onnxq.hardware.saturates_u8s8()``: True on AVX2 without VNNI, where the int8 kernels saturate; onnxq's
    default does the same), plus, on such a CPU, MinMax with ORT's default ``reduce_range=False`` (which loses
    about 14 points of top-1 agreement there to saturation: a fair "ORT best" must not be that run). With ORT's
    own chunked calibration, ``extra_options={"CalibStridedMinMax": ...}`` (:data:`ORT_CALIB_STRIDE`): without
    it ORT's histogram calibrators hold every activation of all 128 crops and exceed the 12 GiB cap (measured:
    10.8 GB RSS, then an allocation failure); chunks merge exactly for MinMax and through ORT's histogram merge
    for Entropy / Percentile. "ORT best" is the ORT setting with the highest top-1 agreement.
One evaluation process scores every model with the same code (:func:`bench.cases.effnet.agreement`), another
times them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .harness import interleaved_latency, ort_pre_process, ort_reader, run_job

THREADS = 2
CALIB_BATCH = 8  # onnxq's default QuantConfig.batch_size; ORT's reader uses the same
ORT_CALIB_STRIDE = 4  # reader batches per ORT calibration chunk (32 crops), see the module docstring

#: (name, QuantConfig keyword arguments). The lead adds pass switches here.
ONNXQ_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("onnxq-default", {}),  # 8-bit depthwise weights under reduce_range + bias correction
    ("onnxq-no-bias-correction", {"bias_correction": False}),  # what bias correction buys
    ("onnxq-auto", {"method": "auto"}),
    ("onnxq-equalize", {"equalization": True}),
    # 600 s: at 240 s on this 2-core machine under load, 24 of 65 layers kept nearest rounding (+1.2 points)
    ("onnxq-adaptive-rounding", {"weight_rounding": "adaptive", "rounding_seconds": 600.0}),
    # the accuracy-driven fallback, validated on the calibration crops (no evaluation data given)
    ("onnxq-target-top1-97", {"target": "top1>=0.97", "max_fallback_steps": 10}),
]
#: Variants that need more than the mode's per-process cap (seconds, also in --quick): the rounding
#: budget or the fallback plus the export-free quantization around it.
VARIANT_TIMEOUT_S = {"onnxq-adaptive-rounding": 1200.0, "onnxq-target-top1-97": 900.0}
#: (name, activation type, ORT calibration method, reduce_range: None = as this CPU needs it)
ORT_SETTINGS: list[tuple[str, str, str, bool | None]] = [
    (f"ort-{act.lower()}-{method}", act, method, None)
    for act in ("U8S8", "S8S8") for method in ("minmax", "entropy", "percentile")
]
#: ORT's own default reduce_range=False; run only where the CPU needs reduce_range (else the same as above)
ORT_DEFAULT_RR: list[tuple[str, str, str, bool | None]] = [
    ("ort-u8s8-minmax-no-rr", "U8S8", "minmax", False), ("ort-s8s8-minmax-no-rr", "S8S8", "minmax", False)]
#: ORT settings left out of --quick (the histogram calibrators are the slow ones; U8S8 MinMax/Entropy stay)
QUICK_SKIPPED_ORT = ("ort-u8s8-percentile", "ort-s8s8-entropy", "ort-s8s8-percentile", "ort-s8s8-minmax-no-rr")

SETTINGS = {  # crops, latency at batch 32: (warm-up, rounds, timed runs per round)
    "full": {"n_calib": 128, "n_eval": 512, "latency": {32: (1, 4, 3)}},
    "quick": {"n_calib": 128, "n_eval": 256, "latency": {32: (1, 2, 3)}},
}


# ------------------------------------------------------------------------------------ child tasks

def task_prepare(p: dict[str, Any]) -> dict[str, Any]:
    """Crops for calibration and evaluation (different seeds); the float model through the torch adapter."""
    import onnx

    from .cases.effnet import CALIB_SEED, EVAL_SEED, INPUT_NAME, export_effnet, photos, random_crops

    start = time.perf_counter()
    calib, evaluation = random_crops(p["n_calib"], CALIB_SEED), random_crops(p["n_eval"], EVAL_SEED)
    crops_s = time.perf_counter() - start
    np.savez(p["calib"], **{INPUT_NAME: calib})
    np.savez(p["eval"], **{INPUT_NAME: evaluation})
    model, notes, export_s = export_effnet(calib)
    onnx.save_model(model, p["model"])
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"export_s": round(export_s, 3), "crops_s": round(crops_s, 3), "export_notes": notes,
            "input_shape": dims, "photos": len(photos()), "n_calib": int(len(calib)), "n_eval": int(len(evaluation)),
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)}


def task_quantize_onnxq(p: dict[str, Any]) -> dict[str, Any]:
    """``onnxq.quantize`` with ``QuantConfig(**p["config"])``; a config it does not accept is skipped."""
    import onnxq
    from onnxq.errors import ConfigError

    try:
        config = onnxq.QuantConfig(**p["config"])
    except (TypeError, ConfigError) as exc:
        return {"skipped": f"not available: {type(exc).__name__}: {exc}"}
    start = time.perf_counter()
    result = onnxq.quantize(p["model"], p["calib"], config=config, latency=False)
    elapsed = time.perf_counter() - start
    result.save(p["out"])
    report = result.report
    passes = [{"name": r.get("name"), "summary": r.get("summary"), "changed": r.get("changed"),
               "seconds": r.get("seconds")} if isinstance(r, dict) else
              {"name": getattr(r, "name", None), "summary": getattr(r, "summary", None),
               "changed": getattr(r, "changed", None), "seconds": getattr(r, "seconds", None)}
              for r in (getattr(report, "passes", None) or [])]
    out = {"quantize_s": round(elapsed, 3), "reduce_range": config.reduce_range,
           "nodes_quantized": len(getattr(result.plan, "nodes_to_quantize", []) or []), "passes": passes,
           "timings": dict(getattr(report, "timings", None) or {})}
    if config.target is not None:  # the fallback: goal, steps, what it kept float, its own time
        steps = list(getattr(report, "fallback", None) or [])
        out["target"] = {"goal": report.target, "met": report.target_met, "steps": max(len(steps) - 1, 0),
                         "undone": sum(not getattr(s, "kept", True) for s in steps),
                         "values": [s.metric_value for s in steps],
                         "float_nodes": len(report.float_nodes or []),
                         "tune_s": (report.timings or {}).get("tune"),
                         "ranking": next((n for n in report.notes if n.startswith("fallback ranking")), None),
                         "where": next((n for n in report.notes if n.startswith("where the error is")), None)}
    return out


def task_quantize_ort(p: dict[str, Any]) -> dict[str, Any]:
    """ORT as a user runs it: ``quant_pre_process`` then ``quantize_static`` (QDQ, per-channel)."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    with np.load(p["calib"]) as npz:
        images = np.ascontiguousarray(npz[p["input"]], dtype=np.float32)


    start = time.perf_counter()
    model, note = ort_pre_process(p["model"], Path.cwd() / "pre.onnx")
    pre_s = time.perf_counter() - start
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[p["method"]]
    activation = {"U8S8": QuantType.QUInt8, "S8S8": QuantType.QInt8}[p["activation"]]
    reader, stride = ort_reader({p["input"]: images}, CALIB_BATCH), p.get("stride")
    if stride and len(reader) % stride:
        stride = None  # ORT refuses a stride that does not divide the batch count: one chunk
    quantize_static(model, p["out"], reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=activation, weight_type=QuantType.QInt8, calibrate_method=method,
                    reduce_range=bool(p["reduce_range"]),
                    extra_options={"CalibStridedMinMax": stride} if stride else {})
    return {"quantize_s": round(time.perf_counter() - start, 3), "pre_process_s": round(pre_s, 3),
            "pre_process": note, "reduce_range": bool(p["reduce_range"]), "calib_stride_batches": stride}


def task_evaluate(p: dict[str, Any]) -> dict[str, Any]:
    """Agreement with float (the first model) and size of every model in ``p["models"]``."""
    import onnx

    from .cases.effnet import agreement, logits

    with np.load(p["eval"]) as npz:
        images = np.ascontiguousarray(npz[p["input"]], dtype=np.float32)
    out: dict[str, Any] = {}
    reference: np.ndarray | None = None
    for name, path in p["models"].items():
        result = logits(path, images, batch_size=32, threads=p["threads"])
        reference = result if reference is None else reference
        ops = [n.op_type for n in onnx.load(path, load_external_data=False).graph.node]
        out[name] = {**agreement(reference, result), "bytes": Path(path).stat().st_size,
                     "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16],
                     "quantize_linear_nodes": ops.count("QuantizeLinear")}
    return {"models": out, "samples": int(len(images))}


def task_latency(p: dict[str, Any]) -> dict[str, Any]:
    """Median batch latency per model, in rounds with one live session at a time (see bench.classifier);
    a job of its own, so that scoring and timing each fit the per-process time cap."""
    with np.load(p["eval"]) as npz:
        images = np.ascontiguousarray(npz[p["input"]][:max(int(b) for b in p["latency_runs"])], dtype=np.float32)
    out: dict[str, Any] = {name: {"latency_ms": {}} for name in p["models"]}
    for batch_size, (warmup, rounds, per_round) in p["latency_runs"].items():
        feeds = {p["input"]: np.ascontiguousarray(images[:int(batch_size)])}
        medians = interleaved_latency(p["models"], lambda _name: feeds, p["threads"], warmup=warmup, rounds=rounds,
                                      per_round=per_round)
        for name, seconds in medians.items():
            out[name]["latency_ms"][str(batch_size)] = round(seconds * 1000.0, 3)
    return {"models": out}


# ----------------------------------------------------------------------------------------- parent

def _quantize_all(mode: str, *, model: Path, calib: Path, workdir: Path,
                  job: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every onnxq variant and ORT setting in its own process: (rows, {name: quantized model path})."""
    from onnxq.hardware import saturates_u8s8

    from .cases.effnet import INPUT_NAME

    host_rr = saturates_u8s8()
    rows: list[dict[str, Any]] = []
    models: dict[str, str] = {}
    plans = [(name, "onnxq", "bench.effnet_accuracy:task_quantize_onnxq", {"config": kwargs}, str(kwargs or "default"))
             for name, kwargs in ONNXQ_VARIANTS]
    for name, act, method, rr in ORT_SETTINGS + (ORT_DEFAULT_RR if host_rr else []):
        rr = host_rr if rr is None else rr
        plans.append((name, "ort", "bench.effnet_accuracy:task_quantize_ort",
                      {"activation": act, "method": method, "input": INPUT_NAME, "stride": ORT_CALIB_STRIDE,
                       "reduce_range": rr}, f"{act} {method}, reduce_range={rr}"))
    for name, tool, task, params, what in plans:
        row: dict[str, Any] = {"name": name, "tool": tool, "setting": what}
        if mode == "quick" and name in QUICK_SKIPPED_ORT:
            rows.append({**row, "status": "skipped: quick mode"})
            continue
        out = workdir / name / f"{name}.onnx"
        capped = {**job, "timeout_s": max(job["timeout_s"], VARIANT_TIMEOUT_S.get(name, 0.0))}
        row.update(run_job(task, {**params, "model": str(model), "calib": str(calib), "out": str(out)},
                           workdir=workdir / name, label=f"effnet-{name}", **capped))
        if row.get("skipped"):
            row["status"] = f"skipped: {row.pop('skipped')}"
        elif row["status"] == "ok" and out.exists():
            models[name] = str(out)
        rows.append(row)
    return rows, models


def _summarise(result: dict[str, Any], scores: dict[str, Any]) -> None:
    """Copy scores into the rows, add size / latency ratios, and name ORT best and onnxq best."""
    base = scores.get("float")
    result["float"] = base
    for row in result["variants"]:
        score = scores.get(row["name"])
        if score is None:
            continue
        row.update(score)
        if base:
            row["size_ratio"] = base["bytes"] / score["bytes"]
            row["latency_ratio"] = {b: base["latency_ms"][b] / t for b, t in score["latency_ms"].items() if t > 0}
    scored = [r for r in result["variants"] if r.get("top1_agreement") is not None]
    for tool in ("ort", "onnxq"):
        best = max((r for r in scored if r["tool"] == tool), key=lambda r: r["top1_agreement"], default=None)
        result[f"{tool}_best"] = best["name"] if best else None


def run(mode: str, workdir: Path, *, caps: dict[str, float], log: Callable[[str], None]) -> dict[str, Any]:
    if mode == "tiny":
        return {"status": "skipped: tiny mode"}
    from .cases.effnet import INPUT_NAME

    settings = SETTINGS[mode]
    job = {"mem_cap_gib": caps["mem_gib"], "timeout_s": caps["timeout_s"], "log": log}
    workdir.mkdir(parents=True, exist_ok=True)
    model, calib, evaluation = workdir / "lite1.onnx", workdir / "calib.npz", workdir / "eval.npz"
    prep = run_job("bench.effnet_accuracy:task_prepare",
                   {"model": str(model), "calib": str(calib), "eval": str(evaluation),
                    "n_calib": settings["n_calib"], "n_eval": settings["n_eval"]},
                   workdir=workdir / "prepare", label="effnet-prepare", **job)
    result: dict[str, Any] = {"status": "ok", "prepare": prep, "threads": THREADS, "variants": []}
    if prep["status"] != "ok":
        result.update(status="error", error=f"export / data preparation failed: {prep.get('error')}")
        return result
    result.update({k: prep[k] for k in ("n_calib", "n_eval", "export_notes", "opset", "input_shape", "photos")})
    result["variants"], models = _quantize_all(mode, model=model, calib=calib, workdir=workdir, job=job)
    runs = {str(k): v for k, v in settings["latency"].items()}
    result["latency_runs"] = runs
    params = {"models": {"float": str(model), **models}, "eval": str(evaluation), "input": INPUT_NAME,
              "threads": THREADS}
    scored = run_job("bench.effnet_accuracy:task_evaluate", params, workdir=workdir / "evaluate",
                     label="effnet-evaluate", **job)
    timed = run_job("bench.effnet_accuracy:task_latency", {**params, "latency_runs": runs},
                    workdir=workdir / "evaluate", label="effnet-latency", **job)
    failed = [r for r in (scored, timed) if r["status"] != "ok"]
    result["evaluation_status"] = failed[0]["status"] if failed else "ok"
    result["evaluation_error"] = "; ".join(f"{r['label']}: {r.get('error')}" for r in failed) or None
    scores = scored.get("models", {}) if scored["status"] == "ok" else {}
    for name, timing in (timed.get("models", {}) if timed["status"] == "ok" else {}).items():
        if name in scores:
            scores[name].update(timing)
    _summarise(result, scores)
    return result


def errors(case: dict[str, Any]) -> list[str]:
    """Benchmark errors of this case: a failed preparation or evaluation, or a failed onnxq variant
    (a failed ORT setting is a measured outcome of ORT, shown in the table)."""
    out = [f"effnet: {case['error']}"] if case.get("status") == "error" else []
    out += [f"effnet {r['name']}: {r.get('error')}" for r in case.get("variants", [])
            if r.get("tool") == "onnxq" and r.get("status") == "error"]
    if case.get("variants") and case.get("evaluation_status") not in (None, "ok"):
        out.append(f"effnet-evaluate: {case.get('evaluation_error')}")
    return out
