"""nn.Module / ExportedProgram / TorchScript -> one self-contained, verified ONNX ModelProto.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is tried first; when
``torch.export`` cannot trace the model the TorchScript exporter is the fallback and the reason
is kept in ``ExportResult.notes``. Export happens in a private temporary folder; a side
``.data`` file is loaded back so the result is one ModelProto.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from onnxq.adapters import ExportResult
from onnxq.errors import AdapterError, OnnxqError

from .inputs import ExampleInputs, normalize
from .verify import flatten_outputs, verify

logger = logging.getLogger(__name__)

DYNAMO = "torch.onnx dynamo"
TORCHSCRIPT = "torch.onnx TorchScript"

#: Export options (``export_options=`` of ``onnxq.quantize``) and their meaning.
EXPORT_OPTIONS: dict[str, str] = {
    "input_names": "ONNX input names (default: forward's parameter names or the dict keys)",
    "output_names": "ONNX output names (default: 'output', 'output_<i>' or the keys of a returned dict)",
    "dynamic_batch": "make axis 0 of every input dynamic (default True)",
    "dynamic_axes": "more dynamic axes: {input_name: {axis: 'dim_name'}} or {input_name: [axis, ...]}",
    "opset": "ONNX opset to write (default: the exporter's); a different written opset is converted or refused",
    "exporter": "'auto' (dynamo, TorchScript fallback; default), 'dynamo' or 'torchscript'",
    "rtol": "relative tolerance of the ONNX Runtime vs torch check (default 1e-4)",
    "atol": "absolute tolerance, scaled by max(1, max |output|) (default 1e-4)",
    "verify": "run the ONNX Runtime vs torch check (default True)",
}

_DYNAMO_MIN_OPSET = 18
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(exc: BaseException, limit: int = 240) -> str:
    """An exception as one line: its message and, if different, its root cause."""
    def clean(e: BaseException) -> str:
        text = " ".join(_ANSI.sub("", str(e)).split())
        return f"{type(e).__name__}: {text}" if text else type(e).__name__
    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    head = clean(exc).split(". ")[0]
    text = head if root is exc else f"{head}; caused by {clean(root)}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_options(options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - set(EXPORT_OPTIONS))
    if unknown:
        raise AdapterError(f"unknown torch export option(s) {', '.join(map(repr, unknown))}; "
                           f"known: {', '.join(EXPORT_OPTIONS)}")
    exporter = options.get("exporter", "auto")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise AdapterError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")


@contextlib.contextmanager
def eval_mode(module: Any):
    """Put a module in eval mode and restore its training flags afterwards."""
    if not isinstance(module, torch.nn.Module):
        yield
        return
    flags = {m: m.training for m in module.modules()}
    try:
        module.eval()
    except NotImplementedError:  # torchao / torch.export GraphModules refuse .eval()
        try:
            from torchao.quantization.pt2e import move_exported_model_to_eval
            move_exported_model_to_eval(module)
        except Exception:  # noqa: BLE001 - best effort; an exported graph is already frozen
            pass
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def _dynamic_axes(example: ExampleInputs, options: Mapping[str, Any]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    if options.get("dynamic_batch", True):
        for name, tensor in zip(example.names, example.tensors()):
            if tensor.dim() > 0:
                axes[name] = {0: "batch"}
    for name, spec in (options.get("dynamic_axes") or {}).items():
        if name not in example.names:
            raise AdapterError(f"dynamic_axes names input {name!r}, not one of {', '.join(example.names)}")
        rank = dict(zip(example.names, (t.dim() for t in example.tensors())))[name]
        spec = dict(spec) if isinstance(spec, Mapping) else {int(a): f"{name}_dim{int(a)}" for a in spec}
        for axis, dim in spec.items():
            if not 0 <= int(axis) < rank:
                raise AdapterError(f"dynamic_axes: input {name!r} has rank {rank}, no axis {axis}")
            axes.setdefault(name, {})[int(axis)] = re.sub(r"\W", "_", str(dim))
    return axes


def _dynamic_shapes(example: ExampleInputs, axes: dict[str, dict[int, str]]) -> Any:
    if not axes:
        return None
    dims: dict[str, Any] = {}

    def spec(name: str) -> dict[int, Any] | None:
        if name not in axes:
            return None
        return {a: dims.setdefault(d, torch.export.Dim(d)) for a, d in axes[name].items()}

    if example.kwargs:
        return {param: spec(name) for param, name in zip(example.kwargs, example.names)}
    return tuple(spec(name) for name in example.names)


def _load(path: Path) -> onnx.ModelProto:
    model = onnx.load(str(path), load_external_data=True)  # side .data files are read back in
    return model


def _run_quietly(fn: Any) -> tuple[Any, list[str]]:
    """Call ``fn`` with torch's prints and warnings captured; return its result and the warnings."""
    sink = io.StringIO()
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed" on every export
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(sink):
            warnings.simplefilter("always")
            result = fn()
    finally:
        registration.setLevel(level)
    found = []
    for w in caught:
        if issubclass(w.category, (torch.jit.TracerWarning,)):
            text = " ".join(str(w.message).split())
            if text not in found:
                found.append(text)
    return result, found


