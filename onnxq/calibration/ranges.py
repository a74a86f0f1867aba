"""Calibration ranges as plain data: mergeable, JSON round trip, cached on disk by content hash."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .._atomic import write_text_atomic
from ..errors import CalibrationError

logger = logging.getLogger(__name__)

#: ``format`` marker and version written into every ranges file.
FORMAT = "onnxq.ranges"
VERSION = 1

Setting = float | int | str


@dataclass
class TensorRange:
    """The real-valued interval a tensor is quantized over (``low <= high``, both finite)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        low, high = _number(self.low, "low"), _number(self.high, "high")
        if not low <= high:
            raise CalibrationError(f"tensor range has low > high: ({low}, {high})")
        self.low, self.high = low, high

    def union(self, other: TensorRange) -> TensorRange:
        """The smallest range containing both."""
        return TensorRange(min(self.low, other.low), max(self.high, other.high))


@dataclass
class Ranges:
    """Calibrated ranges of a model's tensors and what they were computed from.

    Attributes:
        tensors: tensor name -> range.
        method: calibration method value (``"minmax"``, ``"entropy"``, ...).
        samples: calibration samples the ranges were computed on.
        model_hash: content hash of the calibrated model, when known.
        data_hash: fingerprint of the calibration data, when known.
        settings: the settings that change ranges (method, percentile, num_bins, ...).
        chosen: tensor name -> the estimator that produced its range, when it was chosen per
            tensor (``method="auto"``); empty otherwise. Written to JSON only when not empty.
    """

    tensors: dict[str, TensorRange]
    method: str = "minmax"
    samples: int = 0
    model_hash: str | None = None
    data_hash: str | None = None
    settings: dict[str, Setting] = field(default_factory=dict)
    chosen: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> TensorRange:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def merge(self, other: Ranges) -> Ranges:
        """A new ``Ranges`` with the union of both intervals per tensor and the samples added.

        Meant for shards of the same calibration (same model, method and settings); mixing
        those raises ``CalibrationError``. The data hash is kept only when both agree, and so is
        a tensor's ``chosen`` estimator.
        Note that for histogram methods the union of per-shard ranges is not the range of the
        whole data; merge observers instead when that matters.
        """
        if self.method != other.method:
            raise CalibrationError(f"cannot merge {self.method} ranges with {other.method} ranges")
        if self.model_hash and other.model_hash and self.model_hash != other.model_hash:
            raise CalibrationError("cannot merge ranges calibrated on different models")
        if self.settings != other.settings:
            raise CalibrationError(f"cannot merge ranges with different settings: {self.settings} vs {other.settings}")
        tensors = {name: TensorRange(r.low, r.high) for name, r in self.tensors.items()}
        for name, r in other.tensors.items():
            tensors[name] = tensors[name].union(r) if name in tensors else TensorRange(r.low, r.high)
        return Ranges(tensors=tensors, method=self.method, samples=self.samples + other.samples,
                      model_hash=self.model_hash or other.model_hash,
                      data_hash=self.data_hash if self.data_hash == other.data_hash else None,
                      settings=dict(self.settings), chosen=_agreed(self.chosen, other.chosen))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (plain floats, ints and strings)."""
        data = {
            "format": FORMAT, "version": VERSION, "method": self.method, "samples": int(self.samples),
            "model_hash": self.model_hash, "data_hash": self.data_hash,
            "settings": {k: _setting(v, k) for k, v in self.settings.items()},
            "tensors": {name: {"low": float(r.low), "high": float(r.high)} for name, r in self.tensors.items()},
        }
        if self.chosen:  # absent otherwise: files of single-method ranges keep their old form
            data["chosen"] = {str(name): str(method) for name, method in self.chosen.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ranges:
        """Inverse of :meth:`to_dict`; anything malformed raises ``CalibrationError``."""
        if not isinstance(data, Mapping):
            raise CalibrationError(f"ranges must be a JSON object, got {type(data).__name__}")
        if data.get("format", FORMAT) != FORMAT:
            raise CalibrationError(f"not an onnxq ranges file (format={data.get('format')!r})")
        if data.get("version", VERSION) != VERSION:
            raise CalibrationError(f"unsupported ranges version {data.get('version')!r} (expected {VERSION})")
        tensors = data.get("tensors")
        if not isinstance(tensors, Mapping):
            raise CalibrationError("ranges need a 'tensors' object")
        parsed = {str(name): _tensor_range(name, value) for name, value in tensors.items()}
        samples = data.get("samples", 0)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise CalibrationError(f"'samples' must be a non-negative integer, got {samples!r}")
        settings = data.get("settings", {})
        if not isinstance(settings, Mapping):
            raise CalibrationError("'settings' must be an object")
        return cls(tensors=parsed, method=_text(data.get("method", "minmax"), "method"), samples=samples,
                   model_hash=_optional_text(data.get("model_hash"), "model_hash"),
                   data_hash=_optional_text(data.get("data_hash"), "data_hash"),
                   settings={str(k): _setting(v, k) for k, v in settings.items()},
                   chosen=_chosen(data.get("chosen", {})))

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the ranges to ``path`` atomically (temporary file + ``os.replace``)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        return write_text_atomic(target, text + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Ranges:
        """Read ranges written by :meth:`to_json`.

        Raises:
            CalibrationError: the file is missing, unreadable or not valid ranges.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CalibrationError(f"ranges file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"cannot read ranges file {path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"corrupt ranges file {path}: {exc}") from None
        try:
            return cls.from_dict(data)
        except CalibrationError as exc:
            raise CalibrationError(f"invalid ranges file {path}: {exc}") from None


class RangeCache:
    """Ranges on disk, one JSON file per (model hash, data hash, settings)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """Use ``directory`` (created on the first ``put``)."""
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"RangeCache({str(self.directory)!r})"

    def key(self, model_hash: str, data_hash: str, settings: Mapping[str, Any]) -> str:
        """A stable hex digest of the three (independent of the order of ``settings``)."""
        payload = {"model": model_hash, "data": data_hash,
                   "settings": {str(k): _setting(v, k) for k, v in settings.items()}}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def path(self, model_hash: str, data_hash: str, settings: Mapping[str, Any]) -> Path:
        """The file the ranges for this key live in."""
        return self.directory / f"{self.key(model_hash, data_hash, settings)}.json"

    def get(self, model_hash: str, data_hash: str, settings: Mapping[str, Any]) -> Ranges | None:
        """The cached ranges, or ``None`` on a miss.

        ``settings`` must be what the ranges were stored with, ``method`` included (``put`` adds
        ``ranges.method`` as ``"method"`` when missing). An unreadable or corrupt entry counts
        as a miss (logged as a warning) and is overwritten by the next ``put``.
        """
        path = self.path(model_hash, data_hash, settings)
        if not path.is_file():
            return None
        try:
            ranges = Ranges.from_json(path)
        except CalibrationError as exc:
            logger.warning("ignoring cache entry: %s", exc)
            return None
        if ranges.model_hash != model_hash or ranges.data_hash != data_hash:
            logger.warning("ignoring cache entry %s: it belongs to another model or data", path)
            return None
        return ranges

    def put(self, ranges: Ranges) -> Path:
        """Store ``ranges`` under its ``model_hash``, ``data_hash`` and ``settings`` (+ method).

        Raises:
            CalibrationError: ``ranges`` has no model or data hash.
        """
        if not ranges.model_hash or not ranges.data_hash:
            raise CalibrationError("ranges need a model_hash and a data_hash to be cached")
        settings = dict(ranges.settings)
        settings.setdefault("method", ranges.method)
        path = self.path(ranges.model_hash, ranges.data_hash, settings)
        stored = Ranges(tensors=ranges.tensors, method=ranges.method, samples=ranges.samples,
                        model_hash=ranges.model_hash, data_hash=ranges.data_hash, settings=settings,
                        chosen=ranges.chosen)
        return stored.to_json(path)


def default_cache_dir() -> Path:
    """``$ONNXQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/onnxq/ranges``, else ``~/.cache/onnxq/ranges``."""
    explicit = os.environ.get("ONNXQ_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "onnxq" / "ranges"


# --------------------------------------------------------------------------------------------
# parsing helpers


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"range {name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise CalibrationError(f"range {name} must be a finite number, got {value!r}")
    return number


def _tensor_range(name: Any, value: Any) -> TensorRange:
    if isinstance(value, Mapping) and "low" in value and "high" in value:
        low, high = value["low"], value["high"]
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = value
    else:
        raise CalibrationError(f"range of tensor {name!r} must be {{'low': .., 'high': ..}}, got {value!r}")
    try:
        return TensorRange(low, high)
    except CalibrationError as exc:
        raise CalibrationError(f"tensor {name!r}: {exc}") from None


def _setting(value: Any, name: Any) -> Setting:
    """A settings value as a plain JSON scalar (enums by value, numpy scalars as Python)."""
    if isinstance(value, Enum):
        value = value.value
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise CalibrationError(f"setting {name!r} must be a finite number or a string, got {value!r}")


def _chosen(value: Any) -> dict[str, str]:
    """The ``chosen`` map of a ranges file: tensor name -> estimator name."""
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise CalibrationError("'chosen' must map tensor names to estimator names")
    return {str(name): method for name, method in value.items()}


def _agreed(first: Mapping[str, str], second: Mapping[str, str]) -> dict[str, str]:
    """The entries of both maps that do not contradict each other."""
    merged = {**second, **first}
    return {name: method for name, method in merged.items() if second.get(name, method) == method}


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise CalibrationError(f"{name!r} must be a string, got {value!r}")
    return value


def _optional_text(value: Any, name: str) -> str | None:
    return None if value is None else _text(value, name)
