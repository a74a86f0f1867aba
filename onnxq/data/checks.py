"""Checks of raw data against the model inputs, before any batch is built.

``_layout`` checks one block of arrays by its metadata only (names, dtypes under the casting
rules of :mod:`onnxq.data`, ranks, fixed and shared symbolic dimensions, sample counts, labels)
and says how it maps onto the inputs; ``_check_values`` refuses NaN / Inf in float inputs and
integers that do not fit a narrower input type. Every refusal is a ``DataError`` naming the
input, where the data came from, what was expected and what was found.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from .specs import InputSpec
from .text import _dtype_name, _names_text, _one_line, _shape_text


Meta = dict[str, tuple[np.dtype, tuple[int, ...]]]


def _cast_refusal(src: np.dtype, dst: np.dtype) -> str | None:
    """Why ``src`` data may not feed a ``dst`` input, or None when it may (see :mod:`onnxq.data`)."""
    if src == dst:
        return None
    if src.kind == "f" and dst.kind == "f":
        if np.can_cast(src, dst, "safe") or (src == np.float64 and dst == np.float32):
            return None
        return f"{src.name} -> {dst.name} would lose precision"
    if src.kind in "biu" and dst.kind in "iu":
        return None
    if src.kind == "f" and dst.kind in "biu":
        return "float data is not cast to integers"
    if src.kind in "biu" and dst.kind == "f":
        return "integer data is not cast to float; convert and scale it yourself"
    return f"no lossless cast from {src.name} to {dst.name}"


def _needs_range_check(src: np.dtype, dst: np.dtype) -> bool:
    return src.kind in "biu" and dst.kind in "iu" and not np.can_cast(src, dst, "safe")


def _mismatch(spec: InputSpec, dtype: np.dtype, shape: tuple[int, ...], where: str,
              why: str) -> DataError:
    return DataError(f"input {spec.name!r}{where}: expected {spec.describe()}, "
                     f"got {_dtype_name(dtype)} with shape {_shape_text(shape)} ({why})")


def _check_input_meta(spec: InputSpec, dtype: np.dtype, shape: tuple[int, ...], where: str,
                      allow_sample: bool) -> bool:
    """Check one input's dtype and shape; return True when it is a single sample (no batch axis)."""
    refusal = _cast_refusal(dtype, spec.dtype)
    if refusal:
        raise _mismatch(spec, dtype, shape, where, refusal)
    if spec.shape is None:
        if not shape:
            raise _mismatch(spec, dtype, shape, where, "no sample axis")
        return False
    rank = len(spec.shape)
    if len(shape) == rank:
        is_sample, trailing = False, shape[1:]
    elif allow_sample and len(shape) == rank - 1:
        is_sample, trailing = True, shape
    else:
        expected = f"rank {rank}" + (f" (or {rank - 1} for one sample)" if allow_sample else "")
        raise _mismatch(spec, dtype, shape, where, f"expected {expected}, got rank {len(shape)}")
    for axis, (want, got) in enumerate(zip(spec.shape[1:], trailing), start=1):
        if isinstance(want, int) and want != got:
            raise _mismatch(spec, dtype, shape, where,
                            f"dimension {axis} must be {want}, got {got}")
    return is_sample


@dataclass(frozen=True)
class _Layout:
    """How one block of raw arrays maps onto the model inputs."""

    count: int                           # samples in the block
    samples: frozenset[str]              # inputs (and labels key) given as one sample, no batch axis
    trailing: dict[str, tuple[int, ...]]  # per input: shape after the batch axis
    labels: bool                         # the block holds labels


