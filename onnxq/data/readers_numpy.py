"""Readers of numpy files: ``.npz`` archives and ``.npy`` arrays, as blocks.

Headers are read and checked before any data: a header that declares more bytes than follow it,
pickled objects and malformed headers are refused with the file's name. ``.npy`` files are
memory-mapped; the uncompressed members of a ``.npz`` (``np.savez``) are read row by row with
``os.pread`` (``_RowReader``), so a batch is read when it is used and peak memory does not grow
with the file; compressed members are loaded whole, one file at a time.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format

from ..errors import DataError
from .blocks import _Block
from .checks import Meta
from .text import _one_line, _read_error, _shape_text


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
