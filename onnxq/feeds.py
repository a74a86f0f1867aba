"""Kept for compatibility: the data sources moved to the package :mod:`onnxq.data`.

``onnxq.feeds`` re-exports the public names of :mod:`onnxq.data` (``load_data``, ``check_data``,
``Dataset``, ``InputSpec``, ``input_specs``, ``DEFAULT_BATCH_SIZE``) so code that imports them
from here keeps working; new code imports :mod:`onnxq.data`. Sources, folder rules and casting
rules are documented there.
"""

from __future__ import annotations

from .data import DEFAULT_BATCH_SIZE, Dataset, InputSpec, check_data, input_specs, load_data

__all__ = ["DEFAULT_BATCH_SIZE", "Dataset", "InputSpec", "check_data", "input_specs", "load_data"]
