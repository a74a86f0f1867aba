"""Shards of a data set for Dask workers, and the per-worker cache of ONNX Runtime sessions.

A shard is a run of consecutive batches of the data set the single process would iterate, so that
the batches a worker sees are the very batches the single-process run sees:

* :class:`PathShard` -- a run of batches of a data path (``.npz``, ``.npy``, a folder) that the
  worker loads itself (the path must be visible to the worker: shared storage);
* :class:`BatchShard` -- batches read on the client and shipped with the task (any source:
  folders, lists, generators, framework data).

Models are shipped once per worker as a recomputable task (:func:`onnxq.distributed._run.ship`); each worker
process keeps what it built from them (:func:`worker_cached`: the tapped model and its ONNX Runtime
session), so a model crosses the network, is deserialised and gets a session once per worker, not
once per task.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigError
from ..data import Dataset, InputSpec, load_data

__all__ = ["BatchShard", "PathShard", "Shard", "model_key", "parse_model", "plan_shards", "serialise",
           "worker_cached"]

Batch = tuple[dict[str, np.ndarray], "np.ndarray | None"]

T = TypeVar("T")

#: Objects a worker process keeps (tapped models of both calibration passes, a validation's pair).
_MAX_CACHED = 4
_CACHE: OrderedDict[str, Any] = OrderedDict()
_LOCK = threading.Lock()


@dataclass(frozen=True)
class PathShard:
    """Batches ``[first, stop)`` of the Dataset that ``load_data`` makes of ``path``, rebuilt by the worker.

    The worker loads the path exactly as the client did (same batch size, shuffle and seed; the
    limit cut to the end of this shard), so its batches are the client's batches, whatever the
    format (``.npz``, ``.npy``, a folder). It reads, but does not run, the batches before ``first``.
    """

    index: int
    path: str
    first: int
    stop: int
    batch_size: int
    samples: int
    shuffle: bool = False
    seed: int = 0

    def batches(self, specs: list[InputSpec]) -> Iterator[Batch]:
        """``(inputs, labels)`` of this shard's batches."""
        limit = min(self.stop * self.batch_size, self.samples)
        data = load_data(self.path, specs, batch_size=self.batch_size, limit=limit, shuffle=self.shuffle,
                         seed=self.seed)
        yield from itertools.islice(data.batches(), self.first, self.stop)


@dataclass(frozen=True)
class BatchShard:
    """Batches read on the client and shipped with the task."""

    index: int
    items: list[Batch]

    def batches(self, specs: list[InputSpec]) -> Iterator[Batch]:
        """The shipped ``(inputs, labels)`` batches, in order."""
        del specs
        yield from self.items


Shard = PathShard | BatchShard


def plan_shards(data: Dataset, shards: int, *, source: Any = None, shuffle: bool = False,
                seed: int = 0, fixed: int | None = None) -> Iterator[Shard]:
    """Cut ``data`` into about ``shards`` runs of consecutive batches.

    :class:`PathShard` when ``source`` is the path ``data`` was loaded from (with ``shuffle`` and
    ``seed`` as given to ``load_data``), so that the workers read it; otherwise batches read here and
    shipped (:class:`BatchShard`), generated lazily as the caller asks for them.

    ``fixed``: the model's fixed batch size, if any. The engine re-cuts the stream into runs of
    exactly that many samples; a shard then starts where a run of the single-process stream starts
    (its batches hold a multiple of ``fixed`` samples), so the workers see the very runs one process
    would, and sums over them add up in the same order.
    """
    batch = data.batch_size
    total = data.num_batches
    per_shard = max(1, math.ceil(total / shards)) if total else 16
    if fixed and batch:
        step = fixed // math.gcd(fixed, batch)  # batches per shard that hold whole runs of ``fixed``
        per_shard = math.ceil(per_shard / step) * step
    if isinstance(source, (str, os.PathLike)) and total is not None and data.num_samples is not None:
        path = os.fspath(Path(source).resolve())
        for index, first in enumerate(range(0, total, per_shard)):
            yield PathShard(index, path, first, min(first + per_shard, total), batch, data.num_samples,
                            shuffle, seed)
        return
    items: list[Batch] = []
    index = 0
    for item in data.batches():
        items.append(item)
        if len(items) == per_shard:
            yield BatchShard(index, items)
            index, items = index + 1, []
    if items:
        yield BatchShard(index, items)


def serialise(model: Any) -> bytes:
    """The model's bytes for the workers; a model over protobuf's 2 GiB limit is refused in one line."""
    try:
        return bytes(model.SerializeToString())
    except ValueError:
        raise ConfigError("a model over 2 GiB cannot be shipped to Dask workers; run it in-process "
                          "(without --dask / client=)") from None


def model_key(payload: bytes) -> str:
    """The cache key of a serialised model (sha256)."""
    return hashlib.sha256(payload).hexdigest()


def worker_cached(key: str, build: Callable[[], T]) -> T:
    """This worker process's object for ``key`` (a parsed model, a tapped model with its session),
    built once by ``build`` and then reused by every task the process runs."""
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]  # type: ignore[no-any-return]
    value = build()
    with _LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _MAX_CACHED:
            _CACHE.popitem(last=False)
    return value


def parse_model(payload: bytes) -> Any:
    """An ``onnx.ModelProto`` from its serialised bytes."""
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(payload)
    return model