def _export_dynamo(model: Any, example: ExampleInputs, axes: dict[str, dict[int, str]],
                   output_names: list[str], opset: int | None, folder: Path) -> onnx.ModelProto:
    path = folder / "dynamo.onnx"
    trace = example
    if axes and example.batch_size() == 1 and not isinstance(model, torch.export.ExportedProgram):
        trace = example.tiled(2)  # torch.export specialises a size-1 axis; trace with 2
    kwargs: dict[str, Any] = dict(
        kwargs=trace.kwargs or None, f=str(path), dynamo=True, external_data=False, verbose=False,
        input_names=example.names, output_names=output_names,
        opset_version=max(opset, _DYNAMO_MIN_OPSET) if opset else None)
    if not isinstance(model, torch.export.ExportedProgram):
        kwargs["dynamic_shapes"] = _dynamic_shapes(trace, axes)
    try:
        _run_quietly(lambda: torch.onnx.export(model, trace.args, **kwargs))
    except Exception as exc:
        if "2GB" not in str(exc) and "2 GB" not in str(exc):
            raise
        kwargs["external_data"] = True  # over the protobuf limit: a side .data file, read back below
        _run_quietly(lambda: torch.onnx.export(model, trace.args, **kwargs))
    return _load(path)


def _export_torchscript(model: Any, example: ExampleInputs, axes: dict[str, dict[int, str]],
                        output_names: list[str], opset: int | None,
                        folder: Path) -> tuple[onnx.ModelProto, list[str]]:
    path = folder / "torchscript.onnx"
    args = tuple(example.tensors())
    if example.kwargs:
        params = list(example.kwargs)
        from .inputs import signature_names
        expected = signature_names(model)[0][: len(params)]
        if params != expected:
            raise AdapterError("the TorchScript exporter passes inputs by position: the named example "
                               f"inputs {params} must be the first parameters of forward {expected}")
    _, warned = _run_quietly(lambda: torch.onnx.export(
        model, args, str(path), dynamo=False, input_names=example.names, output_names=output_names,
        dynamic_axes=axes or None, opset_version=opset or 17))
    return _load(path), warned


def written_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise AdapterError("the exported model declares no default-domain opset")


def _match_opset(model: onnx.ModelProto, opset: int | None, exporter: str,
                 notes: list[str]) -> onnx.ModelProto:
    written = written_opset(model)
    if opset is None or written == opset:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001 - any converter failure is reported the same way
        hint = (" (the dynamo exporter writes opset >= 18: ask for 18 or more, or pass "
                "exporter='torchscript' for an older opset)" if exporter == DYNAMO else "")
        raise AdapterError(f"opset {opset} was requested but {exporter} wrote opset {written} and "
                           f"converting it failed: {one_line(exc, 160)}{hint}") from exc
    notes.append(f"{exporter} wrote opset {written}; converted to the requested opset {opset}")
    return converted


def _output_names(outputs: Any, options: Mapping[str, Any]) -> list[str]:
    names, _ = flatten_outputs(outputs)
    given = options.get("output_names")
    if given is None:
        return names
    given = list(given)
    if len(given) != len(names):
        raise AdapterError(f"output_names has {len(given)} names but the model returns {len(names)} tensors")
    return given


