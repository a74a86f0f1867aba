"""Static QDQ and dynamic int8 through ORT's quantizers, and ORT's pre-processing."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import CalibrationMethod as OrtCalibrationMethod
from onnxruntime.quantization.calibrate import TensorData, TensorsData
from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import QuantizationMode, QuantType, add_infer_metadata
from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..calibration.ranges import Ranges
from ..config import QuantConfig
from .._graph import LARGE_MODEL_BYTES, LARGE_MODEL_MARGIN_BYTES, serialized_size
from ..errors import QuantizationError, first_line
from ..plan import IntegerScheme, QuantPlan
from .compact import compact
from .keep_float import keep_float_at_runtime

logger = logging.getLogger(__name__)

#: ORT's quantization type of each ``IntegerScheme`` / ``TensorSpec`` dtype
_QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "int16": QuantType.QInt16,
                "uint16": QuantType.QUInt16}
#: 16-bit Q/DQ are standard ONNX only from opset 21 (``prepare`` upgrades the model to it).
OPSET_16BIT = 21


def static_op_types() -> frozenset[str]:
    """Op types ORT's QDQ quantizer knows how to quantize (its QDQ and QLinear registries)."""
    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


def dynamic_op_types() -> frozenset[str]:
    """Op types ORT's dynamic (integer ops) quantizer rewrites."""
    return frozenset(IntegerOpsRegistry)


def preprocess(model: onnx.ModelProto, *, symbolic: bool = True) -> onnx.ModelProto:
    """ORT's quantization pre-processing: symbolic + ONNX shape inference and basic optimisation.

    Runs in a private temporary folder, so nothing is left in the current directory.

    Args:
        model: the float model.
        symbolic: run ORT's symbolic shape inference (slow to import: sympy, and torch when it is
            installed); only needed where ONNX shape inference leaves tensors without a shape.

    Raises:
        QuantizationError: when ORT's pre-processing fails (the caller falls back).
    """
    from ..model import load_model, save_model

    with tempfile.TemporaryDirectory(prefix="onnxq-pre-") as tmp, _working_directory(tmp):
        # chdir: when symbolic shape inference fails, ORT dumps the model and its weights
        # (sym_shape_infer_temp.onnx + a uuid-named .data file) into the working directory.
        # A file, not the ModelProto: given a proto, ORT moves its initializers to external data
        # in place and, without symbolic inference, fails on some exported models.
        source, out = Path(tmp) / "float.onnx", Path(tmp) / "preprocessed.onnx"
        save_model(model, source)
        large = serialized_size(model) > LARGE_MODEL_BYTES - LARGE_MODEL_MARGIN_BYTES
        try:
            quant_pre_process(str(source), str(out), skip_symbolic_shape=not symbolic, save_as_external_data=large,
                              all_tensors_to_one_file=True,
                              external_data_location="preprocessed.onnx.data" if large else None)
        except Exception as exc:  # symbolic shape inference raises many kinds of errors
            raise QuantizationError(f"ONNX Runtime pre-processing failed: {first_line(exc)}") from exc
        return load_model(out, check=False)


@contextlib.contextmanager
def _working_directory(path: str) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def tensors_data(ranges: Ranges, aliases: dict[str, str] | None = None) -> TensorsData:
    """Our ``Ranges`` as ORT's ``TensorsData`` (numpy float32 scalars, as ORT requires).

    ``aliases`` maps a tensor without a range of its own to the tensor whose range it borrows.
    """
    selected = dict(ranges.tensors)
    for name, source in (aliases or {}).items():
        if source in selected and name not in selected:
            selected[name] = selected[source]
    data = {name: TensorData(lowest=np.float32(r.low), highest=np.float32(r.high))
            for name, r in selected.items()}
    return TensorsData(OrtCalibrationMethod.MinMax, data)


