"""Load, check, save and fingerprint ONNX models: the only module that reads or writes model files.

Loading is defensive: a path must be a readable ONNX file, and every external-data ``location``
is checked to stay inside the model's folder *before* anything is read from it. Saving is atomic:
the model is written under a temporary name in the destination folder and moved into place with
``os.replace``, so a failed save leaves no half-written file behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
from onnx.external_data_helper import set_external_data, uses_external_data

from ._graph import LARGE_MODEL_BYTES, debug_info_size, is_repeated, opset_version, proto_size, serialized_size
from ._graph import all_tensors as _all_tensors, initializer_tensors as _initializer_tensors
from ._atomic import output_target
from .errors import ConfigError, ModelError, one_line
from .summary import ModelSummary, TensorInfo, summarize  # re-exported; summary.py never imports model.py

__all__ = [
    "LARGE_MODEL_BYTES",
    "ModelSummary",
    "TensorInfo",
    "ensure_opset",
    "load_model",
    "load_model_header",
    "model_hash",
    "model_size",
    "opset_version",
    "protected_files",
    "save_model",
    "summarize",
]

logger = logging.getLogger(__name__)

#: Tensors at least this large (bytes of raw data) go to the side file when saving externally.
EXTERNAL_TENSOR_MIN_BYTES: int = 1024

#: Offsets of tensors in the side file are aligned to this many bytes (lets ORT memory-map them).
_EXTERNAL_ALIGNMENT = 4096

#: Messages up to this size are hashed in one serialization; larger ones field by field.
_HASH_CHUNK_BYTES = 2**30

#: Longest error detail quoted from a library (the checker's messages run to several lines).
_MESSAGE_CHARS = 400

_PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------- load


def load_model(source: _PathLike | onnx.ModelProto, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model from a file, or copy one already in memory.

    External data is read from the model's folder; a ``location`` that is absolute or that leads
    outside that folder (``..`` components, a symbolic link pointing elsewhere) is refused before
    anything is read.

    Args:
        source: path to an ``.onnx`` file, or a ``ModelProto`` (returned as a deep copy; the
            caller's object is never modified).
        check: run ``onnx.checker.check_model`` (``full_check=False``) on the result.

    Returns:
        The model, with all external data loaded into memory.

    Raises:
        ModelError: the file is missing, not a file, not ONNX, has unsafe or missing external
            data, or fails the checker.
    """
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        unloaded = [t.name for t in _all_tensors(model) if uses_external_data(t)]
        if unloaded:
            raise ModelError(
                f"cannot use the in-memory model: tensor '{unloaded[0]}' refers to external data "
                "that is not loaded (pass the model's path instead)")
        if check:
            _check(model, None, "the in-memory model")
        return model
    model, path, label = _read_structure(source)
    _load_external_data(model, path, label)
    if check:
        _check(model, path, label)
    if logger.isEnabledFor(logging.DEBUG):  # ByteSize() itself raises above 2 GiB
        logger.debug("loaded model %s (%d bytes)", label, serialized_size(model))
    return model


def load_model_header(source: _PathLike) -> onnx.ModelProto:
    """The graph of an ONNX file without its tensor data: cheap whatever the model's size.

    External-data references are validated as :func:`load_model` does (inside the model's
    folder, file present, within its size) but not read. The result serves to look at inputs,
    outputs, nodes and shapes before any work (``inspect``, checks of data against the model);
    it cannot be run or saved.

    Raises:
        ModelError: the file is missing, not a regular file, not ONNX, or has unsafe or missing
            external data.
    """
    model, path, label = _read_structure(source)
    for tensor in _all_tensors(model):
        if uses_external_data(tensor):
            _external_ref(tensor, path.parent, label)
    return model


