"""Float-versus-quantized comparison: streamed per-output metrics, accuracy, size and latency.

Both models run in ONNX Runtime on the same evaluation batches. Only one batch of outputs is held
at a time; the metrics are exact running sums (float64) and so do not depend on the batch size.

Conventions:
    * Axis 0 of every output is the sample axis: the per-sample cosine flattens the rest.
      A rank-0 output counts as one sample per batch.
    * "Class scores" are floating outputs of shape ``[N, C]`` with ``C >= 2``; top-k agreement and
      accuracy are computed for those only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from .data import DEFAULT_BATCH_SIZE
from .errors import ConfigError, DataError, ModelError
from .latency import LatencyOptions, latency_options, measure_latency
from .report.schema import LatencyMetrics, OutputMetrics, Report
from .engine import Runner, StreamBatch, first_batch, pair_runners, sample_specs, stream, timed

logger = logging.getLogger(__name__)

__all__ = [
    "AccuracyAccumulator",
    "OutputAccumulator",
    "check_same_io",
    "compare_outputs",
    "is_class_scores",
    "label_indices",
    "measure_latency",
    "validate",
    "with_latency",
]

_NUMERIC_KINDS = "biuf"


def is_class_scores(array: np.ndarray) -> bool:
    """Whether an output looks like class scores: floating, shape ``[N, C]`` with ``C >= 2``."""
    array = np.asarray(array)
    return array.ndim == 2 and array.shape[1] >= 2 and np.issubdtype(array.dtype, np.floating)


class OutputAccumulator:
    """Streaming float-versus-quantized metrics for one output.

    Call :meth:`update` once per batch with the float (reference) and quantized (candidate)
    outputs, then :meth:`result`. Sums are kept in float64, so the result does not depend on how
    the samples were split into batches (up to float64 rounding).

    Args:
        name: the output name reported in the metrics.
    """

    def __init__(self, name: str = "output") -> None:
        self.name = name
        self.samples = 0
        self._elements = 0
        self._sum_abs = 0.0
        self._max_abs = 0.0
        self._signal = 0.0
        self._noise = 0.0
        self._cos_sum = 0.0
        self._cos_min = math.inf
        self._num_classes: int | None = None  # set while the output keeps looking like class scores
        self._topk_enabled: bool | None = None
        self._top1 = 0
        self._top5 = 0

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """Add one batch of outputs (axis 0 = samples).

        Raises:
            ModelError: the two outputs differ in shape or are not numeric.
        """
        ref = np.asarray(reference)
        cand = np.asarray(candidate)
        if ref.shape != cand.shape:
            raise ModelError(f"output {self.name!r}: float shape {ref.shape} but quantized shape "
                             f"{cand.shape}")
        for kind, arr in (("float", ref), ("quantized", cand)):
            if arr.dtype.kind not in _NUMERIC_KINDS:
                raise ModelError(f"output {self.name!r}: the {kind} model returns non-numeric "
                                 f"values ({arr.dtype})")
        n = ref.shape[0] if ref.ndim >= 1 else 1
        if n == 0:
            return
        self._update_topk(ref, cand)

        r = ref.astype(np.float64, copy=False).reshape(n, -1)
        c = cand.astype(np.float64, copy=False).reshape(n, -1)
        diff = r - c
        abs_diff = np.abs(diff)
        if abs_diff.size:
            self._max_abs = float(np.max([self._max_abs, abs_diff.max()]))  # propagates NaN
            self._sum_abs += float(abs_diff.sum())
        self._elements += abs_diff.size

        rr = np.einsum("ij,ij->i", r, r)
        cc = np.einsum("ij,ij->i", c, c)
        rc = np.einsum("ij,ij->i", r, c)
        self._signal += float(rr.sum())
        self._noise += float(np.einsum("ij,ij->", diff, diff))
        cos = _cosines(rr, cc, rc, identical=np.all(diff == 0, axis=1))
        self._cos_sum += float(cos.sum())
        self._cos_min = float(np.min([self._cos_min, cos.min()]))
        self.samples += n

    def merge(self, part: OutputAccumulator) -> None:
        """Add ``part``, the accumulator of the batches that follow this one's, in place.

        Folding single-batch accumulators in batch order performs the very additions of
        :meth:`update`, so the result is bit-identical to one accumulator that saw every batch
        (sharded validation relies on it).
        """
        if part.samples == 0:
            return
        if self._topk_enabled is None:
            self._topk_enabled, self._num_classes = part._topk_enabled, part._num_classes
        elif self._topk_enabled and (not part._topk_enabled or part._num_classes != self._num_classes):
            logger.warning("output %r changed shape between batches; top-k agreement not computed", self.name)
            self._topk_enabled = False
        if self._topk_enabled:
            self._top1 += part._top1
            self._top5 += part._top5
        self._max_abs = float(np.max([self._max_abs, part._max_abs]))
        self._sum_abs += part._sum_abs
        self._elements += part._elements
        self._signal += part._signal
        self._noise += part._noise
        self._cos_sum += part._cos_sum
        self._cos_min = float(np.min([self._cos_min, part._cos_min]))
        self.samples += part.samples

    def _update_topk(self, ref: np.ndarray, cand: np.ndarray) -> None:
        scores = is_class_scores(ref)
        if self._topk_enabled is None:
            self._topk_enabled = scores
            self._num_classes = ref.shape[1] if scores else None
        elif self._topk_enabled and (not scores or ref.shape[1] != self._num_classes):
            logger.warning("output %r changed shape between batches; top-k agreement not computed",
                           self.name)
            self._topk_enabled = False
        if not self._topk_enabled:
            return
        ref_top = np.argmax(ref, axis=1)
        self._top1 += int(np.count_nonzero(ref_top == np.argmax(cand, axis=1)))
        if self._num_classes is not None and self._num_classes >= 5:
            # float's top-1 is in the quantized top-5 iff fewer than 5 classes score strictly higher.
            at = cand[np.arange(cand.shape[0]), ref_top]
            higher = np.count_nonzero(cand > at[:, None], axis=1)
            self._top5 += int(np.count_nonzero((higher < 5) & ~np.isnan(at)))

    @property
    def is_class_scores(self) -> bool:
        """Whether every batch so far looked like class scores ``[N, C]``."""
        return bool(self._topk_enabled)

    def result(self) -> OutputMetrics:
        """Return the metrics over every sample seen.

        Raises:
            DataError: no sample was added.
        """
        if self.samples == 0:
            raise DataError(f"output {self.name!r}: no samples were compared")
        if self._noise == 0.0:
            sqnr = math.inf
        elif self._signal == 0.0:
            sqnr = -math.inf
        else:
            sqnr = 10.0 * math.log10(self._signal / self._noise)
        top1 = top5 = None
        if self._topk_enabled:
            top1 = self._top1 / self.samples
            if self._num_classes is not None and self._num_classes >= 5:
                top5 = self._top5 / self.samples
        return OutputMetrics(
            name=self.name,
            max_abs_error=self._max_abs,
            mean_abs_error=self._sum_abs / self._elements if self._elements else 0.0,
            cosine=self._cos_sum / self.samples,
            min_cosine=self._cos_min,
            sqnr_db=sqnr,
            top1_agreement=top1,
            top5_agreement=top5,
        )


class AccuracyAccumulator:
    """Streaming top-1 accuracy of class scores ``[N, C]`` against labels.

    Labels may be class indices (``[N]`` or ``[N, 1]``, integer or integral floats) or one-hot /
    soft labels ``[N, C]`` (their argmax is the class).
    """

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add one batch of scores and labels.

        Raises:
            DataError: the labels do not fit the scores.
        """
        scores = np.asarray(scores)
        if scores.ndim != 2:
            raise DataError(f"accuracy needs class scores [N, C], got shape {scores.shape}")
        truth = label_indices(labels, scores.shape[0], scores.shape[1])
        self.correct += int(np.count_nonzero(np.argmax(scores, axis=1) == truth))
        self.total += scores.shape[0]

    def result(self) -> float | None:
        """Return the fraction of correct samples, or ``None`` when none was seen."""
        return self.correct / self.total if self.total else None


