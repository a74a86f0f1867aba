"""PyTorch model files: ``.pt2`` (torch.export), TorchScript ``.pt``, pickled modules (opt-in only)."""

from __future__ import annotations

import logging
import pickle
import warnings
import zipfile
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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch_logger = logging.getLogger("torch.export")
                level = torch_logger.level
                torch_logger.setLevel(logging.ERROR + 10)  # torch logs the traceback before raising
                try:
                    program = torch.export.load(str(path))
                finally:
                    torch_logger.setLevel(level)
        except Exception as exc:
            raise AdapterError(f"{name} is not a readable torch.export .pt2 file: {one_line(exc, 160)}") from exc
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
