"""The adapter protocol and the registry of framework adapters (found through entry points).

The core never imports a framework. A framework is reached only through an adapter published
under the entry-point group ``onnxq.adapters`` (``onnxq-torch``, ``onnxq-keras``); each entry
point names a zero-argument callable (a class) returning an object that satisfies ``Adapter``.
Set ``ONNXQ_DISABLE_ADAPTERS=torch,keras`` (or ``all``) to ignore installed adapters.

Besides the ``Adapter`` protocol, an adapter may provide ``describe_inputs(obj, **options)``:
the ONNX inputs its export of ``obj`` will have, read from the framework model without exporting
(``None`` when they are only known from data). ``onnxq`` uses it to check data names before a
slow export and to show a framework file's inputs in ``onnxq inspect``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import onnx

from .errors import AdapterError, OnnxqError, first_line
from .summary import TensorInfo

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "onnxq.adapters"
DISABLE_ENV = "ONNXQ_DISABLE_ADAPTERS"

# Who to ask for when nothing installed handles an object or a file.
_PACKAGE_HINTS = {
    "torch": "onnxq-torch",
    "keras": "onnxq-keras",
    "tensorflow": "onnxq-keras",
    "tf_keras": "onnxq-keras",
}
_SUFFIX_HINTS = {".pt": "onnxq-torch", ".pt2": "onnxq-torch", ".pth": "onnxq-torch",
                 ".keras": "onnxq-keras", ".h5": "onnxq-keras"}


@dataclass
class ExportResult:
    """What an adapter's export produced.

    Attributes:
        model: the float ONNX model.
        exporter: which exporter wrote it (e.g. "torch.onnx dynamo", "tf2onnx").
        opset: the default-domain opset actually written.
        max_abs_error: largest |framework - ONNX Runtime| on the example inputs.
        notes: what the user should know (fallbacks taken and why).
    """

    model: onnx.ModelProto
    exporter: str
    opset: int
    max_abs_error: float | None = None
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Adapter(Protocol):
    """What a framework adapter provides."""

    name: str      #: short name, e.g. "torch"
    package: str   #: distribution that provides it, e.g. "onnxq-torch"

    def can_export(self, obj: Any) -> bool:
        """True for framework models this adapter exports (e.g. an ``nn.Module``)."""

    def can_load(self, path: Path) -> bool:
        """True for model files or folders this adapter loads (e.g. ``.pt2``, ``.keras``)."""

    def load(self, path: Path, *, allow_pickle: bool = False) -> Any:
        """Load a framework model file; code-executing formats only with ``allow_pickle``."""

    def export(self, obj: Any, *, example_inputs: Any = None, **options: Any) -> ExportResult:
        """Export to ONNX and verify ONNX Runtime against the framework on the example inputs."""

    def owns_data(self, data: Any) -> bool:
        """True for framework data objects (DataLoader, tf.data.Dataset, tensors, ...)."""

    def to_feeds(self, data: Any, input_names: list[str], *, transform: Any = None) -> Any:
        """Framework data -> something :func:`onnxq.data.load_data` accepts (numpy dicts with
        an optional ``labels`` key)."""


def describe_inputs(adapter: Adapter, obj: Any, options: dict[str, Any] | None = None) -> list[TensorInfo] | None:
    """The ONNX inputs ``adapter`` will export ``obj`` with (names, shapes, dtypes), read without
    exporting; ``None`` when the adapter cannot tell (no ``describe_inputs``, inputs known only
    from data).

    Raises:
        OnnxqError: the adapter refuses ``obj`` or the options (as its export would).
    """
    describe = getattr(adapter, "describe_inputs", None)
    if describe is None:
        return None
    try:
        return describe(obj, **(options or {}))
    except OnnxqError:
        raise
    except Exception as exc:  # describing is best effort: the export reports real problems
        logger.debug("adapter %r could not describe the inputs: %s", adapter.name, exc)
        return None


def disabled_adapters() -> set[str]:
    """The adapter names the user switched off in ``ONNXQ_DISABLE_ADAPTERS`` (``all`` or ``1``: every one)."""
    value = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in value.split(",") if part.strip()}


def available_adapters() -> list[Adapter]:
    """Installed, enabled adapters; a broken one is logged and skipped, never fatal."""
    disabled = disabled_adapters()
    if "all" in disabled or "1" in disabled:
        return []
    adapters: list[Adapter] = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in disabled:
            continue
        try:
            adapter = entry.load()()
        except Exception as exc:  # a broken plug-in must not break the host
            logger.warning("onnxq adapter %r could not be loaded and is skipped: %s", entry.name,
                           first_line(exc))
            continue
        if not isinstance(adapter, Adapter):
            logger.warning("onnxq adapter %r does not satisfy the Adapter protocol; skipped", entry.name)
            continue
        adapters.append(adapter)
    return adapters


def adapter_for_object(obj: Any) -> Adapter:
    """The adapter that exports ``obj``, or an AdapterError naming the package to install."""
    for adapter in available_adapters():
        if adapter.can_export(obj):
            return adapter
    root = type(obj).__module__.split(".")[0]
    hint = _PACKAGE_HINTS.get(root)
    if hint is None:
        for klass in type(obj).__mro__:
            hint = _PACKAGE_HINTS.get(klass.__module__.split(".")[0])
            if hint:
                break
    if hint:
        raise AdapterError(f"{type(obj).__module__}.{type(obj).__name__} needs the {hint} adapter: "
                           f"pip install {hint}")
    raise AdapterError(f"cannot quantize a {type(obj).__name__}: pass an ONNX file or ModelProto, "
                       "a torch.nn.Module (pip install onnxq-torch) or a Keras model (pip install onnxq-keras)")


def adapter_for_path(path: str | os.PathLike[str]) -> Adapter | None:
    """The adapter that loads a non-ONNX model file, ``None`` for ONNX files.

    Raises:
        AdapterError: a framework file that no installed adapter loads (names the package).
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return None
    for adapter in available_adapters():
        if adapter.can_load(path):
            return adapter
    hint = _SUFFIX_HINTS.get(path.suffix.lower())
    if hint is None and path.is_dir() and (path / "saved_model.pb").exists():
        hint = "onnxq-keras"
    if hint:
        raise AdapterError(f"{path.name} is a framework model file: pip install {hint} to read it")
    return None


def adapter_for_data(data: Any) -> Adapter | None:
    """The adapter that turns framework data into feeds, ``None`` for numpy/file data."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return None
    probe = data
    if isinstance(data, (list, tuple)) and data:
        probe = data[0]
    elif isinstance(data, dict) and data:
        probe = next(iter(data.values()))
    if _plain(probe):
        return None
    for adapter in available_adapters():
        if adapter.owns_data(data):
            return adapter
    return None


def _plain(obj: Any) -> bool:
    """numpy, Python scalars and containers, onnxq's own objects: no adapter needed."""
    module = type(obj).__module__.split(".")[0]
    return module in ("numpy", "onnxq", "builtins")
