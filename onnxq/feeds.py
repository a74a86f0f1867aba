"""Calibration and evaluation data: every source becomes a ``Dataset`` checked against the model.

``load_data`` turns a data source into a :class:`Dataset` of batches ``{input_name: array}``
(first axis = samples) and checks it against the model's inputs before any work starts, so a
bad file fails in one line instead of halfway through a calibration run.

Sources:
    * a :class:`Dataset` (re-batched, limited or shuffled when asked);
    * a dict ``{input_name: array}``, first axis = samples (numpy arrays or nested lists);
    * a list or tuple of such dicts; each dict is one sample or a batch: an array whose rank
      equals the model input's rank is a batch, one rank less is one sample (a batch axis is added);
    * a generator or other iterable of such dicts, streamed: never held whole in memory, each
      item checked as it arrives, the first one before ``load_data`` returns;
    * a single numpy array when the model has exactly one input;
    * a path to a ``.npz`` file (keys = input names, first axis = samples) or a ``.npy`` file
      (one-input models);
    * a path to a folder (see the folder rules below).

In every dict-like source the key ``labels_key`` (default ``"labels"``) holds labels, one per
sample, unless the model has an input of that name; ``label`` is read as ``labels`` (and the other
way round). A one-input model takes a source holding one array (besides labels) under any name:
``arr_0`` of ``np.savez(path, x)``, ``{"image": x}`` for an input called ``input_layer``.

Folder rules (files starting with ``.`` are ignored; "sorted" means by file name with digit
runs compared as numbers, so ``s2`` comes before ``s10``):
    1. A folder with ``test_data_set_*`` sub-folders is an ONNX test-data folder: each set is
       read in sorted order, each holding ``input_0.pb, input_1.pb, ...`` TensorProto files. A
       tensor's ``name`` maps it to the model input; an empty name maps ``input_<i>.pb`` to the
       i-th model input. A folder holding ``input_*.pb`` files itself is read as one such set.
       ``output_*.pb`` files are ignored (they are expected outputs, not labels).
    2. Otherwise a folder of ``.npy`` files holds one file per input, ``<input_name>.npy``, first
       axis = samples, plus an optional ``<labels_key>.npy``. Files are memory-mapped.
    3. Otherwise a folder of ``.npz`` files holds one or more samples per file (keys = input
       names, optional labels key); the files are read in sorted order, one at a time.
    A folder mixing ``.npy`` and ``.npz`` files is refused as ambiguous.

Casting rules (data is cast to the model's dtype; everything else is refused):
    * float64 -> float32 (numpy's default float), and any lossless float widening
      (float16 -> float32 ...); a value outside the float32 range is an error;
    * integer or bool -> any integer type (int32 -> int64, uint8 -> int64 ...); a narrowing
      cast (int64 -> int32) is accepted when every value fits, checked value by value;
    * float -> integer, integer -> float, float narrowing other than float64 -> float32, and
      anything -> bool are refused: convert (and scale) such data yourself.

Other checks: unknown and missing inputs, rank, fixed dimensions (dynamic ones accept any size;
inputs sharing a symbolic dimension must agree on it), sample counts between the inputs and the
labels of one source, empty data, unreadable or corrupt files, NaN / Inf in float inputs. A
model whose batch dimension is fixed to 1 gets batches of 1; one fixed to ``k > 1`` gets batches
of exactly ``k`` (a smaller remainder is dropped).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format
import onnx
from onnx import numpy_helper

from .errors import ConfigError, DataError, ModelError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_BATCH_SIZE", "Dataset", "InputSpec", "check_data", "input_specs", "load_data"]

DEFAULT_BATCH_SIZE = 8
_SCAN_CHUNK_BYTES = 32 << 20  # value checks read at most this much of one input at a time

Meta = dict[str, tuple[np.dtype, tuple[int, ...]]]


# --------------------------------------------------------------------------- model inputs


@dataclass(frozen=True)
class InputSpec:
    """One graph input that data must feed.

    Attributes:
        name: the graph input name.
        dtype: numpy dtype of the ONNX element type.
        shape: one entry per dimension: an int for a fixed size, a str (symbolic name) or
            ``None`` for a dynamic one. The first dimension is the batch axis. ``None`` for the
            whole shape when the model does not declare one (any rank accepted).
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        """The expected data as text, e.g. ``float32 with shape [N, 1, 8, 8]``."""
        if self.shape is None:
            return f"{_dtype_name(self.dtype)} with any shape"
        dims = [_dim_text(d, batch=(i == 0)) for i, d in enumerate(self.shape)]
        return f"{_dtype_name(self.dtype)} with shape [{', '.join(dims)}]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """List the inputs that data must feed: graph inputs that are not initializers.

    Args:
        model: the ONNX model.

    Returns:
        One ``InputSpec`` per input, in graph order.

    Raises:
        ModelError: an input is not a tensor or has no element type.
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    initializers |= {t.values.name for t in graph.sparse_initializer}
    return [_spec_of(vi) for vi in graph.input if vi.name not in initializers]


def _spec_of(value_info: onnx.ValueInfoProto) -> InputSpec:
    name = value_info.name
    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ModelError(f"input {name!r} is a {kind or 'value of unknown type'}, not a tensor; "
                         "onnxq can only feed tensor inputs")
    tensor_type = value_info.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"input {name!r} has an unsupported element type "
                         f"{tensor_type.elem_type}") from exc
    shape = None
    if tensor_type.HasField("shape"):
        shape = tuple(_dim_of(d) for d in tensor_type.shape.dim)
    return InputSpec(name=name, dtype=dtype, shape=shape)


