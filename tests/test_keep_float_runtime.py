"""A node kept float must run float in ONNX Runtime, not only look float in the QDQ graph.

ORT's ``WeightBiasQuantization`` transformer re-quantizes, at session creation, the float weight of
a Conv/ConvTranspose/Gemm that sits between a DequantizeLinear and a QuantizeLinear. These tests
read ORT's own optimised graph (``SessionOptions.optimized_model_filepath``) and the integer
tensors around the excluded layer. The middle layer of each model has one output channel with
huge negative weights and bias (always zero after Relu): per-tensor int8 weights, which ORT would
use, round every other channel's weights to a level or two, so a silently re-quantized layer
is far off while a float one matches a float computation to one quantization level.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import QuantConfig
from onnxq.rewrite.keep_float import keep_float_at_runtime

LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
INTEGER_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"}
FLOAT_OPS = {"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "ConvTranspose"}


def _layer(kind: str, name: str, src: str, dst: str, cin: int, cout: int, rng: np.random.Generator,
           outlier: bool = False) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """One layer ``src -> dst`` (Conv / depthwise Conv / Gemm / MatMul) with its initializers."""
    std = 1.0 / np.sqrt(cin * (9 if kind in ("conv", "dw") else 1))
    if kind == "conv":
        w, b = rng.standard_normal((cout, cin, 3, 3)) * std, rng.standard_normal(cout) * 0.1
        node = helper.make_node("Conv", [src, f"{name}_w", f"{name}_b"], [dst], pads=[1] * 4, name=name)
    elif kind == "dw":
        w, b = rng.standard_normal((cout, 1, 3, 3)) / 3, rng.standard_normal(cout) * 0.1
        node = helper.make_node("Conv", [src, f"{name}_w", f"{name}_b"], [dst], pads=[1] * 4, group=cout, name=name)
    elif kind == "gemm":
        w, b = rng.standard_normal((cout, cin)) * std, rng.standard_normal(cout) * 0.1
        node = helper.make_node("Gemm", [src, f"{name}_w", f"{name}_b"], [dst], transB=1, name=name)
    else:
        w, b = rng.standard_normal((cin, cout)) * std, None
        node = helper.make_node("MatMul", [src, f"{name}_w"], [dst], name=name)
    if outlier:  # output channel 0: large negative weights on non-negative inputs, always < 0
        index = (slice(None), 0) if kind == "matmul" else (0,)
        w[index] = -40.0 - np.abs(w[index])
        if b is not None:
            b[0] = -100.0
    inits = [numpy_helper.from_array(w.astype(np.float32), f"{name}_w")]
    if b is not None:
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"{name}_b"))
    return [node], inits


def chain(kind: str, seed: int = 0) -> onnx.ModelProto:
    """``x -> first -> Relu -> middle -> Relu -> last -> y``; ``middle`` carries the outlier channel."""
    rng = np.random.default_rng(seed)
    width = 8
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for name, src, dst, cin, cout, outlier in (("first", "x", "h1", 3 if kind != "dw" else width, width, False),
                                              ("middle", "a1", "h2", width, width, True),
                                              ("last", "a2", "y", width, 4, False)):
        layer_kind = "conv" if kind == "dw" and name != "middle" else kind
        n, i = _layer(layer_kind, name, src, dst, cin, cout, rng, outlier)
        nodes += n
        inits += i
    nodes.insert(1, helper.make_node("Relu", ["h1"], ["a1"], name="relu1"))
    nodes.insert(3, helper.make_node("Relu", ["h2"], ["a2"], name="relu2"))
    shape_in, shape_out = input_shape(kind), list(input_shape(kind))
    shape_out[1 if kind != "matmul" else 2] = 4
    graph = helper.make_graph(nodes, f"{kind}_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape_out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def input_shape(kind: str) -> list:
    return {"conv": ["N", 3, 8, 8], "dw": ["N", 8, 8, 8], "gemm": ["N", 3], "matmul": ["N", 5, 3]}[kind]


def data(kind: str, n: int = 32, seed: int = 1) -> dict[str, np.ndarray]:
    shape = [n] + list(input_shape(kind)[1:])
    return {"x": np.random.default_rng(seed).random(shape).astype(np.float32)}


def optimized(model: onnx.ModelProto, level: str, tmp_path,
              outputs: list[str] = ()) -> tuple[onnx.ModelProto, ort.InferenceSession]:
    """ORT's optimised graph at ``level`` (and the session), optionally with extra graph outputs."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    for name in outputs:
        work.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.optimized_model_filepath = str(tmp_path / f"optimized_{level}.onnx")
    options.log_severity_level = 3
    session = ort.InferenceSession(work.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath), session


