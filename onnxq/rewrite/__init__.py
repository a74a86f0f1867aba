"""The graph rewrite: the only package that calls ``onnxruntime.quantization``.

onnxq decides what to quantize (``plan``) and with which ranges (``calibration``); the modules
here hand both to ONNX Runtime's quantizers and return the rewritten model in memory.
"""

from .float16 import default_block_list, float32_facade, quantize_float16
from .keep_float import keep_float_at_runtime
from .qdq import dynamic_op_types, preprocess, quantize_dynamic, quantize_static, static_op_types, tensors_data
from .weight_only import quantize_weight_only

__all__ = ["dynamic_op_types", "preprocess", "quantize_dynamic", "quantize_static", "static_op_types",
           "tensors_data", "default_block_list", "float32_facade", "quantize_float16", "quantize_weight_only",
           "keep_float_at_runtime"]
