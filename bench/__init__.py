"""Side-by-side benchmarks of onnxq against ``onnxruntime.quantization`` (``python -m bench``).

Not part of the library and not imported by it. See ``bench/__main__.py`` for the modes and
``BENCHMARKS.md`` (generated) for the latest figures.
"""
