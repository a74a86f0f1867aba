"""Framework names of ONNX nodes: the layer of the user's model each node came from.

Exporters name nodes after their own internals (``node_Conv_186``, ``getitem_9``); the user knows
``layer2.conv1`` (a torch module path) or ``stem_conv`` (a Keras layer). The name is derived from
the graph alone, metadata first, name patterns second:

1. ``onnxq.framework_name`` in the node's ``metadata_props`` (written by onnxq's adapters, e.g.
   the Keras layer tf2onnx's names refer to);
2. ``pkg.torch.onnx.name_scopes`` (torch's dynamo exporter): the module path, e.g.
   ``layer2.conv1``; an op of a module that is not a ``torch.nn`` leaf gets ``path/op``
   (``layer2/add``), an op of the top module its FX name (``mean``);
3. a TorchScript-exporter name ``/layer2/conv1/Conv``: ``layer2.conv1``;
4. a tf2onnx name ``model/layer/op...``: ``layer`` (the scope as TF wrote it; Keras can append
   ``_1``).

A node without any of these has no framework name (``None``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable

import onnx

from ._graph import all_nodes

__all__ = ["FRAMEWORK_NAME_KEY", "display_name", "framework_name", "framework_names"]

#: ``metadata_props`` key an adapter sets to name a node's framework layer.
FRAMEWORK_NAME_KEY = "onnxq.framework_name"
_TORCH_SCOPES = "pkg.torch.onnx.name_scopes"
_TORCH_CLASSES = "pkg.torch.onnx.class_hierarchy"
_TORCHSCRIPT = re.compile(r"^/(?P<path>[^/].*)/[A-Za-z]\w*$")


def framework_name(node: onnx.NodeProto) -> str | None:
    """The framework layer ``node`` came from, or ``None`` when the graph does not tell."""
    meta = {entry.key: entry.value for entry in node.metadata_props}
    if meta.get(FRAMEWORK_NAME_KEY):
        return meta[FRAMEWORK_NAME_KEY]
    if _TORCH_SCOPES in meta:
        found = _torch_name(meta[_TORCH_SCOPES], meta.get(_TORCH_CLASSES))
        if found:
            return found
    return _from_pattern(node.name)


def framework_names(model: onnx.ModelProto, only: Iterable[str] | None = None) -> dict[str, str]:
    """ONNX node name -> framework name, for the nodes (of ``only``, when given) that have one
    different from their ONNX name; subgraphs included."""
    wanted = None if only is None else set(only)
    names: dict[str, str] = {}
    for node in all_nodes(model.graph):
        if not node.name or (wanted is not None and node.name not in wanted):
            continue
        found = framework_name(node)
        if found and found != node.name:
            names[node.name] = found
    return names


def display_name(name: str | None, names: dict[str, str]) -> str:
    """``name (framework name)`` when the framework name is known, else ``name``."""
    if name is None:
        return "-"
    other = names.get(name)
    return f"{name} ({other})" if other else name


def _torch_name(scopes_text: str, classes_text: str | None) -> str | None:
    scopes = _literal_list(scopes_text)
    if not scopes:
        return None
    op, path = scopes[-1], (scopes[-2] if len(scopes) >= 2 else "")
    if not path:
        return op or None
    classes = _literal_list(classes_text) if classes_text else []
    module_class = classes[-2] if len(classes) >= 2 else ""
    return path if module_class.startswith("torch.nn.") else f"{path}/{op}"


def _literal_list(text: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def _from_pattern(name: str) -> str | None:
    match = _TORCHSCRIPT.match(name)
    if match:
        return match.group("path").replace("/", ".")
    parts = name.split("/")
    if len(parts) >= 3 and all(parts):
        return parts[1]
    return None
