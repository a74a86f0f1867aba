"""Smoke test of the benchmark scripts: ``python -m bench --tiny`` runs end to end and writes its
results, so the benchmarks cannot rot. No timing or ratio is asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def test_bench_tiny_runs_and_writes_results(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    repo_report = REPO / "BENCHMARKS.md"
    before = repo_report.stat().st_mtime_ns if repo_report.exists() else None

    proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--out", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "tiny"
    assert {"machine", "caps", "cases", "targets", "errors", "duration_s"} <= set(results)
    assert results["errors"] == []
    assert {"calibration_scaling", "entropy_timing", "digits_accuracy", "minilm", "mnist",
            "keras_mnist"} <= set(results["cases"])
    # the MiniLM case needs a real transformer export and minutes: --tiny records it as skipped
    assert results["cases"]["minilm"] == {"status": "skipped: tiny mode"}
    minilm_targets = [t for t in results["targets"] if "MiniLM" in t["target"] and "fallback" not in t["target"]
                      and not t["target"].startswith("issue 13")]  # bench/speed_size.py's, checked below
    assert len(minilm_targets) == 2 and all(t["status"] == "NOT MEASURED" for t in minilm_targets)
    # so are the CNN cases on real MNIST (a pretrained export, a Keras training run); their five targets each
    # are still listed, as not measured
    for name, label in (("mnist", "MNIST CNN"), ("keras_mnist", "Keras CNN")):
        assert results["cases"][name] == {"status": "skipped: tiny mode"}
        cnn_targets = [t for t in results["targets"] if t["target"].startswith(label + ":")]
        assert len(cnn_targets) == 5 and all(t["status"] == "NOT MEASURED" for t in cnn_targets)
    # every onnxq mode + the automatic fallback on MNIST and MiniLM: skipped too, its four fallback targets listed
    assert results["cases"]["modes_and_fallback"] == {"status": "skipped: tiny mode"}
    # issue 13's speed / size case: skipped, its targets listed as not measured
    assert results["cases"]["speed_size"] == {"status": "skipped: tiny mode"}
    speed_targets = [t for t in results["targets"] if t["target"].startswith("issue 13, ")]
    assert speed_targets and all(t["status"] == "NOT MEASURED" for t in speed_targets)
    # issue 14's Dask scale-out case: skipped too, its targets listed as not measured
    assert results["cases"]["dask_scaling"] == {"status": "skipped: tiny mode"}
    dask_targets = [t for t in results["targets"] if t["target"].startswith("issue 14, ")]
    assert len(dask_targets) == 5 and all(t["status"] == "NOT MEASURED" for t in dask_targets)
    fallback_targets = [t for t in results["targets"] if " fallback reaches " in t["target"]]
    assert len(fallback_targets) == 4 and all(t["status"] == "NOT MEASURED" for t in fallback_targets)

    rows = results["cases"]["calibration_scaling"]["rows"]
    assert {(r["tool"], r["method"]) for r in rows} >= {("onnxq", "entropy"), ("ort", "entropy"),
                                                        ("onnxq", "minmax"), ("ort", "minmax")}
    for row in rows:
        assert row["status"] in ("ok", "memory_cap", "timeout")
        assert row["peak_rss_mb"] is not None

    timing = results["cases"]["entropy_timing"]
    assert timing["onnxq"]["status"] == "ok" and timing["ort"]["status"] == "ok"

    digits = results["cases"]["digits_accuracy"]
    assert digits["evaluation_status"] == "ok"
    names = {v["name"] for v in digits["variants"]}
    assert {"onnxq-default", "onnxq-entropy", "ort-default", "ort-entropy"} <= names
    for variant in digits["variants"]:
        assert variant["status"] == "ok", variant.get("error")
        assert 0.0 <= variant["accuracy"] <= 1.0
        assert {"top1_agreement", "size_ratio", "latency_ratio"} <= set(variant)

    assert results["targets"] and all(t["status"] in ("MET", "NOT MET", "NOT MEASURED") for t in results["targets"])
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Targets" in report and "## Machine" in report
    # --tiny never touches the repository's report
    after = repo_report.stat().st_mtime_ns if repo_report.exists() else None
    assert after == before


def _cnn_case(float_acc: float, ours_acc: float, ort_accs: dict[str, float], *, ours_ms: float, ort_ms: float,
              float_ms: float = 4.0, float_bytes: int = 1_700_000, ours_bytes: int = 430_000) -> dict:
    def variant(name: str, tool: str, kind: str, acc: float, ms: float, size: int) -> dict:
        return {"name": name, "tool": tool, "kind": kind, "description": name, "status": "ok", "accuracy": acc,
                "top1_agreement": 1.0, "logit_sqnr_db": 40.0, "bytes": size, "size_ratio": float_bytes / size,
                "latency_ms": {"1": ms / 10, "32": ms}, "latency_ratio": {"1": float_ms / ms, "32": float_ms / ms},
                "quantize_linear_nodes": 8, "integer_ops": 0, "quantize_s": 1.0, "peak_rss_mb": 100.0,
                "label": name, "child_wall_s": 1.0}

    variants = [variant("onnxq-default", "onnxq", "default", ours_acc, ours_ms, ours_bytes)]
    variants += [variant(name, "ort", name.split("-")[1], acc, ort_ms, ours_bytes) for name, acc in ort_accs.items()]
    return {"status": "ok", "n_eval": 10000, "threads": 2, "variants": variants,
            "latency_runs": {"1": [1, 1, 1], "32": [1, 1, 1]},
            "float": {"accuracy": float_acc, "bytes": float_bytes, "latency_ms": {"1": float_ms / 10, "32": float_ms}}}


def test_cnn_targets_are_computed_from_the_measured_numbers() -> None:
    from bench import write_report

    results = {"mode": "quick", "caps": {"mem_gib": 12.0, "timeout_s": 300.0}, "cases": {
        # MNIST: drop 0.05 points, ties ORT's best, 2.5x faster than float, as fast as ORT, 3.95x smaller
        "mnist": _cnn_case(0.9905, 0.9900, {"ort-minmax": 0.9900, "ort-entropy": 0.9895, "ort-dynamic": 0.9950},
                           ours_ms=1.6, ort_ms=1.7),
        # Keras: drop 0.3 points, 0.1 below ORT Percentile, 1.6x, slower than ORT, 3.95x
        "keras_mnist": _cnn_case(0.9900, 0.9870, {"ort-minmax": 0.9860, "ort-percentile": 0.9880},
                                 ours_ms=2.5, ort_ms=2.0),
    }}
    targets = {t["target"]: t for t in write_report.compute_targets(results)}
    status = {name: t["status"] for name, t in targets.items()}
    assert status["MNIST CNN: onnxq default static test-accuracy drop vs float"] == "MET"
    assert status["MNIST CNN: onnxq default static accuracy >= best ORT quantize_static"] == "MET"  # dynamic excluded
    assert status["MNIST CNN: int8 (onnxq default static) latency speed-up vs float, batch 32"] == "MET"
    assert status["MNIST CNN: onnxq int8 latency vs ORT's quantized model (ORT / onnxq), batch 32"] == "MET"
    assert status["MNIST CNN: model size float / int8 (onnxq default static)"] == "MET"
    assert status["Keras CNN: onnxq default static test-accuracy drop vs float"] == "NOT MET"
    assert targets["Keras CNN: onnxq default static test-accuracy drop vs float"]["measured"] == pytest.approx(0.3)
    assert status["Keras CNN: onnxq default static accuracy >= best ORT quantize_static"] == "NOT MET"
    assert "ort-percentile" in targets["Keras CNN: onnxq default static accuracy >= best ORT quantize_static"]["detail"]
    assert status["Keras CNN: int8 (onnxq default static) latency speed-up vs float, batch 32"] == "NOT MET"
    assert status["Keras CNN: onnxq int8 latency vs ORT's quantized model (ORT / onnxq), batch 32"] == "NOT MET"

    report = write_report.render(results)
    assert "## 5. A real pretrained CNN on real MNIST" in report and "## 6. A Keras CNN" in report
    assert "0.30 points" in report and "+0.00 points" in report


def test_only_merges_into_the_existing_results(tmp_path: Path) -> None:
    """``--only CASE`` replaces that case's results and keeps every other case and the first run's machine."""
    from bench.__main__ import _merge_into

    old = {"mode": "full", "command": "python -m bench", "started_utc": "2026-01-01 00:00",
           "machine": {"cpu_model": "A"}, "source": {"onnxq_sources_sha256": "old"}, "duration_s": 100.0,
           "cases": {"mnist": {"status": "ok", "x": 1}, "modes_and_fallback": {"status": "old"}},
           "case_errors": {"modes_and_fallback": "broken"}}
    (tmp_path / "results.json").write_text(json.dumps(old))
    new = {"mode": "full", "command": "python -m bench --only modes_and_fallback", "started_utc": "2026-01-02 00:00",
           "machine": {"cpu_model": "A"}, "source": {"onnxq_sources_sha256": "new"}, "duration_s": 5.0,
           "cases": {"modes_and_fallback": {"status": "ok"}}, "case_errors": {},
           "case_runs": {"modes_and_fallback": {"started_utc": "2026-01-02 00:00", "mode": "full"}}}
    merged = _merge_into(tmp_path / "results.json", new, ["modes_and_fallback"], log=lambda _m: None)
    assert merged["cases"] == {"mnist": {"status": "ok", "x": 1}, "modes_and_fallback": {"status": "ok"}}
    assert merged["case_errors"] == {}
    assert merged["machine"] == {"cpu_model": "A"} and merged["started_utc"] == "2026-01-01 00:00"
    assert merged["case_runs"]["mnist"]["started_utc"] == "2026-01-01 00:00"
    assert merged["case_runs"]["modes_and_fallback"]["started_utc"] == "2026-01-02 00:00"
    assert merged["last_partial_run"]["cases"] == ["modes_and_fallback"]


def _speed_case(*, ours_ms: dict[str, float], ort_ms: dict[str, float], float_ms: dict[str, float],
                ours_bytes: int, float_bytes: int = 1_000_000) -> dict:
    """One model of bench/speed_size.py's results, before :func:`bench.speed_size.summarise`."""
    def row(name: str, tool: str, **extra: object) -> dict:
        return {"name": name, "tool": tool, "status": "ok", "label": name, "mem_cap_gib": 12.0, "timeout_s": 300.0,
                "quantize_s": 1.0, **extra}

    variants = [row(f"onnxq-{s}", "onnxq", optimize=s, timings={"calibrate": 0.5, "rewrite": 0.25})
                for s in ("accuracy", "balanced", "latency")] + [row("ort-u8s8-minmax", "ort")]
    scores = {"float": {"bytes": float_bytes, "latency_ms": float_ms, "vs_float": {"top1_agreement": 1.0}}}
    for name, agree in (("onnxq-accuracy", 0.98), ("onnxq-balanced", 0.99), ("onnxq-latency", 0.97)):
        scores[name] = {"bytes": ours_bytes, "latency_ms": ours_ms, "vs_float": {"top1_agreement": agree},
                        "vs_int8": {"top1_agreement": 0.99}}
    scores["ort-u8s8-minmax"] = {"bytes": ours_bytes + 1000, "latency_ms": ort_ms,
                                 "vs_float": {"top1_agreement": 0.98}, "vs_int8": {"top1_agreement": 0.99}}
    sub = {"status": "ok", "label": "x", "variants": variants, "n_calib": 128, "eval_samples": 100}
    from bench.speed_size import summarise

    summarise(sub, scores)
    return sub


