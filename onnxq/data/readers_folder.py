"""Readers of a data path: a file or a folder, by the folder rules of :mod:`onnxq.data`.

A path becomes a list of blocks: a ``.npz`` or ``.npy`` file; a folder of ONNX
``test_data_set_*`` sets (``input_<i>.pb`` TensorProto files, mapped to inputs by tensor name
or position); a folder of ``<input_name>.npy`` files; or a folder of ``.npz`` files. Hidden
files are ignored, names are sorted naturally, and what cannot be read (missing path, FIFO,
corrupt tensor, mixed ``.npy`` and ``.npz``) is a ``DataError``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import DataError
from .blocks import _Block
from .checks import Meta
from .readers_numpy import _npy_files_block, _npz_block
from .specs import InputSpec
from .text import _names_text, _natural_key, _one_line, _read_error


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
