"""The self-contained HTML report: content, inline images, CLI, and rendering in headless Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import CNN_INPUT, CnnFiles, make_cnn_model, make_images, make_labels
from onnxq import QuantResult, quantize
from onnxq.calibration.histograms import estimated_sqnr_db, tensor_histograms
from onnxq.errors import ConfigError
from onnxq.feeds import load_data
from onnxq.evidence import clipping_ranges, collect_scatter, html_report
from onnxq.report.html import write_html
from onnxq.report.schema import Report, format_number, format_percent

pytest.importorskip("matplotlib", reason="HTML reports need matplotlib (pip install 'onnxq[html]')")

RunCli = Callable[..., tuple[int, str, str]]
IMG = '<img src="data:image/png;base64,'
WORST = 3


@pytest.fixture(scope="module")
def quantized() -> QuantResult:
    return quantize(make_cnn_model(), {CNN_INPUT: make_images(seed=1)}, latency=False)


@pytest.fixture(scope="module")
def html_file(tmp_path_factory: pytest.TempPathFactory, quantized: QuantResult) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    evaluation = {CNN_INPUT: make_images(seed=3), "labels": make_labels(seed=4)}
    written = html_report(make_cnn_model(), quantized.model, evaluation, path, report=quantized.report,
                          ranges=quantized.ranges, calibration={CNN_INPUT: make_images(seed=1)}, worst=WORST)
    assert written == path
    return path


def png_images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_self_contained(text: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "<link" not in text.lower()


# ------------------------------------------------------------------------------ content


def test_html_is_self_contained_with_numbers_and_images(html_file: Path, quantized: QuantResult) -> None:
    text = html_file.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert_self_contained(text)
    [output] = quantized.report.outputs
    for number in (format_number(output.cosine, ".6f"), format_number(output.min_cosine, ".6f"),
                   format_number(output.sqnr_db, ".2f"), format_number(output.max_abs_error, ".4g"),
                   format_percent(output.top1_agreement)):
        assert f">{number}</td>" in text
    assert "Calibration histograms" in text and "Float vs quantized outputs" in text
    # WORST histograms + one scatter plot (the model has one output), every one a real PNG
    assert text.count(IMG) == WORST + 1
    images = png_images(text)
    assert len(images) == WORST + 1
    for data in images:
        width, height = png_size(data)
        assert width >= 300 and height >= 200 and len(data) > 5_000
    assert not list(html_file.parent.glob(".*.tmp"))


def test_histograms_show_the_chosen_clipping_range(html_file: Path, quantized: QuantResult) -> None:
    text = html_file.read_text(encoding="utf-8")
    rows = re.findall(r"<tr><td><code>([^<]+)</code></td>((?:<td class=\"num\">[^<]*</td>){6})</tr>", text)
    assert len(rows) == WORST
    estimated = []
    for name, cells in rows:
        values = re.findall(r'<td class="num">([^<]*)</td>', cells)
        low, high = quantized.ranges.tensors[name].low, quantized.ranges.tensors[name].high
        assert values[2] == format_number(low, ".4g") and values[3] == format_number(high, ".4g")
        estimated.append(float(values[5]))
    assert estimated == sorted(estimated)  # worst (lowest estimated SQNR) first


@dataclass
class _Layer:  # stand-in for report.schema.LayerMetrics on trees where it has not landed
    tensor: str
    node: str | None
    op_type: str | None
    kind: str
    sqnr_db: float
    cosine: float


@dataclass
class _Step:  # stand-in for report.schema.FallbackStep
    step: int
    node: str | None
    op_type: str | None
    metric_value: float
    goal_met: bool
    nodes: list[str]


def test_layers_fallback_and_target_render_when_present(tmp_path: Path, quantized: QuantResult) -> None:
    from onnxq.report import schema

    layer_class = getattr(schema, "LayerMetrics", _Layer)
    step_class = getattr(schema, "FallbackStep", _Step)
    report = Report.from_dict(quantized.report.to_dict())
    report.layers = [layer_class(tensor="conv_out", node="Conv_0", op_type="Conv", kind="activation", sqnr_db=12.5,
                                 cosine=0.97),
                     layer_class(tensor="gemm_w", node="Gemm_0", op_type="Gemm", kind="weight", sqnr_db=41.0,
                                 cosine=0.9999),
                     layer_class(tensor="relu_out", node="Relu_0", op_type="Relu", kind="activation",
                                 sqnr_db=float("inf"), cosine=1.0)]
    report.fallback = [step_class(step=0, node=None, op_type=None, metric_value=0.9991, goal_met=False, nodes=[]),
                       step_class(step=1, node="Conv_0", op_type="Conv", metric_value=0.99995, goal_met=True,
                                  nodes=["Conv_0", "Relu_0"])]
    report.target = "cosine>=0.9999"
    report.target_met = True
    rng = np.random.default_rng(0)
    counts, edges = np.histogram(rng.standard_normal(1000), bins=64)
    histograms = {"conv_out": (counts, edges, -2.0, 2.0), "flat": (counts, edges, -1.0, 3.5)}
    scatter = {"logits": (rng.standard_normal(300), rng.standard_normal(300))}
    path = write_html(report, tmp_path / "full.html", histograms=histograms, scatter=scatter)
    text = path.read_text(encoding="utf-8")
    assert_self_contained(text)
    # per-layer bars + 2 histograms + 1 scatter + fallback plot
    assert text.count(IMG) == 5 == len(png_images(text))
    assert "Per-layer error" in text and "3 quantized tensors" in text
    assert ">conv_out</td>" in text and ">12.5</td>" in text and ">weight</td>" in text
    assert "Fallback steps" in text and "<code>Conv_0, Relu_0</code>" in text and ">0.99995</td>" in text
    assert "<td>cosine&gt;=0.9999</td>" in text and '<span class="ok">met</span>' in text
    assert text.index("Per-layer error") < text.index("Calibration histograms") < text.index("Fallback steps")
    # the same report read back from JSON renders the same way (when the schema carries these fields)
    if hasattr(schema, "LayerMetrics"):
        again = Report.from_json(report.to_json())
        text2 = write_html(again, tmp_path / "again.html").read_text(encoding="utf-8")
        assert text2.count(IMG) == 2 and ">12.5</td>" in text2


def test_report_without_optional_parts(tmp_path: Path) -> None:
    report = Report(outputs=[], samples=0, float_size_bytes=2048, quant_size_bytes=1024, size_ratio=2.0,
                    notes=["a <note> & more"])
    text = write_html(report, tmp_path / "bare.html").read_text(encoding="utf-8")
    assert IMG not in text and "No output was compared" in text
    assert "a &lt;note&gt; &amp; more" in text and "2.00 KiB" in text


def test_missing_matplotlib_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    report = Report(outputs=[], samples=0, float_size_bytes=1, quant_size_bytes=1, size_ratio=1.0)
    with pytest.raises(ConfigError) as info:
        write_html(report, tmp_path / "r.html")
    assert "pip install matplotlib" in str(info.value) and "onnxq[html]" in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "r.html").exists()


# ------------------------------------------------------------------------------ helpers


def test_tensor_histograms_and_estimate(quantized: QuantResult) -> None:
    data = load_data({CNN_INPUT: make_images(seed=1)}, make_cnn_model(), batch_size=16)
    hists = tensor_histograms(make_cnn_model(), data, ["relu_out", "not_a_tensor"], num_bins=256)
    assert list(hists) == ["relu_out"]
    obs = hists["relu_out"]
    assert obs.count == 64 * 8 * 8 * 8 and obs.counts.sum() == obs.count and obs.min >= 0.0
    # a wide clipping range costs resolution, a tight one clips: both lower the estimate
    best = estimated_sqnr_db(obs.counts, obs.edges, 0.0, obs.max)
    assert estimated_sqnr_db(obs.counts, obs.edges, 0.0, 10 * obs.max) < best
    assert estimated_sqnr_db(obs.counts, obs.edges, 0.0, 0.3 * obs.max) < best
    # the ranges written into the model's QuantizeLinear nodes are the calibrated ones (to int8 rounding)
    in_model = clipping_ranges(quantized.model)
    assert in_model and set(in_model) <= set(quantized.ranges.tensors)
    for name, (low, high, levels) in in_model.items():
        calibrated = quantized.ranges.tensors[name]
        step = (high - low) / (levels - 1)
        assert levels == 256 and low <= 0.0 <= high
        assert abs(high - calibrated.high) <= step and abs(low - min(calibrated.low, 0.0)) <= step


def test_collect_scatter_is_a_bounded_paired_sample(quantized: QuantResult) -> None:
    data = {CNN_INPUT: make_images(seed=3)}
    scatter = collect_scatter(make_cnn_model(), quantized.model, data, max_points=100, batch_size=7)
    ref, cand = scatter["logits"]
    assert ref.shape == cand.shape == (100,)
    assert np.max(np.abs(ref - cand)) <= quantized.report.outputs[0].max_abs_error * 2 + 1e-3
    again = collect_scatter(make_cnn_model(), quantized.model, data, max_points=100, batch_size=7)
    np.testing.assert_array_equal(again["logits"][0], ref)  # seeded
    everything = collect_scatter(make_cnn_model(), make_cnn_model(), data, max_points=10_000)
    assert everything["logits"][0].shape == (64 * 10,)
    np.testing.assert_array_equal(everything["logits"][0], everything["logits"][1])


# ------------------------------------------------------------------------------ CLI


def test_cli_quantize_report_html_and_json(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    out, html = cnn_files.folder / "q.onnx", cnn_files.folder / "report.html"
    code, stdout, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                                "--eval", cnn_files.eval, "--report", html, "--no-latency", "-q")
    assert code == 0, err
    text = html.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert text.count(IMG) >= 2 and "accuracy" in text
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                           "--report", cnn_files.folder / "report.json", "--no-latency", "-q")
    assert code == 0, err
    assert Report.from_json(cnn_files.folder / "report.json").samples == 64


def test_cli_validate_html(run_cli: RunCli, cnn_files: CnnFiles, quantized_cnn_path: Path) -> None:
    html = cnn_files.folder / "validate.html"
    code, stdout, err = run_cli("validate", cnn_files.model, quantized_cnn_path, "--data", cnn_files.eval,
                                "--html", html, "--no-latency", "-q")
    assert code == 0, err
    text = html.read_text(encoding="utf-8")
    assert_self_contained(text)
    # ranges read back from the quantized model's QuantizeLinear nodes: histograms + scatter
    assert "Calibration histograms" in text and text.count(IMG) >= 2
    code, _, err = run_cli("validate", cnn_files.model, quantized_cnn_path, "--data", cnn_files.eval,
                           "--html", cnn_files.eval)
    assert code == 2 and "refusing to overwrite" in err


# ------------------------------------------------------------------------------ Chromium


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium_args(binary: str, profile: Path) -> list[str]:
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}"]


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install -y chromium)")
def test_renders_in_headless_chromium(html_file: Path, tmp_path: Path) -> None:
    binary = _chromium()
    assert binary is not None
    url = html_file.resolve().as_uri()
    # the DOM Chromium built from the file: every image is there, each an inline PNG
    dom = subprocess.run([*_chromium_args(binary, tmp_path / "profile1"), "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    imgs = re.findall(r"<img [^>]*>", dom.stdout)
    assert len(imgs) == WORST + 1
    assert all('src="data:image/png;base64,' in img for img in imgs)
    assert "<h1>onnxq report (static)</h1>" in dom.stdout
    # the rendered page: the plots' colours (saturated blue/red; the page itself is grey on white) are on it
    shot = tmp_path / "page.png"
    proc = subprocess.run([*_chromium_args(binary, tmp_path / "profile2"), f"--screenshot={shot}",
                           "--window-size=1200,3200", "--hide-scrollbars", url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    assert shot.stat().st_size > 50_000
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (3200, 1200)
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    colourful = int(np.count_nonzero(saturation > 0.25))
    assert colourful > 2_000, colourful  # without decoded images this is 0


def test_quantize_report_html_does_not_export_twice(cnn_files: CnnFiles, tmp_path: Path,
                                                    run_cli: Callable[..., tuple[int, str, str]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTML is rendered from the run's float model and report: the model is resolved (exported) once."""
    import onnxq.api

    calls = []
    real = onnxq.api.resolve_model
    monkeypatch.setattr(onnxq.api, "resolve_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    report = tmp_path / "r.html"
    code, _, err = run_cli("quantize", cnn_files.model, "--calib", cnn_files.calib, "-o", tmp_path / "q.onnx",
                           "--report", report, "--no-latency", "-q")
    assert code == 0, err
    assert len(calls) == 1 and report.read_text(encoding="utf-8").count(IMG) >= 2


def test_validate_html_takes_the_scatter_in_the_validation_pass(cnn_files: CnnFiles, tmp_path: Path,
                                                                run_cli: Callable[..., tuple[int, str, str]],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                quantized: QuantResult) -> None:
    import onnxq.evidence

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a second pass for the scatter plot")

    monkeypatch.setattr(onnxq.evidence, "collect_scatter", fail)
    quant = tmp_path / "q.onnx"
    quantized.save(quant)
    report = tmp_path / "v.html"
    code, _, err = run_cli("validate", cnn_files.model, quant, "--data", cnn_files.eval, "--html", report,
                           "--no-latency", "-q")
    assert code == 0, err
    assert "Float vs quantized outputs" in report.read_text(encoding="utf-8")


def test_quantize_report_html_takes_its_plots_in_the_run(cnn_files: CnnFiles, tmp_path: Path,
                                                          run_cli: Callable[..., tuple[int, str, str]],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Histograms from the calibration pass, scatter from the validation pass: no pass of its own."""
    import onnxq.evidence

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the HTML report ran the models again")

    monkeypatch.setattr(onnxq.evidence, "collect_scatter", fail)
    monkeypatch.setattr(onnxq.evidence, "tensor_histograms", fail)
    report = tmp_path / "r.html"
    code, _, err = run_cli("quantize", cnn_files.model, "--calib", cnn_files.calib, "--eval", cnn_files.eval,
                           "-o", tmp_path / "q.onnx", "--report", report, "--no-latency", "-q")
    assert code == 0, err
    text = report.read_text(encoding="utf-8")
    assert "Calibration histograms" in text and "Float vs quantized outputs" in text
