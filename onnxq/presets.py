"""Hardware presets: small named factories of :class:`~onnxq.config.QuantConfig` for a target CPU.

Each preset picks the activation/weight types, ``reduce_range`` and per-channel weights that ONNX
Runtime fuses into integer kernels on that target, with a one-line reason. A preset returns a new
config on every call (configs are frozen; nothing is shared), and explicit overrides win::

    config = onnxq.preset("x86-avx2", method="entropy")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import QuantConfig, QuantType
from .errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """One named hardware preset.

    Attributes:
        name: the name given to ``--target-hw`` / :func:`preset`.
        reason: why these settings suit the target, in one line.
        fused_ops: the quantized ops ONNX Runtime fuses into integer kernels on this target.
        config: the configuration it produces (with no overrides).
    """

    name: str
    reason: str
    fused_ops: str
    config: QuantConfig


_X86_FUSED = "QLinearConv, QLinearMatMul, MatMulIntegerToFloat (U8S8 QDQ fused)"


def _x86_vnni(**overrides: Any) -> QuantConfig:
    return QuantConfig(**{"activation_type": QuantType.UINT8, "weight_type": QuantType.INT8,
                          "reduce_range": False, "per_channel": True, **overrides})


def _x86_avx2(**overrides: Any) -> QuantConfig:
    return QuantConfig(**{"activation_type": QuantType.UINT8, "weight_type": QuantType.INT8,
                          "reduce_range": True, "per_channel": True, **overrides})


def _arm64(**overrides: Any) -> QuantConfig:
    return QuantConfig(**{"activation_type": QuantType.INT8, "weight_type": QuantType.INT8,
                          "reduce_range": False, "per_channel": True, **overrides})


def _generic(**overrides: Any) -> QuantConfig:
    return QuantConfig(**overrides)


_REGISTRY: dict[str, tuple[Callable[..., QuantConfig], str, str]] = {
    "x86-vnni": (_x86_vnni, "U8S8 per-channel, full 8-bit weights: AVX512-VNNI / AVX-VNNI CPUs add u8 x s8 "
                 "products without overflow", _X86_FUSED),
    "x86-avx2": (_x86_avx2, "U8S8 with reduce_range (7-bit weights): AVX2 without VNNI saturates the 16-bit "
                 "sums of u8 x s8 pairs (ORT's advice)", _X86_FUSED),
    "arm64": (_arm64, "S8S8 symmetric int8 activations and weights: ARM64 (NEON dot-product) kernels are "
              "fastest on signed x signed", "QLinearConv, QLinearMatMul (S8S8 QDQ fused on ARM64)"),
    "generic": (_generic, "onnxq's defaults (static U8S8 per-channel, MinMax): a safe choice for any CPU",
                _X86_FUSED),
}


def preset(name: str, **overrides: Any) -> QuantConfig:
    """A new QuantConfig for hardware ``name``; ``overrides`` (QuantConfig fields) take precedence.

    Raises:
        ConfigError: unknown preset name or invalid override.
    """
    try:
        factory = _REGISTRY[name][0]
    except KeyError:
        raise ConfigError(f"unknown hardware preset {name!r}; choose one of: {', '.join(preset_names())}") from None
    try:
        return factory(**overrides)
    except TypeError as exc:  # an unknown field name
        raise ConfigError(f"preset {name!r}: {exc}") from None


def preset_names() -> list[str]:
    """The registered preset names, in table order."""
    return list(_REGISTRY)


def list_presets() -> list[Preset]:
    """Every preset with its reason, fused op set and configuration."""
    return [Preset(name, reason, fused, factory()) for name, (factory, reason, fused) in _REGISTRY.items()]