def export_module(model: Any, example_inputs: Any, **options: Any) -> ExportResult:
    """Export ``model`` on ``example_inputs`` and check ONNX Runtime against torch.

    Args:
        model: an ``nn.Module`` (incl. TorchScript ``ScriptModule`` and torchao-converted
            GraphModules) or a ``torch.export.ExportedProgram``.
        example_inputs: a tensor, a tuple of tensors, or a dict of named tensors.
        **options: see :data:`EXPORT_OPTIONS`.

    Raises:
        AdapterError: the model fails on the inputs, neither exporter can export it, the opset
            cannot be met, or ONNX Runtime disagrees with torch beyond tolerance.
    """
    check_options(options)
    program = model if isinstance(model, torch.export.ExportedProgram) else None
    module = program.module() if program is not None else model
    if not isinstance(module, torch.nn.Module):
        raise AdapterError(f"cannot export a {type(model).__name__}: expected a torch.nn.Module")
    kind = type(model).__name__
    example = normalize(example_inputs, module, options.get("input_names"))
    opset = options.get("opset")
    exporter_choice = options.get("exporter", "auto")
    is_script = isinstance(module, torch.jit.ScriptModule)
    notes: list[str] = []
    with eval_mode(module):
        try:
            expected = example.call(module)
        except Exception as exc:  # the model's own error on these inputs (e.g. a wrong shape)
            shapes = ", ".join(f"{n}: {list(t.shape)} {str(t.dtype).replace('torch.', '')}"
                               for n, t in zip(example.names, example.tensors()))
            raise AdapterError(f"{kind} fails on the example inputs ({shapes}): {one_line(exc, 200)}") from exc
        output_names = _output_names(expected, options)
        axes = _dynamic_axes(example, options)
        exporter_used = None
        model_proto = None
        with tempfile.TemporaryDirectory(prefix="onnxq-torch-") as tmp:
            folder = Path(tmp)
            dynamo_error: str | None = None
            if is_script and exporter_choice == "dynamo":
                raise AdapterError("a TorchScript module can only be exported with the TorchScript exporter")
            if not is_script and exporter_choice in ("auto", "dynamo"):
                try:
                    model_proto = _export_dynamo(program or module, example, axes, output_names, opset, folder)
                    exporter_used = DYNAMO
                except OnnxqError:
                    raise
                except Exception as exc:  # any torch.export / conversion failure -> fallback
                    dynamo_error = one_line(exc)
                    if exporter_choice == "dynamo":
                        raise AdapterError(f"the dynamo exporter failed on {kind}: {dynamo_error}") from exc
                    logger.info("dynamo export failed, trying the TorchScript exporter: %s", dynamo_error)
            if model_proto is None:
                try:
                    model_proto, warned = _export_torchscript(module, example, axes, output_names, opset, folder)
                except OnnxqError:
                    raise
                except Exception as exc:
                    first = f"torch.export: {dynamo_error}; " if dynamo_error else ""
                    raise AdapterError(f"cannot export {kind} to ONNX: {first}TorchScript exporter: "
                                       f"{one_line(exc)}") from exc
                exporter_used = TORCHSCRIPT
                if is_script:
                    notes.append("TorchScript module: exported with the TorchScript exporter")
                elif dynamo_error:
                    notes.append(f"torch.export could not trace {kind} ({dynamo_error}); "
                                 "fell back to the TorchScript exporter")
                for text in warned[:3]:
                    notes.append(f"TorchScript tracing warning: {text}")
        assert exporter_used is not None
        model_proto = _match_opset(model_proto, opset, exporter_used, notes)
        _note_static_batch(model_proto, axes, notes)
        max_error = None
        if options.get("verify", True):
            max_error = verify(model_proto, example, expected, output_names, rtol=options.get("rtol", 1e-4),
                               atol=options.get("atol", 1e-4))
    return ExportResult(model=model_proto, exporter=exporter_used, opset=written_opset(model_proto),
                        max_abs_error=max_error, notes=notes)


def _note_static_batch(model: onnx.ModelProto, axes: dict[str, dict[int, str]], notes: list[str]) -> None:
    for value in model.graph.input:
        if value.name not in axes:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            notes.append(f"input {value.name!r} has a fixed batch size of {dims[0].dim_value} "
                         "(the exporter kept it static)")


def example_from_numpy(arrays: Mapping[str, np.ndarray], names: list[str], limit: int = 8) -> Any:
    """Plain numpy data (dict of arrays, one sample axis) -> example inputs for ``names``."""
    keys = [k for k in arrays if k != "labels"]
    if set(names) <= set(keys) and names:
        chosen = {n: arrays[n] for n in names}
    elif len(keys) == len(names) or not names:
        chosen = dict(zip(names or keys, (arrays[k] for k in keys)))
    else:
        raise AdapterError(f"the data has {', '.join(keys)}; the model takes {', '.join(names)}")
    tensors = {n: torch.from_numpy(np.ascontiguousarray(np.asarray(a)[:limit])) for n, a in chosen.items()}
    for name, t in tensors.items():
        if t.dtype == torch.float64:
            tensors[name] = t.float()
    return tensors if len(tensors) > 1 else next(iter(tensors.values()))