def test_speed_size_targets_come_from_the_measured_numbers() -> None:
    """bench/speed_size.py (issue 13): ratios, MET / NOT MET and the report section, from synthetic numbers."""
    from bench import speed_size, write_report

    assert speed_size.compare_ranges({"a": (0.0, 1.0)}, {"a": (0.0, 1.0)})["same_ranges"]
    diff = speed_size.compare_ranges({"a": (0.0, 1.0), "b": (1.0, 2.0)}, {"a": (0.0, 1.5)})
    assert not diff["same_ranges"] and diff["max_abs_range_diff"] == pytest.approx(0.5) and diff["only_one_side"] == 1
    scores = speed_size.agreement_scores("effnet", np.eye(3), np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0.5]]))
    assert scores == {"top1_agreement": pytest.approx(2 / 3)}
    cos = speed_size.agreement_scores("minilm", np.ones((2, 4)), np.ones((2, 4)))
    assert cos["mean_cosine"] == pytest.approx(1.0)

    effnet = _speed_case(ours_ms={"1": 9.0, "32": 300.0}, ort_ms={"1": 10.0, "32": 310.0},
                         float_ms={"1": 12.0, "32": 1000.0}, ours_bytes=250_000)
    mnist = _speed_case(ours_ms={"1": 0.2, "32": 5.0}, ort_ms={"1": 0.1, "32": 5.0},
                        float_ms={"1": 0.2, "32": 10.0}, ours_bytes=270_000)
    assert effnet["variants"][0]["size_fraction"] == pytest.approx(0.25)
    assert effnet["variants"][0]["vs_ort"]["32"] == pytest.approx(300 / 310)
    case = {"status": "ok", "default_optimize": "accuracy", "threads": 2, "reduce_range": True,
            "models": {"effnet": effnet, "mnist": mnist},
            "calibration": {"status": "ok", "ns": [128], "rows": [
                {"tool": "onnxq", "method": "minmax", "n": 128, "status": "ok", "calib_s": 4.0, "full_taps_s": 6.0,
                 "full_taps_path_used": True, "same_ranges": True, "ranges_compared": 10, "only_one_side": 0,
                 "max_abs_range_diff": 0.0, "peak_rss_mb": 500.0},
                {"tool": "ort", "method": "minmax", "n": 128, "status": "ok", "calib_s": 5.0,
                 "quantize_static_s": 6.0, "pre_process_s": 1.0, "peak_rss_mb": 900.0}]}}
    status = {t["target"].removeprefix("issue 13, "): t["status"] for t in speed_size.targets(case)}
    assert status["EfficientNet-Lite1: onnxq default (onnxq-accuracy) latency <= ORT's int8 (batch 1 and 32)"] == "MET"
    assert status["MNIST CNN: onnxq default (onnxq-accuracy) latency <= ORT's int8 (batch 1 and 32)"] == "NOT MET"
    assert status["MiniLM: onnxq default (onnxq-accuracy) latency <= ORT's int8 (batch 1 and 32)"] == "NOT MEASURED"
    assert status["EfficientNet-Lite1: onnxq default int8 / float latency, batch 32"] == "MET"  # 0.30
    assert status["MNIST CNN: onnxq default int8 / float latency, batch 32"] == "NOT MET"  # 0.50
    assert status["EfficientNet-Lite1: --optimize balanced agreement with float vs the all-int8 model"] == "MET"
    assert status["EfficientNet-Lite1: --optimize latency agreement with float vs the all-int8 model"] == "NOT MET"
    assert status["EfficientNet-Lite1 MinMax calibration N=128: onnxq.calibrate <= ORT's quantize_static "
                  "calibrator"] == "MET"
    assert status["EfficientNet-Lite1 MinMax N=128: same ranges with and without in-graph reductions"] == "MET"
    assert status["EfficientNet-Lite1: file size quantized / float (onnxq default, compacted)"] == "MET"  # 0.25
    assert status["MNIST CNN: file size quantized / float (onnxq default, compacted)"] == "NOT MET"  # 0.27
    assert speed_size.errors(case) == []

    results = {"mode": "quick", "caps": {"mem_gib": 12.0, "timeout_s": 300.0}, "cases": {"speed_size": case}}
    assert any(t["target"].startswith("issue 13, MNIST CNN: file size") for t in write_report.compute_targets(results))
    report = write_report.render(results)
    assert "## 9. Issue 13" in report and "0.2700" in report and "onnxq-accuracy (default)" in report
    skipped = {"mode": "tiny", "cases": {"speed_size": {"status": "skipped: tiny mode"}}}
    assert all(t["status"] == "NOT MEASURED" for t in speed_size.targets(skipped["cases"]["speed_size"]))