def _read_structure(source: object) -> tuple[onnx.ModelProto, Path, str]:
    """Parse an ONNX file's protobuf without reading its external data: (model, path, label)."""
    if not isinstance(source, (str, os.PathLike)):
        kind = type(source).__name__
        raise ModelError(f"cannot read model: expected a path or an onnx.ModelProto, got {kind}")
    path = Path(source)
    label = f"'{os.fspath(source)}'"
    if not path.exists():
        raise ModelError(f"cannot read model {label}: no such file")
    if not path.is_file():  # a folder, FIFO, socket or device: never opened
        raise ModelError(f"cannot read model {label}: not a file")
    try:
        model = onnx.load_model(os.fspath(path), format="protobuf", load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise ModelError(f"cannot read model {label}: not an ONNX file "
                         f"({one_line(exc, limit=_MESSAGE_CHARS)})") from exc
    if not model.HasField("graph"):
        reason = "empty file" if path.stat().st_size == 0 else "no graph"
        raise ModelError(f"cannot read model {label}: not an ONNX file ({reason})")
    return model, path, label


def _load_external_data(model: onnx.ModelProto, path: Path, label: str) -> None:
    """Validate every external-data reference of ``model``, then read the data into it."""
    tensors = [t for t in _all_tensors(model) if uses_external_data(t)]
    if not tensors:
        return
    base = path.parent
    plan = [(t, *_external_ref(t, base, label)) for t in tensors]  # validate all before reading
    for tensor, file, offset, length in plan:
        try:
            with open(file, "rb") as handle:
                handle.seek(offset)
                data = handle.read() if length is None else handle.read(length)
        except OSError as exc:
            raise ModelError(
                f"cannot read model {label}: cannot read external data of tensor "
                f"'{tensor.name}' ({one_line(exc, limit=_MESSAGE_CHARS)})") from exc
        tensor.raw_data = data
        tensor.ClearField("data_location")
        del tensor.external_data[:]


def _external_ref(tensor: onnx.TensorProto, base: Path, label: str) -> tuple[Path, int, int | None]:
    """Resolve and validate one tensor's external-data reference: (file, offset, length)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    where = f"cannot read model {label}: external data of tensor '{tensor.name}'"
    if not location:
        raise ModelError(f"{where} has no location")
    windows = PureWindowsPath(location)
    if PurePosixPath(location).is_absolute() or windows.drive or windows.root:
        raise ModelError(f"{where} has an absolute location '{location}' (refused)")
    if ".." in location.replace("\\", "/").split("/"):
        raise ModelError(f"{where} points outside the model's folder: '{location}' (refused)")
    try:
        folder = base.resolve()
        file = (base / location).resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic link loop
        raise ModelError(f"{where}: cannot resolve '{location}' ({one_line(exc, limit=_MESSAGE_CHARS)})") from exc
    if folder not in file.parents:
        raise ModelError(f"{where} points outside the model's folder: '{location}' (refused)")
    if not file.is_file():
        found = "is not a regular file" if file.exists() else "not found next to the model"
        raise ModelError(f"{where}: file '{location}' {found}")
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError as exc:
        raise ModelError(f"{where} has an invalid offset or length") from exc
    size = file.stat().st_size
    if offset < 0 or (length is not None and length < 0) or offset + (length or 0) > size:
        raise ModelError(
            f"{where}: offset {offset} + length {length} exceeds the size of '{location}' "
            f"({size} bytes)")
    return file, offset, length


def _check(model: onnx.ModelProto, path: Path | None, label: str) -> None:
    """Run the ONNX checker; large models are checked by path (protobuf cannot hold them)."""
    try:
        if serialized_size(model) <= LARGE_MODEL_BYTES:
            onnx.checker.check_model(model, full_check=False)
        elif path is not None:
            onnx.checker.check_model(os.fspath(path), full_check=False)
        else:
            _check_large_in_memory(model)
    except ModelError:
        raise
    except Exception as exc:  # ValidationError and the C++ checker's other failures
        raise ModelError(f"model {label} is not valid ONNX: {one_line(exc, limit=_MESSAGE_CHARS)}") from exc
    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > newest:
            raise ModelError(f"model {label} is not valid ONNX: opset {entry.version} does not exist "
                             f"(the newest is {newest})")


def _check_large_in_memory(model: onnx.ModelProto) -> None:
    """Check a model too large for one protobuf by writing it (external data) to a temp folder.

    The model is our own copy: its data moves to the side file and is read back afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="onnxq-check-") as tmp:
        target = Path(tmp) / "model.onnx"
        _write_external(model, target, target.with_name("model.onnx.data"), "model.onnx.data",
                        restore=True, check_path=True)


# ------------------------------------------------------------------------------------- opsets


def ensure_opset(model: onnx.ModelProto, minimum: int = 13) -> onnx.ModelProto:
    """Return the model converted to opset ``minimum`` when its default-domain opset is older.

    Args:
        model: the model (never modified).
        minimum: the lowest acceptable opset.

    Returns:
        A new, converted model; or ``model`` itself when its opset is already ``>= minimum``.

    Raises:
        ModelError: the ONNX version converter cannot convert the model.
    """
    current = opset_version(model)
    if current >= minimum:
        return model
    logger.info("converting the model from opset %d to opset %d", current, minimum)
    try:
        return onnx.version_converter.convert_version(model, minimum)
    except Exception as exc:
        raise ModelError(
            f"cannot convert the model from opset {current} to opset {minimum}: "
            f"{one_line(exc, limit=_MESSAGE_CHARS)}") from exc


# --------------------------------------------------------------------------------------- save


