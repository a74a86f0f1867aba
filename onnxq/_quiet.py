"""Keep third-party noise off the user's terminal: what a dependency prints goes to the debug log.

Contract: :func:`captured_output` runs a block with everything it writes to standard error —
native output on file descriptor 2 (ONNX Runtime's C++ log), Python writes to ``sys.stderr``
(tracebacks that ORT's pre-processing logs, onnxscript's reports) and Python warnings — collected
and re-emitted line by line on onnxq's logger at DEBUG level afterwards, so ``--debug`` shows it
and a normal run prints only onnxq's own one-line messages. With DEBUG logging already on, nothing
is captured (the output appears live). Exceptions pass through unchanged; the terminal is always
restored.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

logger = logging.getLogger("onnxq")

__all__ = ["captured_output"]


@contextlib.contextmanager
def captured_output(source: str) -> Iterator[None]:
    """Run the block with its standard-error output and warnings captured (see the module doc).

    Args:
        source: names the dependency in the debug log, e.g. ``"ONNX Runtime pre-processing"``.
    """
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    python_err = io.StringIO()
    with tempfile.TemporaryFile() as sink, _fd2_to(sink) as native:
        try:
            with contextlib.redirect_stderr(python_err), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            native_text = ""
            if native:
                sink.seek(0)
                native_text = sink.read().decode("utf-8", errors="replace")
            for line in (native_text + python_err.getvalue()).splitlines():
                if line.strip():
                    logger.debug("%s: %s", source, line)


@contextlib.contextmanager
def _fd2_to(sink: object) -> Iterator[bool]:
    """Point file descriptor 2 at ``sink`` for the block; yields whether it could."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 (closed, or not a real stream): capture Python only
        yield False
        return
    try:
        os.dup2(sink.fileno(), 2)  # type: ignore[attr-defined]
        yield True
    finally:
        os.dup2(saved, 2)
        os.close(saved)
