"""Submit shard tasks to a Dask client with a bounded number in flight; results by shard index."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .._progress import progress as progress_bar
from ..errors import ModelError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardTiming:
    """Where and how long one shard ran (for benchmarks and the debug log)."""

    index: int
    samples: int
    seconds: float
    worker: str


def ship(client: Any, payload: Any) -> Any:
    """A future holding ``payload`` (a serialised model) that every shard task takes as an argument.

    Each worker fetches it once (from the client's task or a peer) and keeps it while tasks need
    it; the worker-side cache (:func:`onnxq.distributed.shards.worker_cached`) then parses it and
    builds its session once. Unlike ``client.scatter``, whose replicas the scheduler may trim and
    which is lost for good with the last worker holding it, this is a task: a worker killed mid-run
    takes nothing with it that Dask cannot recompute.
    """
    return client.submit(_hold, payload, pure=False)


def _hold(payload: Any) -> Any:
    return payload


def workers_of(client: Any) -> int:
    """Workers connected to the client's scheduler (at least 1)."""
    return max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))


def map_shards(client: Any, task: Callable[..., Any], items: Iterable[tuple[Any, ...]], *args: Any,
               in_flight: int, progress: bool = False, total: int | None = None,
               desc: str = "shards") -> list[Any]:
    """Run ``task(*item, *args)`` for every item (a shard and its own arguments); results by ``index``.

    Shards are placed round-robin on the workers (``allow_other_workers``: a shard whose worker is
    gone runs elsewhere); left alone, the scheduler would queue every shard on the one worker that
    holds the model, for locality. At most ``in_flight`` tasks are submitted at a time, so shipped
    shards do not pile up in the client's memory. A task lost with its worker is rescheduled by Dask
    (``allowed-failures``); an exception raised by a task is re-raised here.
    """
    from distributed import as_completed

    addresses = sorted(client.scheduler_info(n_workers=-1).get("workers", {})) or [None]
    submitted = 0

    def submit(item: tuple[Any, ...]) -> Any:
        nonlocal submitted
        where = addresses[submitted % len(addresses)]
        submitted += 1
        placed = {"workers": [where], "allow_other_workers": True} if where else {}  # none connected: any
        return client.submit(task, *item, *args, pure=False, **placed)

    iterator = iter(items)
    results: dict[int, Any] = {}
    pending = as_completed(loop=client.loop)
    for item in iterator:
        pending.add(submit(item))
        if pending.count() >= in_flight:
            break
    for future in progress_bar(pending, desc=desc, total=total, enabled=progress, unit="shard"):
        result = _result(future)
        future.release()
        results[result.index] = result
        item = next(iterator, None)
        if item is not None:
            pending.add(submit(item))
    return [results[i] for i in sorted(results)]


def _result(future: Any) -> Any:
    """The task's result; a task that killed its workers again and again is a one-line ``ModelError``."""
    from distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker as exc:
        raise ModelError(f"Dask workers died running {exc.task!r} again and again (allowed-failures reached); "
                         "the model may crash ONNX Runtime or exhaust a worker's memory: run it in-process "
                         "to see the error") from None


def timings(results: list[Any]) -> list[ShardTiming]:
    """The :class:`ShardTiming` of each shard result."""
    return [ShardTiming(r.index, r.samples, r.seconds, r.worker) for r in results]


def log_timings(what: str, results: list[Any]) -> None:
    """Per-shard task times at debug level."""
    for r in results:
        logger.debug("%s shard %d: %d samples in %.3f s on %s", what, r.index, r.samples, r.seconds, r.worker)


def worker_name() -> str:
    """The address of the Dask worker running the current task (``"local"`` outside one)."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


def worker_threads() -> int | None:
    """The task threads of the Dask worker running the current task (``None`` outside one)."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None
