"""QuantConfig: every knob of a quantization run, with its default in plain sight."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .data import DEFAULT_BATCH_SIZE
from .errors import ConfigError
from .hardware import saturates_u8s8
from .metrics import parse_target


#: upper bound of num_bins, batch_size and block_size (a larger value is a typo that would exhaust memory)
_MAX_SIZE = 1 << 16


class Mode(str, Enum):
    """How activations are quantized."""

    STATIC = "static"    #: QDQ with activation ranges calibrated on user data
    DYNAMIC = "dynamic"  #: int8 weights, activation ranges computed at run time by ORT
    FLOAT16 = "float16"  #: weights and activations in float16 (ORT's float16 converter), no data needed
    WEIGHT_ONLY = "weight-only"  #: int4/int8 block-wise MatMul weights (MatMulNBits), float activations


class CalibrationMethod(str, Enum):
    """How a calibration range is chosen from the observed activations."""

    MINMAX = "minmax"          #: the observed minimum and maximum
    ENTROPY = "entropy"        #: the clipping threshold minimising KL divergence (TensorRT style)
    PERCENTILE = "percentile"  #: the ``percentile`` of the absolute values
    MSE = "mse"                #: the clipping threshold minimising the quantization MSE
    AUTO = "auto"              #: per tensor, the best of the above for that tensor's consumers


class QuantType(str, Enum):
    """Integer type of a quantized tensor."""

    UINT8 = "uint8"
    INT8 = "int8"
    INT16 = "int16"    #: activations only (16x8: int16 activations, int8 weights; opset 21)
    UINT16 = "uint16"  #: activations only (16-bit asymmetric activations; opset 21)

    @property
    def bits(self) -> int:
        """Width of the integer type in bits."""
        return 16 if self in (QuantType.INT16, QuantType.UINT16) else 8


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
        activation_type: uint8 (fused on x86) or int8 (S8S8, often left unfused on x86); int16 /
            uint16 give 16x8 (16-bit activations, int8 weights, model upgraded to opset 21): more
            accurate, but ORT's CPU kernels run 16-bit QDQ in float between Q/DQ (accuracy, not speed).
        weight_type: integer type of weights (int8).
        reduce_range: 7-bit weights, needed on x86 CPUs with AVX2 but without VNNI, whose u8 x s8
            kernels saturate with full 8-bit weights. ``None`` (default): decided for the CPU onnxq
            runs on (:func:`onnxq.hardware.saturates_u8s8`); pass True/False (or a ``--target-hw``
            preset) to quantize for another machine.
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
        io_type: ``"uint8"`` / ``"int8"``: the model's float inputs and outputs become integer
            tensors (TFLite's ``inference_input_type``); each one's scale and zero point is stored
            in the model metadata (see :func:`onnxq.io_params`). ``None`` keeps float I/O.
        strict: fail with :class:`~onnxq.errors.StrictModeError` when any compute node would run
            in float (TFLite's ``TFLITE_BUILTINS_INT8``); see :mod:`onnxq.strict`.
        qat_quantize_rest: for a model that already holds Q/DQ (QAT export), also quantize the
            nodes it left in float (needs calibration data); ``False`` passes it through unchanged.
        float16_op_block_list: float16 mode: op types kept in float32, added to the default block
            list (ORT's ops without float16 kernels plus ops that overflow float16, see
            :func:`onnxq.rewrite.float16.default_block_list`).
        float16_keep_io_types: float16 mode: keep the model's float32 inputs and outputs (Casts at
            the boundary); ``False`` makes them float16.
        weight_bits: weight-only mode: 4 (default) or 8 bits per MatMul weight.
        block_size: weight-only mode: weights per scale along K; a power of two >= 16. 128 is ORT's
            default (smaller blocks: more accurate, larger file).
        weight_only_algorithm: weight-only mode: ``"rtn"`` (round to nearest, default, no data),
            ``"gptq"`` (needs calibration data, 4 bits) or ``"hqq"`` (no data; ORT's code needs torch).
        weight_only_symmetric: weight-only mode: symmetric blocks without zero points (rtn, gptq).
        target: accuracy goal that turns on the automatic fallback (see :mod:`onnxq.tune`), e.g.
            ``"cosine>=0.999"``, ``"min_cosine>=0.99"``, ``"sqnr>=30"`` (dB), ``"top1>=0.99"``
            (agreement with the float model's top-1) or ``"accuracy_drop<=0.5"`` (points; needs
            labels). Worst output counts. ``None`` (default): no fallback. Static and dynamic
            modes only (with ``io_type`` and ``qat_quantize_rest`` too, never with ``strict``: strict
            forbids float compute, and keeping nodes float is the fallback's only tool); stored in
            canonical form.
        max_fallback_steps: at most this many fallback steps (nodes or node groups kept float).
        max_tune_seconds: stop the fallback after this many seconds (``None``: no time limit).
        keep_float: node names or globs always kept float (like ``exclude_nodes``, but reported as
            pinned by the user and never counted as a fallback step).
        force_quantize: node names or globs the fallback never keeps float.
        equalization: static mode: cross-layer equalization of Conv/Gemm pairs before calibration
            (float-equivalent; see :mod:`onnxq.passes.equalize`).
        bias_correction: static mode: fold the expected output error of the quantized weights into
            the float biases, measured on the calibration data (:mod:`onnxq.passes.bias_correction`).
            ``None`` (default): on for non-transformer graphs whenever calibration data is given
            (EfficientNet-Lite1: +4.5 points top-1 agreement for two more passes over the data);
            ``True``: always (an error without calibration data); ``False``: off.
        weight_rounding: static mode: ``"nearest"`` (ORT's rounding) or ``"adaptive"`` (AdaRound,
            layer by layer on the calibration data; :mod:`onnxq.passes.adaround`).
        rounding_seconds: time budget of adaptive rounding (``None``: no limit); layers not reached
            keep nearest rounding.
        optimize: static mode: ``"accuracy"`` (default: the plan as it is), ``"balanced"`` (keep
            float the nodes whose int8 kernel is over 10 % slower than float) or ``"latency"``
            (also those where int8 saves under 10 %), profiled on a calibration batch
            (:mod:`onnxq.profile`); the rebuilt model is used only when it is faster.
        executor: run calibration, validation and the fallback's ranking on a Dask cluster:
            ``"local:N"`` (N single-threaded worker processes started for the run and closed after)
            or a scheduler address ``"tcp://HOST:PORT"``; needs ``pip install 'onnxq[dask]'``. The
            same ranges, reports and model as in-process. ``None`` (default): in-process, and
            Dask is never imported. ``quantize(..., client=...)`` takes precedence.
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
    reduce_range: bool | None = None
    op_types: tuple[str, ...] | None = None
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    include_nodes: tuple[str, ...] = ()
    transformer_policy: bool = True
    smooth_alpha: float | None = 0.75
    quantize_conv_dynamic: bool = False
    samples: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    shuffle: bool = False
    io_type: QuantType | None = None
    strict: bool = False
    qat_quantize_rest: bool = False
    float16_op_block_list: tuple[str, ...] = ()
    float16_keep_io_types: bool = True
    weight_bits: int = 4
    block_size: int = 128
    weight_only_algorithm: str = "rtn"
    weight_only_symmetric: bool = False
    target: str | None = None
    max_fallback_steps: int = 20
    max_tune_seconds: float | None = None
    keep_float: tuple[str, ...] = ()
    force_quantize: tuple[str, ...] = ()
    equalization: bool = False
    bias_correction: bool | None = None
    weight_rounding: str = "nearest"
    rounding_seconds: float | None = None
    optimize: str = "accuracy"
    executor: str | None = None

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
        if self.reduce_range is None:
            # 16-bit activations run in float in ORT: 7-bit weights would only cost accuracy there
            object.__setattr__(self, "reduce_range", saturates_u8s8() and self.activation_type.bits == 8)
        for name in ("exclude_nodes", "exclude_op_types", "include_nodes"):
            object.__setattr__(self, name, _as_tuple(name, getattr(self, name)))
        if self.op_types is not None:
            object.__setattr__(self, "op_types", _as_tuple("op_types", self.op_types))
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.num_bins < 128:
            raise ConfigError(f"num_bins must be at least 128, got {self.num_bins}")
        if self.num_bins > _MAX_SIZE:
            raise ConfigError(f"num_bins must be at most {_MAX_SIZE}, got {self.num_bins}")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ConfigError(f"averaging_constant must be in (0, 1], got {self.averaging_constant}")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise ConfigError(f"smooth_alpha must be in [0, 1] or None, got {self.smooth_alpha}")
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"samples must be at least 1, got {self.samples}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.batch_size > _MAX_SIZE:
            raise ConfigError(f"batch_size must be at most {_MAX_SIZE}, got {self.batch_size}")
        if self.weight_type is QuantType.UINT8 and self.mode is Mode.STATIC:
            raise ConfigError("weight_type=uint8 is not supported for static QDQ: use int8 weights")
        self._check_integer_modes()
        self._check_float_modes()
        self._check_fallback()
        self._check_passes()
        if self.executor is not None and (not isinstance(self.executor, str) or not self.executor.strip()):
            raise ConfigError(f"executor must be 'local:N' or a Dask scheduler address, got {self.executor!r}")

    def _check_passes(self) -> None:
        """Accuracy-recovery passes (issue 10): static mode only, valid values."""
        if self.optimize not in ("accuracy", "balanced", "latency"):
            raise ConfigError(f"optimize={self.optimize!r} is not one of: accuracy, balanced, latency")
        if self.weight_rounding not in ("nearest", "adaptive"):
            raise ConfigError(f"weight_rounding={self.weight_rounding!r} is not one of: nearest, adaptive")
        if self.rounding_seconds is not None and not self.rounding_seconds > 0:
            raise ConfigError(f"rounding_seconds must be > 0 or None, got {self.rounding_seconds!r}")
        asked = [name for name, on in (("equalization", self.equalization),
                                       ("bias_correction", self.bias_correction is True),
                                       ("weight_rounding='adaptive'", self.weight_rounding == "adaptive"))
                 if on]
        if asked and self.mode is not Mode.STATIC:
            raise ConfigError(f"{', '.join(asked)} need(s) mode='static' (calibrated QDQ), "
                              f"not mode={self.mode.value!r}")

    def _check_fallback(self) -> None:
        """Accuracy-driven fallback fields (issue 5): a parseable target, sane budgets."""
        for name in ("keep_float", "force_quantize"):
            object.__setattr__(self, name, _as_tuple(name, getattr(self, name)))
        both = sorted(set(self.keep_float) & set(self.force_quantize))
        if both:
            raise ConfigError(f"{', '.join(both)} both in keep_float and force_quantize")
        if isinstance(self.max_fallback_steps, bool) or not isinstance(self.max_fallback_steps, int) \
                or self.max_fallback_steps < 0:
            raise ConfigError(f"max_fallback_steps must be an integer >= 0, got {self.max_fallback_steps!r}")
        if self.max_tune_seconds is not None and not self.max_tune_seconds > 0:
            raise ConfigError(f"max_tune_seconds must be > 0 or None, got {self.max_tune_seconds!r}")
        if self.target is None:
            return
        object.__setattr__(self, "target", str(parse_target(self.target)))
        if self.mode not in (Mode.STATIC, Mode.DYNAMIC):
            raise ConfigError(f"target needs mode='static' or 'dynamic', not mode={self.mode.value!r}")
        if self.strict:
            raise ConfigError("target cannot be combined with strict: strict forbids any float compute node, "
                              "and keeping nodes float is the fallback's only tool")

    def _check_float_modes(self) -> None:
        """float16 and weight-only fields (issue 6): valid values, and only in their own mode."""
        object.__setattr__(self, "float16_op_block_list",
                           _as_tuple("float16_op_block_list", self.float16_op_block_list))
        if self.weight_bits not in (4, 8):
            raise ConfigError(f"weight_bits must be 4 or 8, got {self.weight_bits!r}")
        if (isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 16
                or self.block_size > _MAX_SIZE or self.block_size & (self.block_size - 1)):
            raise ConfigError(f"block_size must be a power of two >= 16, got {self.block_size!r}")
        if self.weight_only_algorithm not in ("rtn", "gptq", "hqq"):
            raise ConfigError(f"weight_only_algorithm={self.weight_only_algorithm!r} is not one of: rtn, gptq, hqq")
        if self.weight_only_algorithm == "gptq" and self.weight_bits != 4:
            raise ConfigError("weight_only_algorithm='gptq' supports weight_bits=4 only")
        if self.weight_only_algorithm == "hqq" and self.weight_only_symmetric:
            raise ConfigError("weight_only_algorithm='hqq' is asymmetric only: drop weight_only_symmetric")
        if self.weight_only_algorithm == "hqq" and self.weight_bits != 4:  # float zero points
            raise ConfigError("weight_only_algorithm='hqq' supports weight_bits=4 only (ONNX Runtime's CPU "
                              "MatMulNBits has no 8-bit kernel with float zero points)")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        own = {Mode.FLOAT16: ("float16_op_block_list", "float16_keep_io_types"),
               Mode.WEIGHT_ONLY: ("weight_bits", "block_size", "weight_only_algorithm", "weight_only_symmetric")}
        for mode, names in own.items():
            changed = [n for n in names if self.mode is not mode and getattr(self, n) != defaults[n]]
            if changed:
                raise ConfigError(f"{', '.join(changed)} need(s) mode={mode.value!r}, not mode={self.mode.value!r}")

    def _check_integer_modes(self) -> None:
        """16-bit activations, integer I/O, strict mode and QAT rest-quantization (issue 6)."""
        if self.weight_type.bits == 16:
            raise ConfigError(f"weight_type={self.weight_type.value} is not supported: 16-bit is for "
                              "activations (activation_type='int16' with int8 weights is 16x8)")
        static_only = {"activation_type": self.activation_type.bits == 16, "io_type": self.io_type is not None,
                       "strict": self.strict, "qat_quantize_rest": self.qat_quantize_rest}
        if self.mode is not Mode.STATIC:
            asked = [name for name, on in static_only.items() if on]
            if asked:
                raise ConfigError(f"{', '.join(asked)} need(s) mode='static' (calibrated QDQ), "
                                  f"not mode={self.mode.value!r}")
        if self.io_type is not None:
            try:
                object.__setattr__(self, "io_type", QuantType(self.io_type))
            except ValueError:
                raise ConfigError(f"io_type={self.io_type!r} is not one of: uint8, int8") from None
            if self.io_type.bits != 8:
                raise ConfigError(f"io_type={self.io_type.value!r} is not one of: uint8, int8")

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
