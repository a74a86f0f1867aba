"""Case 6: every onnxq mode, and the automatic fallback, on the MNIST CNN and on MiniLM (issues 5 and 6).

Models and data are those of the MNIST case (``bench.mnist_accuracy.task_prepare``: ccexam's pretrained
``MNISTNet`` exported through onnxq's torch adapter, real MNIST) and of the MiniLM case
(``bench.minilm_accuracy.task_prepare``: ``bench/cases/minilm.export_minilm`` and ``split(n_calib=64)``).

Modes, each quantized by onnxq in its own capped process (``bench.harness.run_job``):
static int8 (default ``QuantConfig()``), dynamic, float16, 16x8 (``activation_type="int16"``),
weight-only RTN int4 and int8 (block 32), integer-only I/O (``io_type="uint8"``, static).

Fallback: ``QuantConfig(target=...)``: on MNIST ``accuracy_drop<=0.1`` (labels of the MNIST validation
split, 2,000 images; 1,000 in --quick; the test set is only used to score), on MiniLM
``cosine>=0.995`` (label-free, on the 136 evaluation sentences, the same ones that are scored: a user
tunes on the data they validate with). When the default static model already meets a target the
fallback takes 0 steps, so a stricter target (:data:`STRICT`) is also run to show what the fallback
does and costs.

One evaluation process per model then scores every model with the same code (MNIST: test accuracy,
top-1 agreement and logit SQNR vs float; MiniLM: mean / min cosine of the embeddings vs float), file
size, and ORT CPU latency with :data:`THREADS` intra-op threads at batch 1 and 32: in rounds, each
round opens one session per model in turn, warms it up, times its runs and closes it (one session
alive at a time, as ``bench.classifier`` does); median of all timed runs. The integer-I/O model is
fed inputs quantized with its recorded parameters (quantizing the input is not timed) and its
outputs are dequantized before scoring.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .harness import interleaved_latency, ort_session, run_job

THREADS = 2
TARGETS = {"mnist": "accuracy_drop<=0.1", "minilm": "cosine>=0.995"}  # the goals
STRICT = {"mnist": "sqnr>=45", "minilm": "cosine>=0.999"}            # so that the fallback has work to do

MODES = [
    # name, QuantConfig kwargs, description
    ("static-int8", {}, "static int8 (default)"),
    ("dynamic", {"mode": "dynamic"}, "dynamic int8"),
    ("float16", {"mode": "float16"}, "float16"),
    ("16x8", {"activation_type": "int16"}, "16x8 (int16 activations, int8 weights)"),
    ("wo-int4", {"mode": "weight-only", "weight_bits": 4, "block_size": 32}, "weight-only int4 RTN, block 32"),
    ("wo-int8", {"mode": "weight-only", "weight_bits": 8, "block_size": 32}, "weight-only int8 RTN, block 32"),
    ("io-uint8", {"io_type": "uint8"}, "static int8, uint8 inputs/outputs"),
]

SETTINGS = {
    "full": {"mnist_calib": 512, "mnist_eval": 10_000, "mnist_val": 2_000, "steps": 20, "tune_s": 300.0,
             "latency": {"mnist": {1: (10, 5, 40), 32: (5, 5, 10)}, "minilm": {1: (5, 3, 30), 32: (2, 3, 4)}}},
    "quick": {"mnist_calib": 256, "mnist_eval": 2_000, "mnist_val": 1_000, "steps": 8, "tune_s": 90.0,
              "latency": {"mnist": {1: (3, 2, 10), 32: (2, 2, 4)}, "minilm": {1: (2, 1, 10), 32: (1, 1, 2)}}},
}


# ------------------------------------------------------------------------------------ child tasks

def task_prepare_mnist(p: dict[str, Any]) -> dict[str, Any]:
    """The MNIST case's export and data (``bench.mnist_accuracy.task_prepare``) plus a labelled
    validation file (MNIST's validation split) for the fallback."""
    from .cases.mnist import INPUT_NAME, load_mnist, normalize
    from .mnist_accuracy import task_prepare

    out = task_prepare(p)
    data = load_mnist()
    np.savez(p["val"], **{INPUT_NAME: normalize(data["val_x"][:p["n_val"]]), "labels": data["val_y"][:p["n_val"]]})
    out["n_val"] = int(min(p["n_val"], len(data["val_y"])))
    return out


def _report_summary(report: Any) -> dict[str, Any]:
    outputs = [{"name": o.name, "cosine": o.cosine, "min_cosine": o.min_cosine, "sqnr_db": o.sqnr_db}
               for o in report.outputs]
    steps = [{"step": s.step, "node": s.node, "op_type": s.op_type, "metric_value": s.metric_value,
              "goal_met": s.goal_met, "nodes": list(s.nodes), "tensor": s.tensor} for s in report.fallback]
    fallback_nodes = sorted({n for s in report.fallback for n in s.nodes})
    return {"report_outputs": outputs, "report_samples": report.samples, "report_size_ratio": report.size_ratio,
            "report_float_accuracy": report.float_accuracy, "report_quant_accuracy": report.quant_accuracy,
            "target": report.target, "target_met": report.target_met, "fallback": steps,
            "fallback_steps": max(len(steps) - 1, 0) if steps else None, "fallback_nodes": fallback_nodes,
            "float_nodes": list(report.float_nodes), "float_nodes_count": len(report.float_nodes),
            "notes": [str(n)[:300] for n in report.notes][:12]}


def task_quantize(p: dict[str, Any]) -> dict[str, Any]:
    """``onnxq.quantize`` with ``QuantConfig(**p["config"])``; calibration data only where the mode uses it."""
    import onnxq

    config = onnxq.QuantConfig(**p["config"])
    if p["case"] == "minilm":
        from .minilm_accuracy import _load

        _, calib, evaluation, _ = _load(p["data"])
    else:
        calib, evaluation = p["calib"], p["val"]
    needs_calib = config.mode.value == "static" or (config.mode.value == "weight-only"
                                                    and config.weight_only_algorithm == "gptq")
    start = time.perf_counter()
    result = onnxq.quantize(p["model"], calib if needs_calib else None, config=config, evaluation=evaluation,
                            latency=False)
    elapsed = time.perf_counter() - start
    result.save(p["out"])
    return {"quantize_s": round(elapsed, 3), **_report_summary(result.report)}


def _io(path: str) -> dict[str, Any]:
    import onnxq

    return onnxq.io_params(path)


def _feed(io: dict[str, Any], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: (np.ascontiguousarray(io[k].quantize(v)) if k in io else v) for k, v in feeds.items()}


def _fetch(io: dict[str, Any], name: str, value: np.ndarray) -> np.ndarray:
    return (io[name].dequantize(value) if name in io else value).astype(np.float64)


def _latency(models: dict[str, str], batches: dict[str, dict[str, np.ndarray]],
             runs: dict[str, Any], threads: int) -> dict[str, dict[str, float]]:
    """Median ms per model and batch size; rounds over the models, one live session at a time."""
    out: dict[str, dict[str, float]] = {name: {} for name in models}
    ios = {name: _io(path) for name, path in models.items()}
    for batch_size, (warmup, rounds, per_round) in runs.items():
        medians = interleaved_latency(models, lambda name: _feed(ios[name], batches[batch_size]), threads,
                                      warmup=warmup, rounds=rounds, per_round=per_round)
        for name, seconds in medians.items():
            out[name][batch_size] = round(seconds * 1000.0, 4)
    return out


def _ops(path: str) -> dict[str, Any]:
    import onnx

    ops = [n.op_type for n in onnx.load(path, load_external_data=False).graph.node]
    return {"quantize_linear_nodes": ops.count("QuantizeLinear"), "matmul_nbits": ops.count("MatMulNBits"),
            "integer_ops": sum(op in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul",
                                      "DynamicQuantizeLinear", "MatMulIntegerToFloat") for op in ops),
            "cast_nodes": ops.count("Cast"), "bytes": Path(path).stat().st_size}


