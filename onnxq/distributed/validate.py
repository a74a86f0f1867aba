"""Sharded validation on Dask: workers compare float and quantized outputs on their shards, the
client folds the per-batch metrics in the single-process batch order.

Each worker runs the float/quantized pair (shipped once to every worker) over its shard with
the engine's loop (:func:`onnxq.distributed.pairs.map_pair`) and returns, per batch, the metric accumulators of
that batch alone (:class:`~onnxq.validate.OutputAccumulator`, :class:`~onnxq.validate.AccuracyAccumulator`).
The client folds them batch by batch in global order, adding each batch's sums exactly as the
single-process loop adds them, so the report -- sums, counts, minima, top-k agreement, accuracy --
is identical to the single-process report, not just close. The client runs nothing for the metrics;
latency, when asked, is measured on the client on the first batch (:func:`onnxq.validate.with_latency`:
two sessions, no validation pass).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..engine import StreamBatch
from ..errors import DataError, ModelError
from ..data import Dataset
from ..latency import latency_options
from ..model import load_model, model_size
from ..report.schema import Report
from ..validate import (NO_SCORES_NOTE, AccuracyAccumulator, OutputAccumulator, check_same_io, is_class_scores,
                        non_numeric_note, with_latency)
from ._run import ShardTiming
from .pairs import Batches, map_pair

logger = logging.getLogger(__name__)

__all__ = ["BatchMetrics", "validate_on_cluster"]

_NUMERIC_KINDS = "biuf"


@dataclass
class BatchMetrics:
    """The metrics of one batch alone.

    Attributes:
        outputs: per output, its accumulator, or ``None`` when the output is not numeric.
        scores: outputs whose float values are class scores ``[N, C]`` in this batch.
        accuracy: without labels ``None``; else per 2-D numeric output the float and quantized
            accuracy accumulators, or the message of the ``DataError`` the labels raised.
        samples: real samples in the batch.
    """

    outputs: dict[str, OutputAccumulator | None]
    scores: list[str]
    accuracy: dict[str, tuple[AccuracyAccumulator, AccuracyAccumulator] | str] | None
    samples: int
    dtypes: dict[str, str] = field(default_factory=dict)  # of the outputs that are not numeric


def validate_on_cluster(client: Any, float_model: onnx.ModelProto, quant_model: onnx.ModelProto, data: Dataset, *,
                        source: Any = None, shards: int | None = None, latency: Any = True,
                        threads: int | None = None, progress: bool = False,
                        replay: bool = False) -> tuple[Report, list[ShardTiming]]:
    """:func:`onnxq.validate.validate` with the evaluation batches spread over ``client``'s workers.

    Args:
        client: a ``distributed.Client``.
        float_model: the float model.
        quant_model: the quantized model (same inputs and outputs).
        data: the evaluation Dataset, as the single-process run iterates it.
        source: the path ``data`` was loaded from (read by the workers themselves), if any.
        shards: number of shards (default: one per worker).
        latency: as for ``validate`` (measured on the client, on the first batch).
        threads: ORT threads for the latency measurement.
        progress: a progress bar over the shards.
        replay: the workers replay the float model's outputs of batches they ran before
            (:func:`onnxq.distributed.pairs.map_pair`): for many validations on the same data.

    Returns:
        The report (equal to the single-process one, latency aside) and each shard's timing.
    """
    float_proto, quant_proto = load_model(float_model, check=False), load_model(quant_model, check=False)
    check_same_io(float_proto, quant_proto)
    names = [o.name for o in float_proto.graph.output]
    first = next(iter(data.batches()), None)
    if first is None:
        raise DataError("the evaluation data holds no batch")
    start = time.perf_counter()
    batches, shard_timings = map_pair(client, (float_proto, quant_proto), (names, names), data, _batch_metrics,
                                      names, source=source, shards=shards, progress=progress, desc="validation",
                                      replay=replay)
    report = _sized(float_proto, quant_proto, batches[0], names)  # the client runs nothing for the metrics
    _fold(report, batches, names)
    seconds = time.perf_counter() - start
    if latency_options(latency) is not None:  # the client's two sessions time the pair on the first batch
        report = with_latency(report, float_proto, quant_proto, Batches([first]), latency=latency, threads=threads)
    report.timings = {"validate": seconds, **report.timings}
    if report.outputs:
        worst = report.worst("cosine")
        logger.info("validated %d samples on %d shard(s); worst output %r: cosine %.6f, SQNR %.2f dB",
                    report.samples, len(shard_timings), worst.name, worst.cosine, worst.sqnr_db)
    return report, shard_timings


def _sized(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, first: BatchMetrics,
           names: list[str]) -> Report:
    """The report :func:`onnxq.validate.validate` gives on the first batch without latency, made from
    that batch's metrics (its sizes and notes; :func:`_fold` fills in the rest)."""
    float_bytes, quant_bytes = model_size(float_model, debug_info=False), model_size(quant_model, debug_info=False)
    notes = [non_numeric_note(n, first.dtypes[n]) for n in names if first.outputs[n] is None]
    if first.accuracy is not None and not any(n in first.scores for n in names if first.outputs[n] is not None):
        notes.append(NO_SCORES_NOTE)
    return Report(outputs=[], samples=0, float_size_bytes=int(float_bytes), quant_size_bytes=int(quant_bytes),
                  size_ratio=float_bytes / quant_bytes if quant_bytes else math.inf, latency=None, notes=notes,
                  timings={})


