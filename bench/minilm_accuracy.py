"""Case 4: a real transformer, all-MiniLM-L6-v2 sentence embeddings, onnxq against ORT as a user runs it.

Model: ``bench/cases/minilm.export_minilm()`` (BERT with eager attention + mean pooling + L2 norm,
inputs ``input_ids`` / ``attention_mask`` int64 [batch, seq], output ``embeddings`` [batch, 384]),
cached in ``$ONNXQ_MINILM_CACHE`` or ``/tmp/onnxq-minilm``. Data: the 200 labelled movie-review
sentences of gensim's ``pang_lee_polarity.cor``, tokenized padded to the longest, split by
``bench/cases/minilm.split(n_calib=64)`` into 64 calibration and 136 evaluation sentences.

Variants, each quantized in its own capped process (``bench.harness.run_job``) whose working
directory is a private folder of the run's work folder (ORT's ``quant_pre_process`` and its
calibrators drop ``*.data``, ``sym_shape_infer_temp.onnx`` and augmented models into the cwd):

* onnxq default static: ``onnxq.quantize(model_path, calib_feeds, evaluation=eval_feeds)`` with the
  default ``QuantConfig()`` (transformer policy + SmoothQuant alpha 0.75), ``latency=False``;
* onnxq dynamic: ``QuantConfig(mode="dynamic")``;
* ORT: ``quant_pre_process`` (when its symbolic shape inference fails, again with
  ``skip_symbolic_shape=True``; the fallback is reported), then ``quantize_static`` (QDQ,
  ``per_channel=True``, QUInt8 activations, QInt8 weights) with MinMax, Entropy and Percentile, fed
  the 64 calibration sentences in batches of 16, and ``quantize_dynamic`` with its defaults and
  with ``per_channel=True``. A variant that fails is reported with its error, never dropped.

One evaluation process then scores the float model and every quantized model with the same code:
mean / min cosine of the quantized vs the float embeddings on the 136 evaluation sentences; a
logistic-regression sentiment probe (5-fold stratified cross-validated accuracy, same folds for every
model, each model's probe trained and tested on its own embeddings of all 200 sentences); file size;
ORT CPU latency with 2 threads at batch 1 (one sentence, unpadded) and batch 32 (median after
warm-up).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .classifier import merge_scores
from .harness import REPO_ROOT, ort_pre_process, ort_session, run_job

N_CALIB = 64
CALIB_BATCH = 16
THREADS = 2
FOLDS = 5

VARIANTS = [
    # name, tool, kind, description
    ("onnxq-static", "onnxq", "static", "onnxq default static"),
    ("onnxq-dynamic", "onnxq", "dynamic", "onnxq dynamic"),
    ("ort-static-minmax", "ort", "minmax", "ORT quantize_static MinMax"),
    ("ort-static-entropy", "ort", "entropy", "ORT quantize_static Entropy"),
    ("ort-static-percentile", "ort", "percentile", "ORT quantize_static Percentile"),
    ("ort-dynamic", "ort", "dynamic", "ORT quantize_dynamic defaults"),
    ("ort-dynamic-pc", "ort", "dynamic_pc", "ORT quantize_dynamic per_channel=True"),
]
ORT_STATIC = ("ort-static-minmax", "ort-static-entropy", "ort-static-percentile")
#: --quick leaves out the slowest ORT variants (about a minute together); the full mode runs all
QUICK_SKIP = ("ort-static-entropy", "ort-static-percentile", "ort-dynamic-pc")

LATENCY_RUNS = {  # (warm-up, timed) runs per batch size
    "full": {1: (20, 200), 32: (5, 40)},
    "quick": {1: (5, 50), 32: (2, 6)},
}
TIMEOUT_S = {"full": 900.0, "quick": 150.0}  # per child; Entropy / Percentile must fit in it


def _child_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ------------------------------------------------------------------------------------ child tasks

def task_prepare(p: dict[str, Any]) -> dict[str, Any]:
    """Export (or reuse) the float model and write the tokenized sentences, labels and split."""
    _child_env()
    from .cases.minilm import export_minilm, load_sentences, split, tokenize

    start = time.perf_counter()
    model_path = export_minilm()
    export_s = time.perf_counter() - start
    sentences, labels = load_sentences()
    feeds = tokenize(sentences)
    order = np.random.default_rng(0).permutation(len(sentences))  # the permutation split() uses
    calib_idx, eval_idx = order[:N_CALIB], order[N_CALIB:]
    calib, evaluation = split(n_calib=N_CALIB)
    for name in feeds:  # the indices reproduce split() exactly
        if not (np.array_equal(feeds[name][calib_idx], calib[name])
                and np.array_equal(feeds[name][eval_idx], evaluation[name])):
            raise RuntimeError("the stored split does not match bench.cases.minilm.split()")
    np.savez(p["data"], labels=labels, calib_idx=calib_idx, eval_idx=eval_idx, **feeds)
    return {"model": str(model_path), "export_or_reuse_s": round(export_s, 3), "sentences": len(sentences),
            "positives": int(labels.sum()), "seq_len": int(feeds["input_ids"].shape[1])}


def _load(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    with np.load(path) as npz:
        feeds = {k: np.asarray(npz[k]) for k in ("input_ids", "attention_mask")}
        labels, calib_idx, eval_idx = npz["labels"], npz["calib_idx"], npz["eval_idx"]
    calib = {k: v[calib_idx] for k, v in feeds.items()}
    evaluation = {k: v[eval_idx] for k, v in feeds.items()}
    return feeds, calib, evaluation, labels


def task_quantize_onnxq(p: dict[str, Any]) -> dict[str, Any]:
    import onnxq

    _, calib, evaluation, _ = _load(p["data"])
    start = time.perf_counter()
    if p["kind"] == "static":
        result = onnxq.quantize(p["model"], calib, evaluation=evaluation, latency=False)
    else:
        result = onnxq.quantize(p["model"], config=onnxq.QuantConfig(mode="dynamic"), evaluation=evaluation,
                                latency=False)
    elapsed = time.perf_counter() - start
    result.save(p["out"])
    return {"quantize_s": round(elapsed, 3), "plan_notes": [str(n)[:300] for n in result.plan.notes][:10]}


def task_quantize_ort(p: dict[str, Any]) -> dict[str, Any]:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    from .cases.minilm import iter_batches

    _, calib, _, _ = _load(p["data"])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(list(iter_batches(calib, CALIB_BATCH)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    work = Path.cwd()  # a private folder: ORT drops its side files here
    start = time.perf_counter()
    model, pre_note = ort_pre_process(p["model"], work / "pre.onnx")
    pre_s = time.perf_counter() - start
    kind = p["kind"]
    if kind in ("dynamic", "dynamic_pc"):
        quantize_dynamic(model, p["out"], per_channel=(kind == "dynamic_pc"))
    else:
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[kind]
        quantize_static(model, p["out"], Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method)
    elapsed = time.perf_counter() - start
    return {"quantize_s": round(elapsed, 3), "pre_process_s": round(pre_s, 3), "pre_process": pre_note}


def _trim(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the padding columns no row of this batch uses (a user pads a batch to its own longest)."""
    length = int(feeds["attention_mask"].sum(axis=1).max())
    return {k: np.ascontiguousarray(v[:, :length]) for k, v in feeds.items()}


