"""Revert-one sensitivity: what each quantized node's quantization costs at the model's outputs.

Contract. :func:`emulation_model` builds one float graph that computes what the int8 graph computes:
the float model (the one the quantized graph was made from) with every quantization of the
quantized graph inserted as fake quantization -- ``QuantizeLinear -> DequantizeLinear`` with the
same scales on each quantized activation, ``DequantizeLinear`` of the same integer weights and
biases -- each switched by scalar *gates*, one graph input per quantized node:
``x' = fq(x) if g else x`` (``Where``). A weight or bias follows its node's gate (off: the float
weight and the float bias of ``unbiased``, i.e. without bias correction, as the rebuilt graph
has them). An activation quantized for one node only follows that node's gate; one shared by several
nodes (its producer and its consumers) stays quantized, because ONNX Runtime's QDQ rewrite
quantizes a tensor once for all of them: a node kept float alone still reads and writes
quantized tensors where its neighbours are int8 (so the graph answers for one node kept float at
a time, which is all it is used for, and costs one pass per quantized tensor, not four). With every gate on
the graph is the int8 model's arithmetic (integer accumulation is exact; what differs is float
rounding order, and the int8 kernels' saturation that ``reduce_range`` avoids); a gate off is
that node kept float. :func:`node_sensitivities` runs that graph on a few samples once per
candidate node -- one session, no rebuild and no session per candidate -- and ranks the nodes by
how much of the output error keeping each one float removes. It needs the data only for those
samples (held in memory: ``samples`` rows of each input) and changes no model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._graph import unique_name
from ._progress import progress as progress_bar
from .runtime import create_session, run
from .validate import is_class_scores

logger = logging.getLogger(__name__)

__all__ = ["TENSOR_GATE", "ErrorSplit", "GatedRuns", "Sensitivity", "emulation_model", "error_split",
           "gated_error", "node_sensitivities", "output_error"]

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_GATE = "onnxq_gate::"
#: Key prefix of an activation's own gate in :func:`emulation_model`'s gates (``tensor_gates=True``).
TENSOR_GATE = "tensor:"
_OUTPUT_SUFFIX = "_QuantizeLinear_Input"  # ORT's name for a graph output's pre-quantization tensor


@dataclass(frozen=True)
class Sensitivity:
    """One node's revert-one result.

    Attributes:
        node: the node name.
        op_type: its op type.
        error: the output error with this node float and every other node int8.
        gain: the all-int8 error minus ``error`` (> 0: keeping it float helps).
    """

    node: str
    op_type: str
    error: float
    gain: float


@dataclass
class _Builder:
    """Accumulates the nodes and initializers added to the emulation graph."""

    taken: set[str]
    nodes: list[onnx.NodeProto]
    inits: list[onnx.TensorProto]

    def name(self, base: str) -> str:
        return unique_name(base, self.taken)

    def copy_init(self, tensor: onnx.TensorProto) -> str:
        new = onnx.TensorProto()
        new.CopyFrom(tensor)
        new.name = self.name(f"onnxq_emul::{tensor.name}")
        self.inits.append(new)
        return new.name

    def blend(self, x: str, fake: str, gate: str, base: str) -> str:
        """``fake`` where ``gate`` is true, else ``x`` (one pass over the tensor); returns the output name."""
        out = self.name(f"{base}_emul")
        self.nodes.append(helper.make_node("Where", [gate, fake, x], [out], name=out))
        return out


def emulation_model(model: onnx.ModelProto, quantized: onnx.ModelProto, *,
                    unbiased: onnx.ModelProto | None = None,
                    tensor_gates: bool = False) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The gated fake-quantization graph of ``quantized`` on ``model`` (see the module docstring).

    Args:
        model: the float model ``quantized`` was made from (same node and tensor names).
        quantized: its QDQ graph as ORT's rewrite wrote it (before any session optimisation).
        unbiased: ``model`` before bias correction: the biases a node kept float gets back.
        tensor_gates: also give every activation shared by several nodes its own gate (key
            ``TENSOR_GATE + tensor name``): off, the tensor is float, as when its producer and
            all its consumers are kept float. Costs one more pass over each such tensor per run.

    Returns:
        The emulation model and ``{node name (or TENSOR_GATE + tensor): gate input name}``.
    """
    inits = {t.name: t for t in quantized.graph.initializer}
    producer = {o: n for n in quantized.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in quantized.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    float_nodes = {n.name: n for n in model.graph.node}
    gated = [n for n in quantized.graph.node if n.op_type not in _QDQ and n.name in float_nodes
             and (any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)
                  or any(c.op_type == "QuantizeLinear" for o in n.output for c in consumers.get(o, [])))]
    gates = {n.name: f"{_GATE}{n.name}" for n in gated}

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    b = _Builder({t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
                 | {i.name for i in graph.input} | set(gates.values()), [], [])
    renames: dict[tuple[str, int], str] = {}  # (float node, input index) -> new input
    branches = _weight_branches(gated, producer, inits, float_nodes, unbiased, model)
    output_renames = _gate_activations(b, quantized, producer, consumers, inits, float_nodes, gates, renames,
                                       tensor_gates)
    for node in graph.node:
        for index, name in enumerate(node.input):
            new = renames.get((node.name, index))
            if new is not None:
                node.input[index] = new
        for index, name in enumerate(node.output):
            if name in output_renames:
                node.output[index] = output_renames[name]
                for other in graph.node:  # float consumers of a graph output read the float value
                    if other is not node:
                        other.input[:] = [output_renames[name] if i == name and (other.name, k) not in renames
                                          else i for k, i in enumerate(other.input)]
    for position, node in enumerate(graph.node):
        if node.name in branches:
            graph.node[position].CopyFrom(_switch_node(b, node, gates[node.name], *branches[node.name]))
    nodes = _topological(list(graph.node) + b.nodes)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(b.inits)
    graph.input.extend(helper.make_tensor_value_info(g, onnx.TensorProto.BOOL, []) for g in gates.values())
    _match_opset(out, quantized)
    return out, gates


def _weight_branches(gated: list[onnx.NodeProto], producer: dict[str, onnx.NodeProto],
                     inits: dict[str, onnx.TensorProto], float_nodes: dict[str, onnx.NodeProto],
                     unbiased: onnx.ModelProto | None,
                     model: onnx.ModelProto) -> dict[str, tuple[dict[int, np.ndarray], dict[int, np.ndarray]]]:
    """Per gated node with constant ``DequantizeLinear`` inputs (weight, bias): the dequantized values
    and the float values a node kept float uses, by input index."""
    float_inits = {t.name: t for t in model.graph.initializer}
    branches = {}
    for node in gated:
        fnode = float_nodes[node.name]
        fake: dict[int, np.ndarray] = {}
        real: dict[int, np.ndarray] = {}
        for index, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            if index >= len(fnode.input) or fnode.input[index] not in float_inits:
                continue
            values = [numpy_helper.to_array(inits[i]) if i in inits else None for i in dq.input]
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            fake[index] = _dequantize(values[0], values[1], values[2] if len(values) > 2 else None, axis)
            current = float_inits[fnode.input[index]]
            if unbiased is not None and index == 2 and node.op_type in ("Conv", "Gemm", "ConvTranspose"):
                current = _original_bias(unbiased, node.name, current)
            real[index] = numpy_helper.to_array(current)
        if fake:
            branches[node.name] = (fake, real)
    return branches


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    """``DequantizeLinear`` in numpy (per tensor or per axis)."""
    values = q.astype(np.float64) - (0 if zero_point is None else zero_point.astype(np.float64).reshape(
        [-1 if k == axis % q.ndim else 1 for k in range(q.ndim)] if zero_point.ndim else []))
    shape = [-1 if k == axis % q.ndim else 1 for k in range(q.ndim)] if scale.ndim else []
    return (values * scale.astype(np.float64).reshape(shape)).astype(scale.dtype)


def _switch_node(b: _Builder, node: onnx.NodeProto, gate: str, fake: dict[int, np.ndarray],
                 real: dict[int, np.ndarray]) -> onnx.NodeProto:
    """``If(gate)``: the node with dequantized weights, else with its float weights.

    Each branch holds its weights as constants, so ONNX Runtime pre-packs them as it does the
    model's own (a switch computed on the weights themselves made every Conv 3x slower)."""
    elem_type = helper.np_dtype_to_tensor_dtype(next(iter(fake.values())).dtype)  # Conv/Gemm/MatMul: the weights'

    def branch(values: dict[int, np.ndarray], tag: str) -> onnx.GraphProto:
        inner = onnx.NodeProto()
        inner.CopyFrom(node)
        inner.name = f"{node.name}_{tag}"
        constants = []
        for index, array in values.items():
            constants.append(numpy_helper.from_array(array, b.name(f"{node.name}_{tag}_in{index}")))
            inner.input[index] = constants[-1].name
        inner.output[:] = [b.name(f"{o}_{tag}") if o else "" for o in node.output]
        outputs = [helper.make_tensor_value_info(o, elem_type, None) for o in inner.output if o]
        return helper.make_graph([inner], f"{node.name}_{tag}", [], outputs, constants)

    return helper.make_node("If", [gate], [o for o in node.output], name=b.name(f"{node.name}_switch"),
                            then_branch=branch(fake, "int8"), else_branch=branch(real, "float"))


def _gate_activations(b: _Builder, quantized: onnx.ModelProto, producer: dict[str, onnx.NodeProto],
                      consumers: dict[str, list[onnx.NodeProto]], inits: dict[str, onnx.TensorProto],
                      float_nodes: dict[str, onnx.NodeProto], gates: dict[str, str],
                      renames: dict[tuple[str, int], str], tensor_gates: bool = False) -> dict[str, str]:
    """Each ``QuantizeLinear -> DequantizeLinear`` on an activation, gated by the max of its nodes' gates.

    Returns renames of float-graph outputs (a quantized graph output is computed from its float value).
    """
    graph_outputs = {o.name for o in quantized.graph.output}
    output_renames: dict[str, str] = {}
    for q in quantized.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        dqs = [c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"]
        tensor = q.input[0]
        readers = [(c, k) for dq in dqs for c in consumers.get(dq.output[0], [])
                   for k, i in enumerate(c.input) if i == dq.output[0] and c.name in float_nodes]
        outputs = [dq.output[0] for dq in dqs if dq.output[0] in graph_outputs]
        if tensor.endswith(_OUTPUT_SUFFIX) and outputs:
            tensor = outputs[0]
        owners = [n.name for n in [producer.get(q.input[0])] + [c for c, _ in readers]
                  if n is not None and n.name in gates]
        if not owners or (not readers and not outputs):
            continue
        source = tensor
        if outputs:
            source = output_renames[tensor] = b.name(f"{tensor}_float")
        args = [b.copy_init(inits[i]) if i in inits else i for i in q.input[1:]]
        attrs = {a.name: helper.get_attribute_value(a) for a in q.attribute}
        qname, dname = b.name(f"{tensor}_emul_q"), b.name(f"{tensor}_emul_dq")
        dq_attrs = {a.name: helper.get_attribute_value(a) for a in dqs[0].attribute} if dqs else {}
        b.nodes += [helper.make_node("QuantizeLinear", [source] + args, [qname], name=qname, **attrs),
                    helper.make_node("DequantizeLinear", [qname] + args, [dname], name=dname, **dq_attrs)]
        # shared by several nodes: quantized as long as one of them is int8, which for one node
        # kept float (the only question asked here) is always; a switch per tensor would cost a
        # full pass over it in every run
        blended = b.blend(source, dname, gates[owners[0]], tensor) if len(set(owners)) == 1 else dname
        if tensor_gates and len(set(owners)) > 1:
            gate = gates[f"{TENSOR_GATE}{tensor}"] = f"{_GATE}{TENSOR_GATE}{tensor}"
            blended = b.blend(source, dname, gate, tensor)
        for reader, index in readers:
            renames.setdefault((reader.name, index), blended)
        if outputs:
            b.nodes.append(helper.make_node("Identity", [blended], [tensor], name=b.name(f"{tensor}_out")))
    return output_renames


def _topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where every value is produced before it is read (Kahn's algorithm;
    an ``If`` also reads what its branches take from the outer graph)."""
    produced = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    needs: list[set[int]] = []
    for node in nodes:
        names = set(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                inner = {o for n in attr.g.node for o in n.output} | {t.name for t in attr.g.initializer}
                names |= {i for n in attr.g.node for i in n.input if i not in inner}
        needs.append({produced[i] for i in names if i in produced})
    readers: dict[int, list[int]] = {}
    for k, deps in enumerate(needs):
        for d in deps:
            readers.setdefault(d, []).append(k)
    ready = [k for k, deps in enumerate(needs) if not deps]
    order: list[int] = []
    while ready:
        k = ready.pop()
        order.append(k)
        for r in readers.get(k, []):
            needs[r].discard(k)
            if not needs[r]:
                ready.append(r)
    if len(order) != len(nodes):
        raise ValueError("the emulation graph has a cycle")
    return [nodes[k] for k in order]


def _original_bias(unbiased: onnx.ModelProto, node_name: str, current: onnx.TensorProto) -> onnx.TensorProto:
    """The bias ``node_name`` had before bias correction (zeros where the correction added one)."""
    node = next((n for n in unbiased.graph.node if n.name == node_name), None)
    inits = {t.name: t for t in unbiased.graph.initializer}
    if node is not None and len(node.input) > 2 and node.input[2] in inits:
        return inits[node.input[2]]
    zeros = np.zeros(tuple(current.dims), helper.tensor_dtype_to_np_dtype(current.data_type))
    return numpy_helper.from_array(zeros, current.name)


def _match_opset(model: onnx.ModelProto, quantized: onnx.ModelProto) -> None:
    """The default-domain opset of the quantized graph (its Q/DQ may need a newer one)."""
    wanted = {o.domain or "": o.version for o in quantized.opset_import}
    for entry in model.opset_import:
        if (entry.domain or "") == "" and wanted.get("", 0) > entry.version:
            entry.version = wanted[""]


# ------------------------------------------------------------------------------- measuring


def output_error(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """How far ``candidate``'s outputs are from ``reference``'s (0 = identical), summed over outputs.

    Class scores (``[N, classes]``): the mean KL divergence of the softmax, which follows top-1
    agreement; other outputs: the squared error relative to the reference's energy.
    """
    total = 0.0
    for ref_out, cand_out in zip(zip(*reference), zip(*candidate)):
        ref = np.concatenate([np.asarray(r, np.float64).reshape(len(r), -1) for r in ref_out])
        cand = np.concatenate([np.asarray(c, np.float64).reshape(len(c), -1) for c in cand_out])
        if is_class_scores(np.asarray(ref_out[0])):
            total += float(np.mean(np.sum(_softmax(ref) * (_log_softmax(ref) - _log_softmax(cand)), axis=1)))
        else:
            den = float(np.sum(ref ** 2))
            num = float(np.sum((cand - ref) ** 2))
            total += num / den if den > 0 else num
    return total


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


def _softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(x))


def sample_batches(data: Any, samples: int) -> list[dict[str, np.ndarray]]:
    """The first batches of ``data`` holding at least ``samples`` rows (fewer if the data ends)."""
    batches: list[dict[str, np.ndarray]] = []
    count = 0
    for feeds, _labels in data.batches():
        batches.append(dict(feeds))
        count += len(next(iter(feeds.values()))) if feeds else 0
        if count >= samples:
            break
    return batches


class GatedRuns:
    """The emulation graph on the first ``samples`` rows of the data, against the float model's outputs.

    One session of each model, the samples held in memory; :meth:`error` runs the emulation with
    some gates off and returns :func:`output_error` against the float outputs.
    """

    def __init__(self, reference_model: onnx.ModelProto, emulation: onnx.ModelProto, gates: dict[str, str],
                 data: Any, samples: int) -> None:
        self.batches = sample_batches(data, samples)
        self.samples = sum(len(next(iter(feeds.values()))) for feeds in self.batches if feeds)
        reference_session = create_session(reference_model)
        self.reference = [run(reference_session, feeds) for feeds in self.batches]
        self.session = create_session(emulation)
        self.gates = gates
        self.ops = {n.name: n.op_type for n in reference_model.graph.node}
        self.position: dict[str, int] = {}  # where each gate is first read (graph order groups neighbours)
        for index, node in enumerate(emulation.graph.node):
            for name in node.input:
                self.position.setdefault(name, index)

    def error(self, off: Iterable[str] = ()) -> float:
        """The output error with the gates of ``off`` (keys of ``gates``) off and every other on."""
        return gated_error(self.session, self.batches, self.reference, self.gates, off)

    def errors(self, offs: Sequence[Sequence[str]], *, desc: str = "sensitivity", progress: bool = False
               ) -> list[float]:
        """:meth:`error` of each gate set of ``offs``, in order (one run each; a cluster's
        ``GatedRuns`` runs them on its workers, :mod:`onnxq.distributed.gated`)."""
        return [self.error(off) for off in progress_bar(offs, desc=desc, enabled=progress, unit="run")]

    def close(self) -> None:
        """Release what the runs hold elsewhere (nothing in-process; a cluster's shipped data)."""


def gated_error(session: Any, batches: Sequence[dict[str, np.ndarray]], reference: list[list[np.ndarray]],
                gates: dict[str, str], off: Iterable[str]) -> float:
    """:func:`output_error` of the emulation ``session`` on ``batches`` with the gates of ``off`` off."""
    switch = {g: np.array(True) for g in gates.values()}
    for key in off:
        switch[gates[key]] = np.array(False)
    outputs = [run(session, {**feeds, **switch})[:len(reference[0])] for feeds in batches]
    return output_error(reference, outputs)


def node_sensitivities(reference_model: onnx.ModelProto, emulation: onnx.ModelProto, gates: dict[str, str],
                       data: Any, nodes: Iterable[str], *, samples: int = 32, screen: bool = False,
                       progress: bool = False, runs: GatedRuns | None = None) -> tuple[float, list[Sensitivity]]:
    """The all-int8 output error and each node's revert-one result, largest gain first.

    Args:
        reference_model: the float model the outputs are compared with.
        emulation: from :func:`emulation_model`; ``gates`` its gate inputs.
        data: a ``Dataset``; its first ``samples`` rows are used.
        nodes: the candidates (nodes without a gate are skipped).
        screen: first switch off groups of about sqrt(n) neighbouring candidates at once (one run
            per group), then measure one by one only the candidates of the groups that hold
            :data:`SCREEN_SHARE` of the groups' summed gain (at least :data:`SCREEN_MIN_GROUPS`
            groups); the others are left out. About 2 sqrt(n) + a few groups' worth of runs
            instead of n (EfficientNet-Lite1: 144 candidates, ~60 runs).
        runs: the sessions and samples to use (built from the other arguments when ``None``).
    """
    runs = runs or GatedRuns(reference_model, emulation, gates, data, samples)
    base = runs.error(())
    gates = runs.gates
    candidates = sorted((n for n in nodes if gates.get(n) in runs.position), key=lambda n: runs.position[gates[n]])
    if screen and len(candidates) > 4 * SCREEN_MIN_GROUPS:
        candidates = _screened(candidates, lambda groups: [base - e for e in runs.errors(
            groups, desc="sensitivity groups", progress=progress)])
    values = runs.errors([(node,) for node in candidates], progress=progress)
    results = [Sensitivity(node, runs.ops.get(node, "activation"), value, base - value)
               for node, value in zip(candidates, values)]
    results.sort(key=lambda s: s.gain, reverse=True)
    return base, results


@dataclass(frozen=True)
class ErrorSplit:
    """Where the output error of the int8 model lives, from switching gates off all at once.

    Attributes:
        base: the all-int8 output error on the samples.
        weights: the error with every node gate off (each node's weights, bias, and the activations
            only it quantizes in float; shared activations stay quantized).
        activations: the error with every shared activation's gate off (weights stay int8).
        samples: how many samples the errors were measured on.
    """

    base: float
    weights: float
    activations: float
    samples: int

    def share(self, error: float) -> float:
        """The share of ``base`` that switching to ``error`` removes (0 without error, or when it
        removes nothing: errors of opposite sign can cancel, so switching more gates off can add some)."""
        return max(0.0, (self.base - error) / self.base) if self.base > 0 else 0.0

    def describe(self) -> str:
        """One line for the report: how much of the error each part removes, and what that means."""
        weights, activations = self.share(self.weights), self.share(self.activations)
        line = (f"where the error is (revert-all on {self.samples} sample(s)): every weight float would remove "
                f"{weights:.0%} of the output error, every shared activation float {activations:.0%}")
        if max(weights, activations) < SPREAD_SHARE:
            line += ("; it is spread over the weights and activations of many layers, which a few float nodes "
                     "cannot remove (try --rounding adaptive, --method auto, or a looser target)")
        return line


#: Below this share for both weights and activations, the error counts as spread (:class:`ErrorSplit`).
SPREAD_SHARE = 0.8


def error_split(runs: GatedRuns, base: float | None = None) -> ErrorSplit:
    """Two runs of ``runs``: every node gate off, then every activation gate off (and a third for the
    all-int8 error when ``base``, as :func:`node_sensitivities` returns it, is not given)."""
    tensors = [key for key in runs.gates if key.startswith(TENSOR_GATE)]
    nodes = [key for key in runs.gates if not key.startswith(TENSOR_GATE)]
    return ErrorSplit(runs.error(()) if base is None else base, runs.error(nodes), runs.error(tensors), runs.samples)


#: Screening keeps the groups holding this share of the summed positive group gain ...
SCREEN_SHARE = 0.8
#: ... and at least this many groups.
SCREEN_MIN_GROUPS = 3


def _screened(candidates: list[str], gains_of: Callable[[list[list[str]]], list[float]]) -> list[str]:
    """The candidates of the groups that matter (see :func:`node_sensitivities`); ``gains_of``: the
    gain of each group, in order."""
    size = max(2, int(math.ceil(math.sqrt(len(candidates)))))
    groups = [candidates[k:k + size] for k in range(0, len(candidates), size)]
    gains = gains_of(groups)
    order = sorted(range(len(groups)), key=lambda k: gains[k], reverse=True)
    total = sum(g for g in gains if g > 0)
    kept: list[int] = []
    for k in order:
        if gains[k] <= 0 or (len(kept) >= SCREEN_MIN_GROUPS and sum(gains[j] for j in kept) >= SCREEN_SHARE * total):
            break
        kept.append(k)
    logger.debug("sensitivity screening: %d of %d groups kept (%d candidates)", len(kept), len(groups),
                 sum(len(groups[k]) for k in kept))
    return [c for k in sorted(kept) for c in groups[k]]
