"""The one streaming loop: a model (or a float/quantized pair) run by ONNX Runtime over Feeds.

Every stage that reads data goes through :func:`stream`: calibration observers, smoothing
statistics, bias-correction statistics, validation metrics, per-layer analysis, task metrics and
the histograms of a report. One batch of activations is alive at a time; what a stage keeps is in
its consumer (an observer, an accumulator), never a list of batches.

A :class:`Runner` is one ONNX Runtime session with the tensors it returns: the graph outputs, or
tapped inner tensors (:func:`tapped`), optionally reduced inside the graph (``ReduceMin`` /
``ReduceMax``) so that only scalars leave ONNX Runtime (:func:`observe`).

Fixed batch dimension: a model whose inputs fix the batch dimension to ``k`` is fed batches of
exactly ``k`` samples: the stream is re-batched into full batches of ``k``, and the remainder at the
end of the data is padded with copies of its last sample; every returned tensor whose axis 0 is ``k``
is cut back to the real samples, so every sample is evaluated exactly once (padding, not one by one:
a fixed batch dimension takes no single sample). (Calibration data is still loaded with
the remainder dropped, as :func:`onnxq.data.load_data` documents.)

Distributed calibration: :func:`observe` is the function to run on one shard of feeds; it returns
mergeable observers (``merge``, ``to_dict`` / ``from_dict``), and :func:`merge_observers` combines
the shards' results.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import onnx

from ._graph import elem_types, unique_name
from ._progress import progress as progress_bar
from .data import InputSpec, input_specs
from .errors import DataError
from .runtime import create_session, run

logger = logging.getLogger(__name__)

__all__ = [
    "Observer", "Runner", "StreamBatch", "StreamStats", "TappedModel", "batch_samples", "fixed_batch_size",
    "merge_observers",
    "ReplayRunner", "Stopwatch", "first_batch", "observe", "pair_runners", "sample_specs", "stream", "tapped", "timed",
]

Feeds = dict[str, np.ndarray]
#: Element types reduced inside the graph (ReduceMin / ReduceMax have CPU kernels for them).
_REDUCIBLE = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class Observer(Protocol):
    """What :func:`observe` feeds: a mergeable statistic of one tensor (see calibration.observers)."""

    count: int

    def update(self, values: np.ndarray) -> None: ...

    def merge(self, other: Any) -> None: ...


# ------------------------------------------------------------------------------- runners


def tapped(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also expose ``tensors`` (the input is not modified)."""
    tapped_model = onnx.ModelProto()
    tapped_model.CopyFrom(model)
    graph = tapped_model.graph
    known = {vi.name: vi for vi in list(graph.value_info) + list(graph.input)}
    outputs = {o.name for o in graph.output}
    for name in tensors:
        if name in outputs:
            continue
        info = onnx.ValueInfoProto()
        if name in known:
            info.CopyFrom(known[name])
        else:
            info.name = name
        graph.output.append(info)
    return tapped_model