def label_indices(labels: np.ndarray, num_samples: int, num_classes: int) -> np.ndarray:
    """Turn a batch of labels into a ``[N]`` int64 array of class indices.

    Raises:
        DataError: wrong number of labels, or labels that are not class indices.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape == (num_samples, num_classes) and num_classes > 1:
        return np.argmax(labels, axis=1)
    if labels.size != num_samples:
        raise DataError(f"{labels.size} labels for {num_samples} samples (label shape "
                        f"{labels.shape})")
    flat = labels.reshape(-1)
    if flat.dtype.kind in "iu":
        return flat.astype(np.int64, copy=False)
    if flat.dtype.kind == "f" and np.all(np.isfinite(flat)) and np.all(flat == np.round(flat)):
        return flat.astype(np.int64)
    raise DataError(f"labels must be integer class indices or one-hot rows, got {flat.dtype} "
                    f"values such as {flat[:3].tolist()}")


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, *,
                    name: str = "output") -> OutputMetrics:
    """Compare one float output with its quantized counterpart (axis 0 = samples).

    Args:
        reference: the float model's output.
        candidate: the quantized model's output, same shape.
        name: name put in the returned metrics.

    Returns:
        The metrics of this single batch, as :class:`OutputAccumulator` would compute them.

    Raises:
        ModelError: the shapes differ or the values are not numeric.
    """
    acc = OutputAccumulator(name)
    acc.update(reference, candidate)
    return acc.result()


class PairMetrics:
    """The validation consumer of the engine: per-output metrics and label accuracy of a float/quantized pair.

    Call :meth:`update` with each :class:`~onnxq.engine.StreamBatch` of ``[float, quantized]``
    outputs, then :meth:`finish` for the notes.
    """

    def __init__(self, output_names: list[str]) -> None:
        self.names = output_names
        self.outputs = {name: OutputAccumulator(name) for name in output_names}
        self.skipped: set[str] = set()
        self.float_acc, self.quant_acc = AccuracyAccumulator(), AccuracyAccumulator()
        self.accuracy_output: str | None = None
        self.labels_seen = False
        self.first_feeds: dict[str, np.ndarray] | None = None
        self.notes: list[str] = []

    def update(self, batch: StreamBatch) -> None:
        """Fold one batch of both models' outputs into the metrics."""
        float_out, quant_out = batch.outputs
        if self.first_feeds is None:
            self.first_feeds = batch.fed
        for name in self.names:
            ref, cand = float_out[name], quant_out[name]
            if name in self.skipped:
                continue
            if batch.index == 0 and not _is_numeric(ref, cand):
                self.skipped.add(name)
                self.notes.append(non_numeric_note(name, np.asarray(ref).dtype))
                logger.warning("output %r is not numeric; not compared", name)
                continue
            self.outputs[name].update(ref, cand)
        if batch.labels is None:
            return
        if not self.labels_seen:  # the first batch with labels picks the output to score
            self.labels_seen = True
            self.accuracy_output = next((n for n in self.names
                                         if n not in self.skipped and is_class_scores(float_out[n])), None)
        if self.accuracy_output is not None:
            self.float_acc.update(float_out[self.accuracy_output], batch.labels)
            self.quant_acc.update(quant_out[self.accuracy_output], batch.labels)

    def finish(self) -> list[str]:
        """The notes of the run (non-numeric outputs, labels without class scores)."""
        if self.labels_seen and self.accuracy_output is None:
            self.notes.append(NO_SCORES_NOTE)
            logger.warning("labels given but no output is class scores; accuracy not computed")
        return self.notes


