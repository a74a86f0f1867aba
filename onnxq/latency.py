"""Float-versus-quantized latency that repeats: warm-up, interleaved blocks, a stable median.

One timing loop (:func:`interleaved_times`) serves :func:`measure_latency` (``validate``,
``quantize``, ``compare --latency``) and the benchmarks (``bench.harness.interleaved_latency``):

* **Warm-up**: each model runs ``warmup`` untimed times first (allocations, kernel selection).
* **Interleaved blocks**: the models take turns in blocks of ``block`` timed runs, the order
  reversed every round (A B, B A, A B ...), so that drift in clock speed or machine load hits every
  model alike. Each block of short runs (under 20 ms) starts with an untimed run: ONNX Runtime's
  intra-op threads spin for a while after a run, and the first run after another session's block
  would pay for that session's spinning threads.
* **Stopping**: with ``runs`` set, exactly that many timed runs per model. Otherwise rounds go on
  for at least ``min_seconds`` (2 s: a shorter measurement samples one moment of the machine's
  load), then until every model's median moved by at most ``tolerance`` (relative) over the last
  two rounds, or ``max_runs`` / the time ``budget_s`` is reached; the result says which.
* **Reported**: the median and the 10th-90th percentile spread per model, and
  ``speedup = float median / quantized median``; :func:`speed_text` words it ``x1.80 faster`` or
  ``x1.80 slower``, never a speed-up below 1.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError
from .report.schema import LatencyMetrics, speed_text
from .runtime import run

logger = logging.getLogger(__name__)

__all__ = ["LatencyOptions", "Timings", "interleaved_times", "latency_feeds", "latency_options", "measure_latency",
           "speed_text"]

#: Bounds of the options (beyond them a run exhausts time instead of helping).
MAX_RUNS = 100_000
MAX_BUDGET_S = 3600.0

#: A function that starts one block of runs of a model and returns what runs it once.
BlockOpener = Callable[[], Callable[[], Any]]


@dataclass(frozen=True)
class LatencyOptions:
    """How latency is measured.

    Attributes:
        runs: timed runs per model; ``None``: until the medians are stable (see ``tolerance``),
            at most ``max_runs`` and ``budget_s``.
        batch: samples per timed batch; ``None``: the first evaluation batch. Smaller: its first
            samples; larger: the batch's samples repeated.
        warmup: untimed runs per model before the first block.
        block: timed runs per model per block; ``None``: as many as take about 50 ms (1 to 20).
        block_warmup: untimed runs at the start of each block; ``None``: 1 for runs under 20 ms
            (where another session's spinning threads would show), else 0.
        tolerance: the largest relative change of a median over the last two rounds that counts
            as stable.
        min_runs: timed runs per model before stability is checked.
        min_seconds: seconds of timed rounds before stability is checked, so that the medians
            span the machine's load changes rather than one moment of it.
        max_runs: cap on timed runs per model when ``runs`` is ``None``.
        budget_s: time budget of the timed rounds, in seconds, when ``runs`` is ``None``.
    """

    runs: int | None = None
    batch: int | None = None
    warmup: int = 3
    block: int | None = None
    block_warmup: int | None = None
    tolerance: float = 0.01
    min_runs: int = 10
    min_seconds: float = 2.0
    max_runs: int = 20_000
    budget_s: float = 5.0

    def __post_init__(self) -> None:
        for name, low in (("runs", 1), ("batch", 1), ("block", 1)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and low <= value <= MAX_RUNS):
                raise ConfigError(f"latency {name} must be an integer in [{low}, {MAX_RUNS}] or None, got {value!r}")
        if self.block_warmup is not None and not (isinstance(self.block_warmup, int)
                                                  and 0 <= self.block_warmup <= MAX_RUNS):
            raise ConfigError(f"latency block_warmup must be an integer in [0, {MAX_RUNS}] or None, "
                              f"got {self.block_warmup!r}")
        for name, low in (("warmup", 0), ("min_runs", 1), ("max_runs", 1)):
            value = getattr(self, name)
            if not (isinstance(value, int) and low <= value <= MAX_RUNS):
                raise ConfigError(f"latency {name} must be an integer in [{low}, {MAX_RUNS}], got {value!r}")
        if not (isinstance(self.min_seconds, (int, float)) and 0 <= self.min_seconds <= MAX_BUDGET_S):
            raise ConfigError(f"latency min_seconds must be in [0, {MAX_BUDGET_S:g}], got {self.min_seconds!r}")
        if not (isinstance(self.budget_s, (int, float)) and 0 < self.budget_s <= MAX_BUDGET_S):
            raise ConfigError(f"latency budget_s must be in (0, {MAX_BUDGET_S:g}] seconds, got {self.budget_s!r}")
        if not (isinstance(self.tolerance, (int, float)) and 0 < self.tolerance < 1):
            raise ConfigError(f"latency tolerance must be in (0, 1), got {self.tolerance!r}")


def latency_options(latency: bool | LatencyOptions | None, *, runs: int | None = None) -> LatencyOptions | None:
    """The options of a ``latency=`` argument: ``False``/``None`` -> no measurement, ``True`` ->
    defaults (with ``runs`` when given), or the options as given.

    Raises:
        ConfigError: ``runs`` < 1, or it is given along with options that set their own.
    """
    if latency is None or latency is False:
        return None
    if latency is True:
        if runs is not None and (not isinstance(runs, int) or runs < 1):
            raise ConfigError(f"latency_runs must be >= 1 or None, got {runs!r}")
        return LatencyOptions(runs=runs)
    if not isinstance(latency, LatencyOptions):
        raise ConfigError(f"latency must be True, False or LatencyOptions, got {type(latency).__name__}")
    if runs is not None and runs != latency.runs:
        raise ConfigError("give latency_runs or LatencyOptions.runs, not both")
    return latency


@dataclass
class Timings:
    """Timed runs of one model, in seconds, and why the loop stopped."""

    seconds: list[float]
    stop: str = "runs"

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) in milliseconds; ``nan`` when nothing was timed."""
        return float(np.percentile(self.seconds, q)) * 1000.0 if self.seconds else math.nan


def interleaved_times(openers: Mapping[str, BlockOpener], options: LatencyOptions, *,
                      clock: Callable[[], float] = time.perf_counter) -> dict[str, Timings]:
    """Time several models in interleaved blocks (see the module docstring).

    Args:
        openers: per model name, a function called at the start of each block (and once for the
            warm-up) that returns a zero-argument callable running the model once. It may return
            the same callable every time (a live session), or open a new session per block.
        options: warm-up, block size and stopping rule.
        clock: the timer (tests inject a fake one).

    Returns:
        Per model, its timed runs in seconds; ``stop`` is ``"runs"`` (the fixed count),
        ``"stable"``, ``"max_runs"`` or ``"budget"``.
    """
    names = list(openers)
    times: dict[str, list[float]] = {name: [] for name in names}
    # without a block size, at least one run per model to size the blocks
    slowest = _warm_up(openers, options.warmup if options.block else max(options.warmup, 1), clock)
    block = options.block or (min(20, max(1, math.ceil(0.05 / slowest))) if slowest > 0 else 20)
    block_warmup = options.block_warmup if options.block_warmup is not None else int(slowest < 0.02)
    target = options.runs if options.runs is not None else options.max_runs
    started = clock()
    history: list[list[float]] = []
    stop = "runs" if options.runs is not None else "max_runs"
    for round_index in range(math.ceil(target / block)):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            count = min(block, target - len(times[name]))
            _run_block(openers[name], times[name], count, block_warmup, clock)
        if options.runs is not None:
            continue
        history.append([float(np.median(times[name])) for name in names])
        if clock() - started >= options.min_seconds and _stable(history, times, options):
            stop = "stable"
            break
        if clock() - started >= options.budget_s:
            stop = "budget"
            break
    return {name: Timings(times[name], stop) for name in names}


def measure_latency(float_session: Any, quant_session: Any, feeds: Mapping[str, np.ndarray],
                    output_names: Sequence[str] | None = None, *, options: LatencyOptions | None = None,
                    threads: int | None = None) -> LatencyMetrics:
    """Time a float and a quantized session on one batch, interleaved (see the module docstring).

    Args:
        float_session: the float model's ``InferenceSession``.
        quant_session: the quantized model's ``InferenceSession``.
        feeds: one batch of inputs (cut or repeated to ``options.batch`` samples).
        output_names: outputs to fetch; ``None``: all.
        options: how to measure; ``None``: the defaults.
        threads: the intra-op thread count the sessions were built with (recorded only).

    Returns:
        Medians and 10th/90th percentiles in milliseconds, ``speedup = float_ms / quant_ms``.

    Raises:
        ConfigError: ``options.batch`` does not fit a model with a fixed batch dimension.
    """
    options = options or LatencyOptions()
    feeds = latency_feeds(feeds, options.batch, float_session)
    names = list(output_names) if output_names is not None else None
    logger.info("measuring latency: batch %d, %s", _samples(feeds),
                f"{options.runs} runs" if options.runs else f"until stable (at most {options.budget_s:g} s)")
    started = time.perf_counter()
    timings = interleaved_times({"float": _opener(float_session, feeds, names),
                                 "quant": _opener(quant_session, feeds, names)}, options)
    f, q = timings["float"], timings["quant"]
    float_ms, quant_ms = f.percentile(50), q.percentile(50)
    return LatencyMetrics(
        float_ms=float_ms, quant_ms=quant_ms, speedup=float_ms / quant_ms if quant_ms > 0 else math.inf,
        batch_size=_samples(feeds), threads=threads, runs=min(len(f.seconds), len(q.seconds)),
        float_p10_ms=f.percentile(10), float_p90_ms=f.percentile(90),
        quant_p10_ms=q.percentile(10), quant_p90_ms=q.percentile(90),
        warmup=options.warmup, stop=f.stop, seconds=time.perf_counter() - started)


def latency_feeds(feeds: Mapping[str, np.ndarray], batch: int | None, session: Any = None) -> dict[str, np.ndarray]:
    """``feeds`` cut or repeated along axis 0 to ``batch`` samples (``None``: as they are).

    Inputs whose axis 0 is not the batch's sample count (e.g. a scalar) are kept as they are.

    Raises:
        ConfigError: the session's model has a fixed batch dimension other than ``batch``.
    """
    feeds = dict(feeds)
    if batch is None:
        return feeds
    if session is not None:
        for arg in session.get_inputs():
            fixed = arg.shape[0] if arg.shape else None
            if isinstance(fixed, int) and fixed != batch and arg.name in feeds:
                raise ConfigError(f"input {arg.name!r} has a fixed batch of {fixed}: "
                                  f"the latency batch must be {fixed}, got {batch}")
    samples = _samples(feeds)
    out = {}
    for name, value in feeds.items():
        array = np.asarray(value)
        if array.ndim and array.shape[0] == samples and samples != batch:
            index = np.arange(batch) % samples
            array = np.ascontiguousarray(array[index])
        out[name] = array
    return out


# ------------------------------------------------------------------------- helpers


def _opener(session: Any, feeds: dict[str, np.ndarray], names: list[str] | None) -> BlockOpener:
    def once() -> Any:
        return run(session, feeds, names)
    return lambda: once


def _run_block(opener: BlockOpener, sink: list[float], count: int, untimed: int, clock: Callable[[], float]) -> None:
    if count <= 0:
        return
    once = opener()
    for _ in range(untimed):
        once()
    for _ in range(count):
        start = clock()
        once()
        sink.append(clock() - start)


def _warm_up(openers: Mapping[str, BlockOpener], warmup: int, clock: Callable[[], float]) -> float:
    """Run every model ``warmup`` times; the slowest model's last run, in seconds (0 without runs)."""
    slowest = 0.0
    for opener in openers.values() if warmup else ():
        once = opener()
        elapsed = 0.0
        for _ in range(warmup):
            start = clock()
            once()
            elapsed = clock() - start
        slowest = max(slowest, elapsed)
    return slowest


def _stable(history: list[list[float]], times: dict[str, list[float]], options: LatencyOptions) -> bool:
    """Every median moved by at most ``tolerance`` over the last two rounds, after ``min_runs``."""
    if len(history) < 3 or min(len(v) for v in times.values()) < options.min_runs:
        return False
    for back in (1, 2):
        for now, before in zip(history[-back], history[-back - 1]):
            if before <= 0 or abs(now - before) / before > options.tolerance:
                return False
    return True


def _samples(feeds: Mapping[str, np.ndarray]) -> int:
    for value in feeds.values():
        array = np.asarray(value)
        return int(array.shape[0]) if array.ndim else 1
    return 0
