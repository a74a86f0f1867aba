"""Small ONNX models built with onnx.helper for the tests (no files, no downloads)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def tiny_encoder(seq: int = 12, dim: int = 32, ffn: int = 64, seed: int = 0) -> onnx.ModelProto:
    """One BERT-style encoder layer with mean pooling.

    Inputs ``x`` float32 [N, S, D] and ``mask`` float32 [N, S] (1 = token, 0 = padding).
    The padding mask is applied as ``(1 - mask) * -3.4e38`` added to the attention scores, as
    exported BERT graphs do. Output ``embedding`` [N, D].
    """
    rng = np.random.default_rng(seed)
    w = lambda *shape: (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)  # noqa: E731
    b = lambda n: (0.1 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    inits = [
        _init("Wq", w(dim, dim)), _init("bq", b(dim)), _init("Wk", w(dim, dim)), _init("bk", b(dim)),
        _init("Wv", w(dim, dim)), _init("bv", b(dim)), _init("Wo", w(dim, dim)), _init("bo", b(dim)),
        _init("W1", w(dim, ffn)), _init("b1", b(ffn)), _init("W2", w(ffn, dim)), _init("b2", b(dim)),
        _init("ln1_g", np.ones(dim, np.float32)), _init("ln1_b", np.zeros(dim, np.float32)),
        _init("ln2_g", np.ones(dim, np.float32)), _init("ln2_b", np.zeros(dim, np.float32)),
        _init("one", np.array(1.0, np.float32)), _init("neg_big", np.array(-3.4e38, np.float32)),
        _init("scale", np.array(1.0 / np.sqrt(dim), np.float32)), _init("half", np.array(0.5, np.float32)),
        _init("sqrt2", np.array(np.sqrt(2.0), np.float32)), _init("axes1", np.array([1], np.int64)),
    ]
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "Wq"], ["q0"], name="q_proj"), n("Add", ["q0", "bq"], ["q"], name="q_bias"),
        n("MatMul", ["x", "Wk"], ["k0"], name="k_proj"), n("Add", ["k0", "bk"], ["k"], name="k_bias"),
        n("MatMul", ["x", "Wv"], ["v0"], name="v_proj"), n("Add", ["v0", "bv"], ["v"], name="v_bias"),
        n("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="k_t"),
        n("MatMul", ["q", "kt"], ["s0"], name="scores"), n("Mul", ["s0", "scale"], ["s1"], name="scores_scale"),
        n("Sub", ["one", "mask"], ["inv"], name="mask_inv"), n("Mul", ["inv", "neg_big"], ["madd0"], name="mask_fill"),
        n("Unsqueeze", ["madd0", "axes1"], ["madd"], name="mask_unsqueeze"),
        n("Add", ["s1", "madd"], ["s2"], name="mask_add"), n("Softmax", ["s2"], ["p"], axis=-1, name="softmax"),
        n("MatMul", ["p", "v"], ["ctx"], name="context"),
        n("MatMul", ["ctx", "Wo"], ["o0"], name="o_proj"), n("Add", ["o0", "bo"], ["o"], name="o_bias"),
        n("Add", ["x", "o"], ["r1"], name="residual1"),
        n("LayerNormalization", ["r1", "ln1_g", "ln1_b"], ["h"], axis=-1, name="ln1"),
        n("MatMul", ["h", "W1"], ["f0"], name="ffn_up"), n("Add", ["f0", "b1"], ["f1"], name="ffn_up_bias"),
        n("Div", ["f1", "sqrt2"], ["g0"], name="gelu_div"), n("Erf", ["g0"], ["g1"], name="gelu_erf"),
        n("Add", ["g1", "one"], ["g2"], name="gelu_add"), n("Mul", ["f1", "g2"], ["g3"], name="gelu_mul"),
        n("Mul", ["g3", "half"], ["g4"], name="gelu_half"),
        n("MatMul", ["g4", "W2"], ["f2"], name="ffn_down"), n("Add", ["f2", "b2"], ["f3"], name="ffn_down_bias"),
        n("Add", ["h", "f3"], ["r2"], name="residual2"),
        n("LayerNormalization", ["r2", "ln2_g", "ln2_b"], ["h2"], axis=-1, name="ln2"),
        n("ReduceMean", ["h2", "axes1"], ["embedding"], keepdims=0, name="pool"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", seq, dim]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", seq])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def encoder_data(n: int, seq: int = 12, dim: int = 32, seed: int = 1) -> dict[str, np.ndarray]:
    """Token features and padding masks (1..seq real tokens per sample) for :func:`tiny_encoder`."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq + 1, size=n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.float32)
    return {"x": rng.standard_normal((n, seq, dim)).astype(np.float32), "mask": mask}


def tiny_cnn(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """Conv-BN-Relu-Conv-Relu-MaxPool-Flatten-Gemm classifier: ``image`` [N,1,8,8] -> ``logits`` [N,10]."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("c1_w", (rng.standard_normal((8, 1, 3, 3)) / 3).astype(np.float32)),
        _init("c1_b", (0.1 * rng.standard_normal(8)).astype(np.float32)),
        _init("bn_scale", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
        _init("bn_bias", (0.1 * rng.standard_normal(8)).astype(np.float32)),
        _init("bn_mean", (0.1 * rng.standard_normal(8)).astype(np.float32)),
        _init("bn_var", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
        _init("c2_w", (rng.standard_normal((16, 8, 3, 3)) / np.sqrt(72)).astype(np.float32)),
        _init("c2_b", (0.1 * rng.standard_normal(16)).astype(np.float32)),
        _init("fc_w", (rng.standard_normal((10, 16 * 4 * 4)) / 16).astype(np.float32)),
        _init("fc_b", (0.1 * rng.standard_normal(10)).astype(np.float32)),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["image", "c1_w", "c1_b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        n("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn1"], name="bn1"),
        n("Relu", ["bn1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "c2_w", "c2_b"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        n("Relu", ["c2"], ["r2"], name="relu2"),
        n("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        n("Flatten", ["p"], ["f"], name="flatten"),
        n("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def cnn_data(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Smooth random images (blurred noise) in [0, 1] for :func:`tiny_cnn`."""
    rng = np.random.default_rng(seed)
    images = rng.random((n, 1, 8, 8)).astype(np.float32)
    images = (images + np.roll(images, 1, axis=2) + np.roll(images, 1, axis=3)) / 3
    return {"image": images.astype(np.float32)}


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> node that produces it."""
    return {out: node for node in model.graph.node for out in node.output}


def fed_by_dequantize(model: onnx.ModelProto, node_name: str, index: int = 0) -> bool:
    """True when input ``index`` of node ``node_name`` comes from a DequantizeLinear."""
    node = next(n for n in model.graph.node if n.name == node_name)
    producer = producers(model).get(node.input[index])
    return producer is not None and producer.op_type == "DequantizeLinear"
