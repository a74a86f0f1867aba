"""Read and replace the integer weights that ONNX Runtime's QDQ quantizer wrote.

Passes that need the exact quantized weights (bias correction, adaptive rounding) read them
from the rewritten graph instead of re-implementing ORT's weight quantization: the graph is the
truth about what ORT will run. Keyed by the name of the node that consumes the weight, which
ORT's quantizer keeps unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

#: input index of the weight and bias of each op type whose weights get quantized
WEIGHT_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1, None), "ConvTranspose": (1, 2)}


@dataclass
class QuantizedWeight:
    """One quantized weight as the graph holds it: ``float = (q - zero_point) * scale`` along ``axis``.

    Attributes:
        node: the consuming node (Conv / Gemm / MatMul), same name as in the float model.
        initializer: name of the integer initializer (``<weight>_quantized``).
        q: the integer values.
        scale, zero_point: per-channel (1-D) or per-tensor (0-D) parameters.
        axis: the channel axis of ``q`` for per-channel parameters, else ``None``.
    """

    node: str
    initializer: str
    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None

    def dequantize(self) -> np.ndarray:
        """The float weight ONNX Runtime computes with."""
        q = self.q.astype(np.float32)
        scale = self.scale.astype(np.float32)
        zero = self.zero_point.astype(np.float32)
        if self.axis is not None and scale.ndim == 1:
            shape = [1] * q.ndim
            shape[self.axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return (q - zero) * scale

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.q.dtype).min) if self.q.dtype.kind in "iu" else 0

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.q.dtype).max) if self.q.dtype.kind in "iu" else 0


def read_quantized_weights(model: onnx.ModelProto) -> dict[str, QuantizedWeight]:
    """Node name -> its quantized weight, for every Conv/Gemm/MatMul whose weight is a DQ of a constant."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    dq_of = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    found: dict[str, QuantizedWeight] = {}
    for node in graph.node:
        if node.op_type not in WEIGHT_INPUTS or len(node.input) <= WEIGHT_INPUTS[node.op_type][0]:
            continue
        dq = dq_of.get(node.input[WEIGHT_INPUTS[node.op_type][0]])
        if dq is None:
            continue
        q = numpy_helper.to_array(inits[dq.input[0]])
        scale = numpy_helper.to_array(inits[dq.input[1]])
        zero = (numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits
                else np.zeros_like(scale, dtype=q.dtype))
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) if scale.ndim == 1 and scale.size > 1 else None
        if axis is not None and axis < 0:
            axis += q.ndim
        found[node.name] = QuantizedWeight(node=node.name, initializer=dq.input[0], q=q, scale=scale,
                                           zero_point=zero, axis=axis)
    return found


def replace_quantized_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose integer weight initializers hold new values (same dtype and shape).

    Args:
        model: a QDQ model written by ORT's quantizer.
        weights: initializer name (``QuantizedWeight.initializer``) -> new integer values.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_name = {i.name: i for i in out.graph.initializer}
    for name, values in weights.items():
        old = by_name[name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type)
        values = np.asarray(values)
        if values.shape != tuple(old.dims):
            raise ValueError(f"new weights for {name} have shape {values.shape}, expected {tuple(old.dims)}")
        old.CopyFrom(numpy_helper.from_array(values.astype(dtype), name))
    return out
