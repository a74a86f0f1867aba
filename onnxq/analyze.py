"""Per-layer error analysis: where in the graph quantization loses accuracy.

:func:`analyze` compares a quantized model with its float model tensor by tensor and ranks the
quantized tensors by the error that quantization adds *there*.

Activations (a tensor that passes through ``QuantizeLinear -> DequantizeLinear``, or through
``DynamicQuantizeLinear`` in a dynamic model) get two measurements on the same inputs:

* ``sqnr_db`` / ``cosine`` — the error this tensor's own quantization adds: the float model's
  activation against the same activation quantized and dequantized with the scale and zero point
  the quantized model uses for it (``DynamicQuantizeLinear``'s run-time formula in a dynamic
  model). Upstream errors do not enter, so the number belongs to this tensor alone; it is the
  ranking key.
* ``model_sqnr_db`` / ``model_cosine`` — what the quantized model really computes there (the
  ``DequantizeLinear`` output the consumers read) against the float activation. This includes
  every quantization error upstream, so it grows along the graph; a sharp drop between two
  neighbours points at the culprit as well.

Weights (a ``DequantizeLinear`` of a constant integer tensor, or the int8 ``B`` input of a dynamic
``MatInteger``/``ConvInteger``) get the SQNR and cosine of the dequantized weight against the float
initializer of the same name (ONNX Runtime names the integer copy ``<weight>_quantized``). No data
is needed for them. Int32 biases are not listed (their quantization error is negligible).

Matching the two graphs: ONNX Runtime's QDQ rewrite keeps the original tensor name as the
``QuantizeLinear`` input, except for a graph output, whose name moves to the ``DequantizeLinear``
output; a Relu/Clip folded into its producer (Conv/Gemm + Relu) leaves the producer writing the
Relu's output name. Tensors or weights without a float counterpart (e.g. Gemm weights that a dynamic
model holds transposed as ``<w>_matmul``, when compared with the original file instead of the
prepared model) are left out and counted in the log.

Each result names ``fallback_nodes``: the float-model nodes that must stay float to remove the
error — for an activation its quantized producer (with a folded Relu/Clip) and every quantized
consumer, for a weight the node that reads it.

Streaming: both models run batch by batch with the needed tensors tapped as extra outputs; the
sums are float64 running totals and only one batch of activations is alive at a time.

Sharded (``client=``, ``onnxq analyze --dask SPEC``): the batches are spread over the workers of a
Dask cluster (:func:`onnxq.distributed.pairs.map_pair`); each worker returns every batch's
accumulators alone, and the client folds them in the single-process batch order
(``OutputAccumulator.merge``), so the metrics equal the in-process ones bit for bit.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .data import DEFAULT_BATCH_SIZE
from .engine import Runner, StreamBatch, stream, tapped
from .errors import DataError, ModelError
from .names import framework_names
from .report.schema import LayerMetrics
from .validate import OutputAccumulator, check_same_io, evaluation_data

logger = logging.getLogger(__name__)

__all__ = ["analyze", "rank", "format_layers"]

_QUANTIZED_SUFFIX = "_quantized"
_INTEGER_MATMUL = {"MatMulInteger": -1, "ConvInteger": 0}  # op type -> per-channel axis of the weight


@dataclass
class _Activation:
    """One activation to measure: where to read it in each model and how it was quantized."""

    float_name: str
    quant_taps: list[str]  #: static: [DequantizeLinear output]; dynamic: [uint8, scale, zero point]
    node: str | None
    op_type: str | None
    fallback_nodes: list[str]
    scale: np.ndarray | None = None  #: static only; None with dynamic (per batch) quantization
    zero_point: np.ndarray | None = None
    axis: int = 1
    dynamic: bool = False
    local: OutputAccumulator = field(init=False)
    model: OutputAccumulator = field(init=False)

    def __post_init__(self) -> None:
        self.local = OutputAccumulator(self.float_name)
        self.model = OutputAccumulator(self.float_name)


def analyze(float_model: onnx.ModelProto | str | os.PathLike[str],
            quant_model: onnx.ModelProto | str | os.PathLike[str], data: Any = None, *,
            batch_size: int = DEFAULT_BATCH_SIZE, limit: int | None = None, progress: bool = False,
            client: Any = None) -> list[LayerMetrics]:
    """Measure the error quantization adds at every quantized activation and weight, worst first.

    Args:
        float_model: the float model (or its path). Compare against the model that was quantized
            (``onnxq.quantize`` quantizes a prepared copy: BatchNorm folded, nodes named), or the
            original file when the preparation did not rename anything.
        quant_model: the QDQ (static) or integer-op (dynamic) quantized model, or its path.
        data: inputs to run both models on (anything :func:`onnxq.data.load_data` accepts, or a
            ``Dataset``); ``None`` measures the weights only.
        batch_size: samples per batch when ``data`` is not a Dataset yet.
        limit: use at most this many samples.
        progress: show a progress bar on stderr.
        client: measure on a Dask cluster (``pip install 'onnxq[dask]'``): a ``distributed.Client``,
            or ``"tcp://HOST:PORT"`` / ``"local:N"`` for a cluster opened and closed for this call;
            a data path is read by the workers themselves. The same metrics as in-process.

    Returns:
        One :class:`~onnxq.report.schema.LayerMetrics` per quantized activation and weight, ranked
        by :func:`rank` (lowest SQNR first).

    Raises:
        ModelError: the models differ in inputs/outputs, or cannot run.
        DataError: the data does not fit the model or holds no sample.
    """
    from .model import load_model

    float_proto = load_model(float_model, check=False)
    quant_proto = load_model(quant_model, check=False)
    check_same_io(float_proto, quant_proto)
    graphs = _Graphs(float_proto, quant_proto)
    layers = _weights(graphs)
    activations = _activations(graphs)
    if data is not None and activations:
        dataset = evaluation_data(data, float_proto, batch_size=batch_size, limit=limit)  # keeps every sample
        if client is None:
            broken = _measure(float_proto, quant_proto, activations, dataset, progress=progress)
        else:
            source = data if isinstance(data, (str, os.PathLike)) else None
            broken = _measure_on_cluster(client, float_proto, quant_proto, activations, dataset, source=source,
                                         progress=progress)
        layers += [_activation_metrics(a) for a in activations if a.float_name not in broken]
    elif activations:
        logger.info("no data: %d activation tensor(s) not measured, weights only", len(activations))
    names = framework_names(float_proto, {m.node for m in layers if m.node})
    for m in layers:
        m.framework_name = names.get(m.node or "")
    return rank(layers)


def rank(layers: list[LayerMetrics]) -> list[LayerMetrics]:
    """Order by harm: NaN first, then lowest ``sqnr_db``, then lowest ``cosine``; lossless last."""
    def key(m: LayerMetrics) -> tuple[int, float, float]:
        sqnr = float(m.sqnr_db)
        cosine = float(m.cosine) if m.cosine is not None else 1.0
        if math.isnan(sqnr) or math.isnan(cosine):
            return (0, 0.0, 0.0)
        return (1, sqnr, cosine)

    return sorted(layers, key=key)


def format_layers(layers: list[LayerMetrics], *, top: int | None = None) -> str:
    """The ranked table the CLI prints: tensor, op, kind, SQNR (own and in the model), cosine."""
    from .report.schema import format_number, format_table

    shown = layers if top is None else layers[:top]
    header = ("tensor", "op", "kind", "SQNR dB", "cosine", "model SQNR dB", "model cosine", "keep float")
    rows = [(m.tensor, m.op_type or "-", m.kind, format_number(m.sqnr_db, ".2f"),
             format_number(m.cosine, ".6f"), format_number(m.model_sqnr_db, ".2f"),
             format_number(m.model_cosine, ".6f"), ", ".join(m.fallback_nodes) or "-") for m in shown]
    if any(m.framework_name for m in shown):  # the user's layer names, beside the ONNX tensor
        header = ("tensor", "layer", *header[1:])
        rows = [(row[0], m.framework_name or "-", *row[1:]) for row, m in zip(rows, shown)]
    lines = format_table(header, rows)
    if top is not None and len(layers) > top:
        lines.append(f"... {len(layers) - top} more (of {len(layers)})")
    return "\n".join(lines)


# ------------------------------------------------------------------------- graph matching


class _Graphs:
    """Name lookups over the float and the quantized graph."""

    def __init__(self, float_model: onnx.ModelProto, quant_model: onnx.ModelProto) -> None:
        fg, qg = float_model.graph, quant_model.graph
        self.float_nodes = {n.name: n for n in fg.node}
        self.float_producer = {o: n for n in fg.node for o in n.output if o}
        self.float_consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in fg.node:
            for i in dict.fromkeys(n.input):
                if i:
                    self.float_consumers[i].append(n)
        self.float_tensors = set(self.float_producer) | {i.name for i in fg.input}
        self.float_inits = {t.name: t for t in fg.initializer}
        self.quant_inits = {t.name: t for t in qg.initializer}
        self.quant_producer = {o: n for n in qg.node for o in n.output if o}
        self.quant_node_names = {n.name for n in qg.node}
        self.quant_consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in qg.node:
            for i in dict.fromkeys(n.input):
                if i:
                    self.quant_consumers[i].append(n)
        for n in qg.node:  # Constant nodes hold scales / zero points in some exports
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.quant_inits.setdefault(n.output[0], n.attribute[0].t)

    def constant(self, name: str) -> np.ndarray | None:
        tensor = self.quant_inits.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def float_name(self, quant_node: onnx.NodeProto) -> str | None:
        """The float-model node a quantized-graph node stands for (dynamic ops gain ``_quant``)."""
        if quant_node.name in self.float_nodes:
            return quant_node.name
        if quant_node.name.endswith("_quant") and quant_node.name[:-6] in self.float_nodes:
            return quant_node.name[:-6]
        return None

    def is_quantized(self, quant_node: onnx.NodeProto) -> bool:
        """A quantized-graph node that reads a dequantized or integer input."""
        if quant_node.op_type in _INTEGER_MATMUL:
            return True
        return any(self.quant_producer.get(i) is not None
                   and self.quant_producer[i].op_type == "DequantizeLinear" for i in quant_node.input)


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _activations(g: _Graphs) -> list[_Activation]:
    out: list[_Activation] = []
    skipped = 0
    for node in list(g.quant_producer.values()):
        if node.op_type == "QuantizeLinear" and node.input[0] not in g.quant_inits:
            dq = next((c for c in g.quant_consumers[node.output[0]] if c.op_type == "DequantizeLinear"), None)
            if dq is None:  # integer output (integer I/O): no dequantized value to compare
                skipped += 1
                continue
            name = next((t for t in (node.input[0], dq.output[0]) if t in g.float_tensors), None)
            scale = g.constant(node.input[1])
            zero_point = g.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if name is None or scale is None or _attr(node, "block_size", 0):
                skipped += 1
                continue
            if zero_point is None:
                zero_point = np.zeros((), np.uint8)
            consumers = [c for d in g.quant_consumers[node.output[0]] if d.op_type == "DequantizeLinear"
                         for c in g.quant_consumers[d.output[0]]]
            out.append(_activation(g, name, [dq.output[0]], g.quant_producer.get(node.input[0]), consumers,
                                   scale=scale, zero_point=zero_point, axis=int(_attr(node, "axis", 1))))
        elif node.op_type == "DynamicQuantizeLinear":
            name = node.input[0]
            if name not in g.float_tensors:
                skipped += 1
                continue
            consumers = [c for o in node.output[:1] for c in g.quant_consumers[o]]
            out.append(_activation(g, name, list(node.output[:3]), g.quant_producer.get(name), consumers,
                                   dynamic=True))
    if skipped:
        logger.info("%d quantized activation(s) have no float counterpart and are not measured", skipped)
    return list({a.float_name: a for a in out}.values())


def _activation(g: _Graphs, name: str, taps: list[str], quant_producer: onnx.NodeProto | None,
                quant_consumers: list[onnx.NodeProto], **quant: Any) -> _Activation:
    producer = g.float_producer.get(name)
    nodes: list[str] = []
    if quant_producer is not None and g.is_quantized(quant_producer):
        own = g.float_name(quant_producer)
        if own is not None:
            nodes.append(own)
        if producer is not None and producer.name not in g.quant_node_names:
            nodes.append(producer.name)  # a Relu/Clip folded into the quantized producer
    for consumer in quant_consumers:
        own = g.float_name(consumer)
        if own is not None and g.is_quantized(consumer):
            nodes.append(own)
    return _Activation(float_name=name, quant_taps=taps, node=producer.name if producer is not None else None,
                       op_type=producer.op_type if producer is not None else None,
                       fallback_nodes=list(dict.fromkeys(nodes)), **quant)


def _weights(g: _Graphs) -> list[LayerMetrics]:
    out: list[LayerMetrics] = []
    skipped = 0
    seen: set[str] = set()
    for node in list(g.quant_producer.values()):
        if node.op_type == "DequantizeLinear" and node.input[0] in g.quant_inits:
            q_name = node.input[0]
            scale = g.constant(node.input[1])
            zero_point = g.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            axis = int(_attr(node, "axis", 1))
            readers = g.quant_consumers[node.output[0]]
        elif node.op_type in _INTEGER_MATMUL and len(node.input) > 1 and node.input[1] in g.quant_inits:
            q_name = node.input[1]
            base = q_name[:-len(_QUANTIZED_SUFFIX)] if q_name.endswith(_QUANTIZED_SUFFIX) else q_name
            scale = g.constant(f"{base}_scale")
            zero_point = g.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            axis = _INTEGER_MATMUL[node.op_type]
            readers = [node]
        else:
            continue
        quantized = g.constant(q_name)
        if quantized is None or quantized.dtype.kind not in "iu" or quantized.dtype.itemsize > 2 or q_name in seen:
            continue  # int32 biases, or already counted
        seen.add(q_name)
        name = q_name[:-len(_QUANTIZED_SUFFIX)] if q_name.endswith(_QUANTIZED_SUFFIX) else q_name
        reference = g.float_inits.get(name)
        if reference is None or scale is None:
            skipped += 1
            continue
        weight = numpy_helper.to_array(reference)
        dequantized = _dequantize(quantized, scale, zero_point, axis)
        if weight.shape != dequantized.shape or weight.dtype.kind != "f":
            skipped += 1
            continue
        acc = OutputAccumulator(name)
        acc.update(weight.reshape(1, -1), dequantized.reshape(1, -1))
        metrics = acc.result()
        nodes = list(dict.fromkeys(n for n in (g.float_name(r) for r in readers) if n is not None))
        first = g.float_nodes.get(nodes[0]) if nodes else None
        out.append(LayerMetrics(tensor=name, node=first.name if first is not None else None,
                                op_type=first.op_type if first is not None else None, kind="weight",
                                sqnr_db=metrics.sqnr_db, cosine=metrics.cosine, fallback_nodes=nodes))
    if skipped:
        logger.info("%d quantized weight(s) have no float initializer of the same name and are not measured",
                    skipped)
    return out


# ------------------------------------------------------------------------- measurement


def _measure(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, activations: list[_Activation],
             data: Any, *, progress: bool) -> set[str]:
    """Run both models over ``data``; return the tensors that could not be compared."""
    float_names = [a.float_name for a in activations]
    quant_names = list(dict.fromkeys(t for a in activations for t in a.quant_taps))
    runners = [Runner.create(tapped(float_model, float_names), float_names),
               Runner.create(tapped(quant_model, quant_names), quant_names)]
    broken: set[str] = set()

    def update(batch: StreamBatch) -> None:
        reference, quantized = batch.outputs
        for a in activations:
            if a.float_name not in broken and not _compare_activation(a, reference, quantized):
                broken.add(a.float_name)

    batches = stream(runners, data, update, desc="analyze", progress=progress).batches
    if batches == 0:
        raise DataError("the analysis data holds no batch")
    return broken


def _measure_on_cluster(client: Any, float_model: onnx.ModelProto, quant_model: onnx.ModelProto,
                        activations: list[_Activation], data: Any, *, source: Any, progress: bool) -> set[str]:
    """:func:`_measure` with the batches spread over a Dask cluster; the same accumulators, bit for bit."""
    from .distributed.cluster import open_cluster
    from .distributed.pairs import map_pair

    float_names = [a.float_name for a in activations]
    quant_names = list(dict.fromkeys(t for a in activations for t in a.quant_taps))
    with open_cluster(client) as connected:
        batches, _ = map_pair(connected, (float_model, quant_model), (float_names, quant_names), data,
                              _batch_layers, activations, source=source, progress=progress, desc="analyze")
    if not batches:
        raise DataError("the analysis data holds no batch")
    broken: set[str] = set()
    for batch in batches:  # in the single-process order: the very additions of _measure
        for a in activations:
            if a.float_name in broken:
                continue
            pair = batch[a.float_name]
            if pair is None:
                broken.add(a.float_name)
            else:
                a.local.merge(pair[0])
                a.model.merge(pair[1])
    return broken


def _batch_layers(batch: StreamBatch, activations: list[_Activation]
                  ) -> dict[str, tuple[OutputAccumulator, OutputAccumulator] | None]:
    """Worker side: each activation's (own, in-model) accumulators of this batch alone; ``None``: not comparable."""
    reference, quantized = batch.outputs
    out: dict[str, tuple[OutputAccumulator, OutputAccumulator] | None] = {}
    for a in activations:
        fresh = replace(a)  # new, empty accumulators
        out[a.float_name] = (fresh.local, fresh.model) if _compare_activation(fresh, reference, quantized) else None
    return out


