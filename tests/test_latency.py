"""onnxq.latency: interleaved blocks, stopping rules, reported fields, wording and the CLI flags.

Behaviour only: the loop runs on fake models and a fake clock wherever timing would decide the
outcome; real sessions are only checked for the fields they report.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.cli import _latency, build_parser
from onnxq.errors import ConfigError
from onnxq.latency import LatencyOptions, interleaved_times, latency_feeds, latency_options, measure_latency
from onnxq.report.schema import LatencyMetrics, Report, speed_text
from onnxq.runtime import create_session


class FakeClock:
    """A clock that only moves when a fake model runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_models(clock: FakeClock, durations: dict[str, Callable[[int], float]],
                log: list[tuple[str, str]]) -> dict[str, Callable[[], Callable[[], None]]]:
    """Openers that log ``(model, "open"|"run")`` and advance the clock by ``durations[model](run_index)``."""
    counts = {name: 0 for name in durations}

    def opener(name: str) -> Callable[[], Callable[[], None]]:
        def open_block() -> Callable[[], None]:
            log.append((name, "open"))

            def once() -> None:
                log.append((name, "run"))
                clock.now += durations[name](counts[name])
                counts[name] += 1
            return once
        return open_block
    return {name: opener(name) for name in durations}


def test_blocks_interleave_in_alternating_order() -> None:
    clock, log = FakeClock(), []
    models = fake_models(clock, {"float": lambda i: 0.002, "quant": lambda i: 0.001}, log)
    options = LatencyOptions(runs=6, block=2, warmup=1, block_warmup=1)
    timings = interleaved_times(models, options, clock=clock)
    opens = [name for name, what in log if what == "open"]
    # warm-up (float, quant), then rounds of one block each, the order reversed every round
    assert opens == ["float", "quant", "float", "quant", "quant", "float", "float", "quant"]
    first_block = log[4:8]  # after the warm-up: open, one untimed run, two timed runs
    assert first_block == [("float", "open"), ("float", "run"), ("float", "run"), ("float", "run")]
    assert [len(t.seconds) for t in timings.values()] == [6, 6]
    assert timings["float"].seconds == pytest.approx([0.002] * 6)
    assert {t.stop for t in timings.values()} == {"runs"}


def test_stops_when_the_medians_are_stable() -> None:
    clock, log = FakeClock(), []
    models = fake_models(clock, {"float": lambda i: 0.004, "quant": lambda i: 0.002}, log)
    options = LatencyOptions(block=5, min_runs=10, max_runs=1000, budget_s=1000.0, min_seconds=0.5)
    timings = interleaved_times(models, options, clock=clock)
    assert timings["float"].stop == "stable"
    assert 10 <= len(timings["float"].seconds) < 1000  # three rounds at least, far fewer than the cap
    assert 0.5 <= clock.now < 0.5 + 0.1  # never before min_seconds, and soon after (a round takes 0.04 s)


def test_stops_at_the_budget_or_the_run_cap_when_never_stable() -> None:
    def drifting(i: int) -> float:  # every run 5% slower: the median never settles
        return 0.001 * 1.05 ** i

    clock, log = FakeClock(), []
    timings = interleaved_times(fake_models(clock, {"a": drifting, "b": drifting}, log),
                                LatencyOptions(block=2, budget_s=0.5, max_runs=100_000), clock=clock)
    assert timings["a"].stop == "budget"
    clock, log = FakeClock(), []
    timings = interleaved_times(fake_models(clock, {"a": drifting, "b": drifting}, log),
                                LatencyOptions(block=2, budget_s=3600.0, max_runs=30), clock=clock)
    assert timings["a"].stop == "max_runs" and len(timings["a"].seconds) == 30