def task_evaluate_mnist(p: dict[str, Any]) -> dict[str, Any]:
    from .cases.mnist import INPUT_NAME, OUTPUT_NAME

    with np.load(p["eval"]) as npz:
        images, labels = np.ascontiguousarray(npz[INPUT_NAME], dtype=np.float32), npz["labels"]
    out: dict[str, Any] = {}
    float_logits: np.ndarray | None = None
    for name, path in p["models"].items():
        io = _io(path)
        session = ort_session(path, p["threads"])
        logits = np.concatenate([_fetch(io, OUTPUT_NAME, session.run([OUTPUT_NAME], _feed(io, {INPUT_NAME: images[i:i + 256]}))[0])
                                 for i in range(0, len(images), 256)])
        del session
        if float_logits is None:
            float_logits = logits
        noise = float(np.sum((logits - float_logits) ** 2))
        top1 = logits.argmax(1)
        out[name] = {"accuracy": float((top1 == labels).mean()), "correct": int((top1 == labels).sum()),
                     "top1_agreement": float((top1 == float_logits.argmax(1)).mean()),
                     "logit_sqnr_db": None if noise == 0 else 10 * float(np.log10(np.sum(float_logits ** 2) / noise)),
                     "integer_io": sorted(io), **_ops(path)}
    batches = {b: {INPUT_NAME: np.ascontiguousarray(images[:int(b)])} for b in p["latency_runs"]}
    for name, lat in _latency(p["models"], batches, p["latency_runs"], p["threads"]).items():
        out[name]["latency_ms"] = lat
    return {"models": out, "samples": int(len(labels))}