def fixed_batch_size(model: onnx.ModelProto) -> int | None:
    """The batch size a model's inputs fix (axis 0 of every input that has a fixed one), or ``None``.

    Raises:
        DataError: the inputs fix different batch sizes.
    """
    fixed = {s.shape[0] for s in input_specs(model) if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    if len(fixed) > 1:
        raise DataError(f"the model's inputs fix different batch sizes ({sorted(fixed)}); onnxq cannot batch data "
                        "for it")
    return fixed.pop() if fixed else None


def sample_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's input specs with the batch axis left free: data loaded with them keeps every
    sample (no remainder dropped), and :func:`stream` re-batches and pads for a fixed batch size."""
    return [replace(s, shape=(None, *s.shape[1:])) if s.shape and isinstance(s.shape[0], int) else s
            for s in input_specs(model)]


def pair_runners(float_model: onnx.ModelProto | str | os.PathLike[str],
                 quant_model: onnx.ModelProto | str | os.PathLike[str], float_proto: onnx.ModelProto,
                 quant_proto: onnx.ModelProto, outputs: Sequence[str] | None = None, *,
                 threads: int | None = None) -> tuple[Runner, Runner]:
    """Runners for a float/quantized pair; a path is handed to ORT (it reads external data itself)."""
    def source(original: Any, proto: onnx.ModelProto) -> Any:
        return original if isinstance(original, (str, os.PathLike)) else proto

    return (Runner.create(source(float_model, float_proto), outputs, proto=float_proto, threads=threads),
            Runner.create(source(quant_model, quant_proto), outputs, proto=quant_proto, threads=threads))


@dataclass
class Runner:
    """One ONNX Runtime session and the tensors it returns.

    Attributes:
        session: the ``InferenceSession``.
        outputs: names of the tensors :meth:`run` returns, in order.
        batch: the fixed batch size of the model's inputs, ``None`` when axis 0 is dynamic.
    """

    session: Any
    outputs: list[str]
    batch: int | None = None

    @classmethod
    def create(cls, model: onnx.ModelProto | str | os.PathLike[str], outputs: Sequence[str] | None = None, *,
               proto: onnx.ModelProto | None = None, threads: int | None = None) -> Runner:
        """A runner for ``model`` (a proto, or a path ORT reads itself) returning ``outputs``.

        Args:
            model: the model or its path.
            outputs: tensors to return; ``None``: the graph outputs.
            proto: the loaded model when ``model`` is a path (for output names and the batch size).
            threads: intra-op threads; ``None``: ORT's default.
        """
        graph_model = model if isinstance(model, onnx.ModelProto) else proto
        if graph_model is None:
            raise TypeError("Runner.create needs the loaded proto when the model is a path")
        names = [o.name for o in graph_model.graph.output] if outputs is None else list(outputs)
        return cls(create_session(model, threads=threads), names, fixed_batch_size(graph_model))

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch (already of the right size); the tensors of :attr:`outputs` in order."""
        return run(self.session, dict(feeds), self.outputs)


@dataclass
class ReplayRunner(Runner):
    """A :class:`Runner` that keeps its outputs per input batch and replays them for the same inputs.

    For a model run again and again on the same data: the float reference while the fallback
    validates one candidate per step. Holds every output it returned (the evaluation set's outputs,
    not its activations); inputs are told apart by a BLAKE2 digest of their bytes.
    """

    seen: dict[bytes, list[np.ndarray]] = field(default_factory=dict)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs for ``feeds``: from memory when these inputs ran before."""
        key = _digest(feeds)
        if key not in self.seen:
            self.seen[key] = super().run(feeds)
        return self.seen[key]


def _digest(feeds: Mapping[str, np.ndarray]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.reshape(-1).view(np.uint8) if array.dtype != object else repr(array.tolist()).encode())
    return digest.digest()


# ------------------------------------------------------------------------------- the loop


@dataclass
class StreamBatch:
    """One batch handed to a consumer.

    Attributes:
        index: position of the batch in the stream (after splitting for a fixed batch size).
        inputs: the model inputs of this batch (real samples only).
        labels: the labels of this batch, or ``None``.
        outputs: per runner, ``{tensor name: values}`` (padding already cut away).
        samples: real samples in the batch.
        fed: the inputs as the models ran them (``inputs`` padded to a fixed batch size).
    """

    index: int
    inputs: Feeds
    labels: np.ndarray | None
    outputs: list[dict[str, np.ndarray]]
    samples: int
    fed: Feeds


@dataclass
class StreamStats:
    """What a stream saw: batches (as run) and samples."""

    batches: int = 0
    samples: int = 0
    padded: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def stream(runners: Sequence[Runner], data: Any, consume: Callable[[StreamBatch], None], *,
           desc: str = "running", progress: bool = False, total: int | None = None) -> StreamStats:
    """Run every runner on each batch of ``data`` and hand the results to ``consume``.

    Args:
        runners: the models to run (one, or a float/quantized pair) on the same inputs.
        data: a ``Dataset`` (or anything with ``batches()`` yielding ``(inputs, labels)``), or an
            iterable of ``{input_name: array}`` feeds.
        consume: called once per batch; it must not keep the arrays beyond what it needs.
        desc: progress-bar label.
        progress: show a progress bar on stderr.
        total: batches expected (for the bar); read from ``data.num_batches`` when not given.

    Returns:
        Batches run and samples seen.
    """
    sizes = {r.batch for r in runners if r.batch is not None}
    if len(sizes) > 1:
        raise DataError(f"the models fix different batch sizes ({sorted(sizes)}); they cannot run on the same "
                        "batches")
    fixed = sizes.pop() if sizes else None
    stats = StreamStats()
    total = total if total is not None else getattr(data, "num_batches", None)
    batches = progress_bar(_batches_of(data), desc=desc, total=total, enabled=progress)
    for chunk, chunk_labels, real in _fit(batches, fixed):
        padded = fixed is not None and real < fixed
        fed = _pad(chunk, fixed) if padded else chunk
        outputs = [dict(zip(r.outputs, _cut(r.run(fed), real, fixed))) for r in runners]
        consume(StreamBatch(stats.batches, chunk, chunk_labels, outputs, real, fed))
        stats.batches += 1
        stats.samples += real
        stats.padded += (fixed - real) if padded and fixed is not None else 0
        del outputs
    if stats.padded:
        logger.debug("padded %d sample(s) to fill the last batch of %s", stats.padded, fixed)
    return stats


def _batches_of(data: Any) -> Iterator[tuple[Feeds, np.ndarray | None]]:
    if callable(getattr(data, "batches", None)):
        yield from data.batches()
        return
    for feeds in data:
        yield feeds, None


def batch_samples(inputs: Mapping[str, np.ndarray]) -> int:
    """Samples in a batch: the leading dimension of the first input that has one (1 for scalars)."""
    for value in inputs.values():
        array = np.asarray(value)
        if array.ndim >= 1:
            return int(array.shape[0])
    return 1


def _fit(batches: Iterable[tuple[Feeds, np.ndarray | None]], fixed: int | None
         ) -> Iterator[tuple[Feeds, np.ndarray | None, int]]:
    """Re-batch a stream into chunks of exactly ``fixed`` samples (the very last may be short).

    Without a fixed size (or for inputs without a batch axis) every batch passes through whole.
    """
    pending: list[tuple[Feeds, np.ndarray | None]] = []
    held = 0
    for inputs, labels in batches:
        n = batch_samples(inputs)
        if fixed is None or (not pending and n == fixed) or not all(np.ndim(v) >= 1 for v in inputs.values()):
            yield inputs, labels, n
            continue
        pending.append((inputs, labels))
        held += n
        while held >= fixed:
            chunk, chunk_labels = _take_rows(pending, fixed)
            held -= fixed
            yield chunk, chunk_labels, fixed
    if pending and held:
        chunk, chunk_labels = _take_rows(pending, held)
        yield chunk, chunk_labels, held


def _take_rows(pending: list[tuple[Feeds, np.ndarray | None]], count: int) -> tuple[Feeds, np.ndarray | None]:
    """The first ``count`` samples of the pending batches (removed from them)."""
    parts: list[tuple[Feeds, np.ndarray | None]] = []
    while count:
        inputs, labels = pending[0]
        n = batch_samples(inputs)
        take = min(n, count)
        parts.append(({k: np.asarray(v)[:take] for k, v in inputs.items()},
                      None if labels is None else np.asarray(labels)[:take]))
        if take == n:
            pending.pop(0)
        else:
            pending[0] = ({k: np.asarray(v)[take:] for k, v in inputs.items()},
                          None if labels is None else np.asarray(labels)[take:])
        count -= take
    if len(parts) == 1:
        return parts[0]
    inputs = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    labels = None if any(p[1] is None for p in parts) else np.concatenate([p[1] for p in parts])  # type: ignore[misc]
    return inputs, labels


def _pad(inputs: Feeds, size: int | None) -> Feeds:
    """Fill a short batch up to ``size`` samples with copies of its last sample."""
    assert size is not None
    padded = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        extra = np.repeat(array[-1:], size - array.shape[0], axis=0)
        padded[name] = np.concatenate([array, extra], axis=0)
    return padded


def _cut(values: list[np.ndarray], real: int, fixed: int | None) -> list[np.ndarray]:
    """Drop the padded samples: axis 0 of every tensor whose axis 0 is the fixed batch size."""
    if fixed is None or real == fixed:
        return values
    return [v[:real] if np.ndim(v) >= 1 and v.shape[0] == fixed else v for v in values]


# ------------------------------------------------------------------------------- observers


class TappedModel:
    """A model tapped at some tensors, ready to stream shard after shard of feeds into observers.

    Build it once (one session; a Dask worker keeps it across shards), then call :meth:`observe`
    per shard. With ``reduce``, every tensor known to be float32/float64 is reduced inside the
    graph (``ReduceMin`` / ``ReduceMax`` / ``ReduceSum`` / ``Size``), so that four scalars per tensor leave ONNX
    Runtime instead of the activation; for observers that need only each batch's extremes (MinMax).

    ``threads`` sets the sessions' intra-op threads (``None``: ONNX Runtime's default, one per
    core). A Dask worker passes its own task-thread count (:func:`onnxq.distributed._run.worker_threads`),
    so the ``local:N`` cluster of single-threaded workers runs 1 intra-op thread per worker and N
    workers do not oversubscribe the cores.

    Attributes:
        tensors: the observed tensors, in order, without duplicates.
        reduced: tensor -> names of its (min, max, sum, size) outputs, for the tensors reduced in the graph
            (the sum only proves that no value is NaN or infinite).
        threads: the sessions' intra-op threads (``None``: ORT's default).
    """

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], *, reduce: bool = False,
                 keep: Sequence[str] = (), threads: int | None = None) -> None:
        self.model = model
        self.threads = threads
        self.tensors = list(dict.fromkeys(tensors))
        self.keep = [n for n in dict.fromkeys(keep)]
        self.reduced = {n: o for n, o in (_float_tensors(model, self.tensors) if reduce else {}).items()
                        if n not in self.keep}
        self._full = [n for n in dict.fromkeys(self.tensors + self.keep) if n not in self.reduced]
        outputs = self._full + [o for names in self.reduced.values() for o in names]
        graph = _reduced_model(model, self._full, self.reduced) if self.reduced else tapped(model, self._full)
        self.runner = Runner.create(graph, outputs, threads=threads) if self._full or self.reduced else None
        self._rerun: Runner | None = None

    def observe(self, data: Any, factory: Callable[[], Observer], *, desc: str = "calibrating",
                progress: bool = False, also: Callable[[dict[str, np.ndarray]], None] | None = None
                ) -> tuple[dict[str, Observer], int]:
        """Stream ``data`` (one shard of feeds, see :func:`stream`) into fresh observers, one per tensor.

        Observers only ever see float tensors; a batch whose reduced extremes are not finite is run
        again with full taps, so that non-finite values are skipped exactly as ``update`` skips them.

        ``also`` (optional) gets each batch's ``{name: values}`` of the ``keep`` tensors (tapped in
        full), so that another statistic shares the pass (SmoothQuant's per-channel maxima).

        Returns:
            The observers by tensor name (mergeable: ``merge``, ``to_dict``), and the samples seen.
        """
        observers = {name: factory() for name in self.tensors}
        if self.runner is None:
            return observers, 0

        def update(batch: StreamBatch) -> None:
            values = batch.outputs[0]
            if also is not None:
                also({name: values[name] for name in self.keep})
            for name in self._full:
                if name in observers and values[name].dtype.kind == "f":
                    observers[name].update(values[name])
            bad = []
            for name, (low_name, high_name, sum_name, size_name) in self.reduced.items():
                size, dtype = int(values[size_name]), values[low_name].dtype
                if not size:  # what update() sees of an empty tensor (no extremes to reduce)
                    observers[name].update(np.empty(0, dtype))
                    continue
                low, high, total = float(values[low_name]), float(values[high_name]), float(values[sum_name])
                # ReduceMin/Max may step over NaN; a finite sum proves there is no NaN or inf
                if -_FLOAT32_MAX <= low <= high <= _FLOAT32_MAX and math.isfinite(total):
                    observers[name].update_extremes(low, high, size, dtype.str)  # type: ignore[attr-defined]
                else:
                    bad.append(name)
            if bad:  # NaN / inf somewhere: the exact slow path for this batch
                again = dict(zip(self._rerun_runner().outputs, self._rerun_runner().run(batch.inputs)))
                for name in bad:
                    observers[name].update(again[name])

        stats = stream([self.runner], data, update, desc=desc, progress=progress)
        return observers, stats.samples

    def _rerun_runner(self) -> Runner:
        if self._rerun is None:
            self._rerun = Runner.create(tapped(self.model, list(self.reduced)), list(self.reduced),
                                        threads=self.threads)
        return self._rerun


def observe(model: onnx.ModelProto, data: Any, tensors: Sequence[str], factory: Callable[[], Observer], *,
            reduce: bool = False, desc: str = "calibrating", progress: bool = False) -> tuple[dict[str, Observer], int]:
    """Stream ``data`` (one shard of feeds) through ``model`` tapped at ``tensors``; fill one observer each.

    The whole of calibration on one shard: a distributed run calls it (or :meth:`TappedModel.observe`
    with a model tapped once per worker) per shard and merges the observers (:func:`merge_observers`).
    See :class:`TappedModel` for ``reduce``.

    Returns:
        The observers by tensor name, and the number of samples seen.
    """
    return TappedModel(model, tensors, reduce=reduce).observe(data, factory, desc=desc, progress=progress)


def merge_observers(shards: Iterable[Mapping[str, Observer]]) -> dict[str, Observer]:
    """Combine per-shard observers (tensor name -> observer) into one observer per tensor."""
    merged: dict[str, Observer] = {}
    for shard in shards:
        for name, observer in shard.items():
            if name in merged:
                merged[name].merge(observer)
            else:
                merged[name] = observer
    return merged


def _float_tensors(model: onnx.ModelProto, names: list[str]) -> dict[str, tuple[str, ...]]:
    """Tensors among ``names`` known to be float32/64 (type inference): name -> (min, max, sum, size) outputs."""
    types = elem_types(model, infer=True)
    taken = {n for node in model.graph.node for n in node.output} | {i.name for i in model.graph.input}
    taken |= {t.name for t in model.graph.initializer}
    return {name: tuple(unique_name(f"onnxq_{what}_{index}", taken) for what in ("min", "max", "sum", "size"))
            for index, name in enumerate(names) if types.get(name) in _REDUCIBLE}  # type: ignore[misc]


def _reduced_model(model: onnx.ModelProto, full: list[str], reduced: dict[str, tuple[str, ...]]) -> onnx.ModelProto:
    """``model`` tapped at ``full``, with ReduceMin / ReduceMax / ReduceSum / Size outputs for ``reduced``."""
    from onnx import helper

    result = tapped(model, full)
    graph = result.graph
    for name, outputs in reduced.items():
        ops = ("ReduceMin", "ReduceMax", "ReduceSum", "Size")
        graph.node.extend(helper.make_node(op, [name], [out], name=f"{out}_node",
                                           **({"keepdims": 0} if op != "Size" else {}))
                          for op, out in zip(ops, outputs))
        graph.output.extend(helper.make_empty_tensor_value_info(o) for o in outputs)
    return result



@contextlib.contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall-clock seconds of the ``with`` block to ``timings[stage]`` (the per-stage line of a report)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


class Stopwatch:
    """Laps of wall-clock time by stage: ``lap(stage)`` adds the time since the last lap to ``stage``
    (``None``: the time is not counted)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str | None) -> None:
        now = time.perf_counter()
        if stage is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self._last
        self._last = now


def first_batch(runners: Sequence[Runner], data: Any) -> Feeds | None:
    """The first batch of ``data`` as :func:`stream` would feed it to ``runners`` (padded to a fixed
    batch size); ``None`` for empty data. Reads one batch, runs nothing."""
    fixed = next((r.batch for r in runners if r.batch is not None), None)
    for chunk, _, real in _fit(_batches_of(data), fixed):
        return _pad(chunk, fixed) if fixed is not None and real < fixed else chunk
    return None
