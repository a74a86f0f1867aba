"""One selection policy for every mode: keep_float / exclude / include mean the same everywhere (issue 9)."""

from __future__ import annotations

import onnx
import pytest
from builders import encoder_data, tiny_encoder

import onnxq
from onnxq import QuantConfig

MODES = {
    "static": dict(mode="static"),
    "dynamic": dict(mode="dynamic"),
    "float16": dict(mode="float16"),
    "weight-only": dict(mode="weight-only", block_size=16),
}


def _node_inputs_from(model: onnx.ModelProto, name: str) -> list[str]:
    node = next(n for n in model.graph.node if n.name == name)
    producers = {o: p for p in model.graph.node for o in p.output}
    return [producers[i].op_type if i in producers else "input" for i in node.input if i]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field", ["keep_float", "exclude_nodes"])
def test_user_selection_is_honoured_in_every_mode(mode: str, field: str) -> None:
    model = tiny_encoder()
    kept = "ffn_up"
    config = QuantConfig(**MODES[mode], **{field: (kept,)})
    result = onnxq.quantize(model, encoder_data(16) if mode == "static" else None, config=config, latency=False,
                            evaluation=encoder_data(16))
    decision = next(d for d in result.plan.decisions if d.name == kept)
    assert not decision.quantize and ("user" in decision.reason or "keep_float" in decision.reason)
    node = next(n for n in result.model.graph.node if n.name == kept)
    assert node.op_type == "MatMul"  # not MatMulInteger / MatMulNBits
    assert "DequantizeLinear" not in _node_inputs_from(result.model, kept)
    weight = next(i for i in result.model.graph.initializer if i.name == node.input[1])
    assert weight.data_type == onnx.TensorProto.FLOAT  # float32, not float16 / int8 / packed int4
    others = [d for d in result.plan.decisions if d.name == "ffn_down"]
    assert others and others[0].quantize  # the rest of the selection is unchanged


@pytest.mark.parametrize("mode", MODES)
def test_include_list_limits_every_mode(mode: str) -> None:
    config = QuantConfig(**MODES[mode], include_nodes=("ffn_*",))
    result = onnxq.quantize(tiny_encoder(), encoder_data(16) if mode == "static" else None, config=config,
                            latency=False, evaluation=encoder_data(16))
    chosen = set(result.plan.nodes_to_quantize)
    assert chosen and all(name.startswith("ffn_") for name in chosen)
