"""onnxq: quantize ONNX models with ONNX Runtime, and prove how close they stay to float."""

from __future__ import annotations

__version__ = "0.1.0"

from .analyze import analyze
from .api import QuantResult, calibrate, quantize
from .calibration.ranges import Ranges, TensorRange
from .config import CalibrationMethod, Mode, QuantConfig, QuantType
from .data import Dataset, load_data
from .errors import (AdapterError, CalibrationError, ConfigError, DataError, ModelError, OnnxqError,
                     QuantizationError)
from .errors import StrictModeError
from .plan import QuantPlan
from .presets import Preset, list_presets, preset
from .report import FallbackStep, LayerMetrics, Report
from .compare import Comparison, compare
from .evidence import html_report
from .report.html import write_html
from .rewrite.io_types import IoParams, io_params
from .validate import validate

__all__ = [
    # entry points
    "quantize", "calibrate", "validate", "load_data",
    # integer-only I/O: each input's / output's quantization parameters
    "io_params", "IoParams",
    # reports and CI gates (onnxq.testing.assert_quantized_close for pytest)
    "compare", "Comparison", "html_report", "write_html",
    # per-layer error and accuracy-driven fallback (QuantConfig.target)
    "analyze", "LayerMetrics", "FallbackStep",
    # configuration
    "QuantConfig", "Mode", "CalibrationMethod", "QuantType",
    # hardware presets
    "preset", "list_presets", "Preset",
    # results (plain data, JSON round trip)
    "QuantResult", "Report", "Ranges", "TensorRange", "QuantPlan", "Dataset",
    # errors
    "OnnxqError", "ConfigError", "DataError", "ModelError", "AdapterError", "CalibrationError",
    "QuantizationError", "StrictModeError",
    "__version__",
]
