"""Text of the data checks' messages: dtypes, shapes, dimensions, names, one-line errors.

Small pure helpers shared by the specs, checks and readers of :mod:`onnxq.data`, so every
message names a dtype, a shape or a file the same way; ``_natural_key`` sorts file names with
digit runs compared as numbers (``s2`` before ``s10``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError


def _dtype_name(dtype: np.dtype) -> str:
    return np.dtype(dtype).name


def _dim_text(dim: int | str | None, *, batch: bool) -> str:
    if isinstance(dim, int):
        return str(dim)
    if batch:
        return "N"
    return dim if isinstance(dim, str) else "?"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _names_text(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_error(path: Path, exc: BaseException) -> DataError:
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = _one_line(exc)
    return DataError(f"cannot read '{path}': {reason}")
