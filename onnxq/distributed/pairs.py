"""A float/quantized pair over the shards of a data set on Dask workers; per-batch results in batch order.

The shared worker loop of sharded validation (:mod:`onnxq.distributed.validate`) and sharded
per-layer analysis (``onnxq.analyze(..., client=)``): the pair is shipped once to every worker,
each worker keeps its two ONNX Runtime sessions (tapped at the tensors the caller reads) and runs
its shards with the engine's loop (:func:`onnxq.engine.stream`), calling ``per_batch`` on every
batch. ``per_batch`` returns the statistics of that batch alone (single-batch accumulators); the
caller folds them in the global batch order, adding each batch's sums exactly as the
single-process loop adds them, so its result equals the single-process result bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..engine import ReplayRunner, Runner, StreamBatch, fixed_batch_size, sample_specs, stream, tapped
from ..data import InputSpec
from ._run import ShardTiming, log_timings, map_shards, ship, timings, worker_name, worker_threads, workers_of
from .shards import Shard, model_key, parse_model, plan_shards, serialise, worker_cached

__all__ = ["Batches", "ShardResults", "map_pair"]


@dataclass
class ShardResults:
    """What one worker returns: ``per_batch``'s result for each batch of its shard, in order."""

    index: int
    batches: list[Any]
    samples: int
    seconds: float
    worker: str


class Batches:
    """``(inputs, labels)`` batches behind the ``batches()`` method that validate and the engine read."""

    def __init__(self, items: Iterable[tuple[dict[str, np.ndarray], np.ndarray | None]]) -> None:
        self.items = items

    def batches(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        yield from self.items


def map_pair(client: Any, models: tuple[onnx.ModelProto, onnx.ModelProto],
             outputs: tuple[Sequence[str], Sequence[str]], data: Any,
             per_batch: Callable[[StreamBatch, Any], Any], context: Any, *, source: Any = None,
             shards: int | None = None, progress: bool = False, desc: str = "shards", replay: bool = False
             ) -> tuple[list[Any], list[ShardTiming]]:
    """Run the pair over ``data`` on ``client``'s workers; ``per_batch(batch, context)`` of every batch.

    Args:
        client: a ``distributed.Client``.
        models: the float and the quantized model.
        outputs: the tensors each model returns (graph outputs or inner tensors, tapped).
        data: the Dataset, as the single-process run iterates it (loaded with
            :func:`onnxq.engine.sample_specs` of the float model when it comes from ``source``).
        per_batch: a module-level function (pickled by name) run on the worker for each batch.
        context: its second argument (shipped with every shard task).
        source: the path ``data`` was loaded from (read by the workers themselves), if any.
        shards: number of shards (default: one per worker).
        progress: a progress bar over the shards.
        desc: the progress bar's and the debug log's label.
        replay: a worker keeps the float model's outputs per batch and replays them when the same
            batch comes again with another quantized model (:class:`onnxq.engine.ReplayRunner`: the
            fallback validates one candidate per step on the same data). Holds those outputs in the
            workers' memory: for graph outputs, not for tapped activations.

    Returns:
        ``per_batch``'s results of every batch in the single-process batch order, and each shard's timing.
    """
    payload = (serialise(models[0]), serialise(models[1]))
    names = (list(outputs[0]), list(outputs[1]))
    # one key per model: a worker keeps the float model's session across the fallback's candidates
    keys = tuple(f"{model_key(p)}:{n}" for p, n in zip(payload, names))
    scattered = ship(client, payload)
    workers = workers_of(client)
    try:
        items = ((shard,) for shard in plan_shards(data, shards or workers, source=source,
                                                   fixed=fixed_batch_size(models[0]) or fixed_batch_size(models[1])))
        results = map_shards(client, _run_shard, items, scattered, keys, sample_specs(models[0]), names, per_batch,
                             context, replay, in_flight=2 * workers, progress=progress, desc=desc)
    finally:
        client.cancel(scattered)
    log_timings(desc, results)
    return [b for r in results for b in r.batches], timings(results)


def _run_shard(shard: Shard, payload: tuple[bytes, bytes], keys: tuple[str, str], specs: list[InputSpec],
               outputs: tuple[list[str], list[str]], per_batch: Callable[[StreamBatch, Any], Any],
               context: Any, replay: bool) -> ShardResults:
    """Worker side: run the pair over one shard; ``per_batch``'s result for each batch."""
    start = time.perf_counter()
    threads = worker_threads()  # ORT threads = the worker's task threads: no oversubscription

    def runner(index: int) -> Runner:
        kind = ReplayRunner if replay and index == 0 else Runner
        return worker_cached(f"{keys[index]}:{threads}:{kind.__name__}", lambda: kind.create(
            tapped(parse_model(payload[index]), outputs[index]), outputs[index], threads=threads))

    runners = [runner(0), runner(1)]
    batches: list[Any] = []
    stats = stream(runners, Batches(shard.batches(specs)), lambda batch: batches.append(per_batch(batch, context)))
    return ShardResults(shard.index, batches, stats.samples, time.perf_counter() - start, worker_name())
