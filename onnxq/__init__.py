"""onnxq: quantize ONNX models with ONNX Runtime, and prove how close they stay to float."""
