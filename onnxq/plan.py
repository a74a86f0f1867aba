"""QuantPlan: which nodes get quantized, which stay float, and why.

The plan is policy, decided before any ONNX Runtime quantizer runs. It is plain data: it goes
into the report and round-trips to JSON.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import onnx

from ._graph import elem_types
from .config import Mode, QuantConfig, QuantType
from .names import framework_name

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}

# Dynamic quantization: ORT rewrites these (Gemm is decomposed into MatMul + Add beforehand).
DYNAMIC_OP_TYPES = ("MatMul", "Attention", "LSTM")
# Recurrent and other ops that the user may ask for but ORT's dynamic quantizer leaves alone.
DYNAMIC_UNSUPPORTED = ("GRU", "RNN")

# Transformer policy. Int8 everywhere destroys encoder outputs (see DESIGN.md): what int8 handles
# well is the linear layers, whose weights dominate size and compute. Everything that computes
# statistics (LayerNorm, Softmax), has a heavy-tailed or huge range (residual stream, attention
# scores, the -3.4e38 attention mask) or a sharp non-linearity (GELU) stays float.
TRANSFORMER_MARKERS = ("Softmax", "LayerNormalization", "SkipLayerNormalization", "Attention",
                       "MultiHeadAttention")
TRANSFORMER_OP_TYPES = ("MatMul", "Gemm", "Gather")
# Which input holds the weight of each transformer op type: MatMul/Gemm B, Gather's table
# (the token embeddings, a quarter of MiniLM's size).
_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Gather": 0}

# A calibrated range beyond this magnitude is a sentinel (mask fill, -inf stand-in), not data:
# quantizing it would map every real value of the tensor to one integer.
SENTINEL_MAGNITUDE = 1e30


@dataclass(frozen=True)
class NodeDecision:
    """Why one node is or is not quantized."""

    name: str
    op_type: str
    quantize: bool
    reason: str
    candidate: bool = True  #: the backend could quantize this op type in this mode


@dataclass(frozen=True)
class TensorSpec:
    """How the rewrite stores one tensor of the float model: the frozen per-tensor spec of a plan.

    Attributes:
        name: the tensor, as named in the model the plan refers to.
        role: ``"activation"``; ``"weight"`` (what a Conv/Gemm/MatMul multiplies by, a norm's scale);
            ``"bias"`` (int32, its scale the product of the input's and the weight's); or
            ``"constant"`` (another constant input, quantized like an activation).
        dtype: ``"uint8"``, ``"int8"``, ``"int16"``, ``"uint16"``, ``"int32"``, ``"int4"`` or ``"float16"``.
        symmetric: zero point in the middle of the type (0 for signed types); ``None`` for float16.
        axis: the axis with one scale per channel (or per block row); ``None`` for one scale per tensor.
        bits: the levels used: 7 for ``reduce_range`` weights, else the type's width.
        block_size: values per scale along ``axis`` (weight-only blocks); ``None`` otherwise.
        dynamic: the range is measured at run time (dynamic mode's activations), not calibrated.
    """

    name: str
    role: str
    dtype: str
    symmetric: bool | None
    axis: int | None = None
    bits: int = 8
    block_size: int | None = None
    dynamic: bool = False


@dataclass(frozen=True)
class IntegerScheme:
    """The integer types of a static or dynamic plan: what the rewrite hands ONNX Runtime's quantizer
    and what every :class:`TensorSpec` of the plan is derived from (so the two cannot disagree).

    Attributes:
        activation_type: ``"uint8"``, ``"int8"``, ``"int16"`` or ``"uint16"`` (dynamic: ``"uint8"``).
        activation_symmetric: int8 activations are symmetric (S8S8); the others asymmetric.
        weight_type: ``"int8"`` (``"uint8"`` in dynamic mode only).
        weight_symmetric: static: always; dynamic: ORT's default, signed types only.
        per_channel: one weight scale per output channel.
        reduce_range: 7-bit weights and constants, except ``QuantPlan.full_range_weights``.
    """

    activation_type: str
    activation_symmetric: bool
    weight_type: str
    weight_symmetric: bool
    per_channel: bool
    reduce_range: bool

    @classmethod
    def from_config(cls, config: QuantConfig) -> IntegerScheme:
        """The scheme of ``config`` (static or dynamic mode)."""
        if config.mode is Mode.DYNAMIC:  # ORT's dynamic activations are always uint8 (DynamicQuantizeLinear)
            return cls("uint8", False, config.weight_type.value, config.weight_type is QuantType.INT8,
                       config.per_channel, bool(config.reduce_range))
        return cls(config.activation_type.value, config.activation_type is QuantType.INT8,
                   config.weight_type.value, True, config.per_channel, bool(config.reduce_range))


@dataclass
class QuantPlan:
    """What the rewrite must do; produced by :func:`make_plan` (static, dynamic) or the planners of
    :mod:`onnxq.plan_modes` (float16, weight-only), refined by :func:`refine_plan`.

    Attributes:
        mode: "static", "dynamic", "float16", "weight-only" or "qat".
        op_types: op types handed to the quantizer.
        decisions: one entry per node of the graph.
        tensors_to_calibrate: activation tensors whose ranges static mode needs.
        no_output_quantization_op_types: op types whose outputs stay float (inputs quantized).
        notes: sentences for the user (e.g. why Conv stays float in dynamic mode).
        fold_activations: the quantizer folds Relu/Clip into the producer's output quantization
            (asymmetric activations), so the pre-activation tensor needs no calibration.
        range_aliases: tensor -> tensor whose range it borrows (the folded pre-activations).
        full_range_weights: weights that keep all 8 bits although ``reduce_range`` is on: the
            depthwise Conv kernels of ONNX Runtime do not saturate (only the u8 x s8 pair sums of
            regular Conv/Gemm/MatMul kernels on AVX2 without VNNI do).
        scheme: the integer types the rewrite uses (static and dynamic plans; ``None`` otherwise).
        tensors: one :class:`TensorSpec` per tensor the rewrite converts, in graph order.
    """

    mode: str
    op_types: list[str]
    decisions: list[NodeDecision]
    tensors_to_calibrate: list[str] = field(default_factory=list)
    no_output_quantization_op_types: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fold_activations: bool = False
    range_aliases: dict[str, str] = field(default_factory=dict)
    full_range_weights: list[str] = field(default_factory=list)
    scheme: IntegerScheme | None = None
    tensors: list[TensorSpec] = field(default_factory=list)

    @property
    def nodes_to_quantize(self) -> list[str]:
        """Names of the nodes handed to the quantizer."""
        return [d.name for d in self.decisions if d.quantize]

    @property
    def float_nodes(self) -> list[str]:
        """Names of nodes of a quantizable op type that the plan keeps in float."""
        return [d.name for d in self.decisions if not d.quantize and d.candidate]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantPlan:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["decisions"] = [NodeDecision(**d) for d in data.get("decisions", [])]
        data["tensors"] = [TensorSpec(**t) for t in data.get("tensors") or []]
        if data.get("scheme") is not None:
            data["scheme"] = IntegerScheme(**data["scheme"])
        return cls(**data)


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True when ``name`` equals one of ``patterns`` or matches it as a glob."""
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def node_matches(node: onnx.NodeProto | str, patterns: Iterable[str]) -> bool:
    """True when the node's ONNX name or its framework name (``layer2.conv1``, see
    :mod:`onnxq.names`) matches one of ``patterns``; a bare name is matched as it is."""
    patterns = tuple(patterns)
    if isinstance(node, str) or not patterns:
        return matches(node if isinstance(node, str) else node.name, patterns)
    other = framework_name(node)
    return matches(node.name, patterns) or (other is not None and matches(other, patterns))


def is_transformer(model: onnx.ModelProto) -> bool:
    """A graph with attention-style ops (Softmax, LayerNormalization, Attention)."""
    return any(node.op_type in TRANSFORMER_MARKERS for node in model.graph.node)


def constant_names(model: onnx.ModelProto) -> set[str]:
    """Tensors that do not depend on the model's inputs: initializers and Constant outputs."""
    names = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" or (node.op_type == "DequantizeLinear" and node.input[0] in names):
            names.update(node.output)
    return names


def make_plan(model: onnx.ModelProto, config: QuantConfig, *, supported_op_types: Iterable[str]) -> QuantPlan:
    """Decide, per node, whether it is quantized, from the config and the graph's structure.

    Args:
        model: the prepared float model (named nodes, shapes inferred).
        config: the user's configuration.
        supported_op_types: op types the rewrite backend can quantize in this mode.
    """
    supported = set(supported_op_types)
    notes: list[str] = []
    no_output_quant: list[str] = []
    constants = constant_names(model)
    transformer = config.transformer_policy and is_transformer(model)

    if config.mode is Mode.DYNAMIC:
        op_types = set(DYNAMIC_OP_TYPES) & supported
        if config.quantize_conv_dynamic:
            op_types.add("Conv")
        elif any(n.op_type == "Conv" for n in model.graph.node):
            notes.append("Conv layers stay float in dynamic mode: ONNX Runtime's ConvInteger is slower "
                         "than float Conv on CPU. Use static mode to quantize them.")
    elif transformer:
        op_types = set(TRANSFORMER_OP_TYPES) & supported
        no_output_quant = ["MatMul", "Gemm"]
        notes.append("Transformer graph: only linear layers (MatMul/Gemm with constant weights) and embedding "
                     "tables (Gather) are int8; LayerNorm, Softmax, GELU, residual Adds and attention scores "
                     "stay float.")
    else:
        op_types = set(supported)
    if config.op_types is not None:
        unknown = sorted(set(config.op_types) - supported)
        if unknown:
            notes.append(f"op types not quantizable in {config.mode.value} mode, ignored: {', '.join(unknown)}")
        op_types = set(config.op_types) & supported
    op_types -= set(config.exclude_op_types)

    decisions = [_decide(node, config, op_types, supported, constants, transformer) for node in model.graph.node]
    if config.mode is Mode.DYNAMIC:
        skipped = sorted({n.op_type for n in model.graph.node if n.op_type in DYNAMIC_UNSUPPORTED})
        if skipped:
            notes.append(f"{', '.join(skipped)} stay float: ONNX Runtime has no dynamic int8 kernel for them.")
    full_range = _depthwise_weights(model, decisions) if config.reduce_range and config.mode is Mode.STATIC else []
    if full_range:
        notes.append(f"reduce_range: 7-bit weights where ONNX Runtime's u8 x s8 kernels saturate on this CPU; "
                     f"{len(full_range)} depthwise Conv weight(s) keep 8 bits (their kernel does not saturate).")
    plan = QuantPlan(mode=config.mode.value, op_types=sorted(op_types), decisions=decisions,
                     no_output_quantization_op_types=no_output_quant, notes=notes,
                     fold_activations=config.activation_type is not QuantType.INT8,  # asymmetric
                     full_range_weights=full_range, scheme=IntegerScheme.from_config(config))
    return set_calibration_targets(plan, model)


def _depthwise_weights(model: onnx.ModelProto, decisions: list[NodeDecision]) -> list[str]:
    """Constant weights of the quantized depthwise Convs (one input channel per group)."""
    chosen = {d.name for d in decisions if d.quantize}
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name not in chosen or len(node.input) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        shape = shapes.get(node.input[1])
        if shape and len(shape) >= 3 and group > 1 and shape[1] == 1 and shape[0] == group:
            found.append(node.input[1])
    return found


def user_choice(node: onnx.NodeProto, config: QuantConfig) -> str | None:
    """Why the user's selection keeps ``node`` out of the conversion, or ``None`` when it does not.

    The one selection policy of every mode: ``exclude_op_types``, ``exclude_nodes``, ``keep_float``
    (names or globs, of the ONNX node or of its framework layer) and the ``include_nodes`` list.
    """
    if node.op_type in config.exclude_op_types:
        return "op type excluded by the user"
    if node_matches(node, config.exclude_nodes):
        return "excluded by the user"
    if node_matches(node, config.keep_float):
        return "pinned to float by the user (keep_float)"
    if config.include_nodes and not node_matches(node, config.include_nodes):
        return "not in the user's include list"
    return None


def _decide(node: onnx.NodeProto, config: QuantConfig, op_types: set[str], supported: set[str],
            constants: set[str], transformer: bool) -> NodeDecision:
    def decision(quantize: bool, reason: str) -> NodeDecision:
        return NodeDecision(node.name, node.op_type, quantize, reason, node.op_type in supported)

    if node.op_type not in supported:
        return decision(False, "op type not quantizable in this mode")
    if node.op_type in config.exclude_op_types:
        return decision(False, "op type excluded by the user")
    if node.op_type not in op_types:
        policy = "transformer policy: stays float" if transformer else "op type not selected"
        return decision(False, policy)
    reason = user_choice(node, config)
    if reason is not None:
        return decision(False, reason)
    if transformer and node.op_type in _WEIGHT_INPUT and node.input[_WEIGHT_INPUT[node.op_type]] not in constants:
        reason = ("activation x activation product (attention scores): stays float" if node.op_type != "Gather"
                  else "gathers from an activation, not a weight table: stays float")
        return decision(False, reason)
    if config.mode is Mode.DYNAMIC and node.op_type == "MatMul" and node.input[1] not in constants:
        return decision(False, "MatMul without a constant weight")
    return decision(True, "quantized")


def set_calibration_targets(plan: QuantPlan, model: onnx.ModelProto) -> QuantPlan:
    """Fill ``plan.tensors_to_calibrate`` and ``plan.range_aliases`` (static mode) and ``plan.tensors``
    (static and dynamic mode) from its decisions.

    A Relu/Clip that ORT folds into its producer (asymmetric activations) makes the
    pre-activation tensor's range unused: it borrows the activation's range instead of being
    tapped, which saves the largest tensors of a CNN from calibration.
    """
    if plan.mode == Mode.DYNAMIC.value and plan.scheme is not None:
        plan.tensors = dynamic_specs(plan, model)
    if plan.mode != Mode.STATIC.value:
        return plan
    tensors = activation_tensors(model, plan, constant_names(model))
    aliases = _folded_activation_inputs(model, plan) if plan.fold_activations else {}
    plan.tensors_to_calibrate = [t for t in tensors if t not in aliases]
    plan.range_aliases = aliases
    if plan.scheme is not None:
        plan.tensors = static_specs(plan, model)
    return plan


def _folded_activation_inputs(model: onnx.ModelProto, plan: QuantPlan) -> dict[str, str]:
    """Pre-activation tensor -> activation output, for the Relu/Clip nodes ORT will remove
    (same conditions as ``QDQQuantizer.try_replacing_upstream_output``)."""
    graph = model.graph
    chosen = set(plan.nodes_to_quantize)
    consumers: dict[str, int] = {}
    producer: dict[str, str] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
        for name in node.output:
            producer[name] = node.name
    boundary = {i.name for i in graph.input} | {o.name for o in graph.output}
    aliases = {}
    for node in graph.node:
        if node.op_type not in ("Relu", "Clip") or node.name not in chosen:
            continue
        source = node.input[0]
        if consumers.get(source) == 1 and source not in boundary and producer.get(source) in chosen:
            aliases[source] = node.output[0]
    return aliases


def activation_tensors(model: onnx.ModelProto, plan: QuantPlan, constants: set[str]) -> list[str]:
    """Float activation inputs/outputs of the nodes to quantize (what static QDQ needs ranges for)."""
    types = elem_types(model)
    chosen = set(plan.nodes_to_quantize)
    no_out = set(plan.no_output_quantization_op_types)
    tensors: dict[str, None] = {}
    for node in model.graph.node:
        if node.name not in chosen:
            continue
        names = list(node.input) + ([] if node.op_type in no_out else list(node.output))
        for name in names:
            if name and name not in constants and types.get(name, onnx.TensorProto.FLOAT) in _FLOAT_TYPES:
                tensors[name] = None
    return list(tensors)


def refine_plan(plan: QuantPlan, model: onnx.ModelProto, ranges: Any) -> QuantPlan:
    """Keep float every node touching a tensor whose calibrated range holds a sentinel value.

    ``ranges`` maps tensor names to objects with ``low``/``high``. Returns a new plan.
    """
    huge = {name for name in plan.tensors_to_calibrate
            if name in ranges and max(abs(ranges[name].low), abs(ranges[name].high)) > SENTINEL_MAGNITUDE}
    if not huge:
        return plan
    by_name = {n.name: n for n in model.graph.node}
    decisions = []
    for d in plan.decisions:
        node = by_name.get(d.name)
        touched = node is not None and d.quantize and huge & (set(node.input) | set(node.output))
        decisions.append(NodeDecision(d.name, d.op_type, False, "range holds a sentinel value (|x| > 1e30), "
                                      "e.g. an attention-mask fill: stays float", d.candidate) if touched else d)
    new = replace(plan, decisions=decisions,
                  notes=plan.notes + [f"{len(huge)} tensor(s) hold sentinel values (|x| > 1e30) and stay float."])
    return set_calibration_targets(new, model)


# ------------------------------------------------------------------------------- per-tensor specs

_WIDTH = {"uint8": 8, "int8": 8, "uint16": 16, "int16": 16, "int32": 32, "int4": 4, "float16": 16}
#: ORT's QDQ ops that quantize their output (with their input's parameters) only when an earlier
#: node already quantized their input (``QDQDirect8BitOp`` and its kin); Relu/Clip likewise.
_FOLLOWERS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "AveragePool", "Slice",
                        "TopK", "MaxPool", "Resize", "Relu", "Clip"})