def _fold(report: Report, batches: list[BatchMetrics], names: list[str]) -> None:
    """Fold every batch's metrics in global order into ``report`` (as the single-process loop does)."""
    outputs = {n: OutputAccumulator(n) for n in names}
    skipped: set[str] = set()
    float_acc, quant_acc = AccuracyAccumulator(), AccuracyAccumulator()
    labels_seen, accuracy_output = False, None
    for index, batch in enumerate(batches):
        for name in names:
            if name in skipped:
                continue
            acc = batch.outputs[name]
            if acc is None and index == 0:
                skipped.add(name)
            elif acc is None:
                raise ModelError(f"output {name!r}: a model returns non-numeric values")
            else:
                merge_outputs(outputs[name], acc)
        if batch.accuracy is None:
            continue
        if not labels_seen:  # the first batch with labels picks the output to score
            labels_seen = True
            accuracy_output = next((n for n in names if n not in skipped and n in batch.scores), None)
        if accuracy_output is not None:
            pair = batch.accuracy.get(accuracy_output, "accuracy needs class scores [N, C]")
            if isinstance(pair, str):
                raise DataError(pair)
            for total, part in zip((float_acc, quant_acc), pair):
                total.correct += part.correct
                total.total += part.total
    report.outputs = [outputs[n].result() for n in names if n not in skipped]
    report.samples = sum(b.samples for b in batches)
    report.float_accuracy, report.quant_accuracy = float_acc.result(), quant_acc.result()


def merge_outputs(total: OutputAccumulator, part: OutputAccumulator) -> None:
    """Add ``part`` (the accumulator of the batches that follow) to ``total``, in place
    (:meth:`OutputAccumulator.merge`: bit-identical to one accumulator that saw every batch)."""
    total.merge(part)


def _batch_metrics(batch: StreamBatch, names: list[str]) -> BatchMetrics:
    """Worker side: the metrics of one batch alone."""
    float_out, quant_out = batch.outputs
    outputs: dict[str, OutputAccumulator | None] = {}
    dtypes: dict[str, str] = {}
    for name in names:
        ref, cand = float_out[name], quant_out[name]
        if not all(np.asarray(a).dtype.kind in _NUMERIC_KINDS for a in (ref, cand)):
            outputs[name] = None
            dtypes[name] = str(np.asarray(ref).dtype)
            continue
        outputs[name] = OutputAccumulator(name)
        outputs[name].update(ref, cand)  # type: ignore[union-attr]
    scores = [n for n in names if outputs[n] is not None and is_class_scores(float_out[n])]
    accuracy: dict[str, tuple[AccuracyAccumulator, AccuracyAccumulator] | str] | None = None
    if batch.labels is not None:
        accuracy = {}
        for name in names:
            if outputs[name] is None:
                continue
            pair = (AccuracyAccumulator(), AccuracyAccumulator())
            try:
                pair[0].update(float_out[name], batch.labels)
                pair[1].update(quant_out[name], batch.labels)
            except DataError as exc:
                accuracy[name] = str(exc)
                continue
            accuracy[name] = pair
    return BatchMetrics(outputs, scores, accuracy, batch.samples, dtypes)

