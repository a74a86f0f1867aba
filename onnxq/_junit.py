"""JUnit XML helpers shared by ``onnxq compare`` and ``onnxq batch``: XML-safe text, Jenkins-style
timestamps, and the atomic write of a finished document."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from ._atomic import write_text_atomic

__all__ = ["finish_junit", "junit_timestamp", "xml_text"]

#: Characters XML 1.0 cannot carry (control characters, lone surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def finish_junit(root: ET.Element, path: str | os.PathLike[str] | None) -> str:
    """The indented XML text of ``root`` with its declaration; also written atomically to ``path`` when given."""
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
    if path is not None:
        write_text_atomic(path, text)
    return text


def junit_timestamp(timestamp: str) -> str:
    """ISO 8601 in UTC without the offset (``2026-01-31T12:00:00``); unparsable text is kept."""
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return timestamp
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds")


def xml_text(text: str) -> str:
    """``text`` with the characters XML 1.0 forbids replaced by ``?``."""
    return _NOT_XML.sub("?", text)
