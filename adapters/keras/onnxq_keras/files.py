"""Keras model files (``.keras``, ``.h5``) and SavedModel folders."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from onnxq.errors import AdapterError

from . import _tf

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def can_load(path: Path) -> bool:
    path = Path(path)
    if path.suffix.lower() in KERAS_SUFFIXES:
        return True
    return path.is_dir() and (path / "saved_model.pb").is_file()


def load(path: Path, *, allow_pickle: bool = False) -> Any:
    """Load a Keras file with ``safe_mode=True`` (no Lambda-layer code) unless ``allow_pickle``,
    or a SavedModel folder with ``tf.saved_model.load``."""
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"no such model file or folder: {path}")
    tf = _tf.tf()
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise AdapterError(f"{path} is a folder without saved_model.pb: not a SavedModel")
        try:
            return tf.saved_model.load(str(path))
        except Exception as exc:
            raise AdapterError(f"cannot load the SavedModel {path.name}: {_tf.first_line(exc)}") from exc
    _check_container(path)
    keras = _tf.keras()
    try:
        return keras.models.load_model(path, compile=False, safe_mode=not allow_pickle)
    except Exception as exc:
        reason = _tf.first_line(exc)
        if "safe_mode" in reason or "unsafe" in reason.lower():
            reason += " (pass --allow-pickle / allow_pickle=True if you trust the file)"
        raise AdapterError(f"cannot load {path.name} as a Keras model: {reason}") from exc


def _check_container(path: Path) -> None:
    """A ``.keras`` file is a zip archive, an ``.h5`` file HDF5: say so before Keras gives a
    misleading reason (it reports a corrupt ``.keras`` file as "File not found")."""
    try:
        with path.open("rb") as stream:
            head = stream.read(8)
    except OSError as exc:
        raise AdapterError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise AdapterError(f"cannot load {path.name} as a Keras model: not a .keras archive "
                           "(the file is not a zip file; truncated or corrupt?)")
    if path.suffix.lower() in (".h5", ".hdf5") and head != _HDF5_MAGIC:
        raise AdapterError(f"cannot load {path.name} as a Keras model: not an HDF5 file (truncated or corrupt?)")
