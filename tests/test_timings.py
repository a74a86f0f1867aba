"""Per-stage timing in the report (issue 13 item 4): JSON (optional field), one printed line, no extra sessions."""

from __future__ import annotations

import json

import pytest
from conftest import CNN_INPUT, make_cnn_model, make_images

import onnxq.engine
from onnxq import QuantConfig, quantize, validate
from onnxq.report.schema import Report


@pytest.fixture(scope="module")
def result() -> onnxq.QuantResult:
    return quantize(make_cnn_model(), {CNN_INPUT: make_images(32)}, config=QuantConfig(bias_correction=False),
                    latency=onnxq.latency.LatencyOptions(runs=3))


def test_stages_are_timed(result) -> None:
    timings = result.report.timings
    assert {"prepare", "calibrate", "rewrite", "validate", "latency"} <= set(timings)
    assert all(seconds >= 0 for seconds in timings.values())
    line = [s for s in result.report.format().splitlines() if s.startswith("time:")]
    assert len(line) == 1 and "calibrate" in line[0] and "total" in line[0]


def test_timings_round_trip_and_old_reports_load(result) -> None:
    data = json.loads(result.report.to_json())
    assert Report.from_dict(data).timings == pytest.approx(result.report.timings)
    del data["timings"]  # a report written before the field existed
    old = Report.from_dict(data)
    assert old.timings == {} and "time:" not in old.format()


def test_validation_and_latency_share_two_sessions(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """validate() creates one session per model; latency reuses them and the first batch (no re-read)."""
    created = []
    real = onnxq.engine.create_session
    monkeypatch.setattr(onnxq.engine, "create_session", lambda *a, **k: created.append(1) or real(*a, **k))
    model = make_cnn_model()
    report = validate(model, model, {CNN_INPUT: make_images(20)}, batch_size=8,
                      latency=onnxq.latency.LatencyOptions(runs=2))
    assert len(created) == 2
    assert report.samples == 20 and set(report.timings) == {"validate", "latency"}


def test_a_target_run_validates_the_final_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback's validation of the final model is the report's (latency is added to it)."""
    import sys

    validation = sys.modules["onnxq.validate"]

    calls = []
    real = validation.validate
    monkeypatch.setattr(validation, "validate", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = quantize(make_cnn_model(), {CNN_INPUT: make_images(32)},
                      config=QuantConfig(target="cosine>=0.5", bias_correction=False),
                      latency=onnxq.latency.LatencyOptions(runs=2))
    assert result.report.target_met is True and len(calls) == 1
    assert result.report.samples == 32 and result.report.latency is not None
    assert "tune" in result.report.timings and "latency" in result.report.timings


def test_bias_correction_rewrite_is_not_built_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bias-correction pass rewrites the corrected model to verify it; that graph is the final one,
    so the pipeline reuses it (2 rewrites in all, not 3), byte for byte what a third build gives."""
    import onnxq.pipelines as pipelines

    calls = []
    real_rewrite, real_correct = pipelines.rewrite.quantize_static, pipelines._correct_biases

    def counting(*args, **kwargs):
        calls.append(1)
        return real_rewrite(*args, **kwargs)

    monkeypatch.setattr(pipelines.rewrite, "quantize_static", counting)
    model, data = make_cnn_model(), {CNN_INPUT: make_images(32)}
    reused = quantize(model, data, latency=False)
    assert [p["name"] for p in reused.report.passes] == ["bias_correction"] and reused.report.passes[0]["changed"]
    assert len(calls) == 2 and "rewrite" not in reused.report.timings
    monkeypatch.setattr(pipelines, "_correct_biases", lambda *a, **k: (real_correct(*a, **k)[0], None))
    rebuilt = quantize(model, data, latency=False)
    assert len(calls) == 5 and "rewrite" in rebuilt.report.timings
    assert rebuilt.model.SerializeToString() == reused.model.SerializeToString()