@pytest.fixture(scope="module", params=["conv", "dw", "gemm", "matmul"])
def excluded(request) -> tuple[str, onnx.ModelProto, onnx.ModelProto]:
    kind = request.param
    model = chain(kind)
    result = onnxq.quantize(model, data(kind), config=QuantConfig(exclude_nodes=["middle"]), latency=False)
    return kind, model, result.model


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_excluded_node_is_float_in_ort_optimised_graph(excluded, level, tmp_path):
    kind, float_model, quantized = excluded
    graph = optimized(quantized, level, tmp_path)[0].graph
    ops = [n.op_type for n in graph.node]
    weights = {i.name: i for i in graph.initializer}
    if level != "basic":  # (QDQ fusion is a level-2 transformer; the weight re-quantization is level 1)
        assert sum(op in INTEGER_OPS for op in ops) == 2, ops  # first and last only
        floats = [n for n in graph.node if n.op_type in FLOAT_OPS]
        assert len(floats) == 1, ops
        assert weights[floats[0].input[1]].data_type == TensorProto.FLOAT
    if level != "all":  # (ALL renames and re-lays Conv weights out for NCHWc)
        middle = next(n for n in graph.node if n.name == "middle")
        assert middle.op_type in FLOAT_OPS
        assert middle.input[1] in weights, "the weight is computed (a DequantizeLinear of int8), not a float constant"
        original = numpy_helper.to_array(next(i for i in float_model.graph.initializer if i.name == "middle_w"))
        np.testing.assert_array_equal(numpy_helper.to_array(weights[middle.input[1]]), original)