#: The report's note when the data has labels but no output is class scores.
NO_SCORES_NOTE = "labels were given but no output looks like class scores [N, C]; accuracy not computed"


def non_numeric_note(name: str, dtype: Any) -> str:
    """The report's note for an output that is not numeric (not compared)."""
    return f"output {name!r} is not numeric ({dtype}); not compared"


def evaluation_data(data: Any, model: onnx.ModelProto, *, batch_size: int = DEFAULT_BATCH_SIZE,
                    limit: int | None = None) -> Any:
    """Evaluation batches for ``model``: a ``Dataset`` keeps its batching (``limit`` applied); any
    other object with ``batches()`` is used as is; anything else is loaded keeping every sample
    (a fixed batch size is honoured by the engine, which pads the remainder)."""
    from .data import Dataset, load_data

    if isinstance(data, Dataset):
        return data if limit is None else load_data(data, model, limit=limit)
    if callable(getattr(data, "batches", None)):
        return data
    return load_data(data, sample_specs(model), batch_size=batch_size, limit=limit)


def validate(float_model: onnx.ModelProto | str | os.PathLike[str],
             quant_model: onnx.ModelProto | str | os.PathLike[str], data: Any, *,
             batch_size: int = DEFAULT_BATCH_SIZE, limit: int | None = None, latency: bool | LatencyOptions = True,
             latency_runs: int | None = None, threads: int | None = None, progress: bool = False,
             consumers: Sequence[Callable[[StreamBatch], None]] = (),
             float_runner: Runner | None = None) -> Report:
    """Run the float and the quantized model on the same data and compare them.

    Args:
        float_model: the float model, or a path to it.
        quant_model: the quantized model, or a path to it.
        data: evaluation data: anything :func:`onnxq.data.load_data` accepts (labels under
            its labels key), or a ``Dataset``, which keeps its own batch size. Any other object
            with a ``batches()`` method yielding ``(inputs, labels)`` is used as is.
        batch_size: samples per batch when ``data`` is not a Dataset yet.
        limit: compare at most this many samples (ignored for a Dataset-like object that is not
            an ``onnxq.data.Dataset``).
        latency: also time both models on the first evaluation batch (``True``: the defaults of
            :class:`~onnxq.latency.LatencyOptions`, or those options).
        latency_runs: timed runs per model; ``None``: until the median is stable (see
            :mod:`onnxq.latency`).
        threads: ONNX Runtime intra-op threads for both models; ``None``: ORT's default.
        progress: show a progress bar on stderr.
        consumers: more consumers of the same pass (each gets every :class:`~onnxq.engine.StreamBatch`
            of float and quantized outputs), e.g. the scatter sample of an HTML report.
        float_runner: a runner of ``float_model`` (returning its graph outputs) to use instead of
            a new session, e.g. a :class:`~onnxq.engine.ReplayRunner` shared by many validations
            on the same data.

    Returns:
        A :class:`~onnxq.report.Report` with per-output metrics, sample count, sizes, latency and,
        when the data has labels and an output is class scores, both accuracies.

    Raises:
        ModelError: the models differ in input or output names, cannot run, or disagree in shape.
        DataError: the data does not fit the model or holds no sample.
        ConfigError: ``latency_runs`` < 1 while ``latency`` is on.
    """
    from .model import load_model, model_size

    latency_opts = latency_options(latency, runs=latency_runs)
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1 or None, got {threads}")

    # ONNX Runtime is the judge of validity here (contrib ops, float16 ...); skip onnx's checker.
    float_proto = load_model(float_model, check=False)
    quant_proto = load_model(quant_model, check=False)
    check_same_io(float_proto, quant_proto)
    output_names = [o.name for o in float_proto.graph.output]

    dataset = evaluation_data(data, float_proto, batch_size=batch_size, limit=limit)
    if float_runner is None:
        float_runner, quant_runner = pair_runners(float_model, quant_model, float_proto, quant_proto, output_names,
                                                  threads=threads)
    else:
        quant_source = quant_model if isinstance(quant_model, (str, os.PathLike)) else quant_proto
        quant_runner = Runner.create(quant_source, output_names, proto=quant_proto, threads=threads)
    del float_proto, quant_proto  # the sessions hold their own copies
    pair = PairMetrics(output_names)
    timings: dict[str, float] = {}
    with timed(timings, "validate"):
        stats = stream([float_runner, quant_runner], dataset, _all(pair.update, *consumers), desc="validate",
                       progress=progress)
    if pair.first_feeds is None:
        raise DataError("the evaluation data holds no batch")
    latency_metrics = None
    if latency_opts is not None:
        with timed(timings, "latency"):  # the sessions and the first batch of the validation above
            latency_metrics = measure_latency(float_runner.session, quant_runner.session, pair.first_feeds,
                                              output_names, options=latency_opts, threads=threads)
    report = _report(pair, stats.samples, model_size(float_model, debug_info=False),
                     model_size(quant_model, debug_info=False), latency_metrics, timings)
    if report.outputs:
        worst = report.worst("cosine")
        logger.info("validated %d samples; worst output %r: cosine %.6f, SQNR %.2f dB",
                    stats.samples, worst.name, worst.cosine, worst.sqnr_db)
    return report


