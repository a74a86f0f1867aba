"""QuantConfig: every knob of a quantization run, with its default in plain sight."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import ConfigError


class Mode(str, Enum):
    """How activations are quantized."""

    STATIC = "static"    #: QDQ with activation ranges calibrated on user data
    DYNAMIC = "dynamic"  #: int8 weights, activation ranges computed at run time by ORT


class CalibrationMethod(str, Enum):
    """How a calibration range is chosen from the observed activations."""

    MINMAX = "minmax"          #: the observed minimum and maximum
    ENTROPY = "entropy"        #: the clipping threshold minimising KL divergence (TensorRT style)
    PERCENTILE = "percentile"  #: the ``percentile`` of the absolute values
    MSE = "mse"                #: the clipping threshold minimising the quantization MSE


class QuantType(str, Enum):
    """Integer type of a quantized tensor."""

    UINT8 = "uint8"
    INT8 = "int8"


@dataclass(frozen=True)
class QuantConfig:
    """Configuration of one quantization run.

    The defaults are the x86 CPU choice that ONNX Runtime fuses into integer kernels: static QDQ,
    per-channel symmetric int8 weights, asymmetric uint8 activations (U8S8), MinMax calibration.

    Attributes:
        mode: static (calibrated QDQ) or dynamic quantization.
        method: calibration range estimator (static mode).
        percentile: percentile of |x| kept by ``CalibrationMethod.PERCENTILE``.
        num_bins: histogram bins of the entropy / percentile / MSE observers.
        moving_average: MinMax observer uses an exponential moving average of per-batch min/max.
        averaging_constant: weight of the newest batch in the moving average.
        per_channel: per-output-channel weight scales (needs opset >= 13; older models are upgraded).
        activation_type: uint8 (fused on x86) or int8 (S8S8, often left unfused on x86).
        weight_type: integer type of weights (int8).
        reduce_range: 7-bit weights, only useful on AVX2 CPUs without VNNI.
        op_types: op types to quantize; ``None`` means every op type the plan supports.
        exclude_nodes: node names or glob patterns (``*``, ``?``, ``[..]``) kept in float.
        exclude_op_types: op types kept in float.
        include_nodes: when not empty, only nodes matching these names or globs are quantized.
        transformer_policy: keep the tensors that int8 destroys in transformer graphs
            (LayerNorm, Softmax, GELU, residual Adds, attention masks) in float; ``False`` hands
            every supported op to the quantizer as ORT's defaults do.
        smooth_alpha: SmoothQuant migration strength for transformer linear layers; ``None``
            disables. Static mode with the transformer policy only (see :mod:`onnxq.smooth`).
        quantize_conv_dynamic: in dynamic mode also quantize Conv (ConvInteger is slower than
            float on CPU, so it is off by default).
        samples: use at most this many calibration samples (``None``: all).
        batch_size: samples per calibration batch run through ORT.
        seed: seed of the sample order when ``shuffle`` is on.
        shuffle: shuffle the calibration samples before taking ``samples`` of them.
    """

    mode: Mode = Mode.STATIC
    method: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.999
    num_bins: int = 2048
    moving_average: bool = False
    averaging_constant: float = 0.01
    per_channel: bool = True
    activation_type: QuantType = QuantType.UINT8
    weight_type: QuantType = QuantType.INT8
    reduce_range: bool = False
    op_types: tuple[str, ...] | None = None
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    include_nodes: tuple[str, ...] = ()
    transformer_policy: bool = True
    smooth_alpha: float | None = 0.75
    quantize_conv_dynamic: bool = False
    samples: int | None = None
    batch_size: int = 8
    seed: int = 0
    shuffle: bool = False

    def __post_init__(self) -> None:
        coerce = {"mode": Mode, "method": CalibrationMethod, "activation_type": QuantType,
                  "weight_type": QuantType}
        for name, enum in coerce.items():
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                choices = ", ".join(m.value for m in enum)
                raise ConfigError(f"{name}={value!r} is not one of: {choices}") from None
        for name in ("exclude_nodes", "exclude_op_types", "include_nodes"):
            object.__setattr__(self, name, _as_tuple(name, getattr(self, name)))
        if self.op_types is not None:
            object.__setattr__(self, "op_types", _as_tuple("op_types", self.op_types))
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.num_bins < 128:
            raise ConfigError(f"num_bins must be at least 128, got {self.num_bins}")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ConfigError(f"averaging_constant must be in (0, 1], got {self.averaging_constant}")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise ConfigError(f"smooth_alpha must be in [0, 1] or None, got {self.smooth_alpha}")
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"samples must be at least 1, got {self.samples}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.weight_type is QuantType.UINT8 and self.mode is Mode.STATIC:
            raise ConfigError("weight_type=uint8 is not supported for static QDQ: use int8 weights")

    def replace(self, **changes: Any) -> QuantConfig:
        """A copy with some fields changed (the config itself is never mutated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (enums as their values)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown QuantConfig field(s): {', '.join(unknown)}")
        return cls(**data)


def _as_tuple(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ConfigError(f"{name} must be a list of strings, got {value!r}") from None
    if not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{name} must be a list of strings, got {value!r}")
    return items