def _latency_ms(session: Any, feeds: dict[str, np.ndarray], warmup: int, runs: int) -> float:
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def task_evaluate(p: dict[str, Any]) -> dict[str, Any]:
    """Score every model with the same code; float first."""
    import onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from .cases.minilm import OUTPUT_NAME, cosine, iter_batches

    feeds, _, evaluation, labels = _load(p["data"])
    with np.load(p["data"]) as npz:
        eval_idx = npz["eval_idx"]
    folds = list(StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=0).split(np.zeros(len(labels)), labels))
    batch1 = _trim({k: v[:1] for k, v in evaluation.items()})
    batch32 = _trim({k: v[:32] for k, v in evaluation.items()})
    reference: np.ndarray | None = None
    out: dict[str, Any] = {}
    for name, path in p["models"].items():
        session = ort_session(path, p["threads"])
        emb = np.concatenate([session.run([OUTPUT_NAME], b)[0] for b in iter_batches(feeds, 32)]).astype(np.float64)
        if reference is None:
            reference = emb
        cos = cosine(reference[eval_idx], emb[eval_idx])
        probe = LogisticRegression(max_iter=5000)
        scores = cross_val_score(probe, emb, labels, cv=folds)
        latency = {}
        for batch_size, (warmup, runs) in p["latency_runs"].items():
            batch = batch1 if int(batch_size) == 1 else batch32
            latency[str(batch_size)] = round(_latency_ms(session, batch, warmup, runs), 3)
        ops = [n.op_type for n in onnx.load(path, load_external_data=False).graph.node]
        out[name] = {
            "mean_cosine": float(cos.mean()),
            "min_cosine": float(cos.min()),
            "probe_accuracy": float(scores.mean()),
            "probe_fold_accuracies": [float(s) for s in scores],
            "bytes": Path(path).stat().st_size,
            "latency_ms": latency,
            "quantize_linear_nodes": ops.count("QuantizeLinear"),
            "integer_ops": sum(op in ("MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "MatMulIntegerToFloat")
                               for op in ops),
        }
        del session
    return {"models": out, "batch_shapes": {"1": list(batch1["input_ids"].shape),
                                            "32": list(batch32["input_ids"].shape)}}


# ----------------------------------------------------------------------------------------- parent

def _repo_entries() -> set[str]:
    """Model / tensor-data files at the top of the repository and of bench/: the side files ORT's
    ``quant_pre_process`` and calibrators drop into their cwd (``<uuid>.data``,
    ``sym_shape_infer_temp.onnx``, ``augmented_model.onnx``) would show up here. Other files are
    ignored, so that unrelated edits made while the benchmark runs are not reported."""
    found = set()
    for folder, prefix in ((REPO_ROOT, ""), (REPO_ROOT / "bench", "bench/")):
        for path in folder.iterdir():
            if path.suffix in (".onnx", ".data") or "sym_shape_infer" in path.name:
                found.add(prefix + path.name)
    return found


def run(mode: str, workdir: Path, *, caps: dict[str, float], log: Callable[[str], None]) -> dict[str, Any]:
    if mode == "tiny":
        return {"status": "skipped: tiny mode"}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # inherited by every child (run_job copies os.environ)
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    before = _repo_entries()
    timeout = min(caps["timeout_s"], TIMEOUT_S.get(mode, caps["timeout_s"]))
    job = {"mem_cap_gib": caps["mem_gib"], "timeout_s": timeout, "log": log}
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "sentences.npz"
    # the export may take minutes the first time (it is cached afterwards): give it the mode's full cap
    prep = run_job("bench.minilm_accuracy:task_prepare", {"data": str(data)}, workdir=workdir / "prepare",
                   label="minilm-prepare", mem_cap_gib=caps["mem_gib"], timeout_s=caps["timeout_s"], log=log)
    result: dict[str, Any] = {"status": "ok", "prepare": prep, "threads": THREADS, "n_calib": N_CALIB,
                              "folds": FOLDS, "variants": []}
    if prep["status"] != "ok":
        result.update(status="error", error=f"model export / data preparation failed: {prep.get('error')}")
        return result
    model = prep["model"]
    result.update(model=model, sentences=prep["sentences"], positives=prep["positives"], seq_len=prep["seq_len"],
                  n_eval=prep["sentences"] - N_CALIB)
    models = {"float": model}
    for name, tool, kind, description in VARIANTS:
        if mode == "quick" and name in QUICK_SKIP:
            continue
        folder = workdir / name  # private cwd of the child
        out = folder / f"{name}.onnx"
        params = {"model": model, "data": str(data), "kind": kind, "out": str(out)}
        task = f"bench.minilm_accuracy:task_quantize_{tool}"
        row = run_job(task, params, workdir=folder, label=f"minilm-{name}", **job)
        result["variants"].append({"name": name, "tool": tool, "kind": kind, "description": description, **row})
        if row["status"] == "ok" and out.exists():
            models[name] = str(out)
    runs = {str(k): v for k, v in LATENCY_RUNS[mode].items()}
    result["latency_runs"] = runs
    evaluation = run_job("bench.minilm_accuracy:task_evaluate",
                         {"models": models, "data": str(data), "threads": THREADS, "latency_runs": runs},
                         workdir=workdir / "evaluate", label="minilm-evaluate", mem_cap_gib=caps["mem_gib"],
                         timeout_s=caps["timeout_s"], log=log)
    result["evaluation_status"] = evaluation["status"]
    result["evaluation_error"] = evaluation.get("error")
    result["batch_shapes"] = evaluation.get("batch_shapes")
    scores = evaluation.get("models", {}) if evaluation["status"] == "ok" else {}
    result["float"] = merge_scores(result["variants"], scores)
    result["repo_leftovers"] = sorted(_repo_entries() - before)
    if result["repo_leftovers"]:
        log(f"WARNING: new entries in the repository during the MiniLM case: {result['repo_leftovers']}")
    return result
