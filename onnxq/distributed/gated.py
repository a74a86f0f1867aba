"""The fallback's revert-one ranking on Dask workers: many gate settings of one emulation graph at once.

:class:`ClusterGatedRuns` is the :class:`onnxq.sensitivity.GatedRuns` of a run with a cluster: the
float reference outputs are computed once on the client (as in-process), then the emulation graph,
the sample batches and those outputs are shipped once to the workers, and :meth:`errors` cuts a
list of gate settings (the screening groups, then the candidates one by one) into runs of
consecutive settings, one task each. A worker keeps one session of the emulation graph and
computes each setting's error with the function the in-process runs use
(:func:`onnxq.sensitivity.gated_error`), so every error -- hence the ranking and the fallback's
steps -- equals the single-process one. Single errors (the all-int8 base, the error split) run on
the client.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..runtime import create_session
from ..sensitivity import GatedRuns, gated_error
from ._run import log_timings, map_shards, ship, worker_name, worker_threads, workers_of
from .shards import model_key, parse_model, serialise, worker_cached

__all__ = ["ClusterGatedRuns", "TASKS_PER_WORKER"]

#: Gate settings are cut into about this many tasks per worker (a slow worker holds up less).
TASKS_PER_WORKER = 4


@dataclass
class _Errors:
    """What one task returns: the errors of its run of settings, in order."""

    index: int
    errors: list[float]
    samples: int
    seconds: float
    worker: str


class ClusterGatedRuns(GatedRuns):
    """:class:`GatedRuns` whose :meth:`errors` run on the workers of ``client`` (same errors)."""

    def __init__(self, client: Any, reference_model: onnx.ModelProto, emulation: onnx.ModelProto,
                 gates: dict[str, str], data: Any, samples: int) -> None:
        super().__init__(reference_model, emulation, gates, data, samples)
        self.client = client
        payload = serialise(emulation)
        self._key = model_key(payload)
        self._model = ship(client, payload)
        self._state = ship(client, (self.batches, self.reference))

    def errors(self, offs: Sequence[Sequence[str]], *, desc: str = "sensitivity", progress: bool = False
               ) -> list[float]:
        """The error of each gate setting of ``offs``, in order, computed on the workers."""
        offs = [list(off) for off in offs]
        if len(offs) < 2:
            return super().errors(offs, desc=desc, progress=progress)
        workers = workers_of(self.client)
        size = max(1, math.ceil(len(offs) / (TASKS_PER_WORKER * workers)))
        items = ((index, offs[start:start + size]) for index, start in enumerate(range(0, len(offs), size)))
        results = map_shards(self.client, _errors_task, items, self._model, self._key, self._state, self.gates,
                             in_flight=2 * workers, progress=progress, total=math.ceil(len(offs) / size),
                             desc=desc)
        log_timings(desc, results)
        return [error for result in results for error in result.errors]

    def close(self) -> None:
        """Release the shipped graph and samples on the workers."""
        self.client.cancel([self._model, self._state])


def _errors_task(index: int, offs: list[list[str]], payload: bytes, key: str,
                 state: tuple[list[dict[str, np.ndarray]], list[list[np.ndarray]]],
                 gates: dict[str, str]) -> _Errors:
    """Worker side: the error of each setting of ``offs`` with this worker's session of the graph."""
    start = time.perf_counter()
    threads = worker_threads()
    session = worker_cached(f"{key}:gated:{threads}", lambda: create_session(parse_model(payload), threads=threads))
    batches, reference = state
    errors = [gated_error(session, batches, reference, gates, off) for off in offs]
    rows = sum(len(next(iter(feeds.values()))) for feeds in batches if feeds)
    return _Errors(index, errors, rows * len(offs), time.perf_counter() - start, worker_name())
