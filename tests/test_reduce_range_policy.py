"""reduce_range only where ONNX Runtime's kernels need it: depthwise Conv weights keep 8 bits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.rewrite.weights import read_quantized_weights
from onnxq.runtime import create_session

C = 16


def _conv_model(kind: str, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    group, shape = (C, (C, 1, 3, 3)) if kind == "depthwise" else (1, (C, C, 3, 3))
    w = rng.standard_normal(shape).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y0"], group=group, pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["y0"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", C, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", C, 8, 8])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(C, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _data(n: int = 8) -> dict[str, np.ndarray]:
    return {"x": (np.random.default_rng(1).random((n, C, 8, 8)) * 6).astype(np.float32)}


@pytest.mark.parametrize("kind, largest", [("depthwise", 127), ("full", 64)])  # ORT's 7-bit grid: [-64, 63]
def test_reduce_range_spares_depthwise_weights(kind: str, largest: int) -> None:
    result = onnxq.quantize(_conv_model(kind), _data(), config=onnxq.QuantConfig(reduce_range=True), latency=False)
    q = read_quantized_weights(result.model)["conv"].q
    assert int(np.abs(q.astype(np.int32)).max()) == largest
    assert (kind == "depthwise") == bool(result.plan.full_range_weights)


def test_without_reduce_range_every_weight_has_8_bits() -> None:
    result = onnxq.quantize(_conv_model("full"), _data(), config=onnxq.QuantConfig(reduce_range=False), latency=False)
    assert int(np.abs(read_quantized_weights(result.model)["conv"].q.astype(np.int32)).max()) == 127
    assert result.plan.full_range_weights == []


def test_depthwise_8bit_weights_run_exactly_in_ort() -> None:
    """ORT's fused depthwise kernel computes what the QDQ graph says (no u8 x s8 saturation)."""
    data = _data()
    model = onnxq.quantize(_conv_model("depthwise"), data, config=onnxq.QuantConfig(reduce_range=True),
                           latency=False).model
    reference = create_session(model, optimize=False).run(None, data)[0]
    fused = create_session(model).run(None, data)[0]
    np.testing.assert_allclose(fused, reference, atol=1e-5)