def save_model(model: onnx.ModelProto, path: _PathLike, *,
               protect: Sequence[_PathLike] = ()) -> Path:
    """Write a model atomically.

    The model goes to a temporary file in the destination folder that then replaces ``path``;
    on failure nothing is left at ``path`` (an existing file there is kept intact) and no
    temporary file remains. Models larger than ``LARGE_MODEL_BYTES`` keep their tensors in one
    side file ``<name>.data`` next to ``path`` (relative location), also written under a
    temporary name first. Memory peaks at about twice the model's size in that case.
    A ``path`` that is a symbolic link is written through: the link stays, its target (and the
    side file next to that target) receive the model.

    Args:
        model: the model (never modified).
        path: destination file; its folder must exist.
        protect: files that must not be overwritten, typically the input model.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ModelError: the folder is missing, ``path`` is a directory, a protected file or not a
            regular file (FIFO, device), or the write fails.
    """
    label = f"'{os.fspath(path)}'"
    try:
        target = output_target(path)
    except ConfigError as exc:
        raise ModelError(f"cannot save model to {label}: {exc}") from exc
    folder = target.parent
    if not folder.exists():
        raise ModelError(f"cannot save model to {label}: folder '{folder}' does not exist")
    if not folder.is_dir():
        raise ModelError(f"cannot save model to {label}: '{folder}' is not a folder")
    if target.is_dir():
        raise ModelError(f"cannot save model to {label}: it is a directory")
    if target.exists() and not target.is_file():
        raise ModelError(f"cannot save model to {label}: it is not a regular file (refusing to replace it)")
    data_name = target.name + ".data"
    data_target = folder / data_name
    protect = protected_files(*protect)  # the input model's external-data files too
    for guarded in protect:
        if _same_file(target, Path(guarded)):
            raise ModelError(f"refusing to overwrite the input model {os.fspath(guarded)}")
    unloaded = [t.name for t in _all_tensors(model) if uses_external_data(t)]
    if unloaded:
        raise ModelError(
            f"cannot save model to {label}: tensor '{unloaded[0]}' refers to external data that "
            "is not loaded (load the model with onnxq.model.load_model)")
    large = serialized_size(model) > LARGE_MODEL_BYTES
    if large:
        for guarded in protect:
            if _same_file(data_target, Path(guarded)):
                raise ModelError(
                    f"refusing to overwrite the input model {os.fspath(guarded)} "
                    f"(external data file '{data_name}')")
        if data_target.exists() and not data_target.is_file():
            raise ModelError(f"cannot save model to {label}: '{data_target}' is not a regular file")
    try:
        if large:
            _write_external(model, target, data_target, data_name, restore=False)
        else:
            tmp = _temp_path(target)
            try:
                onnx.save_model(model, os.fspath(tmp), format="protobuf")
                _fsync(tmp)
                os.replace(tmp, target)
            finally:
                _unlink_quietly(tmp)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot save model to {label}: {one_line(exc, limit=_MESSAGE_CHARS)}") from exc
    logger.debug("saved model %s%s", label, f" with external data '{data_name}'" if large else "")
    return Path(path)


def _write_external(model: onnx.ModelProto, target: Path, data_target: Path, location: str, *,
                    restore: bool, check_path: bool = False) -> None:
    """Write ``model`` with its large tensors in ``data_target`` (temp names, then replace).

    With ``restore`` the tensors of ``model`` itself are moved out and read back afterwards
    (used for our own copies); otherwise a copy is written and ``model`` is untouched.
    """
    if restore:
        work = model
    else:
        work = onnx.ModelProto()
        work.CopyFrom(model)
    temps: list[Path] = []
    moved: list[tuple[onnx.TensorProto, int, int]] = []
    try:
        temps.append(_temp_path(target))
        temps.append(_temp_path(data_target))
        tmp_model, tmp_data = temps
        with open(tmp_data, "wb") as handle:
            for tensor in _initializer_tensors(work):
                if not tensor.HasField("raw_data"):
                    continue
                data = tensor.raw_data  # one copy out of the protobuf
                size = len(data)
                if size < EXTERNAL_TENSOR_MIN_BYTES:
                    continue
                end = handle.tell()
                offset = end + (-end % _EXTERNAL_ALIGNMENT)
                handle.seek(offset)
                handle.write(data)
                del data
                set_external_data(tensor, location, offset, size)
                tensor.ClearField("raw_data")
                moved.append((tensor, offset, size))
            handle.flush()
            os.fsync(handle.fileno())
        onnx.save_model(work, os.fspath(tmp_model), format="protobuf")
        _fsync(tmp_model)
        if moved:
            os.replace(tmp_data, data_target)
        os.replace(tmp_model, target)
        if check_path:
            onnx.checker.check_model(os.fspath(target), full_check=False)
        if restore:
            with open(data_target, "rb") as handle:
                for tensor, offset, size in moved:
                    handle.seek(offset)
                    tensor.raw_data = handle.read(size)
                    tensor.ClearField("data_location")
                    del tensor.external_data[:]
    finally:
        for temp in temps:
            _unlink_quietly(temp)


