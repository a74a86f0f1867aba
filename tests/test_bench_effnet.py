"""The EfficientNet-Lite1 benchmark case: crops, scoring, variant skipping, registration and rendering.

Fast: no model export and no quantization (the model packages are not needed); the crop tests need
scikit-image and scikit-learn and are skipped without them.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import __main__ as bench_main
from bench import effnet_accuracy, write_report
from bench.cases import effnet


def test_agreement_definitions() -> None:
    reference = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                          [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    quant = reference.copy()
    quant[0, 5] = 7.0   # sample 0: top-1 moves to class 5, float's class 6 still in the top-5
    quant[1, 0] = -1.0  # sample 1: float's class 0 drops out of the top-5
    scores = effnet.agreement(reference, quant)
    assert scores["top1_agreement"] == 0.0
    assert scores["top5_agreement"] == 0.5
    assert scores["mean_abs_logit_diff"] == pytest.approx((2.0 + 7.0) / 14)
    assert effnet.agreement(reference, reference)["top1_agreement"] == 1.0


def test_crop_box_stays_inside_the_image() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = effnet._crop_box(rng, 300, 451)
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 451 and h > 0 and w > 0


def test_crops_are_seeded_and_normalised() -> None:
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    a, b = effnet.random_crops(3, 7, size=32), effnet.random_crops(3, 7, size=32)
    other = effnet.random_crops(3, 8, size=32)
    assert a.shape == (3, 3, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, other)
    assert a.min() >= -1.0 and a.max() <= 1.0
    assert effnet.CALIB_SEED != effnet.EVAL_SEED


def test_unknown_quantconfig_keyword_is_skipped() -> None:
    out = effnet_accuracy.task_quantize_onnxq({"config": {"no_such_switch": True}, "model": "unused.onnx",
                                               "calib": "unused.npz", "out": "unused-int8.onnx"})
    assert out["skipped"].startswith("not available")


def test_case_is_registered_and_skipped_in_tiny_mode(tmp_path) -> None:
    assert "effnet" in bench_main.CASES and "effnet" in bench_main.TINY_SKIPPED
    assert effnet_accuracy.run("tiny", tmp_path, caps={}, log=print) == {"status": "skipped: tiny mode"}
    names = {s[0] for s in effnet_accuracy.ORT_SETTINGS + effnet_accuracy.ORT_DEFAULT_RR}
    assert names >= set(effnet_accuracy.QUICK_SKIPPED_ORT)


def _row(name: str, tool: str, top1: float, ms: float) -> dict:
    return {"name": name, "tool": tool, "setting": name, "status": "ok", "top1_agreement": top1,
            "top5_agreement": 0.99, "mean_abs_logit_diff": 0.1, "bytes": 6_000_000, "size_ratio": 3.6,
            "latency_ms": {"32": ms}, "latency_ratio": {"32": 2.0}, "quantize_s": 20.0, "peak_rss_mb": 900.0}


def test_targets_and_rendering() -> None:
    case = {"status": "ok", "n_calib": 128, "n_eval": 512, "threads": 2, "latency_runs": {"32": [1, 2, 3]},
            "float": {"bytes": 21_000_000, "latency_ms": {"32": 400.0}},
            "variants": [_row("onnxq-default", "onnxq", 0.80, 200.0), _row("onnxq-x", "onnxq", 0.90, 210.0),
                         {"name": "onnxq-y", "tool": "onnxq", "setting": "{}", "status": "skipped: not available"},
                         _row("ort-u8s8-minmax", "ort", 0.84, 190.0)]}
    effnet_accuracy._summarise(case, {})  # names the bests from the rows' own scores
    assert case["ort_best"] == "ort-u8s8-minmax" and case["onnxq_best"] == "onnxq-x"
    targets = write_report._effnet_targets(case)
    # default vs ORT best (+5): -4 points; best onnxq variant vs ORT best: +6; no adaptive-rounding row;
    # no fallback row
    assert [t["status"] for t in targets] == ["NOT MET", "MET", "NOT MEASURED", "NOT MEASURED"]
    assert targets[0]["measured"] == pytest.approx(-4.0) and targets[1]["measured"] == pytest.approx(6.0)
    text = "\n".join(write_report._render_effnet(case))
    assert "(ORT best)" in text and "skipped: not available" in text and "90.00%" in text


def test_fallback_target_needs_goal_steps_time_and_latency() -> None:
    default = _row("onnxq-default", "onnxq", 0.90, 200.0)
    fallback = {**_row("onnxq-target-top1-97", "onnxq", 0.93, 230.0),
                "target": {"met": True, "steps": 4, "undone": 1, "values": [0.9, 0.97], "float_nodes": 3,
                           "tune_s": 50.0}}
    met = write_report._effnet_fallback_target(fallback, default, "Lite1")
    assert met["status"] == "MET" and met["measured"] == pytest.approx(1.15)
    for change in ({"tune_s": 61.0}, {"steps": 11}, {"met": False}):
        row = {**fallback, "target": {**fallback["target"], **change}}
        assert write_report._effnet_fallback_target(row, default, "Lite1")["status"] == "NOT MET", change
    slow = {**fallback, "latency_ms": {"32": 250.0}}  # 1.25x the all-int8 default
    assert write_report._effnet_fallback_target(slow, default, "Lite1")["status"] == "NOT MET"
    assert write_report._effnet_fallback_target(None, default, "Lite1")["status"] == "NOT MEASURED"
    # a miss says why, in the fallback's own words; a met target does not
    where = "where the error is (revert-all on 8 sample(s)): every weight float would remove 57% ..."
    missed = {**fallback, "target": {**fallback["target"], "met": False, "where": where}}
    assert write_report._effnet_fallback_target(missed, default, "Lite1")["detail"].endswith(where)
    met_where = {**fallback, "target": {**fallback["target"], "where": where}}
    assert where not in write_report._effnet_fallback_target(met_where, default, "Lite1")["detail"]