def task_evaluate_minilm(p: dict[str, Any]) -> dict[str, Any]:
    from .cases.minilm import OUTPUT_NAME, cosine, iter_batches
    from .minilm_accuracy import _load, _trim

    _, _, evaluation, _ = _load(p["data"])
    out: dict[str, Any] = {}
    reference: np.ndarray | None = None
    for name, path in p["models"].items():
        io = _io(path)
        session = ort_session(path, p["threads"])
        emb = np.concatenate([_fetch(io, OUTPUT_NAME, session.run([OUTPUT_NAME], _feed(io, b))[0])
                              for b in iter_batches(evaluation, 32)])
        del session
        if reference is None:
            reference = emb
        cos = cosine(reference, emb)
        out[name] = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "integer_io": sorted(io),
                     **_ops(path)}
    batches = {"1": _trim({k: v[:1] for k, v in evaluation.items()}),
               "32": _trim({k: v[:32] for k, v in evaluation.items()})}
    for name, lat in _latency(p["models"], batches, p["latency_runs"], p["threads"]).items():
        out[name]["latency_ms"] = lat
    return {"models": out, "samples": int(len(evaluation["input_ids"])),
            "batch_shapes": {b: list(v["input_ids"].shape) for b, v in batches.items()}}


# ----------------------------------------------------------------------------------------- parent