def test_block_size_adapts_to_the_slowest_model() -> None:
    clock, log = FakeClock(), []
    models = fake_models(clock, {"float": lambda i: 0.010, "quant": lambda i: 0.015}, log)
    interleaved_times(models, LatencyOptions(runs=10, warmup=1, block_warmup=0), clock=clock)
    runs_per_block = []
    for name, what in log[4:]:  # after the warm-up
        if what == "open":
            runs_per_block.append(0)
        else:
            runs_per_block[-1] += 1
    assert runs_per_block == [4, 4, 4, 4, 2, 2]  # 50 ms / 15 ms: 4 runs per block, then the rest


@pytest.mark.parametrize("seconds, untimed", [(0.001, 1), (0.030, 0)])
def test_short_runs_get_an_untimed_run_per_block(seconds: float, untimed: int) -> None:
    clock, log = FakeClock(), []
    models = fake_models(clock, {"float": lambda i: seconds, "quant": lambda i: seconds}, log)
    interleaved_times(models, LatencyOptions(runs=4, block=2, warmup=1), clock=clock)
    after_warmup = log[4:]
    first_block = after_warmup[:after_warmup.index(("quant", "open"))]
    assert first_block == [("float", "open")] + [("float", "run")] * (2 + untimed)


@pytest.mark.parametrize("field, value", [("runs", 0), ("batch", 0), ("block", -1), ("warmup", -1),
                                          ("budget_s", 0.0), ("budget_s", float("nan")), ("tolerance", 1.0), ("min_seconds", -1.0),
                                          ("max_runs", 10**9), ("runs", 2.5)])
def test_options_are_bounded(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        LatencyOptions(**{field: value})


def test_latency_argument_forms() -> None:
    assert latency_options(False) is None and latency_options(None) is None
    assert latency_options(True) == LatencyOptions()
    assert latency_options(True, runs=7) == LatencyOptions(runs=7)
    options = LatencyOptions(batch=4)
    assert latency_options(options) is options
    with pytest.raises(ConfigError, match="latency_runs"):
        latency_options(True, runs=0)
    with pytest.raises(ConfigError, match="not both"):
        latency_options(LatencyOptions(runs=3), runs=5)


# ------------------------------------------------------------------------------ real sessions


def _matmul_model(batch: int | str = "N") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8])],
        [numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_measure_latency_reports_medians_spread_and_how() -> None:
    session = create_session(_matmul_model(), threads=1)
    feeds = {"x": np.ones((4, 32), np.float32)}
    lat = measure_latency(session, session, feeds, ["y"], options=LatencyOptions(runs=12, batch=9), threads=1)
    assert lat.runs == 12 and lat.batch_size == 9 and lat.threads == 1 and lat.stop == "runs"
    assert lat.warmup == 3 and lat.seconds is not None and lat.seconds > 0
    assert lat.float_p10_ms <= lat.float_ms <= lat.float_p90_ms
    assert lat.quant_p10_ms <= lat.quant_ms <= lat.quant_p90_ms
    assert lat.speedup == pytest.approx(lat.float_ms / lat.quant_ms)
    again = Report.from_dict(Report(outputs=[], samples=4, float_size_bytes=1, quant_size_bytes=1, size_ratio=1.0,
                                    latency=lat).to_dict()).latency
    assert again == lat


def test_latency_batch_cuts_or_repeats_samples_and_respects_a_fixed_batch() -> None:
    x = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    feeds = latency_feeds({"x": x, "scale": np.float32(2.0)}, 7)
    assert feeds["x"].shape == (7, 2) and np.array_equal(feeds["x"][3], x[0]) and feeds["scale"] == 2.0
    assert latency_feeds({"x": x}, 2)["x"].shape == (2, 2)
    assert latency_feeds({"x": x}, None)["x"] is x
    fixed = create_session(_matmul_model(batch=4))
    with pytest.raises(ConfigError, match="fixed batch of 4"):
        latency_feeds({"x": np.ones((4, 32), np.float32)}, 8, fixed)


# ------------------------------------------------------------------------------ wording


@pytest.mark.parametrize("speedup, text", [(1.8, "x1.80 faster"), (1 / 1.8, "x1.80 slower"), (1.0, "same speed (x1.00)"),
                                           (0.998, "same speed (x1.00)"), (1.006, "x1.01 faster"),
                                           (0.17, "x5.88 slower"), (float("inf"), "xinf speedup")])
def test_speed_wording(speedup: float, text: str) -> None:
    assert speed_text(speedup) == text


def test_report_line_says_slower_with_spread() -> None:
    lat = LatencyMetrics(float_ms=1.0, quant_ms=1.8, speedup=1 / 1.8, batch_size=8, threads=None, runs=40,
                         float_p10_ms=0.9, float_p90_ms=1.2, quant_p10_ms=1.7, quant_p90_ms=2.0, stop="stable")
    line = lat.format()
    assert "x1.80 slower" in line and "speedup" not in line
    assert "p10-p90 0.900-1.200" in line and "p10-p90 1.700-2.000" in line
    assert "median of 40 interleaved runs, medians settled)" in line and "threads ORT default" in line
    old = LatencyMetrics(float_ms=2.0, quant_ms=1.0, speedup=2.0, batch_size=8, threads=2, runs=20)
    assert "x2.00 faster" in old.format() and "p10" not in old.format()  # reports written before the spread
    assert old.format().endswith("median of 20 interleaved runs)")
    budget = LatencyMetrics(float_ms=2.0, quant_ms=1.0, speedup=2.0, batch_size=8, threads=2, runs=9, stop="budget")
    assert "time budget reached before the medians settled" in budget.format()


# ------------------------------------------------------------------------------ CLI flags

PAIR = ["f.onnx", "q.onnx", "--data", "d.npz"]


@pytest.mark.parametrize("argv", [["quantize", "m.onnx", "-o", "q.onnx"], ["validate", *PAIR],
                                  ["compare", *PAIR, "--threshold", "0.9", "--latency"]])
def test_every_command_that_measures_takes_the_flags(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv, "--latency-runs", "25", "--latency-batch", "16",
                                      "--latency-budget", "2.5", "--threads", "2"])
    assert (args.latency_runs, args.latency_batch, args.latency_budget, args.threads) == (25, 16, 2.5, 2)
    assert _latency(args) == LatencyOptions(runs=25, batch=16, budget_s=2.5)
    args = build_parser().parse_args([*argv, "--latency-runs", "auto"])
    assert _latency(args) == LatencyOptions()


