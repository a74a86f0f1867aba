"""Atomic text writes for reports, range files and other small outputs, and where a write lands.

Contract: a write goes to a temporary file in the destination folder, then ``os.replace``; on any
failure (or an interrupt) the temporary file is removed and an existing destination is untouched.
An output path that is a symbolic link is written *through*: the link is kept and its final
target receives the new content (as shell redirection does); a link loop is refused.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ConfigError


def output_target(path: str | os.PathLike[str]) -> Path:
    """The file a write to ``path`` replaces: ``path``, or the final target of a symbolic link.

    A dangling link resolves to the (missing) file it names, which the write then creates.

    Raises:
        ConfigError: ``path`` is a symbolic link loop.
    """
    link = Path(path)
    if not link.is_symlink():
        return link
    try:
        return Path(os.path.realpath(link, strict=True))
    except FileNotFoundError:  # dangling: the write creates the link's target
        return Path(os.path.realpath(link))
    except OSError as exc:  # ELOOP
        raise ConfigError(f"output {os.fspath(path)} is a symbolic link loop") from exc


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    On failure nothing is left behind and an existing file at ``path`` is untouched. A symbolic
    link at ``path`` is kept and its target written (see :func:`output_target`).
    """
    target = output_target(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
