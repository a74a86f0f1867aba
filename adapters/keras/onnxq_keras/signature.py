"""What to export: a traceable callable, its input signature (batch axis dynamic) and the names
the ONNX inputs and outputs get."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnxq.errors import AdapterError

from . import _tf

_INVALID = re.compile(r"[^A-Za-z0-9_.\-/]")


@dataclass
class Target:
    """A framework object reduced to ``call(list_of_tensors) -> outputs``.

    Attributes:
        kind: what the user passed ("Functional model", "subclassed model", "tf.function", ...).
        call: traced inside a ``tf.function``; takes the input tensors in signature order.
        input_names: ONNX input names, in signature order (``None`` until known).
        specs: shape/dtype per input (``None`` until derived from example inputs).
        output_names: names the framework gives its outputs, when it gives any.
        structure: how the model wants its inputs: "single", "list" or "dict".
        model_keys: the model's own input keys when ``structure`` is "dict".
    """

    kind: str
    call: Callable[[list[Any]], Any]
    input_names: list[str] | None = None
    specs: list[Any] | None = None
    output_names: list[str] | None = None
    structure: str = "single"
    model_keys: list[str] | None = None
    notes: list[str] = field(default_factory=list)


def clean_name(name: str, fallback: str) -> str:
    """A name valid for TF placeholders and readable in ONNX: ``image:0`` -> ``image``,
    characters TF refuses -> ``_``; an automatic Keras name (``keras_tensor_3``) -> ``fallback``."""
    name = str(name).split(":")[0]
    if not name or name.startswith("keras_tensor"):
        return fallback
    name = _INVALID.sub("_", name)
    return name if re.match(r"[A-Za-z0-9.]", name) else f"x{name}"


def unique(names: Sequence[str], taken: Sequence[str] = ()) -> list[str]:
    seen = set(taken)
    out = []
    for name in names:
        candidate, number = name, 1
        while candidate in seen:
            candidate, number = f"{name}_{number}", number + 1
        seen.add(candidate)
        out.append(candidate)
    return out


def target_of(obj: Any) -> Target:
    """The export target of a Keras model, ``tf.function``, ConcreteFunction or loaded SavedModel."""
    tf, keras = _tf.tf(), _tf.keras()
    if isinstance(obj, keras.Model):
        return _keras_target(obj)
    if isinstance(obj, tf.types.experimental.ConcreteFunction):
        return _concrete_target(obj, "ConcreteFunction")
    if isinstance(obj, tf.types.experimental.GenericFunction):
        return _function_target(obj)
    signatures = getattr(obj, "signatures", None)
    if signatures is not None and _tf.from_framework(obj):
        if "serving_default" not in signatures:
            found = ", ".join(sorted(signatures)) or "none"
            raise AdapterError(f"the SavedModel has no 'serving_default' signature (found: {found}); "
                               "pass the tf.function to export instead")
        return _concrete_target(signatures["serving_default"], "SavedModel serving signature")
    raise AdapterError(f"onnxq-keras cannot export a {type(obj).__name__}: pass a keras.Model, a "
                       "tf.function with an input_signature, or a SavedModel")


def _keras_target(model: Any) -> Target:
    inputs = _safe_attr(model, "inputs")
    functional = bool(inputs)
    kind = (type(model).__name__ if type(model).__name__ in ("Sequential", "Functional")
            else "subclassed model") + f" {model.name!r}"
    struct = getattr(model, "_inputs_struct", None)
    target = Target(kind=kind, call=None)  # type: ignore[arg-type]
    if functional:
        names = unique([clean_name(t.name, "input" if len(inputs) == 1 else f"input_{i}")
                        for i, t in enumerate(inputs)])
        if isinstance(struct, Mapping):
            # dict inputs: keys of the Input structure, in model.inputs order
            key_of = {id(v): k for k, v in struct.items()}
            names = unique([clean_name(key_of.get(id(t), n), n) for t, n in zip(inputs, names)])
            target.structure = "dict"
            target.model_keys = [key_of.get(id(t), n) for t, n in zip(inputs, names)]
        else:
            target.structure = "single" if len(inputs) == 1 else "list"
        target.input_names = names
        target.specs = [_spec(tuple(t.shape), t.dtype, name) for t, name in zip(inputs, names)]
        output_names = _safe_attr(model, "output_names")
        if not output_names and type(model).__name__ == "Sequential" and model.layers:
            output_names = [model.layers[-1].name]
        target.output_names = [clean_name(n, f"output_{i}") for i, n in enumerate(output_names or [])] or None

    def call(tensors: list[Any]) -> Any:
        if target.structure == "dict":
            keys = target.model_keys or target.input_names or []
            return model(dict(zip(keys, tensors)), training=False)
        if target.structure == "list":
            return model(list(tensors), training=False)
        return model(tensors[0], training=False)

    target.call = call
    return target


def _function_target(fn: Any) -> Target:
    signature = getattr(fn, "input_signature", None)
    target = Target(kind="tf.function", call=lambda tensors: fn(*tensors), structure="list")
    if signature:
        flat = list(signature)
        if not all(hasattr(s, "shape") and hasattr(s, "dtype") for s in flat):
            raise AdapterError("the tf.function's input_signature must be a flat list of tf.TensorSpec")
        names = unique([clean_name(s.name or "", f"input_{i}" if len(flat) > 1 else "input")
                        for i, s in enumerate(flat)])
        target.input_names = names
        target.specs = [_spec(tuple(s.shape), s.dtype, n, batch_dynamic=False) for s, n in zip(flat, names)]
    return target


def _concrete_target(fn: Any, kind: str) -> Target:
    args, kwargs = fn.structured_input_signature
    if args and kwargs:
        raise AdapterError(f"the {kind} mixes positional and keyword inputs; wrap it in a tf.function")
    if kwargs:
        keys = list(kwargs)
        specs = [kwargs[k] for k in keys]
        names = unique([clean_name(k, f"input_{i}") for i, k in enumerate(keys)])

        def call(tensors: list[Any]) -> Any:
            return fn(**dict(zip(keys, tensors)))
    else:
        specs = list(args)
        names = unique([clean_name(s.name or "", f"input_{i}") for i, s in enumerate(specs)])

        def call(tensors: list[Any]) -> Any:
            return fn(*tensors)
    target = Target(kind=kind, call=call, input_names=names, structure="list")
    target.specs = [_spec(tuple(s.shape), s.dtype, n, batch_dynamic=False) for s, n in zip(specs, names)]
    return target


def _safe_attr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # Keras raises on .inputs / .output_names of unbuilt models
        return None


def _spec(shape: tuple[Any, ...], dtype: Any, name: str, *, batch_dynamic: bool = True) -> Any:
    tf = _tf.tf()
    dims = [None if d is None else int(d) for d in shape]
    if batch_dynamic and dims:
        dims[0] = None
    return tf.TensorSpec(dims, tf.as_dtype(dtype), name=name)


def specs_from_arrays(arrays: list[np.ndarray], names: list[str]) -> list[Any]:
    """Signature of example inputs: their shapes with the batch axis dynamic; float64 -> float32."""
    specs = []
    for array, name in zip(arrays, names):
        dtype = np.float32 if array.dtype == np.float64 else array.dtype
        if array.ndim == 0:
            raise AdapterError(f"example input {name!r} is a scalar; inputs need a batch axis")
        specs.append(_spec(array.shape, dtype, name))
    return specs


def with_dynamic_batch(specs: list[Any], dynamic: bool) -> list[Any]:
    tf = _tf.tf()
    if not dynamic:
        return specs
    return [tf.TensorSpec([None, *list(s.shape)[1:]] if s.shape.rank else s.shape, s.dtype, name=s.name)
            for s in specs]


def describe(spec: Any) -> str:
    dims = ["None" if d is None else str(d) for d in spec.shape.as_list()] if spec.shape.rank is not None else ["..."]
    return f"{spec.dtype.name} ({', '.join(dims)})"
