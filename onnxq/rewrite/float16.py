"""Float16 conversion through ONNX Runtime's float16 converter (``onnxruntime.transformers.float16``).

Weights and activations become float16; the model's float32 inputs and outputs are kept by default
(a Cast after each input and before each output), and the ops of a block list stay float32 with
Casts around them. The plan (:func:`onnxq.plan_modes.plan_float16`) says, per node, whether it runs
in float16 or stays float32; this module only carries it out.

On x86 CPUs ONNX Runtime has few float16 kernels: it inserts Casts itself and runs most of the
graph in float32, so float16 halves the file and the memory of the weights but is not faster on
CPU (GPUs and ARM CPUs with fp16 arithmetic are where it speeds up).
"""

from __future__ import annotations

import logging

import onnx
from onnx import TensorProto, helper

from ..config import QuantConfig
from .._graph import LARGE_MODEL_BYTES, LARGE_MODEL_MARGIN_BYTES, serialized_size
from ..errors import QuantizationError, first_line
from ..plan import QuantPlan

logger = logging.getLogger(__name__)

#: Ops onnxq keeps float32 on top of ONNX Runtime's own block list: squares and sums of squares
#: overflow float16's largest value (65504) long before float32's (decomposed LayerNorm variance,
#: L2 norms, log-sum-exp).
NUMERICALLY_FRAGILE_OPS = ("Pow", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp")


def default_block_list() -> tuple[str, ...]:
    """Op types kept float32 by default: ORT's converter block list (ops without float16 kernels:
    classical-ML ops, TopK, NonMaxSuppression, Range, CumSum, Min/Max, ...) plus
    :data:`NUMERICALLY_FRAGILE_OPS`."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return tuple(dict.fromkeys([*DEFAULT_OP_BLOCK_LIST, *NUMERICALLY_FRAGILE_OPS]))


def quantize_float16(model: onnx.ModelProto, plan: QuantPlan, config: QuantConfig) -> onnx.ModelProto:
    """Convert ``model`` to float16, keeping float32 the nodes ``plan`` does not convert.

    Args:
        model: the prepared float model (not modified).
        plan: from :func:`onnxq.plan_modes.plan_float16` (its decisions name the float32 nodes).
        config: ``float16_keep_io_types`` decides the inputs'/outputs' type.

    Returns:
        The float16 model, topologically sorted, with float16 initializers.

    Raises:
        QuantizationError: the converter failed or its result does not pass the ONNX checker.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    blocked = [d for d in plan.decisions if not d.quantize]
    work = onnx.ModelProto()
    work.CopyFrom(model)  # the converter edits its input in place
    try:
        converted = convert_float_to_float16(
            work, keep_io_types=config.float16_keep_io_types,
            disable_shape_infer=serialized_size(work) > LARGE_MODEL_BYTES - LARGE_MODEL_MARGIN_BYTES,
            op_block_list=sorted({d.op_type for d in blocked if "op type" in d.reason}),
            node_block_list=[d.name for d in blocked])
    except Exception as exc:
        raise QuantizationError(f"ONNX Runtime float16 converter failed: {first_line(exc)}") from exc
    _topological_sort(converted.graph)  # the converter appends its Casts at the end
    # the in-memory checker refuses > 2 GB; ORT checks it when run
    if serialized_size(converted) > LARGE_MODEL_BYTES - LARGE_MODEL_MARGIN_BYTES:
        return converted
    try:
        onnx.checker.check_model(converted, full_check=False)
    except Exception as exc:
        raise QuantizationError(f"float16 model is not valid ONNX: {first_line(exc)}") from exc
    return converted


def float32_facade(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model behind float32 inputs and outputs (Casts added), for validation.

    A float16-I/O model (``float16_keep_io_types=False``) cannot be fed the float32 evaluation data
    of the float model; this wrapper casts each float32 input to float16 exactly as a caller would,
    and each float16 output back to float32 (exact), so the comparison measures the model itself
    (up to one float16 rounding at the boundary: ORT's CPU optimiser may drop a Cast pair around the
    float32 kernels it runs float16 nodes with). Models with float32 I/O are returned unchanged.
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    half_inputs = [i for i in graph.input if i.name not in initializers
                   and i.type.tensor_type.elem_type == TensorProto.FLOAT16]
    half_outputs = [o for o in graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT16]
    if not half_inputs and not half_outputs:
        return model
    facade = onnx.ModelProto()
    facade.CopyFrom(model)
    g = facade.graph
    renames: dict[str, str] = {}
    casts: list[onnx.NodeProto] = []
    for vi in g.input:
        if vi.name in {i.name for i in half_inputs}:
            inner = f"{vi.name}__onnxq_fp16"
            renames[vi.name] = inner
            casts.append(helper.make_node("Cast", [vi.name], [inner], to=TensorProto.FLOAT16,
                                          name=f"onnxq_facade_in_{vi.name}"))
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    out_casts: list[onnx.NodeProto] = []
    for vi in g.output:
        if vi.name in {o.name for o in half_outputs}:
            inner = f"{vi.name}__onnxq_fp16"
            for node in g.node:
                for i, name in enumerate(node.output):
                    if name == vi.name:
                        node.output[i] = inner
                for i, name in enumerate(node.input):  # an output also consumed inside the graph
                    if name == vi.name:
                        node.input[i] = inner
            out_casts.append(helper.make_node("Cast", [inner], [vi.name], to=TensorProto.FLOAT,
                                              name=f"onnxq_facade_out_{vi.name}"))
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    nodes = casts + list(g.node) + out_casts
    del g.node[:]
    g.node.extend(nodes)
    return facade


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` so that every node follows the producers of its inputs.

    Depth-first from each node in the current order (iterative, so deep graphs do not hit the
    recursion limit); nodes already in order keep it.
    """
    nodes = list(graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    state = [0] * len(nodes)  # 0 new, 1 on the stack, 2 placed (a cycle cannot loop forever)
    ordered: list[onnx.NodeProto] = []
    for root in range(len(nodes)):
        stack = [(root, False)]
        while stack:
            index, expanded = stack.pop()
            if expanded:
                state[index] = 2
                ordered.append(nodes[index])
                continue
            if state[index]:
                continue
            state[index] = 1
            stack.append((index, True))
            for name in reversed(nodes[index].input):
                source = producer.get(name)
                if source is not None and not state[source]:
                    stack.append((source, False))
    del graph.node[:]
    graph.node.extend(ordered)