def _dim_of(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    which = dim.WhichOneof("value")
    if which == "dim_value" and dim.dim_value >= 0:
        return int(dim.dim_value)
    if which == "dim_param" and dim.dim_param:
        return dim.dim_param
    return None


def _specs_of(model_or_specs: onnx.ModelProto | list[InputSpec]) -> list[InputSpec]:
    if isinstance(model_or_specs, onnx.ModelProto):
        specs = input_specs(model_or_specs)
    else:
        specs = list(model_or_specs)
        if not all(isinstance(s, InputSpec) for s in specs):
            raise TypeError("model_or_specs must be an onnx.ModelProto or a list of InputSpec")
    if not specs:
        raise ModelError("the model has no inputs to feed")
    for spec in specs:
        if spec.shape == ():
            raise DataError(f"input {spec.name!r} is a scalar (rank 0); onnxq feeds batches "
                            "along a first axis, which a scalar input does not have")
    return specs


# --------------------------------------------------------------------------- text helpers


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


# --------------------------------------------------------------------------- checks


def _cast_refusal(src: np.dtype, dst: np.dtype) -> str | None:
    """Why ``src`` data may not feed a ``dst`` input, or None when it may (see module doc)."""
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


def _batch_rule(specs: list[InputSpec], requested: int) -> tuple[int, bool]:
    """The batch size to use and whether a short last batch must be dropped."""
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)
             and s.shape[0] > 0}
    if len(fixed) > 1:
        raise DataError(f"the model's inputs fix different batch sizes ({sorted(fixed)}); "
                        "onnxq cannot batch data for it")
    if not fixed:
        return requested, False
    size = fixed.pop()
    if size != requested:
        logger.info("the model fixes the batch dimension to %d: using batch_size=%d "
                    "instead of %d", size, size, requested)
    return size, size > 1


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class _Block:
    """A run of samples of a re-iterable source: its raw metadata and a loader for its arrays."""

    where: str                                # " in item 3", " in '/data/a.npz'", ""
    meta: Meta                                # raw dtype / shape per key, read without loading
    load: Callable[[], Mapping[str, Any]]     # raw arrays (possibly memory-mapped) per key
    allow_sample: bool                        # arrays may lack the batch axis (one sample)


class _Table:
    """Random access to the samples of a list of blocks, laid out against the model inputs."""

    def __init__(self, blocks: list[_Block], specs: list[InputSpec], labels_key: str | None,
                 origin: str) -> None:
        logged: set[tuple[str, str]] = set()
        self.blocks = blocks = [_aliased_block(b, specs, labels_key, logged) for b in blocks]
        self.specs = specs
        self.labels_key = labels_key
        self.origin = origin
        self.layouts = [_layout(b.meta, specs, labels_key, b.where, b.allow_sample)
                        for b in blocks]
        with_labels = [lay.labels for lay in self.layouts]
        if any(with_labels) and not all(with_labels):
            first_without = blocks[with_labels.index(False)].where
            raise DataError(f"labels {labels_key!r}: some parts of {origin} have labels and "
                            f"others do not (none{first_without})")
        self.has_labels = bool(with_labels) and all(with_labels)
        counts = [lay.count for lay in self.layouts]
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.total = int(self.offsets[-1])
        if self.total == 0:
            raise DataError(f"no samples: {origin} holds 0 samples")

    def check_uniform(self, batch_size: int) -> None:
        """Samples stacked into one batch must share their shape per input."""
        if batch_size == 1:
            return
        for spec in self.specs:
            ref: tuple[tuple[int, ...], str] | None = None
            for block, lay in zip(self.blocks, self.layouts):
                if lay.count == 0:
                    continue
                shape = lay.trailing[spec.name]
                if ref is None:
                    ref = (shape, block.where)
                elif shape != ref[0]:
                    raise DataError(
                        f"input {spec.name!r}: samples have different shapes "
                        f"({_shape_text(ref[0])}{ref[1]}, {_shape_text(shape)}{block.where}) "
                        f"and cannot be stacked into batches of {batch_size}; pad them to one "
                        "shape or use batch_size=1")

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        """The arrays of block ``index`` (inputs, then labels), each with a batch axis."""
        raw = self.blocks[index].load()
        keys = [s.name for s in self.specs]
        if self.has_labels:
            keys.append(self.labels_key)
        out = {}
        samples = self.layouts[index].samples
        for key in keys:
            array = raw[key]
            if key in samples or not isinstance(array, (np.ndarray, _RowReader)):
                array = np.asarray(array)
            out[key] = array[np.newaxis] if key in samples else array
        return out

    def block_of(self, indices: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, indices, side="right") - 1