def _dask_row(config: str, calibrate_s: float, validate_s: float, shards: list[tuple[str, int, float]]) -> dict:
    """One configuration of bench/dask_scaling.py's measure(), before summarise()."""
    listed = [{"shard": i, "samples": n, "seconds": t, "worker": w} for i, (w, n, t) in enumerate(shards)]
    return {"config": config, "calibrate_s": calibrate_s, "validate_s": validate_s, "client_peak_rss_mb": 300.0,
            "calibration_shards": listed, "validation_shards": listed, "ranges": {"a": [0, 1]}, "report": {"x": 1}}


def test_dask_scaling_targets_come_from_the_measured_numbers() -> None:
    """bench/dask_scaling.py (issue 14): overhead, per-worker throughput, MET / NOT MET and the section, no cluster."""
    from bench import dask_scaling, write_report

    assert dask_scaling.per_worker([{"worker": "a", "samples": 100, "seconds": 1.0},
                                    {"worker": "a", "samples": 100, "seconds": 1.0},
                                    {"worker": "b", "samples": 50, "seconds": 1.0}]) == pytest.approx(75.0)
    assert dask_scaling.per_worker([]) is None
    rows = dask_scaling.summarise([
        _dask_row("in-process", 10.0, 4.0, []),
        _dask_row("local:1", 12.0, 5.0, [("w1", 1000, 10.0)]),
        _dask_row("local:2", 11.0, 4.4, [("w1", 500, 5.0), ("w2", 500, 6.25)]),  # 100 and 80 samples/s
    ])
    assert rows[2]["calibrate_overhead_pct"] == pytest.approx(10.0) and rows[2]["ranges_equal"]
    assert rows[2]["calibration_per_worker_sps"] == pytest.approx(90.0)
    case = {"status": "ok", "mode": "quick", "batch": 32, "rows": rows,
            "setting": {"n_calib": 512, "n_eval": 2000, "repeats": 3}}
    status = {t["target"].removeprefix("issue 14, "): t for t in dask_scaling.targets(case)}
    assert status["--dask local:2 entropy calibration overhead over in-process"]["status"] == "MET"  # +10%
    assert status["--dask local:2 validation overhead over in-process"]["measured"] == pytest.approx(10.0)
    flat = status["calibration throughput per worker flat from 1 to 2 workers (local:2 / local:1)"]
    assert flat["status"] == "MET" and flat["measured"] == pytest.approx(0.9)
    assert status["ranges and report on local:1 and local:2 equal the in-process ones"]["status"] == "MET"
    slow = dask_scaling.summarise([_dask_row("in-process", 10.0, 4.0, []),
                                   _dask_row("local:1", 12.0, 5.0, [("w1", 1000, 10.0)]),
                                   dict(_dask_row("local:2", 12.0, 5.0, [("w1", 500, 10.0)]), report={"x": 2})])
    status = {t["target"].removeprefix("issue 14, "): t["status"] for t in dask_scaling.targets({"rows": slow})}
    assert status["--dask local:2 entropy calibration overhead over in-process"] == "NOT MET"  # +20%
    assert status["calibration throughput per worker flat from 1 to 2 workers (local:2 / local:1)"] == "NOT MET"
    assert status["ranges and report on local:1 and local:2 equal the in-process ones"] == "NOT MET"
    assert dask_scaling.errors(case) == []

    results = {"mode": "quick", "caps": {"mem_gib": 12.0, "timeout_s": 300.0}, "cases": {"dask_scaling": case}}
    assert sum(t["target"].startswith("issue 14, ") for t in write_report.compute_targets(results)) == 5
    report = write_report.render(results)
    assert "## 10. Issue 14" in report and "+10.0%" in report and "#1 500 in 6.25 s" in report
    assert all(t["status"] == "NOT MEASURED" for t in dask_scaling.targets({"status": "skipped: tiny mode"}))
