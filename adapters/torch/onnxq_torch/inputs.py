"""Example inputs: a tensor, a tuple or a dict of named tensors -> one ordered, named call."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from onnxq.errors import AdapterError


@dataclass
class ExampleInputs:
    """The inputs of one call of the model, with the ONNX input name of each.

    Attributes:
        names: ONNX input names, in graph order.
        args: positional tensors (empty when the inputs were given by name).
        kwargs: tensors by ``forward`` parameter name, in signature order.
    """

    names: list[str]
    args: tuple[torch.Tensor, ...] = ()
    kwargs: dict[str, torch.Tensor] = field(default_factory=dict)

    def tensors(self) -> list[torch.Tensor]:
        """The tensors in ``names`` order."""
        return list(self.args) + list(self.kwargs.values())

    def feeds(self) -> dict[str, np.ndarray]:
        """The inputs as ONNX Runtime feeds."""
        return {name: to_numpy(t) for name, t in zip(self.names, self.tensors())}

    def call(self, module: Any) -> Any:
        """Run ``module`` on these inputs without autograd."""
        with torch.no_grad():
            return module(*self.args, **self.kwargs)

    def batch_size(self) -> int | None:
        sizes = {t.shape[0] for t in self.tensors() if t.dim() > 0}
        return sizes.pop() if len(sizes) == 1 else None

    def tiled(self, size: int) -> ExampleInputs:
        """The same inputs with the batch axis repeated up to ``size`` (for tracing a dynamic batch)."""
        def tile(t: torch.Tensor) -> torch.Tensor:
            return t.repeat(size, *([1] * (t.dim() - 1))) if t.dim() > 0 else t
        return ExampleInputs(self.names, tuple(tile(t) for t in self.args),
                             {k: tile(t) for k, t in self.kwargs.items()})


def to_numpy(value: Any) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a numpy array."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise AdapterError(f"{what} is a {type(value).__name__}; example inputs must be tensors "
                       "(a tensor, a tuple of tensors or a dict of named tensors)")


def signature_names(module: Any) -> tuple[list[str], bool]:
    """``forward``'s parameter names and whether it takes ``*args``."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:  # TorchScript: the schema's first argument is self
        return [a.name for a in schema.arguments[1:]], False
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return [], True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_POSITIONAL for p in params)


def normalize(example: Any, module: Any, input_names: list[str] | None = None) -> ExampleInputs:
    """Order and name example inputs after ``forward``'s signature (or ``input_names``).

    Raises:
        AdapterError: not tensors, more inputs than ``forward`` takes, unknown names.
    """
    params, var_positional = signature_names(module)
    if isinstance(example, Mapping):
        unknown = [k for k in example if k not in params]
        if unknown and not var_positional and params:
            raise AdapterError(f"example inputs {', '.join(map(repr, unknown))} are not parameters of "
                               f"forward({', '.join(params)})")
        order = [p for p in params if p in example] + [k for k in example if k not in params]
        kwargs = {k: _as_tensor(example[k], f"example input {k!r}") for k in order}
        result = ExampleInputs(names=list(kwargs), kwargs=kwargs)
    else:
        items = tuple(example) if isinstance(example, (tuple, list)) else (example,)
        if not items:
            raise AdapterError("example inputs are empty: pass a tensor, a tuple or a dict of tensors")
        args = tuple(_as_tensor(v, f"example input {i}") for i, v in enumerate(items))
        if len(args) > len(params) and not var_positional:
            raise AdapterError(f"{len(args)} example inputs given but forward({', '.join(params)}) "
                               f"takes {len(params)}")
        names = [params[i] if i < len(params) else f"input_{i}" for i in range(len(args))]
        result = ExampleInputs(names=names, args=args)
    if input_names is not None:
        input_names = list(input_names)
        if len(input_names) != len(result.names):
            raise AdapterError(f"input_names has {len(input_names)} names for {len(result.names)} "
                               f"example inputs ({', '.join(result.names)})")
        result.names = input_names
    return result
