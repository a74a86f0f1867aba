"""The plan's per-tensor specs say what the quantized graph holds, in every mode.

Each test reads the rewritten graph itself (Q/DQ zero-point and weight types, per-channel axes,
the integer range used; DynamicQuantizeLinear / MatMulInteger; float16 types; MatMulNBits attributes)
and compares it, tensor by tensor and in both directions, with ``result.plan.tensors`` and the
report's ``tensors``: a plan that disagreed with its graph fails here.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq import QuantConfig, Report, quantize
from onnxq.plan import QuantPlan, TensorSpec

from builders import cnn_data, encoder_data, tiny_cnn, tiny_encoder
from test_reduce_range_policy import _conv_model, _data
from test_weight_only import mlp, mlp_data

_DTYPES = {TensorProto.UINT8: "uint8", TensorProto.INT8: "int8", TensorProto.UINT16: "uint16",
           TensorProto.INT16: "int16", TensorProto.INT32: "int32", TensorProto.FLOAT16: "float16",
           TensorProto.FLOAT: "float32"}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _qdq_graph(model: onnx.ModelProto) -> dict[str, dict]:
    """Every tensor the static rewrite quantized: activations (QuantizeLinear of a computed tensor)
    and constants (DequantizeLinear of an integer initializer), with type, axis and range used."""
    inits = {t.name: t for t in model.graph.initializer}
    found: dict[str, dict] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            zero_point = inits[node.input[2]]
            found[node.input[0].removesuffix("_QuantizeLinear_Input")] = {
                "dtype": _DTYPES[zero_point.data_type], "axis": None,
                "zero_point": numpy_helper.to_array(zero_point).astype(np.int64)}
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
            q = numpy_helper.to_array(inits[node.input[0]]).astype(np.int64)
            scale = numpy_helper.to_array(inits[node.input[1]])
            zero_point = (numpy_helper.to_array(inits[node.input[2]]).astype(np.int64) if len(node.input) > 2
                          else np.zeros(scale.shape, np.int64))
            axis = _attrs(node).get("axis", 1) if scale.size > 1 else None
            shaped = zero_point.reshape([-1 if i == axis else 1 for i in range(q.ndim)]) if axis is not None \
                else zero_point
            found[node.input[0].removesuffix("_quantized")] = {
                "dtype": _DTYPES[inits[node.input[0]].data_type], "axis": axis, "zero_point": zero_point,
                "levels": int(np.abs(q - shaped).max()) if q.size else 0}
    return found


def _check_integer_specs(specs: list[TensorSpec], graph: dict[str, dict]) -> None:
    by_name = {s.name: s for s in specs}
    assert set(by_name) == set(graph), (sorted(set(by_name) - set(graph)), sorted(set(graph) - set(by_name)))
    for name, spec in by_name.items():
        seen = graph[name]
        assert (spec.dtype, spec.axis) == (seen["dtype"], seen["axis"]), (name, spec, seen)
        if spec.symmetric and spec.dtype.startswith("int"):
            assert not seen["zero_point"].any(), name
        if "levels" in seen and spec.role != "bias":  # the integer range the values use
            assert seen["levels"] <= 2 ** (spec.bits - 1), (name, spec.bits, seen["levels"])
            if spec.bits == 8 and spec.dtype == "int8":
                assert seen["levels"] > 64, (name, "8-bit weight on a 7-bit grid")


def _check_report(result) -> None:
    """The report carries the plan's specs, through JSON, and a one-line summary."""
    report = Report.from_json(result.report.to_json())
    assert report.tensors == [s.__dict__ for s in result.plan.tensors] == result.report.tensors
    assert "specs:" in result.report.format()
    plan = QuantPlan.from_dict(json.loads(json.dumps(result.plan.to_dict())))
    assert plan.tensors == result.plan.tensors and plan.scheme == result.plan.scheme


@pytest.mark.parametrize("build, data, config", [
    (tiny_cnn, lambda: cnn_data(16), QuantConfig(reduce_range=False)),
    (tiny_cnn, lambda: cnn_data(16), QuantConfig(reduce_range=True, per_channel=False)),
    (tiny_cnn, lambda: cnn_data(16), QuantConfig(activation_type="int8", reduce_range=False)),
    (tiny_cnn, lambda: cnn_data(16), QuantConfig(activation_type="uint16")),
    (lambda: _conv_model("depthwise"), _data, QuantConfig(reduce_range=True)),
    (lambda: _conv_model("full"), _data, QuantConfig(reduce_range=True)),
    (tiny_encoder, lambda: encoder_data(16), QuantConfig(reduce_range=True)),
], ids=["cnn-u8", "cnn-7bit-per-tensor", "cnn-s8s8", "cnn-u16", "depthwise-8bit", "conv-7bit", "encoder"])
def test_static_specs_match_the_qdq_graph(build, data, config) -> None:
    result = quantize(build(), data(), config=config, latency=False)
    specs = result.plan.tensors
    assert {s.role for s in specs} >= {"activation", "weight"}
    _check_integer_specs(specs, _qdq_graph(result.model))
    _check_report(result)


