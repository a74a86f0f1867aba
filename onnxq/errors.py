"""The error tree: every failure a user can cause is an ``OnnxqError`` with a one-line message."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name when the message is empty),
    for wrapping a third-party error into a one-line :class:`OnnxqError`."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(exc: BaseException, *, limit: int | None = None) -> str:
    """Every non-blank line of an exception's message, stripped and joined on one line (its type
    name when the message is empty), so that the detail after the first line is kept; cut to
    ``limit`` characters, ending in ``...``, when given."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines) if lines else type(exc).__name__
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


class OnnxqError(Exception):
    """Base class of every error onnxq raises on purpose (bad input, impossible request)."""


class ConfigError(OnnxqError, ValueError):
    """An impossible or contradictory configuration."""


class DataError(OnnxqError, ValueError):
    """Calibration or evaluation data that does not fit the model."""


class ModelError(OnnxqError, ValueError):
    """A model that cannot be loaded, checked, run or saved."""


class AdapterError(OnnxqError):
    """No adapter can handle the given object or file, or the adapter failed."""


class CalibrationError(OnnxqError):
    """Calibration could not produce ranges for the tensors the plan needs."""


class QuantizationError(OnnxqError):
    """The graph rewrite failed."""


class StrictModeError(OnnxqError):
    """Strict integer mode: some nodes would run in float.

    The message is a one-line summary; ``nodes`` holds one entry per float node (objects with
    ``name``, ``op_type`` and ``reason``, see :class:`onnxq.strict.FloatNode`).
    """

    def __init__(self, message: str, nodes: list | None = None) -> None:
        super().__init__(message)
        self.nodes = list(nodes or [])