#: ops whose input 1 ORT quantizes as a weight and input 2 as an int32 bias
_WEIGHT_AND_BIAS = frozenset({"Conv", "ConvTranspose", "Gemm", "InstanceNormalization", "LayerNormalization",
                              "BatchNormalization"})
#: per-channel axis of a weight, by op type (ORT's defaults; Gemm: 0 when B is transposed)
_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def static_specs(plan: QuantPlan, model: onnx.ModelProto) -> list[TensorSpec]:
    """What ORT's QDQ quantizer does to each tensor of a static plan: its own walk over the nodes
    (a Reshape/MaxPool/Relu only follows an input that an earlier node quantized; folded
    pre-activations disappear), with ``plan.scheme``'s types."""
    scheme = plan.scheme
    assert scheme is not None
    inits = {t.name: t for t in model.graph.initializer if t.data_type in _FLOAT_TYPES}
    constants, types = constant_names(model), elem_types(model)
    chosen, no_out = set(plan.nodes_to_quantize), set(plan.no_output_quantization_op_types)
    marked: dict[str, TensorSpec] = {}

    def mark(name: str, spec: TensorSpec | None = None) -> None:
        if not name or name in marked:
            return
        if spec is None and name in inits:
            spec = TensorSpec(name, "constant", scheme.activation_type, scheme.activation_symmetric,
                              bits=_bits(scheme.activation_type, scheme.reduce_range))
        elif spec is None and name not in constants and types.get(name, onnx.TensorProto.FLOAT) in _FLOAT_TYPES:
            spec = TensorSpec(name, "activation", scheme.activation_type, scheme.activation_symmetric,
                              bits=_WIDTH[scheme.activation_type])
        if spec is not None:
            marked[name] = spec

    for node in model.graph.node:
        if node.name not in chosen:
            continue
        outputs = [] if node.op_type in no_out else list(node.output)
        if node.op_type in _FOLLOWERS or (node.op_type == "Gather" and node.input[0] not in inits):
            follows = node.input[0] in marked
        elif node.op_type == "Where":
            follows = node.input[1] in marked and node.input[2] in marked
        else:
            follows = True
            for index, name in enumerate(node.input):
                mark(name, _initializer_spec(node, index, inits.get(name), plan, marked))
        for name in outputs if follows else []:
            mark(name)
    return [spec for name, spec in marked.items() if name not in plan.range_aliases]