def _quantize_all(case: str, base_params: dict[str, Any], settings: dict[str, Any], workdir: Path,
                  job: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    variants = [(name, cfg, desc, "mode") for name, cfg, desc in MODES]
    for kind, goal in (("target", TARGETS[case]), ("strict", STRICT[case])):
        variants.append((f"fallback-{kind}", {"target": goal, "max_fallback_steps": settings["steps"],
                                              "max_tune_seconds": settings["tune_s"]},
                         f"static int8 + fallback to {goal}", kind))
    rows, models = [], {}
    for name, config, description, kind in variants:
        folder = workdir / name
        out = folder / f"{name}.onnx"
        row = run_job("bench.modes_and_fallback:task_quantize",
                      {**base_params, "case": case, "config": config, "out": str(out)},
                      workdir=folder, label=f"modes-{case}-{name}", **job)
        rows.append({"name": name, "kind": kind, "description": description, "config": config, **row})
        # a fallback that took no step is the static model again: not scored twice
        if row["status"] == "ok" and out.exists() and not (kind != "mode" and not row.get("fallback_steps")):
            models[name] = str(out)
    return rows, models


def _merge(rows: list[dict[str, Any]], scores: dict[str, Any]) -> dict[str, Any] | None:
    base = scores.get("float")
    static = scores.get("static-int8")
    for row in rows:
        score = scores.get(row["name"])
        if score is None:
            continue
        row.update(score)
        if base:
            row["size_ratio"] = base["bytes"] / score["bytes"]
            row["latency_ratio"] = {b: base["latency_ms"][b] / ms for b, ms in score["latency_ms"].items() if ms > 0}
        if static and row["kind"] != "mode":  # the latency cost of the float nodes against plain int8
            row["vs_int8_latency"] = {b: ms / static["latency_ms"][b] for b, ms in score["latency_ms"].items()
                                      if static["latency_ms"].get(b)}
    return base


def _run_mnist(mode: str, workdir: Path, settings: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    model, calib, test, val = (workdir / "mnistnet.onnx", workdir / "calib.npz", workdir / "test.npz",
                               workdir / "val.npz")
    prep = run_job("bench.modes_and_fallback:task_prepare_mnist",
                   {"model": str(model), "calib": str(calib), "eval": str(test), "val": str(val),
                    "n_calib": settings["mnist_calib"], "n_eval": settings["mnist_eval"],
                    "n_val": settings["mnist_val"]},
                   workdir=workdir / "prepare", label="modes-mnist-prepare", **job)
    result: dict[str, Any] = {"status": "ok", "threads": THREADS, "variants": [], "target": TARGETS["mnist"],
                              "strict_target": STRICT["mnist"]}
    if prep["status"] != "ok":
        result.update(status="error", error=f"export / data preparation failed: {prep.get('error')}")
        return result
    result.update(n_calib=prep["n_calib"], n_eval=prep["n_eval"], n_val=prep["n_val"])
    rows, models = _quantize_all("mnist", {"model": str(model), "calib": str(calib), "val": str(val)},
                                 settings, workdir, job)
    runs = {str(k): v for k, v in settings["latency"]["mnist"].items()}
    result.update(variants=rows, latency_runs=runs)
    scored = run_job("bench.modes_and_fallback:task_evaluate_mnist",
                     {"models": {"float": str(model), **models}, "eval": str(test), "threads": THREADS,
                      "latency_runs": runs}, workdir=workdir / "evaluate", label="modes-mnist-evaluate", **job)
    result["evaluation_status"], result["evaluation_error"] = scored["status"], scored.get("error")
    result["float"] = _merge(rows, scored.get("models", {}) if scored["status"] == "ok" else {})
    return result


def _run_minilm(mode: str, workdir: Path, settings: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "sentences.npz"
    prep = run_job("bench.minilm_accuracy:task_prepare", {"data": str(data)}, workdir=workdir / "prepare",
                   label="modes-minilm-prepare", **job)
    result: dict[str, Any] = {"status": "ok", "threads": THREADS, "variants": [], "target": TARGETS["minilm"],
                              "strict_target": STRICT["minilm"]}
    if prep["status"] != "ok":
        result.update(status="error", error=f"model export / data preparation failed: {prep.get('error')}")
        return result
    model = prep["model"]
    result.update(model=model, n_calib=64, n_eval=prep["sentences"] - 64, seq_len=prep["seq_len"])
    rows, models = _quantize_all("minilm", {"model": model, "data": str(data)}, settings, workdir, job)
    runs = {str(k): v for k, v in settings["latency"]["minilm"].items()}
    result.update(variants=rows, latency_runs=runs)
    scored = run_job("bench.modes_and_fallback:task_evaluate_minilm",
                     {"models": {"float": model, **models}, "data": str(data), "threads": THREADS,
                      "latency_runs": runs}, workdir=workdir / "evaluate", label="modes-minilm-evaluate", **job)
    result["evaluation_status"], result["evaluation_error"] = scored["status"], scored.get("error")
    result["batch_shapes"] = scored.get("batch_shapes")
    result["float"] = _merge(rows, scored.get("models", {}) if scored["status"] == "ok" else {})
    return result


def run(mode: str, workdir: Path, *, caps: dict[str, float], log: Callable[[str], None]) -> dict[str, Any]:
    if mode == "tiny":
        return {"status": "skipped: tiny mode"}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # inherited by every child
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    settings = SETTINGS[mode]
    job = {"mem_cap_gib": caps["mem_gib"], "timeout_s": caps["timeout_s"], "log": log}
    result: dict[str, Any] = {"status": "ok", "mode": mode, "targets": dict(TARGETS), "strict_targets": dict(STRICT),
                              "max_fallback_steps": settings["steps"], "max_tune_seconds": settings["tune_s"]}
    for name, runner in (("mnist", _run_mnist), ("minilm", _run_minilm)):
        try:
            log(f"modes and fallback: {name}")
            result[name] = runner(mode, workdir / name, settings, job)
        except Exception as exc:  # one model failing still reports the other
            result[name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            log(f"modes and fallback, {name} failed: {exc}")
    return result


def errors(case: dict[str, Any]) -> list[str]:
    """Failures of this case that are benchmark errors (an onnxq mode that fails is one)."""
    out = []
    for name in ("mnist", "minilm"):
        sub = case.get(name) or {}
        if sub.get("status") == "error":
            out.append(f"modes_and_fallback {name}: {sub.get('error')}")
        for row in sub.get("variants", []):
            if row.get("status") == "error":
                out.append(f"modes_and_fallback {name} {row['name']}: {row.get('error')}")
        if sub.get("variants") and sub.get("evaluation_status") not in (None, "ok"):
            out.append(f"modes_and_fallback {name}-evaluate: {sub.get('evaluation_error')}")
    return out