def _layout(meta: Meta, specs: list[InputSpec], labels_key: str | None, where: str,
            allow_sample: bool) -> _Layout:
    """Check the names, dtypes, shapes and sample counts of one block against the model."""
    names = [s.name for s in specs]
    unknown = [k for k in meta if k not in names and k != labels_key]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise DataError(f"unknown input{plural} {_names_text(unknown)}{where}; "
                        f"model inputs: {_names_text(names)}")
    missing = [n for n in names if n not in meta]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise DataError(f"missing input{plural} {_names_text(missing)}{where}; "
                        f"model inputs: {_names_text(names)}")
    samples: set[str] = set()
    counts: dict[str, int] = {}
    trailing: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        dtype, shape = meta[spec.name]
        if _check_input_meta(spec, dtype, shape, where, allow_sample):
            samples.add(spec.name)
            counts[spec.name], trailing[spec.name] = 1, shape
        else:
            counts[spec.name], trailing[spec.name] = shape[0], shape[1:]
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{n!r} has {c}" for n, c in counts.items())
        raise DataError(f"inputs have different sample counts{where}: {detail}")
    _check_symbols(specs, trailing, where)
    count = next(iter(counts.values()))
    has_labels = labels_key is not None and labels_key in meta
    if has_labels:
        label_dtype, label_shape = meta[labels_key]
        if label_dtype.hasobject or label_dtype.kind not in "biuf":
            raise DataError(f"labels {labels_key!r}{where}: expected numbers (class indices or one-hot rows), "
                            f"got {_dtype_name(label_dtype)}" + (" (pickled objects are never loaded)"
                                                                 if label_dtype.hasobject else ""))
        if len(samples) == len(specs):
            samples.add(labels_key)
        elif not label_shape or label_shape[0] != count:
            raise DataError(f"labels {labels_key!r}{where}: expected one label per sample "
                            f"({count}), got shape {_shape_text(label_shape)}")
    return _Layout(count=count, samples=frozenset(samples), trailing=trailing, labels=has_labels)


def _check_symbols(specs: list[InputSpec], trailing: dict[str, tuple[int, ...]],
                   where: str) -> None:
    """Inputs that share a symbolic dimension (e.g. 'seq') must agree on its size."""
    seen: dict[str, tuple[str, int]] = {}
    for spec in specs:
        if spec.shape is None:
            continue
        for dim, size in zip(spec.shape[1:], trailing[spec.name]):
            if not isinstance(dim, str):
                continue
            if dim in seen and seen[dim][1] != size:
                other, other_size = seen[dim]
                raise DataError(f"input {spec.name!r}{where}: dimension {dim!r} is {size}, "
                                f"but {other_size} in input {other!r}")
            seen.setdefault(dim, (spec.name, size))


def _check_values(spec: InputSpec, rows: np.ndarray, where: str, first: int,
                  ids: np.ndarray | None = None) -> None:
    """Refuse NaN / Inf in float inputs and integers that do not fit a narrower type.

    ``rows`` holds samples along axis 0; sample ``i`` is reported as ``ids[i]`` (or ``first + i``).
    """
    if rows.size == 0:
        return
    dst = spec.dtype
    flat = rows.reshape(len(rows), -1)
    if dst.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            cast = flat.astype(dst, copy=False)
        bad_rows = ~np.isfinite(cast).all(axis=1)
        if not bad_rows.any():
            return
        row = int(np.argmax(bad_rows))
        values = cast[row]
        if np.isnan(values).any():
            what = "NaN"
        elif flat.dtype != dst and np.isfinite(flat[row]).all():
            what = f"a value outside the {dst.name} range"
        else:
            what = "Inf"
    elif _needs_range_check(flat.dtype, dst):
        info = np.iinfo(dst)
        bad_rows = ((flat < info.min) | (flat > info.max)).any(axis=1)
        if not bad_rows.any():
            return
        row = int(np.argmax(bad_rows))
        what = f"a value outside the {dst.name} range [{info.min}, {info.max}]"
    else:
        return
    sample = int(ids[row]) if ids is not None else first + row
    raise DataError(f"input {spec.name!r}{where}: sample {sample} contains {what}")


def _as_array(key: str, value: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise DataError(f"input {key!r}{where}: cannot be made into an array "
                        f"({_one_line(exc)})") from exc
    return array


def _meta_of(arrays: Mapping[str, np.ndarray]) -> Meta:
    return {k: (a.dtype, tuple(a.shape)) for k, a in arrays.items()}