@pytest.mark.parametrize("flag, value", [("--latency-runs", "0"), ("--latency-runs", "many"),
                                         ("--latency-runs", "1000001"), ("--latency-batch", "0"),
                                         ("--latency-budget", "0"), ("--latency-budget", "inf"),
                                         ("--threads", "0")])
def test_flags_are_bounded(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["validate", *PAIR, flag, value])
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err


def test_latency_flags_without_a_measurement_are_an_error() -> None:
    args = build_parser().parse_args(["validate", *PAIR, "--no-latency", "--latency-runs", "5"])
    with pytest.raises(ConfigError, match="--latency-runs without a latency measurement: drop --no-latency"):
        _latency(args)
    args = build_parser().parse_args(["compare", *PAIR, "--threshold", "0.9", "--latency-batch", "4"])
    with pytest.raises(ConfigError, match="add --latency"):
        _latency(args)
    args = build_parser().parse_args(["compare", *PAIR, "--threshold", "0.9"])
    assert _latency(args) is False
    assert isinstance(args, argparse.Namespace)


def test_bench_harness_runs_the_same_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.harness as harness

    opened: list[str] = []

    class FakeSession:
        def __init__(self, path: str) -> None:
            opened.append(path)

        def run(self, names: Any, feeds: Any) -> list:
            return []

    monkeypatch.setattr(harness, "ort_session", lambda path, threads: FakeSession(path))
    medians = harness.interleaved_latency({"a": "a.onnx", "b": "b.onnx"}, lambda name: {}, 1,
                                          warmup=1, rounds=3, per_round=2)
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())
    # a fresh session per block (one alive at a time), the order reversed every round
    assert opened == ["a.onnx", "b.onnx", "b.onnx", "a.onnx", "a.onnx", "b.onnx"]