def _initializer_spec(node: onnx.NodeProto, index: int, tensor: onnx.TensorProto | None, plan: QuantPlan,
                      marked: dict[str, TensorSpec]) -> TensorSpec | None:
    """The weight or bias spec of input ``index`` of ``node``; ``None`` for any other input."""
    scheme = plan.scheme
    assert scheme is not None
    weight = (node.op_type in _WEIGHT_AND_BIAS and index == 1) or node.op_type == "MatMul"
    if tensor is None or not (weight or (node.op_type in _WEIGHT_AND_BIAS and index == 2)):
        return None
    if not weight:  # int32, scale = input scale x weight scale: per channel when the weight is
        weight_spec = marked.get(node.input[1])
        per_channel = weight_spec is not None and weight_spec.axis is not None
        return TensorSpec(tensor.name, "bias", "int32", True, 0 if per_channel else None, bits=32)
    axis = _channel_axis(node, tensor) if scheme.per_channel else None
    # 8 bits for full_range_weights: the rewrite's per-tensor override, given only with per_channel
    full = scheme.per_channel and tensor.name in plan.full_range_weights
    return TensorSpec(tensor.name, "weight", scheme.weight_type, scheme.weight_symmetric or axis is not None,
                      axis, bits=_bits(scheme.weight_type, scheme.reduce_range and not full))


