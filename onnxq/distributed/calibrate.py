"""Sharded calibration on Dask: workers observe their shards, the client merges and computes ranges.

Each worker streams its shard (:mod:`onnxq.distributed.shards`) through its own ONNX Runtime
session of the tapped model (:class:`onnxq.engine.TappedModel`, the single-process loop) -- the model
is shipped once to every worker, not sent per task -- and returns its observers. The session runs
as many intra-op threads as the worker has task threads (``dask worker --nthreads``): 1 on the
``local:N`` cluster of single-threaded workers, so N workers use N cores, not N times all of them. The client
merges them in shard order and finishes exactly as the single-process run
(:func:`ranges_from_observers`).

Equality with the single-process ranges -- identical, bit for bit, for every method but ``auto``:

* ``minmax`` (without moving average): one pass; a merged min/max is the min/max of the union.
* ``minmax`` with moving average: one pass that records each batch's extremes; the client replays
  the moving average over them in the single-process batch order.
* ``entropy``, ``percentile``, ``mse``: two passes (:mod:`onnxq.distributed._replay`): the first
  records each batch's extremes (reduced inside the graph, as MinMax calibration does: two scalars
  per tensor and batch leave ONNX Runtime), the client replays how the single-process histogram grid grows,
  and the second bins each batch on the grid the single process binned it on and maps the counts
  to the final grid by the same integer re-binning. The histogram is the single-process histogram
  bin for bin, so every estimator gives the same range. (Merging independently grown shard
  histograms with ``HistogramObserver.merge`` would split counts in proportion where grids do
  not line up: measured 0.28 on one entropy range of the test CNN.) The price is a second
  forward pass over the data.
* ``auto`` measures the consumers of each tensor on the first batches: it runs in-process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from ..calibration.observers import make_observer
from ..calibration.ranges import Ranges
from ..calibration.runner import collect_ranges as collect_in_process
from ..calibration.runner import ranges_from_observers
from ..config import CalibrationMethod, QuantConfig
from ..engine import Observer, TappedModel, fixed_batch_size, merge_observers
from ..data import Dataset, InputSpec, input_specs
from ._replay import Binner, Extremes, Plan, histogram, minmax, replay
from ._run import ShardTiming, log_timings, map_shards, ship, timings, worker_name, worker_threads, workers_of
from .shards import Shard, model_key, parse_model, plan_shards, serialise, worker_cached

logger = logging.getLogger(__name__)

__all__ = ["ShardObservers", "collect_ranges"]


@dataclass
class ShardObservers:
    """What one worker returns: the observers of its shard and how long it took."""

    index: int
    observers: dict[str, Observer]
    samples: int
    seconds: float
    worker: str


def collect_ranges(client: Any, model: onnx.ModelProto, data: Dataset, tensors: Sequence[str],
                   config: QuantConfig, *, source: Any = None, shards: int | None = None,
                   progress: bool = False) -> tuple[Ranges, list[ShardTiming]]:
    """Calibrate ``tensors`` of ``model`` on ``data`` with the workers of ``client``.

    Args:
        client: a ``distributed.Client``.
        model: the prepared float model (not modified).
        data: the calibration Dataset, as the single-process run would iterate it.
        tensors: the tensors to calibrate.
        config: method, bins, percentile, ... (as for the single-process run).
        source: the path ``data`` was loaded from (``.npz``, ``.npy``, a folder), read by the workers
            themselves (it must be visible to them); anything else is read here and shipped in shards.
        shards: number of shards (default: one per worker).
        progress: a progress bar over the shards.

    Returns:
        The ranges (equal to the single-process ones) and each shard's timing (both passes).
    """
    tensors = list(dict.fromkeys(tensors))
    if not tensors or config.method is CalibrationMethod.AUTO:
        if tensors:
            logger.info("calibration method auto runs in-process, not on Dask")
        return collect_in_process(model, data, tensors, config, progress=progress), []
    run = _Run(client, model, data, tensors, config, source, shards or workers_of(client), progress)
    try:
        if config.method is CalibrationMethod.MINMAX and not config.moving_average:
            results = run.map(_observe_shard, lambda: make_observer(config), "calibrating", reduce=True)
            observers = merge_observers(r.observers for r in results)  # in shard order
            return ranges_from_observers(observers, sum(r.samples for r in results), config), timings(results)
        first = run.map(_observe_shard, Extremes, "calibrating (1/2)", reduce=True)  # extremes in the graph
        lengths = {r.index: {t: len(e.batches) for t, e in r.observers.items()} for r in first}
        extremes = merge_observers(r.observers for r in first)  # (merges into the first shard's)
        samples = sum(r.samples for r in first)
        if config.method is CalibrationMethod.MINMAX:
            observers = {t: minmax(e, True, config.averaging_constant) for t, e in extremes.items()}
            return ranges_from_observers(observers, samples, config), timings(first)
        plans = {t: replay(e.batches, config.num_bins) for t, e in extremes.items()}
        if any(p is None for p in plans.values()):
            logger.info("a histogram grew beyond exact re-binning: calibrating in-process")
            return collect_in_process(model, data, tensors, config, progress=progress), timings(first)
        second = run.bin(lengths, plans)  # type: ignore[arg-type]
        counts = {t: sum(r.observers[t].totals() for r in second) for t in tensors}  # type: ignore[attr-defined]
        observers = {t: histogram(plans[t], extremes[t], counts[t]) for t in tensors}  # type: ignore[arg-type]
        return ranges_from_observers(observers, samples, config), timings(first) + timings(second)
    finally:
        run.close()


class _Run:
    """One sharded calibration: the model shipped once, the shards planned the same way per pass."""

    def __init__(self, client: Any, model: onnx.ModelProto, data: Dataset, tensors: list[str],
                 config: QuantConfig, source: Any, shards: int, progress: bool) -> None:
        self.client, self.data, self.tensors, self.config = client, data, tensors, config
        self.source, self.shards, self.progress = source, shards, progress
        payload = serialise(model)
        self.key = model_key(payload)
        self.model = ship(client, payload)
        self.specs = input_specs(model)
        self.fixed = fixed_batch_size(model)
        self.in_flight = 2 * workers_of(client)

    def plan(self) -> Any:
        return plan_shards(self.data, self.shards, source=self.source, shuffle=self.config.shuffle,
                           seed=self.config.seed, fixed=self.fixed)

    def map(self, task: Any, factory: Any, desc: str, extra: Any = None, *, reduce: bool = False
            ) -> list[ShardObservers]:
        """Run ``task`` on every shard (with ``extra(shard)``, if given); results in shard order."""
        items = ((shard, extra(shard) if extra else None) for shard in self.plan())
        results = map_shards(self.client, task, items, self.model, self.key, self.specs, self.tensors, factory,
                             reduce, in_flight=self.in_flight, progress=self.progress, desc=desc)
        log_timings(desc, results)
        return results

    def bin(self, lengths: dict[int, dict[str, int]], plans: dict[str, Plan]) -> list[ShardObservers]:
        """Pass 2: each shard gets the grids of its own batches (``lengths``: batches per shard and tensor)."""
        offsets: dict[int, dict[str, tuple[int, int]]] = {}
        start = {t: 0 for t in self.tensors}
        for index in sorted(lengths):
            offsets[index] = {}
            for t in self.tensors:
                n = lengths[index][t]
                offsets[index][t] = (start[t], start[t] + n)
                start[t] += n

        def shard_plans(shard: Shard) -> dict[str, Plan]:
            return {t: plans[t].shard(*offsets[shard.index][t]) for t in self.tensors}

        return self.map(_observe_shard, Binner, "calibrating (2/2)", shard_plans)

    def close(self) -> None:
        self.client.cancel(self.model)


def _observe_shard(shard: Shard, shard_plans: dict[str, Plan] | None, payload: bytes, key: str,
                   specs: list[InputSpec], tensors: list[str], factory: Any, reduce: bool) -> ShardObservers:
    """Worker side: stream one shard through the tapped model, as the single-process run does.

    ``factory`` makes each tensor's observer; with ``shard_plans`` (pass 2) it is the
    :class:`Binner` class and gets each tensor's grids. ``reduce``: each batch's extremes inside the graph
    (MinMax, and pass 1 of the histogram methods), as the single-process MinMax calibration does.
    """
    start = time.perf_counter()
    made = iter([Binner(shard_plans[t]) for t in tensors]) if shard_plans is not None else None
    make = (lambda: next(made)) if made is not None else factory  # observe() makes them in tensor order
    model = worker_cached(key, lambda: parse_model(payload))
    threads = worker_threads()  # ORT intra-op threads = the worker's task threads (1 on local:N)
    tapped = worker_cached(f"{key}:{reduce}:{tensors}:{threads}",
                           lambda: TappedModel(model, tensors, reduce=reduce, threads=threads))
    observers, samples = tapped.observe((inputs for inputs, _ in shard.batches(specs)), make)
    return ShardObservers(shard.index, observers, samples, time.perf_counter() - start, worker_name())