def _report(pair: PairMetrics, samples: int, float_bytes: int, quant_bytes: int, latency: LatencyMetrics | None,
            timings: dict[str, float]) -> Report:
    """The validation report of a finished :class:`PairMetrics` (sizes without exporters' metadata,
    which survives in one model more than in the other: like with like)."""
    notes = pair.finish()
    return Report(
        outputs=[pair.outputs[n].result() for n in pair.names if n not in pair.skipped],
        samples=samples,
        float_size_bytes=int(float_bytes),
        quant_size_bytes=int(quant_bytes),
        size_ratio=float_bytes / quant_bytes if quant_bytes else math.inf,
        latency=latency,
        float_accuracy=pair.float_acc.result(),
        quant_accuracy=pair.quant_acc.result(),
        notes=notes,
        timings=timings,
    )


def _all(*consumers: Callable[[StreamBatch], None]) -> Callable[[StreamBatch], None]:
    """One consumer that hands each batch to every one of ``consumers``."""
    def consume(batch: StreamBatch) -> None:
        for consumer in consumers:
            consumer(batch)
    return consume


def with_latency(report: Report, float_model: onnx.ModelProto, quant_model: onnx.ModelProto, data: Any, *,
                 latency: bool | LatencyOptions = True, threads: int | None = None) -> Report:
    """``report``, a validation of this pair already made (by the fallback), with latency measured:
    two sessions and the first batch of ``data``, no second validation pass."""
    latency_opts = latency_options(latency)
    if latency_opts is None:
        return report
    float_runner, quant_runner = pair_runners(float_model, quant_model, float_model, quant_model, threads=threads)
    feeds = first_batch([float_runner, quant_runner], data)
    if feeds is None:
        raise DataError("the evaluation data holds no batch")
    timings: dict[str, float] = {}  # the validation itself was timed as part of the fallback
    with timed(timings, "latency"):
        metrics = measure_latency(float_runner.session, quant_runner.session, feeds, float_runner.outputs,
                                  options=latency_opts, threads=threads)
    return dataclasses.replace(report, latency=metrics, timings=timings)