def test_static_specs_follow_the_fallback_plan() -> None:
    """A plan with fewer quantized nodes (keep_float) has specs for fewer tensors, still the graph's."""
    result = quantize(tiny_cnn(), cnn_data(16), config=QuantConfig(reduce_range=False, keep_float=["fc"]),
                      latency=False)
    assert "fc_w" not in {s.name for s in result.plan.tensors}
    _check_integer_specs(result.plan.tensors, _qdq_graph(result.model))


def _dynamic_graph(model: onnx.ModelProto) -> dict[str, dict]:
    inits = {t.name: t for t in model.graph.initializer}
    found: dict[str, dict] = {}
    for node in model.graph.node:
        if node.op_type == "DynamicQuantizeLinear":
            found[node.input[0]] = {"dtype": "uint8", "axis": None, "zero_point": np.zeros(1, np.int64)}
        elif node.op_type in ("MatMulInteger", "ConvInteger"):
            weight, zero_point = inits[node.input[1]], numpy_helper.to_array(inits[node.input[3]])
            dims = list(weight.dims)
            axis = None if zero_point.size == 1 else (len(dims) - 1 if dims[-1] == zero_point.size else 0)
            q = numpy_helper.to_array(weight).astype(np.int64)
            found[node.input[1].removesuffix("_quantized")] = {
                "dtype": _DTYPES[weight.data_type], "axis": axis, "zero_point": zero_point.astype(np.int64),
                "levels": int(np.abs(q - (zero_point.astype(np.int64) if axis is None or axis == len(dims) - 1
                                          else zero_point.reshape(-1, *[1] * (len(dims) - 1)))).max())}
    return found


@pytest.mark.parametrize("build, data, config", [
    (tiny_encoder, lambda: encoder_data(16), QuantConfig(mode="dynamic", reduce_range=False)),
    (tiny_encoder, lambda: encoder_data(16), QuantConfig(mode="dynamic", reduce_range=True)),
    (tiny_cnn, lambda: cnn_data(16), QuantConfig(mode="dynamic", quantize_conv_dynamic=True, reduce_range=False)),
], ids=["encoder", "encoder-7bit", "cnn-conv-integer"])
def test_dynamic_specs_match_the_integer_graph(build, data, config) -> None:
    result = quantize(build(), data(), config=config, latency=False)
    specs = result.plan.tensors
    assert all(s.dynamic for s in specs if s.role == "activation")
    _check_integer_specs(specs, _dynamic_graph(result.model))
    _check_report(result)


@pytest.mark.parametrize("keep_io", [True, False])
def test_float16_specs_match_the_converted_graph(keep_io: bool) -> None:
    config = QuantConfig(mode="float16", float16_keep_io_types=keep_io, keep_float=["ffn_down"])
    result = quantize(tiny_encoder(), encoder_data(8), config=config, latency=False)
    graph = result.model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    specs = result.plan.tensors
    assert {s.role for s in specs} == {"weight", "activation"} and all(s.dtype == "float16" for s in specs)
    for spec in specs:
        assert types[spec.name] == TensorProto.FLOAT16, spec
    half = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT16}
    assert half == {s.name for s in specs if s.role == "weight"}  # and no other weight became float16
    kept = {n.input[1] for n in graph.node if n.name == "ffn_down"}
    assert kept and not kept & {s.name for s in specs}
    _check_report(result)


@pytest.mark.parametrize("bits, symmetric", [(4, False), (8, True)])
def test_weight_only_specs_match_matmulnbits(bits: int, symmetric: bool) -> None:
    config = QuantConfig(mode="weight-only", block_size=32, weight_bits=bits, weight_only_symmetric=symmetric,
                         exclude_nodes=["fc1*"])
    result = quantize(mlp(), mlp_data(), config=config, latency=False)
    nbits = {n.input[1].removesuffix(f"_Q{bits}"): n for n in result.model.graph.node if n.op_type == "MatMulNBits"}
    specs = {s.name: s for s in result.plan.tensors}
    assert set(specs) == set(nbits) and len(specs) == 3  # fc1 excluded
    for name, spec in specs.items():
        node = nbits[name]
        attrs = _attrs(node)
        assert (attrs["bits"], attrs["block_size"]) == (spec.bits, spec.block_size), spec
        assert spec.dtype == f"int{bits}" and spec.axis == 0 and spec.symmetric is symmetric
        assert (len(node.input) > 3 and bool(node.input[3])) is (not symmetric)  # zero points only when asymmetric
    _check_report(result)


def test_report_summary_line_counts_each_group() -> None:
    result = quantize(_conv_model("full"), _data(), config=QuantConfig(reduce_range=True), latency=False)
    line = next(x for x in result.report.format().splitlines() if x.startswith("specs:"))
    assert "activations uint8 asymmetric per-tensor (2)" in line
    assert "weights int8 symmetric per-channel axis 0 (1, 7-bit: 1)" in line
    assert "biases int32 symmetric per-channel axis 0 (1)" in line


def test_reports_without_specs_still_load() -> None:
    """Version-1/2 report files have no ``tensors``: they load with an empty list and no summary line."""
    data = quantize(tiny_cnn(), cnn_data(8), config=QuantConfig(reduce_range=False), latency=False).report.to_dict()
    del data["tensors"]
    for version in (1, 2):
        report = Report.from_dict({**data, "schema_version": version})
        assert report.tensors == [] and "specs:" not in report.format()
