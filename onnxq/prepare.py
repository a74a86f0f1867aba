"""Prepare a float model for calibration and rewrite: opset, node names, shapes, basic optimisation."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from .config import Mode, QuantConfig
from ._graph import LARGE_MODEL_BYTES, serialized_size
from .errors import ModelError, QuantizationError, first_line
from ._quiet import captured_output
from .model import ensure_opset, load_model
from .runtime import session_inputs

logger = logging.getLogger(__name__)

MIN_OPSET = 13  # per-channel DequantizeLinear (axis attribute) needs opset 13
OPSET_16BIT = 21  # 16-bit QuantizeLinear / DequantizeLinear


def prepare(model: onnx.ModelProto, config: QuantConfig) -> onnx.ModelProto:
    """Return a new model ready for planning: opset >= 13, every node named, shapes inferred,
    ORT's basic optimisations applied (BatchNorm folding, constant folding, ...).

    ORT's own pre-processing (symbolic shape inference) is tried first; when it fails, as it does
    on some exported transformers, ONNX shape inference plus ORT basic optimisation is used.
    """
    # 16-bit Q/DQ (16x8) are standard ONNX from opset 21: upgrade before planning, so that the plan,
    # calibration and rewrite all see the same graph
    check_finite_weights(model)
    model = ensure_opset(model, OPSET_16BIT if config.activation_type.bits == 16 else MIN_OPSET)
    _name_nodes(model)
    try:
        from .rewrite import preprocess

        if serialized_size(model) > LARGE_MODEL_BYTES:
            # ORT's pre-processing copies a > 2 GB model many times over; basic optimisation with
            # shape inference by path does the same job with one write and one read
            with captured_output("ONNX Runtime basic optimisation"):
                model = _basic_optimise(model)
        else:
            with captured_output("ONNX Runtime pre-processing"):
                model = preprocess(model, symbolic=not shapes_complete(model))
    except QuantizationError as exc:
        with captured_output("ONNX Runtime basic optimisation"):
            model = _basic_optimise(_infer_shapes(model))  # when this fails too, its error is the one shown
        logger.warning("%s; fell back to ONNX shape inference + ORT basic optimisation", exc)
    if config.mode in (Mode.DYNAMIC, Mode.WEIGHT_ONLY):  # both rewrite MatMul, not Gemm
        _decompose_gemm(model)
    _name_nodes(model)
    return _infer_shapes(model)


def shapes_complete(model: onnx.ModelProto) -> bool:
    """True when ONNX shape inference gives every node output a type and a rank."""
    inferred = _infer_shapes(model)
    graph = inferred.graph
    known = {vi.name for vi in list(graph.value_info) + list(graph.output)
             if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type
             and vi.type.tensor_type.HasField("shape")}
    return all(name in known for node in graph.node for name in node.output if name)


def check_finite_weights(model: onnx.ModelProto) -> None:
    """Refuse NaN or Inf in the weights and biases of the layers onnxq quantizes.

    A non-finite weight makes every scale derived from it non-finite: the quantized model would
    be silently wrong (cosine NaN), so it is refused as clearly as bad data is. Other constants
    (e.g. ``-inf`` attention-mask fillers) are left alone.

    Raises:
        ModelError: naming the first such tensor, its node and how many values are not finite.
    """
    initializers = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        for position in _WEIGHT_INPUTS.get(node.op_type, ()):
            if position >= len(node.input) or node.input[position] not in initializers:
                continue
            tensor = initializers[node.input[position]]
            if tensor.data_type not in _FLOAT_TYPES:
                continue
            values = numpy_helper.to_array(tensor).reshape(-1)
            nan = inf = 0
            for start in range(0, values.size, _CHUNK):  # bounded temporaries on multi-GB weights
                chunk = values[start:start + _CHUNK]
                nan += int(np.count_nonzero(np.isnan(chunk)))
                inf += int(np.count_nonzero(np.isinf(chunk)))
            if nan or inf:
                kinds = " and ".join(f"{n} {k}" for k, n in (("NaN", nan), ("Inf", inf)) if n)
                raise ModelError(f"weight {tensor.name!r} of node {node.name or node.op_type!r} ({node.op_type}) "
                                 f"holds {kinds} value(s) among {values.size}: a non-finite weight cannot be "
                                 "quantized; fix the model")


#: Inputs of these op types that hold weights or biases (quantized by ORT when constant).
_WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1), "Gather": (0,),
    "LSTM": (1, 2, 3), "GRU": (1, 2, 3), "Attention": (1, 2), "EmbedLayerNormalization": (2, 3, 4),
}
_CHUNK = 1 << 24
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                          onnx.TensorProto.BFLOAT16})


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node, and every repeat of a name, a unique name (exclusion lists and
    reports refer to names; ONNX Runtime refuses duplicates). The first holder keeps its name."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.name] = counts.get(n.name, 0) + 1
    taken = {n.name for n in model.graph.node if n.name}
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if node.name and (counts[node.name] == 1 or node.name not in seen):
            seen.add(node.name)
            continue
        name = f"{node.op_type}_{index}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    if serialized_size(model) > LARGE_MODEL_BYTES:  # in memory it cannot; _basic_optimise infers by path
        logger.debug("model over 2 GB: ONNX shape inference runs on files only")
        return model
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # models > 2 GB or with unknown custom ops
        logger.warning("ONNX shape inference failed (%s); continuing without it", first_line(exc))
        return model


def _basic_optimise(model: onnx.ModelProto) -> onnx.ModelProto:
    """ORT basic graph optimisations (constant folding, BN folding), written to a private folder."""
    with tempfile.TemporaryDirectory(prefix="onnxq-opt-") as tmp:
        target = Path(tmp) / "opt.onnx"
        # from memory: the model is not modified, and a > 2 GB one is neither copied nor written first
        data, names, values = session_inputs(model)
        large = bool(names)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(target)
        if large:
            options.add_external_initializers(names, values)
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             "opt.onnx.data")
        try:
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"ONNX Runtime cannot load the model: {first_line(exc)}") from exc
        del session, data, values
        if large:  # in memory, shape inference cannot serialize a > 2 GB model; by path it can
            try:
                onnx.shape_inference.infer_shapes_path(str(target), str(target))
            except Exception as exc:  # noqa: BLE001 - best effort, as in memory
                logger.warning("ONNX shape inference failed (%s); continuing without it", first_line(exc))
        return load_model(target, check=False)


def _decompose_gemm(model: onnx.ModelProto) -> None:
    """Rewrite ``Gemm(A, W, C)`` with constant W as ``MatMul(A, W') + C`` in place.

    ORT's dynamic quantizer has an integer kernel for MatMul but not for Gemm.
    """
    inits = {i.name: i for i in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        weight_name = f"{node.input[1]}_matmul"
        model.graph.initializer.append(numpy_helper.from_array(weight, weight_name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product], name=node.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                          name=f"{node.name}_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused_initializers(model)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    """In place, without copying the kept ones (re-adding a > 2 GB tensor would serialize it)."""
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    for index in reversed(range(len(model.graph.initializer))):
        if model.graph.initializer[index].name not in used:
            del model.graph.initializer[index]
