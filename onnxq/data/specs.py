"""The model inputs that data must feed: ``InputSpec`` per graph input, read from the model.

``input_specs`` lists the graph inputs that are not initializers, with their numpy dtype and
their shape (an int per fixed dimension, a name or ``None`` per dynamic one, ``None`` for an
undeclared shape); a non-tensor input or an unknown element type is a ``ModelError``, and a
scalar input (no batch axis to feed along) a ``DataError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import DataError, ModelError
from .text import _dim_text, _dtype_name


@dataclass(frozen=True)
class InputSpec:
    """One graph input that data must feed.

    Attributes:
        name: the graph input name.
        dtype: numpy dtype of the ONNX element type.
        shape: one entry per dimension: an int for a fixed size, a str (symbolic name) or
            ``None`` for a dynamic one. The first dimension is the batch axis. ``None`` for the
            whole shape when the model does not declare one (any rank accepted).
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        """The expected data as text, e.g. ``float32 with shape [N, 1, 8, 8]``."""
        if self.shape is None:
            return f"{_dtype_name(self.dtype)} with any shape"
        dims = [_dim_text(d, batch=(i == 0)) for i, d in enumerate(self.shape)]
        return f"{_dtype_name(self.dtype)} with shape [{', '.join(dims)}]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """List the inputs that data must feed: graph inputs that are not initializers.

    Args:
        model: the ONNX model.

    Returns:
        One ``InputSpec`` per input, in graph order.

    Raises:
        ModelError: an input is not a tensor or has no element type.
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    initializers |= {t.values.name for t in graph.sparse_initializer}
    return [_spec_of(vi) for vi in graph.input if vi.name not in initializers]


def _spec_of(value_info: onnx.ValueInfoProto) -> InputSpec:
    name = value_info.name
    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ModelError(f"input {name!r} is a {kind or 'value of unknown type'}, not a tensor; "
                         "onnxq can only feed tensor inputs")
    tensor_type = value_info.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"input {name!r} has an unsupported element type "
                         f"{tensor_type.elem_type}") from exc
    shape = None
    if tensor_type.HasField("shape"):
        shape = tuple(_dim_of(d) for d in tensor_type.shape.dim)
    return InputSpec(name=name, dtype=dtype, shape=shape)


def _dim_of(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    which = dim.WhichOneof("value")
    if which == "dim_value" and dim.dim_value >= 0:
        return int(dim.dim_value)
    if which == "dim_param" and dim.dim_param:
        return dim.dim_param
    return None


def _specs_of(model_or_specs: onnx.ModelProto | list[InputSpec]) -> list[InputSpec]:
    if isinstance(model_or_specs, onnx.ModelProto):
        specs = input_specs(model_or_specs)
    else:
        specs = list(model_or_specs)
        if not all(isinstance(s, InputSpec) for s in specs):
            raise TypeError("model_or_specs must be an onnx.ModelProto or a list of InputSpec")
    if not specs:
        raise ModelError("the model has no inputs to feed")
    for spec in specs:
        if spec.shape == ():
            raise DataError(f"input {spec.name!r} is a scalar (rank 0); onnxq feeds batches "
                            "along a first axis, which a scalar input does not have")
    return specs