def _compare_activation(a: _Activation, reference: dict[str, np.ndarray], quantized: dict[str, np.ndarray]) -> bool:
    """Fold one batch of one activation into its accumulators; ``False`` when it cannot be compared."""
    ref = np.asarray(reference[a.float_name])
    if ref.dtype.kind != "f":
        return False
    if a.dynamic:
        values, scale, zero_point = (quantized[t] for t in a.quant_taps)
        seen = _dequantize(values, scale, zero_point, 1)
        own = _fake_quant_dynamic(ref)
    else:
        seen = quantized[a.quant_taps[0]]
        own = _fake_quant(ref, a.scale, a.zero_point, a.axis)
    try:
        a.local.update(ref, own)
        a.model.update(ref, seen)
    except ModelError as exc:  # shapes differ: the two tensors are not the same thing
        logger.warning("tensor %r not compared: %s", a.float_name, exc)
        return False
    return True


def _activation_metrics(a: _Activation) -> LayerMetrics:
    local, model = a.local.result(), a.model.result()
    return LayerMetrics(tensor=a.float_name, node=a.node, op_type=a.op_type, kind="activation",
                        sqnr_db=local.sqnr_db, cosine=local.cosine, fallback_nodes=a.fallback_nodes,
                        model_sqnr_db=model.sqnr_db, model_cosine=model.cosine)