def _integer_around_middle(quantized: onnx.ModelProto) -> tuple[str, str, onnx.NodeProto]:
    """(integer tensor the middle layer reads, integer tensor its output is quantized to, its output Q)."""
    producer = {o: n for n in quantized.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in quantized.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    middle = next(n for n in quantized.graph.node if n.name == "middle")
    dq = producer[middle.input[0]]
    assert dq.op_type == "DequantizeLinear"
    tensor = middle.output[0]
    while True:
        (nxt,) = consumers[tensor]
        if nxt.op_type == "QuantizeLinear":
            return dq.input[0], nxt.output[0], nxt
        tensor = nxt.output[0]


def _float_middle(float_model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The middle layer alone, float32, no graph optimisation, followed by Relu."""
    node = next(n for n in float_model.graph.node if n.name == "middle")
    inits = [i for i in float_model.graph.initializer if i.name in node.input]
    graph = helper.make_graph([node, helper.make_node("Relu", [node.output[0]], ["out"])], "middle",
                              [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["out"], {node.input[0]: x})[0]


def _param(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


@pytest.mark.parametrize("level", ["extended", "all"])
def test_excluded_node_output_matches_float_layer_on_its_dequantized_input(excluded, level, tmp_path):
    kind, float_model, quantized = excluded
    int_in, int_out, q = _integer_around_middle(quantized)
    dq = next(n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == int_in)
    _, session = optimized(quantized, level, tmp_path, outputs=[int_in, int_out])
    x = data(kind, seed=3)
    got_in, got_out = session.run([int_in, int_out], x)
    scale_in, zp_in = _param(quantized, dq.input[1]).reshape(-1)[0], _param(quantized, dq.input[2]).reshape(-1)[0]
    reference = _float_middle(float_model, ((got_in.astype(np.float32) - np.float32(zp_in)) * scale_in))
    scale, zp = _param(quantized, q.input[1]), _param(quantized, q.input[2])
    info = np.iinfo(zp.dtype)
    expected = np.clip(np.rint(reference / scale) + zp.astype(np.int64), info.min, info.max)
    diff = np.abs(expected - got_out.astype(np.int64))
    assert diff.max() <= 1, f"{kind}: {int(diff.max())} levels off, {np.mean(diff > 1):.1%} of values"


def test_rewrite_is_value_preserving_and_idempotent(tmp_path):
    """The per-axis DequantizeLinear repeats one scale: bit-identical outputs, nothing left to do after."""
    model = chain("conv")
    quantized = onnxq.quantize(model, data("conv"), config=QuantConfig(exclude_nodes=["middle"]),
                               latency=False).model
    assert keep_float_at_runtime(quantized) == []  # quantize_static has done it already
    before = onnx.ModelProto()
    before.CopyFrom(quantized)
    dq = next(n for n in before.graph.node if n.output[0] == next(
        m for m in before.graph.node if m.name == "middle").input[0])
    scalar = next(n for n in before.graph.node if n.op_type == "QuantizeLinear" and n.output[0] == dq.input[0])
    dq.input[1], dq.input[2] = scalar.input[1], scalar.input[2]
    del dq.attribute[:]  # back to ORT's per-tensor form
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert keep_float_at_runtime(after) == ["middle"]
    onnx.checker.check_model(after)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = data("conv", seed=5)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), options,  # noqa: E731
                                         providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_array_equal(run(before), run(after))


def test_shared_dequantize_keeps_quantized_consumer_fused(tmp_path):
    """A DequantizeLinear read by a float and a quantized Conv: the float one gets its own copy."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) / 8).astype(np.float32), "wa"),
             numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) / 8).astype(np.float32), "wb")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w0"], ["h"], pads=[1] * 4, name="stem"), n("Relu", ["h"], ["a"], name="relu"),
             n("Conv", ["a", "wa"], ["ya"], pads=[1] * 4, name="branch_a"),
             n("Conv", ["a", "wb"], ["yb"], pads=[1] * 4, name="branch_b"), n("Add", ["ya", "yb"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "branches",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = {"x": np.random.default_rng(1).random((16, 3, 8, 8)).astype(np.float32)}
    quantized = onnxq.quantize(model, x, config=QuantConfig(exclude_nodes=["branch_b"]), latency=False).model
    ops = [node.op_type for node in optimized(quantized, "extended", tmp_path)[0].graph.node]
    assert ops.count("QLinearConv") == 2 and ops.count("Conv") == 1, ops


def _hand_qdq(op: str) -> onnx.ModelProto:
    """``Q -> DQ -> op (float weight) -> Q -> DQ`` built by hand: ConvTranspose, or Gemm with transA=1."""
    rng = np.random.default_rng(2)
    if op == "ConvTranspose":
        shape, weight, attrs, out_shape = ["N", 4, 5, 5], rng.standard_normal((4, 6, 3, 3)), {}, ["N", 6, 7, 7]
    else:
        shape, weight, attrs, out_shape = [4, "N"], rng.standard_normal((6, 4)), {"transA": 1, "transB": 1}, ["N", 6]
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["x", "s_in", "zp"], ["xq"]), n("DequantizeLinear", ["xq", "s_in", "zp"], ["xd"]),
             n(op, ["xd", "w", "b"], ["h"], name="float_op", **attrs), n("Relu", ["h"], ["r"]),
             n("QuantizeLinear", ["r", "s_out", "zp"], ["rq"]), n("DequantizeLinear", ["rq", "s_out", "zp"], ["y"])]
    inits = [numpy_helper.from_array((weight / 3).astype(np.float32), "w"),
             numpy_helper.from_array((0.1 * rng.standard_normal(6)).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "s_in"),
             numpy_helper.from_array(np.array(4 / 255, np.float32), "s_out"),
             numpy_helper.from_array(np.array(0, np.uint8), "zp")]
    graph = helper.make_graph(nodes, op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op", ["ConvTranspose", "Gemm"])
def test_conv_transpose_and_transposed_gemm_input(op, tmp_path):
    model = _hand_qdq(op)
    plain = optimized(model, "extended", tmp_path)[0]
    assert "float_op_weight_q" in {i.name for i in plain.graph.initializer}, \
        "ORT no longer re-quantizes this op's weight: update REQUANTIZED_OP_TYPES"
    assert keep_float_at_runtime(model) == ["float_op"]
    onnx.checker.check_model(model)
    graph = optimized(model, "extended", tmp_path)[0].graph
    node = next(n for n in graph.node if n.name == "float_op")
    weights = {i.name: i for i in graph.initializer}
    assert node.op_type == op and weights[node.input[1]].data_type == TensorProto.FLOAT
    assert not any(name.endswith("_weight_q") for name in weights)
    shape = [2 if d.dim_param else d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = {"x": np.random.default_rng(3).random(shape).astype(np.float32)}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(model.SerializeToString(), options,
                                     providers=["CPUExecutionProvider"]).run(None, x)[0]
    got = optimized(model, "all", tmp_path)[1].run(None, x)[0]
    np.testing.assert_allclose(got, reference, atol=4 / 255 * 1.001)  # one output level at most


def test_float_conv_feeding_a_float_add_is_left_alone(tmp_path):
    """Outside ORT's pattern (the Conv's reader is not Relu/Clip/QuantizeLinear) nothing changes."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal((8, 8, 1, 1)) / 3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((8, 8, 1, 1)) / 3).astype(np.float32), "w2")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w0"], ["h"], pads=[1] * 4, name="stem"), n("Relu", ["h"], ["a"], name="relu"),
             n("Conv", ["a", "w1"], ["p"], name="project"), n("Add", ["a", "p"], ["s"], name="residual"),
             n("Conv", ["s", "w2"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "residual",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = {"x": np.random.default_rng(1).random((16, 3, 8, 8)).astype(np.float32)}
    quantized = onnxq.quantize(model, x, config=QuantConfig(exclude_nodes=["project", "residual"]), latency=False).model
    assert not any(node.name.endswith("_per_channel") for node in quantized.graph.node)
    graph = optimized(quantized, "extended", tmp_path)[0].graph
    project = next(node for node in graph.node if node.name == "project")
    assert project.op_type == "Conv" and project.input[1] == "w1"