def _channel_axis(node: onnx.NodeProto, tensor: onnx.TensorProto) -> int | None:
    """ORT's per-channel axis of a weight (normalised), or ``None`` where the rank has no such axis."""
    axis = _CHANNEL_AXIS.get(node.op_type, 1)
    if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
        axis = 0
    rank = len(tensor.dims)
    return axis % rank if -rank <= axis < rank else None


def dynamic_specs(plan: QuantPlan, model: onnx.ModelProto) -> list[TensorSpec]:
    """What ORT's dynamic quantizer does to each tensor of a dynamic plan: uint8 activations whose
    range is measured at run time, weights per ``plan.scheme`` (per channel for MatMul/Attention;
    ConvInteger per tensor; LSTM int8 per channel along axis 0)."""
    scheme = plan.scheme
    assert scheme is not None
    inits = {t.name: t for t in model.graph.initializer if t.data_type in _FLOAT_TYPES}
    types, chosen = elem_types(model), set(plan.nodes_to_quantize)
    specs: dict[str, TensorSpec] = {}
    for node in model.graph.node:
        if node.name not in chosen:
            continue
        if node.op_type == "LSTM":
            for name in node.input[1:3]:
                if name in inits:
                    specs.setdefault(name, TensorSpec(name, "weight", "int8", True, 0,
                                                      bits=_bits("int8", scheme.reduce_range)))
            continue
        source = node.input[0]
        if source not in inits and types.get(source, onnx.TensorProto.FLOAT) in _FLOAT_TYPES:
            specs.setdefault(source, TensorSpec(source, "activation", "uint8", False, bits=8, dynamic=True))
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if weight is not None:
            per_channel = scheme.per_channel and node.op_type in ("MatMul", "Attention")
            axis = len(weight.dims) - 1 if per_channel and weight.dims else None
            specs.setdefault(weight.name, TensorSpec(weight.name, "weight", scheme.weight_type, scheme.weight_symmetric,
                                                     axis, bits=_bits(scheme.weight_type, scheme.reduce_range)))
    return list(specs.values())


def _bits(dtype: str, reduced: bool) -> int:
    """Levels used by a tensor of ``dtype``: one bit fewer under ``reduce_range``."""
    return _WIDTH[dtype] - 1 if reduced else _WIDTH[dtype]