def quantize_static(model: onnx.ModelProto, plan: QuantPlan, ranges: Ranges,
                    config: QuantConfig) -> onnx.ModelProto:
    """QDQ-quantize ``plan.nodes_to_quantize`` with our calibrated ``ranges``.

    The types, symmetry, per-channel and reduce-range settings come from ``plan.scheme``, the values
    ``plan.tensors`` was derived from (``config`` only for a plan without one, e.g. read from JSON).
    """
    missing = [t for t in plan.tensors_to_calibrate if t not in ranges]
    if missing:
        raise QuantizationError(f"no calibration range for {len(missing)} tensor(s), e.g. {missing[0]!r}")
    scheme = plan.scheme or IntegerScheme.from_config(config)
    if scheme.activation_type in ("int16", "uint16"):  # ORT would otherwise fall back to com.microsoft Q/DQ
        from ..model import ensure_opset

        model = ensure_opset(model, OPSET_16BIT)
    extra_options = {
        # int8 activations are symmetric (S8S8); uint8 and 16-bit ones asymmetric (16x8 keeps an
        # int16 zero point, so a post-Relu tensor uses all 65536 levels)
        "ActivationSymmetric": scheme.activation_symmetric,
        "WeightSymmetric": scheme.weight_symmetric,
        "OpTypesToExcludeOutputQuantization": list(plan.no_output_quantization_op_types),
        "ForceQuantizeNoInputCheck": False,
    }
    if scheme.reduce_range and scheme.per_channel and plan.full_range_weights:
        # 8-bit weights where ORT's kernel does not saturate (depthwise Conv), 7-bit elsewhere
        extra_options["TensorQuantOverrides"] = {name: [{"axis": 0, "reduce_range": False}]
                                                 for name in plan.full_range_weights}
    quantizer = QDQQuantizer(
        _skip_ort_reload(model),
        scheme.per_channel,
        scheme.reduce_range,
        _QUANT_TYPES[scheme.weight_type],
        _QUANT_TYPES[scheme.activation_type],
        tensors_data(ranges, plan.range_aliases),
        list(plan.nodes_to_quantize),
        list(plan.float_nodes),
        list(plan.op_types),
        extra_options,
    )
    quantized = _run(quantizer, "static")
    keep_float_at_runtime(quantized)  # else ORT re-quantizes float Conv/Gemm weights at session creation
    compact(quantized)  # unneeded zero points, debug metadata, unused initializers
    return quantized


def quantize_dynamic(model: onnx.ModelProto, plan: QuantPlan, config: QuantConfig) -> onnx.ModelProto:
    """Dynamic quantization: int8 weights, uint8 activations quantized at run time by ORT.

    Settings from ``plan.scheme`` (``config`` only for a plan without one). Weight symmetry is ORT's
    default by type, which the scheme records (passing it would also change LSTM's int8 weights).
    """
    scheme = plan.scheme or IntegerScheme.from_config(config)
    quantizer = ONNXQuantizer(
        _skip_ort_reload(model),
        scheme.per_channel,
        scheme.reduce_range,
        QuantizationMode.IntegerOps,
        False,
        _QUANT_TYPES[scheme.weight_type],
        _QUANT_TYPES[scheme.activation_type],  # uint8: ORT's dynamic activations always are
        None,
        list(plan.nodes_to_quantize),
        list(plan.float_nodes),
        list(plan.op_types),
        {"MatMulConstBOnly": True},
    )
    quantized = _run(quantizer, "dynamic")
    compact(quantized)
    return quantized


def _skip_ort_reload(model: onnx.ModelProto) -> onnx.ModelProto:
    """Over 2 GB, ORT's quantizers would deep-copy, save and reload the model only to infer shapes
    that ``prepare`` already inferred: mark it as inferred (ORT's own marker) to skip that."""
    if serialized_size(model) > LARGE_MODEL_BYTES:
        add_infer_metadata(model)
    return model


def _run(quantizer: ONNXQuantizer | QDQQuantizer, mode: str) -> onnx.ModelProto:
    try:
        quantizer.quantize_model()
    except Exception as exc:
        raise QuantizationError(f"ONNX Runtime {mode} quantizer failed: {first_line(exc)}") from exc
    quantizer.model.topological_sort()  # ORT sorts only when it saves to a file itself
    return quantizer.model.model
