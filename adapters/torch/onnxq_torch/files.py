"""PyTorch model files: ``.pt2`` (torch.export), TorchScript ``.pt``, pickled modules (opt-in only)."""

from __future__ import annotations

import contextlib
import logging
import pickle
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from onnxq.errors import AdapterError

from .export import one_line

logger = logging.getLogger(__name__)

SUFFIXES = (".pt2", ".pt", ".pth")


@dataclass
class LoadedModel:
    """A model read from a file, with what the file says about how to call it.

    Attributes:
        model: an ``ExportedProgram``, a TorchScript ``ScriptModule`` or an ``nn.Module``.
        kind: "exported program", "TorchScript" or "pickled module".
        path: the file it came from.
        example_inputs: inputs stored in the file (``.pt2``), else ``None``.
    """

    model: Any
    kind: str
    path: Path
    example_inputs: Any = None


def can_load(path: Path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _program_examples(program: torch.export.ExportedProgram) -> Any:
    stored = getattr(program, "example_inputs", None)
    if not stored:
        return None
    args, kwargs = stored
    if kwargs:
        return dict(kwargs) if not args else None
    return tuple(args) if len(args) != 1 else args[0]


class PickleRefused(Exception):
    """A .pt2 archive asked to unpickle an object while pickles are not allowed."""


@contextlib.contextmanager
def _no_pickles(allow_pickle: bool) -> Iterator[None]:
    """While loading a .pt2 archive, refuse every unpickling that could run code from the file.

    ``torch.export.load`` honours a ``use_pickle`` flag inside the archive (``torch.load`` with
    ``weights_only=False``), falls back to ``weights_only=False`` for sample inputs it cannot read
    safely, and unpickles custom / opaque constants. Without the opt-in, every ``torch.load`` runs
    with ``weights_only=True`` (tensors and plain containers only) and the raw unpicklers raise.
    """
    if allow_pickle:
        yield
        return
    from torch.export.pt2_archive import _package

    original_load = torch.load

    def safe_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return original_load(*args, **kwargs)
        except pickle.UnpicklingError as exc:
            raise PickleRefused(str(exc).splitlines()[0] if str(exc) else "") from exc

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise PickleRefused("the archive holds a pickled object")

    saved = (torch.load, torch._C._pickle_load_obj, _package.pickle)
    torch.load = safe_load
    torch._C._pickle_load_obj = refuse
    _package.pickle = _RefusingPickle(refuse)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load, torch._C._pickle_load_obj, _package.pickle = saved


class _RefusingPickle:
    """Stands in for the ``pickle`` module inside torch's archive reader."""

    def __init__(self, refuse: Any) -> None:
        self.loads = self.load = refuse

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)


def _load_program(path: Path, *, allow_pickle: bool) -> Any:
    """``torch.export.load`` with torch's own error logging muted and pickles refused without opt-in."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export.serde.serialize")]
        levels = [lg.level for lg in torch_loggers]
        for lg in torch_loggers:
            lg.setLevel(logging.ERROR + 10)  # torch logs the traceback before raising
        try:
            with _no_pickles(allow_pickle):
                return torch.export.load(str(path))
        finally:
            for lg, level in zip(torch_loggers, levels):
                lg.setLevel(level)


def _caused_by_refusal(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PickleRefused):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def load_file(path: Path, *, allow_pickle: bool = False) -> LoadedModel:
    """Read a PyTorch model file; pickled modules only with ``allow_pickle`` (it runs code).

    Raises:
        AdapterError: a missing, corrupt or unsupported file, or a pickled module without opt-in.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise AdapterError(f"{path}: no such model file")
    if path.suffix.lower() == ".pt2":
        try:
            program = _load_program(path, allow_pickle=allow_pickle)
        except Exception as exc:
            if not _caused_by_refusal(exc):
                raise AdapterError(f"{name} is not a readable torch.export .pt2 file: {one_line(exc, 160)}") from exc
            raise AdapterError(f"{name} holds pickled objects (weights, constants or sample inputs) and "
                               "loading them runs code from the file: pass --allow-pickle (allow_pickle=True) "
                               "only if you trust it") from exc
        return LoadedModel(program, "exported program", path, _program_examples(program))
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise AdapterError(f"{name} is not a readable TorchScript file: {one_line(exc, 160)}") from exc
        return LoadedModel(module, "TorchScript", path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise AdapterError(f"{name} is a pickled Python object (torch.save of a module); loading it "
                               "runs code from the file: pass --allow-pickle (allow_pickle=True) only if "
                               "you trust it, or save the model with torch.export (.pt2) or TorchScript"
                               ) from exc
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise AdapterError(f"{name} could not be unpickled: {one_line(exc2, 160)}") from exc2
    except Exception as exc:
        raise AdapterError(f"{name} is not a readable PyTorch file: {one_line(exc, 160)}") from exc
    if not isinstance(obj, torch.nn.Module):
        what = "a state_dict (weights only)" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise AdapterError(f"{name} holds {what}, not a model: build the nn.Module in Python, load the "
                           "weights and pass the module to onnxq.quantize")
    return LoadedModel(obj, "pickled module", path)