def _take(array: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Rows ``local`` of ``array``; a slice (no copy, mmap-friendly) when they are contiguous."""
    if len(local) and (len(local) == 1 or bool(np.all(np.diff(local) == 1))):
        return array[int(local[0]):int(local[-1]) + 1]
    return array[local]


def _owned(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A writable C-contiguous array of ``dtype`` that shares no memory with the source."""
    out = np.ascontiguousarray(rows, dtype=dtype)
    if out is rows or not out.flags.owndata or not out.flags.writeable:
        out = out.copy()
    return out


_LABEL_KEYS = ("labels", "label")  # either one holds labels when the labels key is one of them


def _aliases(keys: Iterable[str], specs: list[InputSpec], labels_key: str | None) -> dict[str, str]:
    """Data keys to read under another name: ``label`` as the labels key ``labels`` (and the
    other way round), and the one array of a one-input model under that input's name
    (``arr_0`` of an ``.npz``, ``image`` for an input called ``input_layer``)."""
    keys = list(keys)
    names = {s.name for s in specs}
    renames: dict[str, str] = {}
    if labels_key in _LABEL_KEYS and labels_key not in keys:
        other = next((k for k in _LABEL_KEYS if k != labels_key and k in keys and k not in names), None)
        if other is not None:
            renames[other] = labels_key
    if len(specs) == 1 and specs[0].name not in keys:
        rest = [k for k in keys if k not in renames and k != labels_key]
        if len(rest) == 1 and not re.search(r"[/\\]", rest[0]):  # never a path-like archive member
            renames[rest[0]] = specs[0].name
    return renames


def _renamed(mapping: Mapping[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    return {renames.get(k, k): v for k, v in mapping.items()}


def _log_aliases(renames: dict[str, str], logged: set[tuple[str, str]]) -> None:
    for old, new in renames.items():
        if (old, new) not in logged:
            logged.add((old, new))
            logger.debug("data key %r is read as %r", old, new)


def _aliased_block(block: _Block, specs: list[InputSpec], labels_key: str | None,
                   logged: set[tuple[str, str]]) -> _Block:
    """``block`` with its keys renamed by :func:`_aliases` (itself when nothing is renamed)."""
    renames = _aliases(block.meta, specs, labels_key)
    if not renames:
        return block
    _log_aliases(renames, logged)
    load = block.load
    return _Block(where=block.where, meta=_renamed(block.meta, renames),
                  load=lambda: _renamed(load(), renames), allow_sample=block.allow_sample)


def _memory_block(mapping: Mapping[str, Any], where: str, allow_sample: bool) -> _Block:
    arrays = {str(k): _as_array(str(k), v, where) for k, v in mapping.items()}
    return _Block(where=where, meta=_meta_of(arrays), load=lambda: arrays,
                  allow_sample=allow_sample)


def _item_mapping(item: Any, specs: list[InputSpec], what: str) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    if isinstance(item, np.ndarray) and len(specs) == 1:
        return {specs[0].name: item}
    hint = " or an array (one-input model)" if len(specs) == 1 else ""
    raise DataError(f"{what} is a {type(item).__name__}; expected a dict "
                    f"{{input_name: array}}{hint}")


# --------------------------------------------------------------------------- files


def _read_error(path: Path, exc: BaseException) -> DataError:
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = _one_line(exc)
    return DataError(f"cannot read '{path}': {reason}")


def _npy_header(stream: Any) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and shape from a .npy header; any malformed header is a ``ValueError``."""
    dtype, shape, _ = _npy_header_full(stream)
    return dtype, shape


def _npy_header_full(stream: Any) -> tuple[np.dtype, tuple[int, ...], bool]:
    """dtype, shape and Fortran order from a .npy header; any malformed header is a ``ValueError``."""
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
        return np.dtype(dtype), tuple(int(d) for d in shape), bool(fortran)
    except (OSError, EOFError):
        raise
    except Exception as exc:  # noqa: BLE001 - numpy parses the header text with ast/tokenize: SyntaxError, TokenError...
        raise ValueError(f"malformed .npy header ({type(exc).__name__}: {_one_line(exc)})") from exc


def _npz_meta(path: Path) -> Meta:
    """Dtype and shape of every array of a .npz file, read from the headers only."""
    try:
        with zipfile.ZipFile(path) as archive:
            meta: Meta = {}
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    with archive.open(info) as stream:
                        dtype, shape = _npy_header(stream)
                        if not dtype.hasobject:  # pickled labels get their own message from _layout
                            _check_declared_size(f"{path}:{info.filename}", dtype, shape,
                                                 info.file_size - stream.tell())
                        meta[info.filename[:-4]] = (dtype, shape)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
            OverflowError) as exc:
        raise _read_error(path, exc) from exc
    if not meta:
        raise DataError(f"cannot read '{path}': the .npz file holds no arrays")
    return meta


def _load_npz(path: Path, keys: list[str]) -> dict[str, Any]:
    """The arrays of a .npz file: read row by row from disk when stored uncompressed
    (``np.savez``), so a batch is read when it is used; loaded whole when compressed."""
    try:
        lazy = _stored_npz_readers(path, keys)
        missing = [k for k in keys if k not in lazy]
        if not missing:
            return lazy
        with np.load(path, allow_pickle=False) as npz:
            return {**lazy, **{k: npz[k] for k in missing if k in npz.files}}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise _read_error(path, exc) from exc


class _RowReader:
    """Rows of a C-ordered array stored raw in a file, read on demand with ``os.pread``.

    Unlike a memory map, rows read this way do not stay in the process's resident memory,
    so streaming a large calibration file keeps peak RSS independent of its size.
    """

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> None:
        self.path, self.dtype, self.shape, self.offset = path, dtype, shape, offset
        self.ndim = len(shape)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        rows = self._read(0, len(self))
        return rows if dtype is None else rows.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._read(start, max(start, stop))
            index = np.arange(start, stop, step)
        if isinstance(index, (int, np.integer)):
            return self._read(int(index), int(index) + 1)[0]
        rows = np.asarray(index)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            return np.asarray(self)[index]
        return np.concatenate([self._read(int(r), int(r) + 1) for r in rows]) if len(rows) \
            else self._read(0, 0)

    def _read(self, start: int, stop: int) -> np.ndarray:
        count = stop - start
        out = np.empty((count, *self.shape[1:]), dtype=self.dtype)
        if count:
            with open(self.path, "rb") as handle:
                data = os.pread(handle.fileno(), count * self.row_bytes, self.offset + start * self.row_bytes)
            if len(data) != count * self.row_bytes:
                raise DataError(f"cannot read '{self.path}': the file is truncated")
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
        return out


def _stored_npz_readers(path: Path, keys: list[str]) -> dict[str, _RowReader]:
    """Row readers for the uncompressed (ZIP_STORED), C-ordered members of a .npz file."""
    readers: dict[str, _RowReader] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for key in keys:
            try:
                info = archive.getinfo(f"{key}.npy")
            except KeyError:
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                continue
            raw.seek(info.header_offset)
            local = raw.read(30)  # local file header: name and extra-field lengths at bytes 26..29
            if local[:4] != b"PK\x03\x04":
                continue
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            raw.seek(info.header_offset + 30 + name_len + extra_len)
            dtype, shape, fortran = _npy_header_full(raw)
            if dtype.hasobject or fortran or not shape:
                continue
            readers[key] = _RowReader(path, np.dtype(dtype), tuple(int(d) for d in shape), raw.tell())
    return readers


def _npz_block(path: Path, allow_sample: bool) -> _Block:
    meta = _npz_meta(path)
    keys = list(meta)
    return _Block(where=f" in '{path}'", meta=meta, load=lambda: _load_npz(path, keys),
                  allow_sample=allow_sample)


def _open_npy(path: Path) -> np.ndarray:
    """A .npy file, memory-mapped, after its header was checked against the file's size."""
    try:
        with open(path, "rb") as handle:
            dtype, shape = _npy_header(handle)
            _check_declared_size(path, dtype, shape, path.stat().st_size - handle.tell())
        if math.prod(shape) == 0:  # nothing to map
            return np.load(path, allow_pickle=False)
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, OverflowError, MemoryError) as exc:
        raise _read_error(path, exc) from exc


def _check_declared_size(where: object, dtype: np.dtype, shape: tuple[int, ...], available: int) -> None:
    """Refuse a header that declares more data than follows it (a lying header would otherwise
    make numpy allocate or map terabytes) or pickled objects (never loaded)."""
    if dtype.hasobject:
        raise DataError(f"cannot read '{where}': it holds pickled Python objects, which are never loaded")
    needed = math.prod(shape) * dtype.itemsize
    if needed > available:
        raise DataError(f"cannot read '{where}': its header declares shape {_shape_text(shape)} "
                        f"({needed} bytes) but only {max(available, 0)} bytes follow (truncated or corrupt)")


def _npy_files_block(files: dict[str, Path], where: str) -> _Block:
    meta = {}
    for key, path in files.items():
        array = _open_npy(path)
        meta[key] = (array.dtype, tuple(array.shape))
        del array
    return _Block(where=where, meta=meta,
                  load=lambda: {k: _open_npy(p) for k, p in files.items()}, allow_sample=False)


def _read_tensor(path: Path) -> onnx.TensorProto:
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
    except OSError as exc:
        raise _read_error(path, exc) from exc
    except Exception as exc:  # protobuf raises its own DecodeError
        raise DataError(f"cannot read '{path}': not a TensorProto ({_one_line(exc)})") from exc
    return tensor


def _tensor_meta(path: Path, tensor: onnx.TensorProto) -> tuple[np.dtype, tuple[int, ...]]:
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"cannot read '{path}': unsupported tensor data type "
                        f"{tensor.data_type}") from exc
    return dtype, tuple(int(d) for d in tensor.dims)


def _tensor_array(path: Path) -> np.ndarray:
    try:
        return numpy_helper.to_array(_read_tensor(path), base_dir=str(path.parent))
    except DataError:
        raise
    except Exception as exc:  # malformed payloads surface as assorted errors
        raise DataError(f"cannot read '{path}': {_one_line(exc)}") from exc


def _test_set_block(folder: Path, specs: list[InputSpec]) -> _Block:
    """One ONNX ``test_data_set_*`` folder of ``input_<i>.pb`` TensorProto files."""
    files = [p for p in _visible_entries(folder) if re.fullmatch(r"input_\d+\.pb", p.name)]
    for path in files:
        if not path.is_file():
            raise DataError(f"'{path}' is not a regular file")
    if not files:
        raise DataError(f"test data folder '{folder}' holds no input_<i>.pb files")
    meta: Meta = {}
    paths: dict[str, Path] = {}
    for path in sorted(files, key=lambda p: _natural_key(p.name)):
        tensor = _read_tensor(path)
        name = tensor.name
        if not name:
            position = int(re.findall(r"\d+", path.name)[0])
            if position >= len(specs):
                raise DataError(f"'{path}' has no tensor name and the model has only "
                                f"{len(specs)} inputs ({_names_text(s.name for s in specs)})")
            name = specs[position].name
        if name in meta:
            raise DataError(f"'{path}' feeds input {name!r}, already fed by '{paths[name]}'")
        meta[name] = _tensor_meta(path, tensor)
        paths[name] = path
    return _Block(where=f" in '{folder}'", meta=meta,
                  load=lambda: {n: _tensor_array(p) for n, p in paths.items()},
                  allow_sample=True)


def _visible_entries(folder: Path) -> list[Path]:
    try:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise _read_error(folder, exc) from exc
    return sorted(entries, key=lambda p: _natural_key(p.name))


def _folder_blocks(folder: Path, specs: list[InputSpec],
                   labels_key: str | None) -> tuple[list[_Block], str]:
    entries = _visible_entries(folder)
    origin = f"folder '{folder}'"
    sets = [p for p in entries if p.is_dir() and p.name.startswith("test_data_set_")]
    if sets:
        return [_test_set_block(s, specs) for s in sets], origin
    if any(re.fullmatch(r"input_\d+\.pb", p.name) for p in entries):
        return [_test_set_block(folder, specs)], origin
    npy = [p for p in entries if p.is_file() and p.suffix.lower() == ".npy"]
    npz = [p for p in entries if p.is_file() and p.suffix.lower() == ".npz"]
    if npy and npz:
        raise DataError(f"{origin} mixes .npy and .npz files; use <input_name>.npy files "
                        "or .npz files, not both")
    if npy:
        return [_npy_files_block({p.stem: p for p in npy}, f" in {origin}")], origin
    if npz:
        return [_npz_block(p, allow_sample=True) for p in npz], origin
    raise DataError(f"{origin} holds no data: expected <input_name>.npy files, .npz files or "
                    "test_data_set_* folders")


def _path_blocks(path: Path, specs: list[InputSpec],
                 labels_key: str | None) -> tuple[list[_Block], str]:
    if not path.exists():
        raise DataError(f"data path '{path}' does not exist")
    if path.is_dir():
        return _folder_blocks(path, specs, labels_key)
    if not path.is_file():  # a FIFO would block the reader forever; devices and sockets too
        raise DataError(f"data path '{path}' is not a regular file or a folder")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return [_npz_block(path, allow_sample=False)], f"'{path}'"
    if suffix == ".npy":
        if len(specs) != 1:
            raise DataError(f"'{path}' holds one array but the model has {len(specs)} inputs "
                            f"({_names_text(s.name for s in specs)}); use a .npz file or a "
                            "folder of <input_name>.npy files")
        return [_npy_files_block({specs[0].name: path}, f" in '{path}'")], f"'{path}'"
    raise DataError(f"unsupported data file '{path}': expected a .npz or .npy file or a folder")


# --------------------------------------------------------------------------- datasets


class Dataset:
    """Re-iterable batches of ``{input_name: np.ndarray}``, first axis = samples; optional labels.

    Create one with :func:`load_data`. Every batch holds ``batch_size`` samples (the last one
    may hold fewer), cast to the model's dtypes, C-contiguous, ready for ONNX Runtime.

    Attributes:
        specs: the model inputs the data was checked against.
        batch_size: samples per batch.
        num_samples: samples in total, ``None`` when unknown (streamed source).
        num_batches: batches in total, ``None`` when unknown.
        has_labels: the batches carry labels.
        input_names: the model input names, in graph order.
    """

    specs: list[InputSpec]
    batch_size: int
    num_samples: int | None
    num_batches: int | None
    has_labels: bool

    def __init__(self) -> None:
        raise TypeError("create a Dataset with onnxq.feeds.load_data")

    @property
    def input_names(self) -> list[str]:
        """The model input names, in graph order."""
        return [s.name for s in self.specs]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield the batches of inputs (without labels)."""
        for inputs, _ in self.batches():
            yield inputs

    def batches(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Yield ``(inputs, labels)`` per batch; labels is ``None`` without labels."""
        raise NotImplementedError

    def fingerprint(self) -> str | None:
        """A sha256 of the data as the model sees it, or ``None`` for a one-shot generator.

        The hash covers the selected samples in order (after ``limit`` and ``shuffle``), their
        dtypes and shapes and the labels; it does not depend on the batch size.
        """
        if self._fingerprint is None and self._can_fingerprint():
            self._fingerprint = _hash_batches(self.specs, self.batches())
        return self._fingerprint

    def __repr__(self) -> str:
        return (f"{type(self).__name__.lstrip('_')}(inputs={self.input_names}, "
                f"num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"has_labels={self.has_labels})")

    # private
    _fingerprint: str | None = None
    _requested_batch: int = DEFAULT_BATCH_SIZE

    def _can_fingerprint(self) -> bool:
        return True

    def _derive(self, specs: list[InputSpec], batch_size: int | None, limit: int | None,
                shuffle: bool, seed: int) -> Dataset:
        raise NotImplementedError


class _IndexedDataset(Dataset):
    """Samples with random access: in-memory arrays, .npz / .npy files, test-data folders."""

    def __init__(self, table: _Table, order: np.ndarray, requested_batch: int,
                 check_values: bool = True, quiet: bool = False) -> None:
        self.specs = table.specs
        self._table = table
        self._order = order
        self._requested_batch = requested_batch
        self.batch_size, self._drop_last = _batch_rule(table.specs, requested_batch)
        table.check_uniform(self.batch_size)
        self.has_labels = table.has_labels
        self.num_samples = len(order)
        if self._drop_last:
            self.num_batches = self.num_samples // self.batch_size
            if self.num_batches == 0:
                raise DataError(f"the model takes batches of exactly {self.batch_size} samples, "
                                f"but the data holds only {self.num_samples}")
            dropped = self.num_samples - self.num_batches * self.batch_size
            if dropped and not quiet:
                logger.warning("dropping the last %d samples: the model takes batches of "
                               "exactly %d", dropped, self.batch_size)
                self.num_samples -= dropped
        else:
            self.num_batches = math.ceil(self.num_samples / self.batch_size)
        self._fingerprint = None
        if not quiet:
            self._log_casts()
        if check_values:
            self._scan()

    def batches(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        cache: dict[int, dict[str, np.ndarray]] = {}
        for start in range(0, self.num_samples, self.batch_size):
            yield self._gather(self._order[start:start + self.batch_size], cache)

    def _gather(self, indices: np.ndarray, cache: dict[int, dict[str, np.ndarray]]
                ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        table = self._table
        owners = table.block_of(indices)
        cuts = np.flatnonzero(np.diff(owners)) + 1
        parts: dict[str, list[np.ndarray]] = {s.name: [] for s in self.specs}
        label_parts: list[np.ndarray] = []
        for run in np.split(np.arange(len(indices)), cuts):
            block = int(owners[run[0]])
            if block not in cache:
                cache.clear()  # one block in memory at a time
                cache[block] = table.arrays(block)
            arrays = cache[block]
            local = indices[run] - table.offsets[block]
            for spec in self.specs:
                rows = _take(arrays[spec.name], local)
                parts[spec.name].append(_owned(rows, spec.dtype))
            if self.has_labels:
                label_parts.append(np.asarray(_take(arrays[table.labels_key], local)))
        inputs = {n: p[0] if len(p) == 1 else np.concatenate(p) for n, p in parts.items()}
        labels = None
        if self.has_labels:
            labels = label_parts[0] if len(label_parts) == 1 else np.concatenate(label_parts)
            labels = np.array(labels)  # own the memory, never a view into a mapped file
        return inputs, labels

    def _scan(self) -> None:
        """Check the values of every selected sample, one block and one chunk at a time."""
        table = self._table
        if not any(s.dtype.kind in "fiu" for s in self.specs):
            return
        selected = np.sort(self._order[:self.num_samples])
        owners = table.block_of(selected)
        cuts = np.flatnonzero(np.diff(owners)) + 1
        for run in np.split(selected, cuts):
            block = int(table.block_of(run[:1])[0])
            arrays = table.arrays(block)
            where = table.blocks[block].where
            local = run - table.offsets[block]
            for spec in self.specs:
                array = arrays[spec.name]
                if not (spec.dtype.kind == "f" or _needs_range_check(array.dtype, spec.dtype)):
                    continue
                row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64))
                                * array.dtype.itemsize)
                step = max(1, _SCAN_CHUNK_BYTES // row_bytes)
                for begin in range(0, len(local), step):
                    chunk = local[begin:begin + step]
                    _check_values(spec, np.asarray(_take(array, chunk)), where, 0,
                                  ids=run[begin:begin + step])

    def _log_casts(self) -> None:
        for spec in self.specs:
            found = {lay_block.meta[spec.name][0] for lay_block in self._table.blocks}
            for dtype in sorted(found - {spec.dtype}, key=str):
                logger.info("input %r: casting %s data to %s", spec.name, dtype.name,
                            spec.dtype.name)

    def _derive(self, specs: list[InputSpec], batch_size: int | None, limit: int | None,
                shuffle: bool, seed: int) -> Dataset:
        order = self._order[:self.num_samples]
        table, recheck = self._table, specs != self.specs
        if recheck:
            table = _Table(table.blocks, specs, table.labels_key, table.origin)
            if table.total != self._table.total:
                raise DataError("the Dataset's samples do not map onto this model's inputs "
                                "the same way; load the data again for this model")
        order = _select(order, limit, shuffle, seed)
        requested = batch_size if batch_size is not None else self._requested_batch
        return _IndexedDataset(table, order, requested, check_values=recheck)


def _select(order: np.ndarray, limit: int | None, shuffle: bool, seed: int) -> np.ndarray:
    if shuffle:
        order = order[np.random.default_rng(seed).permutation(len(order))]
    if limit is not None:
        order = order[:limit]
    return order


class _Stream:
    """Items of a generator (one pass) or of a re-iterable object, with the first one peeked."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self.one_shot = isinstance(iterable, Iterator)
        self._iterable = iterable
        self._iterator: Iterator[Any] | None = iterable if self.one_shot else None
        self._consumed = False
        self.first = self._peek()

    def _peek(self) -> Any:
        iterator = self._iterator if self.one_shot else iter(self._iterable)
        try:
            return next(iterator)
        except StopIteration:
            raise DataError("no samples: the data stream yielded no items") from None

    def items(self) -> Iterator[Any]:
        if not self.one_shot:
            yield from self._iterable
            return
        if self._consumed:
            raise DataError("this Dataset streams from a generator and was already iterated; "
                            "pass a list, a re-iterable object or files to iterate it again")
        self._consumed = True
        yield self.first
        yield from self._iterator


class _StreamDataset(Dataset):
    """Items streamed from a generator or an iterable; checked and re-batched as they arrive."""

    def __init__(self, stream: _Stream, specs: list[InputSpec], labels_key: str | None,
                 requested_batch: int, limit: int | None) -> None:
        self.specs = specs
        self._stream = stream
        self._labels_key = labels_key
        self._limit = limit
        self._requested_batch = requested_batch
        self.batch_size, self._drop_last = _batch_rule(specs, requested_batch)
        self.num_samples = None
        self.num_batches = None
        self._fingerprint = None
        self._cast_logged: set[tuple[str, str]] = set()
        self._aliases_logged: set[tuple[str, str]] = set()
        first = self._conform(stream.first, 0, 0)
        self.has_labels = first[2]

    def _can_fingerprint(self) -> bool:
        return not self._stream.one_shot

    def _conform(self, item: Any, number: int, first_index: int
                 ) -> tuple[_Layout, dict[str, np.ndarray], bool]:
        where = f" in item {number}"
        mapping = _item_mapping(item, self.specs, f"item {number} of the data stream")
        arrays = {str(k): _as_array(str(k), v, where) for k, v in mapping.items()}
        renames = _aliases(arrays, self.specs, self._labels_key)
        if renames:
            _log_aliases(renames, self._aliases_logged)
            arrays = _renamed(arrays, renames)
        layout = _layout(_meta_of(arrays), self.specs, self._labels_key, where, True)
        for key in layout.samples:
            arrays[key] = arrays[key][np.newaxis]
        for spec in self.specs:
            _check_values(spec, arrays[spec.name], where, first_index)
            found = arrays[spec.name].dtype
            if found != spec.dtype and (spec.name, found.name) not in self._cast_logged:
                self._cast_logged.add((spec.name, found.name))
                logger.info("input %r: casting %s data to %s", spec.name, found.name,
                            spec.dtype.name)
        return layout, arrays, layout.labels

    def batches(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        keys = self.input_names + ([self._labels_key] if self.has_labels else [])
        pending: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        buffered = seen = 0
        reference: _Layout | None = None
        for number, item in enumerate(self._stream.items()):
            layout, arrays, labelled = self._conform(item, number, seen)
            if labelled != self.has_labels:
                state = "has" if labelled else "has no"
                raise DataError(f"labels {self._labels_key!r} in item {number}: the item "
                                f"{state} labels, unlike item 0")
            reference = self._check_stackable(reference, layout, number)
            take = layout.count
            if self._limit is not None:
                take = min(take, self._limit - seen)
            for key in keys:
                pending[key].append(arrays[key][:take])
            buffered += take
            seen += take
            while buffered >= self.batch_size:
                yield self._emit(pending, self.batch_size)
                buffered -= self.batch_size
            if self._limit is not None and seen >= self._limit:
                break  # pull no more items from the stream
        if buffered and not self._drop_last:
            yield self._emit(pending, buffered)
        elif buffered:
            logger.warning("dropping the last %d samples: the model takes batches of exactly %d",
                           buffered, self.batch_size)
        if seen == 0:
            raise DataError("no samples: the data stream yielded 0 samples")

    def _check_stackable(self, reference: _Layout | None, layout: _Layout,
                         number: int) -> _Layout:
        if self.batch_size == 1 or layout.count == 0:
            return reference if reference is not None else layout
        if reference is None:
            return layout
        for name in self.input_names:
            if layout.trailing[name] != reference.trailing[name]:
                raise DataError(
                    f"input {name!r} in item {number}: samples have shape "
                    f"{_shape_text(layout.trailing[name])}, earlier ones "
                    f"{_shape_text(reference.trailing[name])}; they cannot be stacked into "
                    f"batches of {self.batch_size}; pad them to one shape or use batch_size=1")
        return reference

    def _emit(self, pending: dict[str, list[np.ndarray]], size: int
              ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        out: dict[str, np.ndarray] = {}
        for key, parts in pending.items():
            joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
            out[key], rest = joined[:size], joined[size:]
            parts[:] = [rest] if len(rest) else []
        labels = np.array(out.pop(self._labels_key)) if self.has_labels else None
        inputs = {s.name: _owned(out[s.name], s.dtype) for s in self.specs}
        return inputs, labels

    def _derive(self, specs: list[InputSpec], batch_size: int | None, limit: int | None,
                shuffle: bool, seed: int) -> Dataset:
        if shuffle:
            raise DataError("shuffle needs data with random access (arrays, a list or files); "
                            "this Dataset streams from an iterable")
        if self._limit is not None:
            limit = self._limit if limit is None else min(limit, self._limit)
        requested = batch_size if batch_size is not None else self._requested_batch
        return _StreamDataset(self._stream, specs, self._labels_key, requested, limit)


def _hash_batches(specs: list[InputSpec],
                  batches: Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]) -> str:
    """sha256 over the data in sample order, independent of where batches are cut."""
    keys = [s.name for s in specs]
    digests = {k: hashlib.sha256() for k in keys + ["\0labels"]}
    shapes: dict[str, list[list[Any]]] = {k: [] for k in digests}
    for inputs, labels in batches:
        arrays = dict(inputs)
        if labels is not None:
            arrays["\0labels"] = labels
        for key, array in arrays.items():
            if array.dtype == object:
                digests[key].update(repr(array.tolist()).encode())
            else:
                digests[key].update(np.ascontiguousarray(array).tobytes())
            runs = shapes[key]
            signature = (array.dtype.str, tuple(array.shape[1:]))
            if runs and runs[-1][0] == signature:
                runs[-1][1] += len(array)
            else:
                runs.append([signature, len(array)])
    total = hashlib.sha256(b"onnxq.feeds/1")
    for key, digest in digests.items():
        total.update(repr((key, shapes[key])).encode())
        total.update(digest.digest())
    return total.hexdigest()


# --------------------------------------------------------------------------- entry point


def load_data(source: Any, model_or_specs: onnx.ModelProto | list[InputSpec], *,
              batch_size: int | None = None, limit: int | None = None, shuffle: bool = False,
              seed: int = 0, labels_key: str = "labels") -> Dataset:
    """Turn a data source into a checked ``Dataset`` of batches for the model's inputs.

    Sources, folder rules and casting rules are described in the module docstring. All checks
    that can run before any work starts do: names, dtypes, shapes, sample counts, empty data,
    unreadable files and NaN / Inf values (for a stream: its first item; later items are
    checked as they arrive).

    Args:
        source: a ``Dataset``, a dict ``{input_name: array}``, a list or tuple of such dicts, a
            generator or iterable of them, a numpy array (one-input models), or a path to a
            ``.npz`` / ``.npy`` file or a folder.
        model_or_specs: the model, or its ``input_specs``.
        batch_size: samples per batch; ``None`` means 8, or the batch size of a ``Dataset``
            source. A model whose batch dimension is fixed uses that size instead.
        limit: use at most this many samples (after shuffling).
        shuffle: visit the samples in a permutation drawn from ``numpy.random.default_rng(seed)``.
            Not possible for generators and other streamed iterables.
        seed: seed of the shuffle.
        labels_key: the key that holds labels rather than an input (ignored if the model has an
            input of that name, and for a ``Dataset`` source, which keeps its labels).

    Returns:
        The checked ``Dataset``.

    Raises:
        DataError: the data does not fit the model, is empty, or cannot be read.
        ConfigError: ``batch_size`` or ``limit`` is not a positive integer.
        ModelError: the model has no inputs or a non-tensor input.
    """
    _check_arguments(batch_size, limit)
    specs = _specs_of(model_or_specs)
    if isinstance(source, Dataset):
        return source._derive(specs, batch_size, limit, shuffle, seed)
    requested = batch_size if batch_size is not None else DEFAULT_BATCH_SIZE
    key = None if any(s.name == labels_key for s in specs) else labels_key
    if isinstance(source, (list, tuple)) and not source:
        raise DataError("no samples: the data list is empty")
    blocks = _blocks_of(source, specs, key)
    if blocks is None:
        if shuffle:
            raise DataError("shuffle needs data with random access (arrays, a list or files); "
                            f"a {type(source).__name__} is streamed")
        return _StreamDataset(_Stream(source), specs, key, requested, limit)
    table = _Table(blocks[0], specs, key, blocks[1])
    order = _select(np.arange(table.total, dtype=np.int64), limit, shuffle, seed)
    return _IndexedDataset(table, order, requested)


def check_data(source: Any, model_or_specs: onnx.ModelProto | list[InputSpec], *,
               batch_size: int | None = None, limit: int | None = None, labels_key: str = "labels") -> None:
    """The checks of :func:`load_data` that read no values, for a quick look before any work.

    Names, dtypes, ranks, fixed dimensions, sample counts, labels, empty data and unreadable or
    corrupt files (headers only: a large ``.npz`` costs what its directory costs). Values
    (NaN / Inf, narrowing casts) are left to :func:`load_data`. A ``Dataset`` and streamed
    sources (generators, other iterables) are not looked at: reading them here would consume them.

    Raises:
        DataError, ConfigError, ModelError: as :func:`load_data` would for the same source.
    """
    _check_arguments(batch_size, limit)
    specs = _specs_of(model_or_specs)
    if isinstance(source, Dataset):
        return
    key = None if any(s.name == labels_key for s in specs) else labels_key
    if isinstance(source, (list, tuple)) and not source:
        raise DataError("no samples: the data list is empty")
    blocks = _blocks_of(source, specs, key)
    if blocks is None:
        return
    table = _Table(blocks[0], specs, key, blocks[1])
    order = _select(np.arange(table.total, dtype=np.int64), limit, False, 0)
    _IndexedDataset(table, order, batch_size if batch_size is not None else DEFAULT_BATCH_SIZE,
                    check_values=False, quiet=True)


def _check_arguments(batch_size: int | None, limit: int | None) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, (int, np.integer)) or batch_size < 1):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(
            limit, (int, np.integer)) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")


def _blocks_of(source: Any, specs: list[InputSpec],
               labels_key: str | None) -> tuple[list[_Block], str] | None:
    """Blocks of a random-access source, or None for a source that must be streamed."""
    if isinstance(source, (str, os.PathLike)):
        return _path_blocks(Path(source), specs, labels_key)
    if isinstance(source, Mapping):
        return [_memory_block(source, "", allow_sample=False)], "the data"
    if isinstance(source, np.ndarray):
        if len(specs) != 1:
            raise DataError(f"a single array can only feed a one-input model; this one has "
                            f"{len(specs)} inputs ({_names_text(s.name for s in specs)}): "
                            "pass a dict {input_name: array}")
        return [_memory_block({specs[0].name: source}, "", allow_sample=False)], "the data"
    if isinstance(source, (list, tuple)):
        blocks = []
        for number, item in enumerate(source):
            mapping = _item_mapping(item, specs, f"item {number} of the data list")
            blocks.append(_memory_block(mapping, f" in item {number}", allow_sample=True))
        return blocks, "the data list"
    if isinstance(source, (bytes, bytearray)) or not isinstance(source, Iterable):
        raise DataError(f"unsupported data source of type {type(source).__name__}: expected a "
                        "dict, a list of dicts, an iterable, an array, a Dataset or a path")
    return None