def _temp_path(target: Path) -> Path:
    """Create an empty, uniquely named file next to ``target`` (mode follows the umask)."""
    while True:
        candidate = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return candidate


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - e.g. permissions changed under us
        logger.warning("could not remove temporary file '%s': %s", path, exc)


def external_data_files(path: _PathLike) -> list[Path]:
    """The external-data files an ONNX file refers to (inside its folder); ``[]`` for anything else.

    Reads only the graph structure (no tensor data); a file that is not ONNX yields ``[]``.
    """
    path = Path(path)
    if not path.is_file() or path.suffix.lower() != ".onnx":
        return []
    try:
        model = onnx.load_model(os.fspath(path), format="protobuf", load_external_data=False)
    except Exception:  # not ONNX: nothing beyond the file itself to protect
        return []
    folder, files = path.resolve().parent, []
    for tensor in _all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        try:
            file = (folder / location).resolve() if location else None
        except (OSError, RuntimeError):  # a link loop: load_model refuses it; nothing to protect
            continue
        if file is not None and folder in file.parents and file not in files:
            files.append(file)
    return files


def protected_files(*paths: _PathLike | None) -> list[Path]:
    """``paths`` plus the external-data files of every ONNX model among them: what a run must never
    overwrite (the input model and its side files, the data it reads)."""
    out: list[Path] = []
    for path in paths:
        if path is None or path == "":
            continue
        for item in [Path(path), *external_data_files(path)]:
            if item not in out:
                out.append(item)
    return out


def check_not_protected(target: _PathLike, protect: Sequence[_PathLike], what: str = "output") -> None:
    """Raise ``ModelError`` when ``target`` is one of the protected files (any spelling or link)."""
    for guarded in protect:
        if _same_file(Path(target), Path(guarded)):
            raise ModelError(f"refusing to overwrite the input {os.fspath(guarded)} with the {what} "
                             "(this run reads it): choose another path")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (symlinks, hard links and ``..`` resolved)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop (Python < 3.13)
        return os.path.abspath(a) == os.path.abspath(b)


# ----------------------------------------------------------------------------- size and hash


def model_size(model_or_path: onnx.ModelProto | _PathLike, *, debug_info: bool = True) -> int:
    """Return the bytes a model takes serialized, external data included.

    Args:
        model_or_path: a model in memory, or the path of a saved model (the model file plus
            every distinct external-data file it references).
        debug_info: count the exporters' node ``metadata_props`` and doc strings; ``False`` for
            sizes that are compared (float vs quantized), which keep different shares of it.

    Raises:
        ModelError: the path cannot be read or refers to unsafe or missing external data.
    """
    if isinstance(model_or_path, onnx.ModelProto):
        return proto_size(model_or_path) - (0 if debug_info else debug_info_size(model_or_path))
    path = Path(model_or_path)
    label = f"'{os.fspath(model_or_path)}'"
    if not path.is_file():
        raise ModelError(f"cannot read model {label}: no such file")
    try:
        header = onnx.load_model(os.fspath(path), format="protobuf", load_external_data=False)
    except Exception as exc:
        raise ModelError(f"cannot read model {label}: not an ONNX file "
                         f"({one_line(exc, limit=_MESSAGE_CHARS)})") from exc
    files = {_external_ref(t, path.parent, label)[0]
             for t in _all_tensors(header) if uses_external_data(t)}
    debug = 0 if debug_info else debug_info_size(header)
    return path.stat().st_size - debug + sum(file.stat().st_size for file in files)


def model_hash(model: onnx.ModelProto) -> str:
    """Return a SHA-256 hex digest of a deterministic serialization of the model.

    The same model content always gives the same digest, whatever its size (models too large
    for one protobuf are hashed field by field).
    """
    digest = hashlib.sha256()
    _hash_message(digest, model)
    return digest.hexdigest()


def _hash_message(digest: hashlib._Hash, message: object) -> None:
    size = serialized_size(message)
    if size <= _HASH_CHUNK_BYTES:
        data = message.SerializeToString(deterministic=True)  # type: ignore[attr-defined]
        digest.update(b"m" + len(data).to_bytes(8, "little") + data)
        return
    digest.update(b"{")
    for field, value in message.ListFields():  # type: ignore[attr-defined]
        digest.update(field.number.to_bytes(4, "little"))
        items = value if is_repeated(field) else [value]
        for item in items:
            if field.type == field.TYPE_MESSAGE:
                _hash_message(digest, item)
            else:
                raw = item if isinstance(item, bytes) else repr(item).encode()
                digest.update(b"v" + len(raw).to_bytes(8, "little") + raw)
    digest.update(b"}")