def check_same_io(float_model: onnx.ModelProto, quant_model: onnx.ModelProto) -> None:
    """Check that two models have the same graph input and output names.

    Graph inputs that are initializers (older IR versions list them) are not counted.

    Raises:
        ModelError: naming the names found in only one of the models.
    """
    for what, f_names, q_names in (("inputs", _input_names(float_model), _input_names(quant_model)),
                                   ("outputs", [o.name for o in float_model.graph.output],
                                    [o.name for o in quant_model.graph.output])):
        only_f = [n for n in f_names if n not in set(q_names)]
        only_q = [n for n in q_names if n not in set(f_names)]
        if only_f or only_q:
            raise ModelError(f"the float and quantized models have different {what}: only in "
                             f"float {only_f}, only in quantized {only_q}")


def _input_names(model: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _is_numeric(*arrays: Any) -> bool:
    return all(np.asarray(a).dtype.kind in _NUMERIC_KINDS for a in arrays)


def _cosines(rr: np.ndarray, cc: np.ndarray, rc: np.ndarray, *,
             identical: np.ndarray) -> np.ndarray:
    """Per-sample cosine from squared norms and dot products.

    Identical samples (all-zero pairs included) give exactly 1; a zero sample against a non-zero
    one gives 0; NaN propagates.
    """
    denom = np.sqrt(rr * cc)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cos = np.where(denom > 0, rc / np.where(denom > 0, denom, 1.0), 0.0)
    cos = np.clip(cos, -1.0, 1.0)
    cos = np.where(np.isnan(denom) | np.isnan(rc), np.nan, cos)
    return np.where(identical, 1.0, cos)

