"""Plans of the modes outside ORT's integer quantizers: float16 conversion and weight-only MatMulNBits.

Policy, like :mod:`onnxq.plan`: which nodes convert and why, and one :class:`~onnxq.plan.TensorSpec`
per tensor the rewrite converts. The selection is :func:`onnxq.plan.user_choice`, the same for every
mode. :mod:`onnxq.rewrite` only turns these plans into graphs; what this module needs to know of
ONNX Runtime (the float16 converter's block list) the caller passes in.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from .config import QuantConfig
from .plan import NodeDecision, QuantPlan, TensorSpec, constant_names, user_choice

__all__ = ["WEIGHT_ONLY_OP_TYPES", "plan_float16", "plan_weight_only"]

#: Op types the weight-only rewrite handles (Gemm is decomposed into MatMul + Add by ``prepare``).
WEIGHT_ONLY_OP_TYPES = ("MatMul",)

#: inputs ORT's float16 converter keeps float32 whatever the node (``ALWAYS_FLOAT_INPUTS``, opset >= 11)
_ALWAYS_FLOAT_INPUTS = {"Resize": (2,), "GroupNorm": (1, 2), "SkipGroupNorm": (1, 2)}
_FLOAT32 = onnx.TensorProto.FLOAT


def plan_float16(model: onnx.ModelProto, config: QuantConfig, *, block_list: Iterable[str]) -> QuantPlan:
    """Per node: float16, or float32 because its op type is blocked or the user's selection keeps it.

    Args:
        model: the prepared float model.
        config: ``float16_op_block_list`` and ``exclude_op_types`` block op types; ``exclude_nodes``,
            ``keep_float`` and ``include_nodes`` select nodes (:func:`onnxq.plan.user_choice`).
        block_list: op types kept float32 by default (``onnxq.rewrite.float16.default_block_list()``:
            ops without float16 kernels or that overflow float16).
    """
    defaults = set(block_list)
    user_ops = set(config.float16_op_block_list) | set(config.exclude_op_types)
    decisions = []
    for node in model.graph.node:
        def decision(convert: bool, reason: str, node: onnx.NodeProto = node) -> NodeDecision:
            return NodeDecision(node.name, node.op_type, convert, reason)

        chosen = user_choice(node, config)
        if node.op_type in user_ops:
            decisions.append(decision(False, "op type in the user's float16 block list: stays float32"))
        elif node.op_type in defaults:
            decisions.append(decision(False, "op type in the default float16 block list (no float16 kernel "
                                             "or overflows float16): stays float32"))
        elif chosen is not None:
            decisions.append(decision(False, f"{chosen}: stays float32"))
        else:
            decisions.append(decision(True, "float16"))
    blocked = [d for d in decisions if not d.quantize]
    io = "float32 inputs/outputs kept" if config.float16_keep_io_types else "float16 inputs/outputs"
    notes = [f"float16: weights and activations in float16, {io}; {len(blocked)} node(s) stay float32."]
    notes.append("ONNX Runtime's CPU provider has few float16 kernels: it runs most of a float16 graph in "
                 "float32 with Casts, so expect half the size, not more speed, on x86 CPUs.")
    plan = QuantPlan(mode=config.mode.value, op_types=[], decisions=decisions, notes=notes)
    plan.tensors = _float16_specs(model, plan, keep_io_types=config.float16_keep_io_types)
    return plan


def _float16_specs(model: onnx.ModelProto, plan: QuantPlan, *, keep_io_types: bool) -> list[TensorSpec]:
    """The float32 tensors the converter turns into float16: initializers read by a converted node
    (unless at an input the converter keeps float32), outputs of converted nodes, and the model's
    inputs and outputs unless ``keep_io_types``."""
    graph = model.graph
    inits = {t.name for t in graph.initializer if t.data_type == _FLOAT32}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.input, *graph.output]
             if vi.type.HasField("tensor_type")}
    outputs = {o.name for o in graph.output}
    converted = set(plan.nodes_to_quantize)
    weights: dict[str, None] = {}
    activations: dict[str, None] = {}
    if not keep_io_types:
        activations.update((i.name, None) for i in graph.input if i.name not in inits and types[i.name] == _FLOAT32)
    for node in graph.node:
        if node.name not in converted:
            continue
        fixed = _ALWAYS_FLOAT_INPUTS.get(node.op_type, ())
        weights.update((name, None) for i, name in enumerate(node.input) if name in inits and i not in fixed)
        activations.update((name, None) for name in node.output
                           if types.get(name) == _FLOAT32 and (not keep_io_types or name not in outputs))
    if not keep_io_types:
        activations.update((o.name, None) for o in graph.output if types[o.name] == _FLOAT32)
    return ([TensorSpec(name, "weight", "float16", None, bits=16) for name in weights]
            + [TensorSpec(name, "activation", "float16", None, bits=16) for name in activations])


def plan_weight_only(model: onnx.ModelProto, config: QuantConfig) -> QuantPlan:
    """Per MatMul: weight-only quantized, or float with the reason (no constant 2-D weight, excluded).

    Args:
        model: the prepared float model (Gemm with constant weights already decomposed).
        config: the selection (:func:`onnxq.plan.user_choice`) and the bits, blocks and symmetry.
    """
    initializers = {t.name: t for t in model.graph.initializer}
    constants = constant_names(model)
    decisions = []
    for node in model.graph.node:
        candidate = node.op_type in WEIGHT_ONLY_OP_TYPES
        chosen = user_choice(node, config) if candidate else None
        if not candidate:
            reason = "op type not quantizable in weight-only mode"
        elif chosen is not None:
            reason = chosen
        else:
            reason = _weight_only_obstacle(node, initializers, constants, config)
        decisions.append(NodeDecision(node.name, node.op_type, reason is None,
                                      reason or f"int{config.weight_bits} weight-only", candidate))
    chosen_count = sum(d.quantize for d in decisions)
    symmetric = config.weight_only_symmetric and config.weight_only_algorithm != "hqq"  # HQQ: float zero points
    notes = [f"weight-only: {chosen_count} MatMul weight(s) to int{config.weight_bits} MatMulNBits "
             f"({config.weight_only_algorithm.upper()}, {'symmetric' if symmetric else 'asymmetric'}, blocks of "
             f"{config.block_size} along K); activations stay float."]
    by_name = {n.name: n for n in model.graph.node}
    tensors = [TensorSpec(by_name[d.name].input[1], "weight", f"int{config.weight_bits}", symmetric, 0,
                          bits=config.weight_bits, block_size=config.block_size) for d in decisions if d.quantize]
    return QuantPlan(mode=config.mode.value, op_types=list(WEIGHT_ONLY_OP_TYPES), decisions=decisions,
                     notes=notes, tensors=tensors)


def _weight_only_obstacle(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], constants: set[str],
                          config: QuantConfig) -> str | None:
    """Why a selected MatMul cannot be weight-only quantized, or ``None`` when it can."""
    weight = initializers.get(node.input[1])
    if weight is None:
        reason = ("weight is computed in the graph, not an initializer" if node.input[1] in constants
                  else "activation x activation product (no constant weight)")
        return reason + ": stays float"
    if not _is_matrix(weight):
        return "weight is not a 2-D matrix: stays float"
    gptq_odd = config.weight_only_algorithm == "gptq" and not config.weight_only_symmetric
    if gptq_odd and -(-weight.dims[-2] // config.block_size) % 2:
        # ORT's GPTQ packs asymmetric 4-bit zero points across rows: wrong for an odd block count
        return ("asymmetric GPTQ needs an even number of blocks along K (ONNX Runtime limitation): stays float; "
                "use weight_only_symmetric or another block_size")
    return None


def _is_matrix(tensor: onnx.TensorProto) -> bool:
    dims = list(tensor.dims)
    return len(dims) >= 2 and all(d == 1 for d in dims[:-2]) and tensor.data_type in (
        onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
