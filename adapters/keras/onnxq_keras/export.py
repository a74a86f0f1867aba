"""Export through ``tf2onnx.convert.from_function`` and verify ONNX Runtime against TF/Keras."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxq.adapters import ExportResult
from onnxq.errors import AdapterError, OnnxqError
from onnxq.names import FRAMEWORK_NAME_KEY
from onnxq.runtime import create_session, run
from onnxq.summary import TensorInfo

from . import _tf
from .data import LABELS_KEY, owns, remember_nchw
from .signature import Target, clean_name, describe, specs_from_arrays, target_of, unique, with_dynamic_batch

logger = logging.getLogger(__name__)

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 13, 18, 17  # what tf2onnx 1.16/1.17 can write
_LABEL_KEYS = ("label", "labels")  # keys of data dicts that hold labels, not inputs
EXAMPLE_SAMPLES = 8  # samples taken from the data to verify the export
RANDOM_BATCH = 2  # batch of the random inputs used when there are no example inputs or data


@dataclass(frozen=True)
class ExportOptions:
    """Options of the Keras export (``export_options=`` of ``onnxq.quantize``).

    Attributes:
        opset: ONNX opset, 13 to 18 (what tf2onnx supports).
        input_signature: ``tf.TensorSpec`` per input, overriding what is derived from the model.
        input_names: ONNX input names (default: the Keras input names).
        output_names: ONNX output names (default: the Keras output names).
        dynamic_batch: make the first axis of every input dynamic.
        inputs_as_nchw: ``True`` (every 4-D input) or a list of input names that ONNX takes as NCHW
            instead of Keras's NHWC; framework data is transposed for them on the way in.
        atol, rtol: verification tolerance: ``max|keras - ort| <= atol + rtol * max|keras|``.
        verify: compare ONNX Runtime with Keras on the example inputs.
    """

    opset: int = DEFAULT_OPSET
    input_signature: Sequence[Any] | None = None
    input_names: Sequence[str] | None = None
    output_names: Sequence[str] | None = None
    dynamic_batch: bool = True
    inputs_as_nchw: bool | Sequence[str] = False
    atol: float = 1e-4
    rtol: float = 1e-3
    verify: bool = True

    def __post_init__(self) -> None:
        if self.opset is None:
            object.__setattr__(self, "opset", DEFAULT_OPSET)
        if isinstance(self.opset, bool) or not isinstance(self.opset, (int, np.integer)):
            raise AdapterError(f"opset must be an integer, got {self.opset!r}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise AdapterError(f"opset {self.opset} is not supported by tf2onnx: choose {MIN_OPSET} to "
                               f"{MAX_OPSET} (default {DEFAULT_OPSET})")
        if self.atol < 0 or self.rtol < 0:
            raise AdapterError("atol and rtol must be >= 0")
        for name in ("input_names", "output_names"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, [value])

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> ExportOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise AdapterError(f"unknown Keras export option(s) {', '.join(map(repr, unknown))}; "
                               f"known: {', '.join(sorted(known))}")
        return cls(**options)


def export(obj: Any, *, example_inputs: Any = None, data: Any = None,
           **options: Any) -> ExportResult:
    """Export ``obj`` to ONNX with tf2onnx and check ONNX Runtime against TF on example inputs.

    Example inputs come from ``example_inputs``, else the first batch of ``data``, else random
    values drawn from the signature (noted in the result).
    """
    opts = ExportOptions.from_mapping(options)
    tf = _tf.tf()
    import tf2onnx

    target = target_of(obj)
    notes: list[str] = []
    raw = example_inputs if example_inputs is not None else _first_batch(data)
    source = "example_inputs" if example_inputs is not None else "the first batch of the data"
    examples = _as_arrays(raw) if raw is not None else None

    _resolve_signature(target, opts, examples, notes)
    assert target.specs is not None and target.input_names is not None
    arrays = (_order(examples, target) if examples is not None else None)
    if arrays is not None:
        _check_examples(arrays, target, source)
    else:
        arrays = _random_inputs(target.specs)
        notes.append("No example inputs or data: the export was verified on random inputs.")

    output_names: list[str] = []

    def serve(*tensors: Any) -> dict[str, Any]:
        result = target.call(list(tensors))
        names, flat = _flatten_outputs(result, target.output_names, opts.output_names, target.input_names)
        output_names[:] = names
        return dict(zip(names, flat))

    function = tf.function(serve, input_signature=target.specs)
    nchw = _nchw_inputs(opts.inputs_as_nchw, target)
    tf2onnx_logger = logging.getLogger("tf2onnx")
    level = tf2onnx_logger.level
    tf2onnx_logger.setLevel(logging.CRITICAL)  # its errors are re-raised below as one line
    try:
        proto, _ = tf2onnx.convert.from_function(
            function, input_signature=target.specs, opset=int(opts.opset),
            inputs_as_nchw=[f"{n}:0" for n in nchw] or None)
    except OnnxqError:
        raise
    except Exception as exc:
        raise AdapterError(f"tf2onnx could not export the {target.kind}: {_tf.first_line(exc)}") from exc
    finally:
        tf2onnx_logger.setLevel(level)
    _check_converted(proto, target.kind)
    if len(proto.graph.input) != len(target.input_names):
        extra = [i.name for i in proto.graph.input][len(target.input_names):]
        raise AdapterError(f"the {target.kind} captures eager tensors that tf2onnx turns into extra inputs "
                           f"({', '.join(extra)}); hold such constants in tf.Variable (or a tf.Module)")
    _clean_io_names(proto, target.input_names, output_names)
    _name_layers(proto, obj)
    if nchw:
        notes.append(f"Inputs {', '.join(nchw)} are NCHW in ONNX (Keras: NHWC); framework data is "
                     "transposed for them, numpy data must already be NCHW.")
    remember_nchw(target.input_names, nchw)

    max_error = None
    if opts.verify:
        max_error = _verify(function, proto, arrays, target, nchw, opts)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), int(opts.opset))
    return ExportResult(model=proto, exporter=f"tf2onnx {tf2onnx.__version__}", opset=opset,
                        max_abs_error=max_error, notes=target.notes + notes)


def describe_inputs(obj: Any, **options: Any) -> list[TensorInfo] | None:
    """The ONNX inputs :func:`export` gives ``obj`` (names, shapes, dtypes), read from the Keras
    model or SavedModel signature without exporting; ``None`` when only data can tell (a
    subclassed model that was never built on Keras inputs)."""
    opts = ExportOptions.from_mapping(options)
    target = target_of(obj)
    if target.specs is None and opts.input_signature is None:
        return None
    _resolve_signature(target, opts, None, [])
    nchw = set(_nchw_inputs(opts.inputs_as_nchw, target))
    infos = []
    for name, spec in zip(target.input_names or [], target.specs or []):
        dims: list[int | str | None] | None = spec.shape.as_list() if spec.shape.rank is not None else None
        if dims is not None and name in nchw:
            dims = [dims[0], dims[3], dims[1], dims[2]]
        infos.append(TensorInfo(name=name, dtype=np.dtype(spec.dtype.as_numpy_dtype).name, shape=dims))
    return infos


# --------------------------------------------------------------------------- signature


def _resolve_signature(target: Target, opts: ExportOptions, examples: Any, notes: list[str]) -> None:
    if opts.input_signature is not None:
        specs = list(opts.input_signature)
        if not all(hasattr(s, "shape") and hasattr(s, "dtype") for s in specs):
            raise AdapterError("input_signature must be a list of tf.TensorSpec")
        names = [clean_name(s.name or "", f"input_{i}" if len(specs) > 1 else "input") for i, s in enumerate(specs)]
        if target.input_names and len(target.input_names) == len(specs) and not any(s.name for s in specs):
            names = target.input_names
        target.input_names = unique(names)
        target.specs = [_tf.tf().TensorSpec(s.shape, s.dtype, name=n) for s, n in zip(specs, target.input_names)]
        if target.structure == "single" and len(specs) > 1:
            target.structure = "list"
    elif target.specs is None:
        if examples is None:
            raise AdapterError(f"the {target.kind} has no input signature (it was never built on Keras "
                               "inputs): pass example_inputs=..., calibration data, or "
                               "export_options={'input_signature': [tf.TensorSpec(...)]}")
        if isinstance(examples, dict):
            keys = list(examples)
            target.model_keys = keys
            target.structure = "dict"
            target.input_names = unique([clean_name(k, f"input_{i}") for i, k in enumerate(keys)])
            arrays = [examples[k] for k in keys]
        else:
            target.input_names = ["input"] if len(examples) == 1 else [f"input_{i}" for i in range(len(examples))]
            target.structure = "single" if len(examples) == 1 else "list"
            arrays = list(examples)
        target.specs = specs_from_arrays(arrays, target.input_names)
        notes.append("Input signature taken from the example inputs (batch axis dynamic).")
    if opts.input_names is not None:
        if len(opts.input_names) != len(target.input_names or []):
            raise AdapterError(f"input_names has {len(opts.input_names)} names; the model has "
                               f"{len(target.input_names or [])} inputs")
        if target.structure == "dict" and not target.model_keys:
            target.model_keys = list(target.input_names or [])
        target.input_names = unique([clean_name(n, f"input_{i}") for i, n in enumerate(opts.input_names)])
        target.specs = [_tf.tf().TensorSpec(s.shape, s.dtype, name=n)
                        for s, n in zip(target.specs or [], target.input_names)]
    target.specs = with_dynamic_batch(target.specs or [], opts.dynamic_batch)


def _nchw_inputs(option: bool | Sequence[str], target: Target) -> list[str]:
    names = target.input_names or []
    if option is True:
        return [n for n, s in zip(names, target.specs or []) if s.shape.rank == 4]
    if not option:
        return []
    chosen = [option] if isinstance(option, str) else list(option)
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise AdapterError(f"inputs_as_nchw names unknown input(s) {', '.join(unknown)}; inputs: {', '.join(names)}")
    return chosen


# --------------------------------------------------------------------------- example inputs


def _first_batch(data: Any) -> Any:
    """The inputs of the first batch of calibration data (any source onnxq or this adapter reads),
    at most ``EXAMPLE_SAMPLES`` samples; ``None`` when the data cannot be peeked at cheaply."""
    if data is None:
        return None
    try:
        if isinstance(data, (str, Path)):
            path = Path(data)
            if path.suffix.lower() != ".npz" or not path.is_file():
                return None
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k][:EXAMPLE_SAMPLES] for k in archive.files if k != LABELS_KEY}
        if owns(data):
            return _first_framework_batch(data)
        if isinstance(data, Mapping):
            return {k: np.asarray(v)[:EXAMPLE_SAMPLES] for k, v in data.items() if k != LABELS_KEY}
        if isinstance(data, np.ndarray):
            return data[:EXAMPLE_SAMPLES]
        if isinstance(data, (list, tuple)) and data and isinstance(data[0], Mapping):
            return {k: v for k, v in data[0].items() if k != LABELS_KEY}
    except OnnxqError:
        raise
    except Exception as exc:  # peeking is best effort: verification then uses random inputs
        logger.debug("could not take example inputs from the data: %s", exc)
    return None


def _first_framework_batch(data: Any) -> Any:
    tf, keras = _tf.tf(), _tf.keras()
    from .data import _is_batched, _to_numpy

    if isinstance(data, tf.data.Dataset):
        pipeline = data if _is_batched(data) else data.batch(EXAMPLE_SAMPLES)
        element = _to_numpy(next(iter(pipeline.take(1))))
    elif isinstance(data, keras.utils.PyDataset):
        element = _to_numpy(data[0])
    else:
        element = _to_numpy(data)
    if isinstance(element, tuple) and len(element) in (1, 2, 3):  # x, (x,), (x, y), (x, y, w)
        element = element[0]
    if isinstance(element, Mapping):
        return {k: np.asarray(v)[:EXAMPLE_SAMPLES] for k, v in element.items() if k != LABELS_KEY}
    if isinstance(element, (list, tuple)):
        return [np.asarray(v)[:EXAMPLE_SAMPLES] for v in element]
    return np.asarray(element)[:EXAMPLE_SAMPLES]


def _as_arrays(raw: Any) -> dict[str, np.ndarray] | list[np.ndarray]:
    tf = _tf.tf()

    def array(value: Any) -> np.ndarray:
        value = value.numpy() if tf.is_tensor(value) else np.asarray(value)
        return value.astype(np.float32) if value.dtype == np.float64 else value

    if isinstance(raw, Mapping):
        return {str(k): array(v) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return [array(v) for v in raw]
    return [array(raw)]


def _order(examples: dict[str, np.ndarray] | list[np.ndarray], target: Target) -> list[np.ndarray]:
    names = target.input_names or []
    if isinstance(examples, dict):
        keys = target.model_keys or names
        rest = [k for k in examples if k not in _LABEL_KEYS]
        if len(names) == 1 and names[0] not in examples and keys[0] not in examples and len(rest) == 1:
            logger.debug("example input %r is read as the model's only input %r", rest[0], names[0])
            return [examples[rest[0]]]
        found = []
        for name, key in zip(names, keys):
            if name in examples:
                found.append(examples[name])
            elif key in examples:
                found.append(examples[key])
            else:
                raise AdapterError(f"example inputs have no {name!r}; the model's inputs are "
                                   f"{', '.join(names)} (got {', '.join(examples)})")
        return found
    if len(examples) != len(names):
        raise AdapterError(f"{len(examples)} example input(s) for a model with {len(names)} input(s) "
                           f"({', '.join(names)})")
    return list(examples)


def _check_examples(arrays: list[np.ndarray], target: Target, source: str) -> None:
    for array, spec, name in zip(arrays, target.specs or [], target.input_names or []):
        expected = spec.shape.as_list() if spec.shape.rank is not None else None
        bad_shape = expected is not None and (
            array.ndim != len(expected) or any(e is not None and e != d for e, d in zip(expected, array.shape)))
        if bad_shape:
            raise AdapterError(f"{source}: input {name!r} has shape {tuple(array.shape)}, the model "
                               f"expects {describe(spec)}")
        kind, want = array.dtype.kind, np.dtype(spec.dtype.as_numpy_dtype).kind
        if (kind == "f") != (want == "f"):
            raise AdapterError(f"{source}: input {name!r} is {array.dtype}, the model expects {spec.dtype.name}")


def _random_inputs(specs: list[Any]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = []
    for spec in specs:
        dims = spec.shape.as_list() if spec.shape.rank is not None else [None]
        shape = [RANDOM_BATCH if i == 0 and d is None else (8 if d is None else d) for i, d in enumerate(dims)]
        dtype = np.dtype(spec.dtype.as_numpy_dtype)
        if dtype.kind == "f":
            arrays.append(rng.standard_normal(shape).astype(dtype))
        else:
            arrays.append(np.zeros(shape, dtype=dtype))
    return arrays


# --------------------------------------------------------------------------- outputs


def _flatten_outputs(result: Any, framework_names: list[str] | None, user_names: Sequence[str] | None,
                     input_names: list[str] | None) -> tuple[list[str], list[Any]]:
    if isinstance(result, Mapping):
        names = [clean_name(k, f"output_{i}") for i, k in enumerate(result)]
        flat = list(result.values())
    else:
        flat = list(result) if isinstance(result, (list, tuple)) else [result]
        if framework_names and len(framework_names) == len(flat):
            names = list(framework_names)
        else:
            names = ["output"] if len(flat) == 1 else [f"output_{i}" for i in range(len(flat))]
    if user_names is not None:
        if len(user_names) != len(flat):
            raise AdapterError(f"output_names has {len(user_names)} names; the model has {len(flat)} outputs")
        names = [clean_name(n, f"output_{i}") for i, n in enumerate(user_names)]
    return unique(names, taken=input_names or []), flat


# --------------------------------------------------------------------------- after conversion


def _check_converted(proto: onnx.ModelProto, kind: str) -> None:
    """tf2onnx keeps TF ops it cannot convert in the graph; name them instead of failing later."""
    known = {"ai.onnx.ml", "com.microsoft"}
    left = sorted({n.op_type for n in proto.graph.node
                   if (n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type))
                   or (n.domain not in ("", "ai.onnx") and n.domain not in known)})
    if left:
        raise AdapterError(f"tf2onnx could not export the {kind}: TF op(s) without an ONNX "
                           f"equivalent: {', '.join(left)}")


def _clean_io_names(proto: onnx.ModelProto, input_names: list[str], output_names: list[str]) -> None:
    """Rename graph inputs/outputs tf2onnx wrote as ``name:0`` to ``name``."""
    rename = {}
    for value, wanted in zip(proto.graph.input, input_names):
        if value.name != wanted:
            rename[value.name] = wanted
    for value, wanted in zip(proto.graph.output, sorted(output_names)):
        if value.name != wanted and value.name.split(":")[0] in output_names:
            rename[value.name] = value.name.split(":")[0]
    if not rename:
        return
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = rename.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]


_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}


def _name_layers(proto: onnx.ModelProto, obj: Any) -> None:
    """Record in each node's metadata the Keras layer it came from (``onnxq.names``), read from
    the TF scopes in tf2onnx's names (``cnn_1/stem_conv_1/convolution``); a Conv/MatMul/Gemm
    is named after its weight's layer (a folded BatchNorm gives the Conv its own name)."""
    if not isinstance(obj, _tf.keras().Model):
        return
    initializers = {t.name for t in proto.graph.initializer}
    for node in proto.graph.node:
        index = _WEIGHT_INPUT.get(node.op_type)
        weight = node.input[index] if index is not None and len(node.input) > index else ""
        layer = (_layer_path(weight.split(":")[0], obj) if weight in initializers else None) \
            or _layer_path(node.name, obj)
        if layer:
            entry = node.metadata_props.add()
            entry.key, entry.value = FRAMEWORK_NAME_KEY, layer


