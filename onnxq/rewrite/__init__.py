"""The graph rewrite: the only package that calls ``onnxruntime.quantization``.

onnxq decides what to quantize (``plan``) and with which ranges (``calibration``); the modules
here hand both to ONNX Runtime's quantizers and return the rewritten model in memory.
"""

from .qdq import dynamic_op_types, preprocess, quantize_dynamic, quantize_static, static_op_types, tensors_data

__all__ = ["dynamic_op_types", "preprocess", "quantize_dynamic", "quantize_static", "static_op_types",
           "tensors_data"]
