"""Shared facts about ONNX protos in memory: the protobuf size limit, opsets, tensors, sizes.

Contract: pure functions on ``onnx.ModelProto`` / ``GraphProto`` objects that never read or write
files (that is :mod:`onnxq.model`'s job) and import nothing of onnxq but :mod:`onnxq.errors`, so
both :mod:`onnxq.model` and :mod:`onnxq.summary` build on them without importing each other.
:mod:`onnxq.model` re-exports the public ones (``LARGE_MODEL_BYTES``, ``opset_version``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import onnx
from onnx.external_data_helper import uses_external_data

from .errors import ModelError

__all__ = ["LARGE_MODEL_BYTES", "LARGE_MODEL_MARGIN_BYTES", "all_tensors", "debug_info_size", "elem_types",
           "graph_tensors", "initializer_tensors", "is_repeated", "opset_version", "proto_size", "serialized_size"]

#: Serialized size (bytes) above which a model cannot be one protobuf message: such models are
#: checked by path and saved with their tensors in an external-data side file.
LARGE_MODEL_BYTES: int = 2**31 - 1

#: Headroom under :data:`LARGE_MODEL_BYTES` where a model is handed to ONNX Runtime's own tools
#: (``quant_pre_process``, the float16 converter): they add bytes of their own (metadata, Cast nodes,
#: inferred shapes) and serialize the model again, so a model this close to the limit is already
#: treated as one that does not fit in a single protobuf message.
LARGE_MODEL_MARGIN_BYTES: int = 1024

_DEFAULT_DOMAINS = ("", "ai.onnx")


def opset_version(model: onnx.ModelProto) -> int:
    """Return the model's opset for the default ONNX domain (``""`` or ``"ai.onnx"``).

    Raises:
        ModelError: the model imports no default-domain opset.
    """
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return int(entry.version)
    raise ModelError("model imports no opset for the default ONNX domain")


def graph_tensors(graph: onnx.GraphProto, *, attributes: bool) -> Iterator[onnx.TensorProto]:
    """Initializers (and optionally attribute tensors) of a graph and all its subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attributes:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("sparse_tensor"):
                    yield attribute.sparse_tensor.values
                    yield attribute.sparse_tensor.indices
            if attribute.HasField("g"):
                yield from graph_tensors(attribute.g, attributes=attributes)
            for sub in attribute.graphs:
                yield from graph_tensors(sub, attributes=attributes)


def initializer_tensors(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    """Initializers of the main graph and its subgraphs."""
    return graph_tensors(model.graph, attributes=False)


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of a model: initializers, attribute tensors, subgraphs and functions."""
    yield from graph_tensors(model.graph, attributes=True)
    for function in model.functions:
        for node in function.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def proto_size(model: onnx.ModelProto) -> int:
    """Bytes of a model in memory serialized, plus the lengths its external-data entries declare."""
    external = 0
    for tensor in all_tensors(model):
        if uses_external_data(tensor):
            info = {entry.key: entry.value for entry in tensor.external_data}
            external += int(info.get("length") or 0)
    return serialized_size(model) + external


def debug_info_size(model: onnx.ModelProto) -> int:
    """Serialized bytes of the exporters' debug information: every node's ``metadata_props`` and
    ``doc_string`` (torch's module paths and stack traces), subgraphs and functions included.

    Exporters write it, ONNX Runtime's optimiser and the quantizer keep some of it, so sizes that
    are compared (float vs quantized) leave it out of both.
    """
    total = 0
    containers: list[Any] = [model.graph, *model.functions]
    for container in containers:
        saved = sum(_node_debug_size(node) for node in container.node)
        if saved:  # the container's length prefix shrinks with it
            before = serialized_size(container)
            total += saved + _varint_size(before) - _varint_size(before - saved)
    return total


def _node_debug_size(node: onnx.NodeProto) -> int:
    if not _has_debug_info(node):
        return 0
    stripped = onnx.NodeProto()
    stripped.CopyFrom(node)
    _strip_debug_info(stripped)
    before, after = serialized_size(node), serialized_size(stripped)
    return before + _varint_size(before) - after - _varint_size(after)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def _has_debug_info(node: onnx.NodeProto) -> bool:
    return bool(node.doc_string or len(node.metadata_props)) or any(
        _has_debug_info(inner) for graph in _subgraphs(node) for inner in graph.node)


def _strip_debug_info(node: onnx.NodeProto) -> None:
    node.ClearField("doc_string")
    node.ClearField("metadata_props")
    for graph in _subgraphs(node):
        for inner in graph.node:
            _strip_debug_info(inner)


def _varint_size(value: int) -> int:
    return max(1, (int(value).bit_length() + 6) // 7)


def serialized_size(message: object) -> int:
    """``message.ByteSize()``, also above protobuf's 2 GiB limit, where ``ByteSize`` raises.

    Beyond the limit the size is summed field by field (exact for the bytes that matter: tensor
    data; a few bytes of framing per field are estimated), so ``> LARGE_MODEL_BYTES`` tests hold.
    """
    try:
        return int(message.ByteSize())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - EncodeError: the message is over 2 GiB
        return _large_size(message)


def _large_size(message: object) -> int:
    total = 0
    for field, value in message.ListFields():  # type: ignore[attr-defined]
        items = value if is_repeated(field) else [value]
        for item in items:
            if field.type == field.TYPE_MESSAGE:
                total += serialized_size(item) + 6
            elif isinstance(item, (bytes, str)):
                total += len(item) + 6
            else:
                total += 9
    return total


def is_repeated(field: object) -> bool:
    """Whether a protobuf field descriptor is a repeated field (any protobuf version)."""
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; ``label`` before
    if repeated is None:
        return field.label == field.LABEL_REPEATED  # type: ignore[attr-defined]
    return bool(repeated)


def elem_types(model: onnx.ModelProto, *, infer: bool = False) -> dict[str, int]:
    """Element type (``TensorProto`` data type) of every main-graph tensor whose type is known: the
    declared value_info, inputs and outputs (``UNDEFINED`` left out: unknown), and the initializers.

    Args:
        infer: run ONNX type inference first; a model onnx cannot infer (contrib ops, > 2 GiB)
            keeps what it declares.
    """
    inferred = model
    if infer:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
        except Exception:  # noqa: BLE001 - contrib ops or > 2 GiB: only what the model declares
            inferred = model
    graph = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(graph.value_info) + list(graph.input) + list(graph.output)
             if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... : the first name not in ``taken`` (which it joins)."""
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and, depth first, of the subgraphs in its attributes (If, Loop, Scan)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from all_nodes(sub)
