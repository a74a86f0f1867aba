"""onnxq: quantize ONNX models with ONNX Runtime, and prove how close they stay to float."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import QuantResult, calibrate, quantize
from .calibration.ranges import Ranges, TensorRange
from .config import CalibrationMethod, Mode, QuantConfig, QuantType
from .errors import (AdapterError, CalibrationError, ConfigError, DataError, ModelError, OnnxqError,
                     QuantizationError)
from .feeds import Dataset, load_data
from .plan import QuantPlan
from .report import Report
from .validate import validate

__all__ = [
    # entry points
    "quantize", "calibrate", "validate", "load_data",
    # configuration
    "QuantConfig", "Mode", "CalibrationMethod", "QuantType",
    # results (plain data, JSON round trip)
    "QuantResult", "Report", "Ranges", "TensorRange", "QuantPlan", "Dataset",
    # errors
    "OnnxqError", "ConfigError", "DataError", "ModelError", "AdapterError", "CalibrationError",
    "QuantizationError",
    "__version__",
]
