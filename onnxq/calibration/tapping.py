"""Tapping: expose inner tensors of a model as graph outputs so that ORT returns them.

The function lives in :mod:`onnxq.engine` (``tapped``); this name stays for the calibration modules.
Contract: :func:`tap` returns a copy of the model (the input is not modified) whose graph outputs
also list the requested tensors, keeping their value info (type, shape) when the graph has it.
Lives apart from :mod:`onnxq.calibration.runner` so that every calibration module can use it
without importing the runner (no import cycles); the runner re-exports it.
"""

from __future__ import annotations

from ..engine import tapped as tap

__all__ = ["tap"]
