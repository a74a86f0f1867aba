"""Real-model cases shared by the benchmarks and the slow end-to-end tests.

Each case module exports a float ONNX model into a cache folder outside the repository
and provides real data for calibration and evaluation. Framework packages (torch,
sentence-transformers, ...) are imported lazily inside the functions that need them.
"""
