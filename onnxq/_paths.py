"""Checks on the files and folders a run will write, made before any work starts.

Contract: every function here either returns quietly or raises an ``OnnxqError`` (``ConfigError``
for a bad location, ``ModelError`` for a path that is one of the run's inputs) with a one-line
message; none writes anything that outlives the call (writability is probed with a temporary file
that is removed at once). A location passes when a later atomic write there can succeed: the
folder exists and accepts files, the path is not a folder, not a FIFO/device/socket, not one of the
run's inputs (the input model, its external-data files, the data it reads) in any spelling.
Symbolic links are followed: the output is written through to the link's target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ._atomic import output_target
from .errors import ConfigError

__all__ = ["check_output_file", "check_output_folder"]

_PathLike = str | os.PathLike


def check_output_file(path: _PathLike, *, what: str = "output", protect: Sequence[_PathLike | None] = (),
                      side_file: bool = False) -> Path:
    """Check that a file can be written atomically at ``path``; return the file a write replaces.

    Args:
        path: the output path given by the user.
        what: how messages name it (``"output"``, ``"report"``, ``"JUnit file"``...).
        protect: the run's inputs (their external-data files are protected too).
        side_file: also check ``<target>.data``, the side file of a model over 2 GB.

    Raises:
        ConfigError: the folder is missing or not writable, or ``path`` is a folder, a FIFO,
            a device, or a symbolic link loop.
        ModelError: ``path`` (or its side file) is one of the run's inputs.
    """
    from .model import check_not_protected, protected_files

    label = os.fspath(path)
    target = output_target(path)
    guarded = protected_files(*protect)
    check_not_protected(target, guarded, what)
    _check_replaceable(target, label, what)
    if side_file:
        data = target.with_name(target.name + ".data")
        check_not_protected(data, guarded, f"{what}'s external-data file")
        _check_replaceable(data, os.fspath(data), f"{what}'s external-data file")
    folder = target.parent
    if not folder.exists():
        raise ConfigError(f"output folder {os.fspath(folder) or '.'} does not exist (for the {what} {label})")
    if not folder.is_dir():
        raise ConfigError(f"output folder {os.fspath(folder)} is not a folder (for the {what} {label})")
    _probe(folder, f"{what} {label}")
    return target


def check_output_folder(path: _PathLike, *, what: str = "cache folder") -> Path:
    """Check that ``path`` is a writable folder, or can be created as one (nothing is created).

    Raises:
        ConfigError: ``path`` is a file (or FIFO, device), or it and its nearest existing
            parent are not writable folders.
    """
    label = os.fspath(path)
    folder = Path(path)
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"{what} {label} is not a folder")
        _probe(folder, f"{what} {label}")
        return folder
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {label}: {_shown(parent)} is not a folder")
    _probe(parent, f"{what} {label}")
    return folder


def _check_replaceable(target: Path, label: str, what: str) -> None:
    if target.is_dir():
        raise ConfigError(f"{what} {label} is a directory: give a file name")
    if target.exists() and not target.is_file():
        raise ConfigError(f"{what} {label} is not a regular file (a FIFO, device or socket): "
                          "refusing to replace it")


def _probe(folder: Path, label: str) -> None:
    """Create and remove a temporary file in ``folder``: the only sure test that it accepts files."""
    try:
        fd, name = tempfile.mkstemp(prefix=".onnxq-probe-", dir=folder)
    except OSError as exc:
        raise ConfigError(f"{label}: cannot write into {_shown(folder)} ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(name)


def _shown(folder: Path) -> str:
    return f"'{os.fspath(folder) or '.'}'"