def _broadcast(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A per-axis scale / zero point shaped to broadcast along ``axis`` of an ``ndim`` tensor."""
    param = np.asarray(param)
    if param.ndim == 0 or param.size == 1 or ndim == 0:
        return param.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = param.size
    return param.reshape(shape)


def _dequantize(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    values = np.asarray(values)
    scale = _broadcast(np.asarray(scale, np.float32), values.ndim, axis)
    zp = 0 if zero_point is None else _broadcast(np.asarray(zero_point).astype(np.int64), values.ndim, axis)
    return ((values.astype(np.int64) - zp) * scale).astype(np.float32)


def _fake_quant(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """``DequantizeLinear(QuantizeLinear(x))`` with ONNX's rounding (half to even) and saturation."""
    zero_point = np.asarray(zero_point)
    if zero_point.dtype.kind not in "iu":  # float8 types: no integer grid to simulate here
        return x
    info = np.iinfo(zero_point.dtype)
    scale = _broadcast(np.asarray(scale, np.float32), x.ndim, axis)
    zp = _broadcast(zero_point.astype(np.float32), x.ndim, axis)
    q = np.clip(np.rint(x.astype(np.float32) / scale) + zp, info.min, info.max)
    return ((q - zp) * scale).astype(np.float32)


def _fake_quant_dynamic(x: np.ndarray) -> np.ndarray:
    """``DynamicQuantizeLinear`` (uint8, range over the whole tensor, including 0) then dequantize."""
    x = x.astype(np.float32)
    low, high = min(0.0, float(x.min(initial=0.0))), max(0.0, float(x.max(initial=0.0)))
    scale = np.float32((high - low) / 255.0)
    if scale == 0:
        return np.zeros_like(x)
    zp = np.float32(np.clip(np.rint(-low / scale), 0, 255))
    q = np.clip(np.rint(x / scale) + zp, 0, 255)
    return ((q - zp) * scale).astype(np.float32)