def _layer_path(name: str, model: Any) -> str | None:
    """``inner/dense`` for ``outer_1/inner_1/dense_1/MatMul`` (TF may suffix each scope ``_<n>``)."""
    parts = name.split("/")
    if len(parts) < 3 or not re.fullmatch(re.escape(model.name) + r"(_\d+)?", parts[0]):
        return None
    suffixed = parts[0] != model.name
    found: list[str] = []
    container = model
    for scope in parts[1:-1]:
        layers = {layer.name: layer for layer in getattr(container, "layers", None) or []}
        bare = re.sub(r"_\d+$", "", scope)
        choice = [bare, scope] if suffixed else [scope, bare]
        match = next((c for c in choice if c in layers), None)
        if match is None:
            break
        found.append(match)
        container = layers[match]
    return "/".join(found) or None


def _verify(function: Any, proto: onnx.ModelProto, arrays: list[np.ndarray], target: Target,
            nchw: list[str], opts: ExportOptions) -> float:
    tf = _tf.tf()
    specs = target.specs or []
    arrays = [a.astype(np.dtype(s.dtype.as_numpy_dtype)) for a, s in zip(arrays, specs)]
    try:
        expected = function(*[tf.constant(a) for a in arrays])
    except Exception as exc:
        raise AdapterError(f"the {target.kind} fails on the example inputs: {_tf.first_line(exc)}") from exc
    feeds = {}
    for graph_input, array, name in zip(proto.graph.input, arrays, target.input_names or []):
        feeds[graph_input.name] = array.transpose(0, 3, 1, 2).copy() if name in nchw else array
    try:
        session = create_session(proto)
        got = dict(zip([o.name for o in session.get_outputs()], run(session, feeds)))
    except OnnxqError as exc:
        raise AdapterError(f"the exported {target.kind} does not run in ONNX Runtime: {exc}") from exc
    worst = 0.0
    for name, reference in expected.items():
        reference = np.asarray(reference)
        actual = got.get(name)
        if actual is None:
            raise AdapterError(f"the exported model has no output {name!r} (outputs: {', '.join(got)})")
        if actual.shape != reference.shape:
            raise AdapterError(f"output {name!r}: ONNX Runtime gives shape {actual.shape}, Keras {reference.shape}")
        if reference.dtype.kind not in "fc":
            mismatch = float(np.max(np.abs(actual.astype(np.float64) - reference))) if reference.size else 0.0
            error, scale = mismatch, 0.0
        else:
            error = float(np.max(np.abs(actual.astype(np.float64) - reference))) if reference.size else 0.0
            scale = float(np.max(np.abs(reference))) if reference.size else 0.0
        limit = opts.atol + opts.rtol * scale
        if not np.isfinite(error) or error > limit:
            raise AdapterError(f"ONNX Runtime disagrees with Keras on output {name!r}: max |diff| = {error:.3g} "
                               f"> tolerance {limit:.3g} (atol {opts.atol:g} + rtol {opts.rtol:g} x max|keras| "
                               f"{scale:.3g}) on {len(arrays[0])} sample(s)")
        worst = max(worst, error)
    return worst
