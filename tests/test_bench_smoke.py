"""Smoke test of the benchmark scripts: ``python -m bench --tiny`` runs end to end and writes its
results, so the benchmarks cannot rot. No timing or ratio is asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_bench_tiny_runs_and_writes_results(tmp_path: Path) -> None:
    if not (REPO / "bench" / "__main__.py").exists():
        pytest.skip("bench/ is not part of this checkout")
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
    assert {"calibration_scaling", "entropy_timing", "digits_accuracy", "minilm"} <= set(results["cases"])
    # the MiniLM case needs a real transformer export and minutes: --tiny records it as skipped
    assert results["cases"]["minilm"] == {"status": "skipped: tiny mode"}
    minilm_targets = [t for t in results["targets"] if "MiniLM" in t["target"]]
    assert len(minilm_targets) == 2 and all(t["status"] == "NOT MEASURED" for t in minilm_targets)

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
