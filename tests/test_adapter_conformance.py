"""Adapter conformance: every installed adapter (entry-point group ``onnxq.adapters``) passes the same checks.

An adapter claims its own model files, objects and data and nobody else's, exports a tiny model to a
valid ONNX model whose outputs match the framework, describes its inputs (``describe_inputs``, which
lets onnxq check input names before a slow export), refuses bad input with onnxq's one-line error type,
and never imports another framework.

An installed adapter that does not load, or has no case in :data:`CASES`, fails these checks; one the
user switched off (``ONNXQ_DISABLE_ADAPTERS``) is checked all the same (nothing is skipped).

The checks need a tiny model per framework: :data:`CASES` maps an adapter's name to a function
building its :class:`Case`. A third-party adapter is checked by adding its case there (the checks
that need no model -- the protocol, refusing plain objects and numpy data -- run without it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from onnxq.adapters import DISABLE_ENV, ENTRY_POINT_GROUP, Adapter, ExportResult, available_adapters, describe_inputs
from onnxq.errors import OnnxqError
from onnxq.feeds import load_data

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

HERE = Path(__file__).resolve().parent
#: The tiny models' input: 6 features, 8 samples.
X = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
TOLERANCE = 1e-4  # absolute and relative, framework vs ONNX Runtime


@dataclass
class Case:
    """What the checks need from one framework.

    Attributes:
        modules: the framework's top-level modules (no other adapter may import them).
        model: a tiny framework model ``x [N, 6] float32 -> [N, 3]``.
        expected: the framework's outputs on :data:`X`.
        file: that model saved in a file format the adapter loads.
        data: :data:`X` as a framework data object (a DataLoader, a tf.data.Dataset, ...).
        bad_inputs: example inputs that do not fit ``model`` (the export must refuse them).
    """

    modules: tuple[str, ...]
    model: Any
    expected: np.ndarray
    file: Path
    data: Any
    bad_inputs: Any


def _torch_case(folder: Path) -> Case:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    model = Tiny().eval()
    example = torch.from_numpy(X)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, folder / "tiny.pt2")
    with torch.no_grad():
        expected = model(example).numpy()
    return Case(modules=("torch",), model=model, expected=expected, file=folder / "tiny.pt2",
                data=DataLoader(TensorDataset(example), batch_size=4), bad_inputs=torch.rand(2, 5, 7))


def _keras_case(folder: Path) -> Case:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    x = keras.Input((6,), name="x")
    out = keras.layers.Dense(3, name="out")(keras.layers.Dense(8, activation="relu")(x))
    model = keras.Model(x, out, name="tiny")
    model.save(folder / "tiny.keras")
    return Case(modules=("tensorflow", "keras", "tf_keras", "tf2onnx"), model=model,
                expected=np.asarray(model(X)), file=folder / "tiny.keras",
                data=tf.data.Dataset.from_tensor_slices(X).batch(4), bad_inputs=np.zeros((2, 5, 7), np.float32))


#: Adapter name -> builds its case in a given folder.
CASES: dict[str, Callable[[Path], Case]] = {"torch": _torch_case, "keras": _keras_case}
#: Top-level modules of the frameworks an adapter might import: an adapter may import only its own.
FRAMEWORK_MODULES = frozenset({"torch", "tensorflow", "keras", "tf_keras", "tf2onnx", "jax", "flax", "paddle",
                               "mxnet"})
#: The installed adapters, by entry-point name (loaded only by the fixtures).
NAMES = sorted({entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)})


@pytest.fixture(scope="module")
def adapters() -> dict[str, Adapter]:
    """Every installed adapter: the user's switch (``ONNXQ_DISABLE_ADAPTERS``) picks which ones a run
    uses, not which ones must conform, so it is lifted while they load."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(DISABLE_ENV, raising=False)
        return {a.name: a for a in available_adapters()}


@pytest.fixture(scope="module")
def cases(adapters: dict[str, Adapter], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """A case for every installed adapter that has one (built once for the module)."""
    return {name: CASES[name](tmp_path_factory.mktemp(name)) for name in adapters if name in CASES}


@pytest.fixture(scope="module")
def exports(adapters: dict[str, Adapter], cases: dict[str, Case]) -> dict[str, ExportResult]:
    """Each adapter's export of its tiny model (once: a Keras export takes seconds)."""
    return {name: adapters[name].export(case.model, example_inputs=X) for name, case in cases.items()}


def _adapter(adapters: dict[str, Adapter], name: str) -> Adapter:
    if name not in adapters:
        pytest.fail(f"adapter {name!r} is installed but could not be loaded (see the logged warning)")
    return adapters[name]


def _case(cases: dict[str, Case], name: str) -> Case:
    if name not in cases:
        pytest.fail(f"adapter {name!r} has no conformance case: add one to CASES")
    return cases[name]


def _one_line_error(call: Callable[[], Any]) -> OnnxqError:
    with pytest.raises(OnnxqError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message, repr(message)
    return info.value


# ------------------------------------------------------------------------------- checks without a model


@pytest.mark.parametrize("name", NAMES)
def test_protocol_and_plain_objects(adapters: dict[str, Adapter], name: str, tmp_path: Path) -> None:
    adapter = _adapter(adapters, name)
    assert isinstance(adapter, Adapter) and adapter.name == name and adapter.package
    onnx_model = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    for plain in (onnx_model, X, {"x": X}, [{"x": X}], "model.onnx", None):
        assert not adapter.can_export(plain), type(plain).__name__
    for plain in ({"x": X}, [{"x": X}], X, tmp_path / "data.npz"):
        assert not adapter.owns_data(plain), type(plain).__name__
    assert not adapter.can_load(tmp_path / "model.onnx")
    assert not adapter.can_load(tmp_path / "data.npz")


# ------------------------------------------------------------------------------- checks on a tiny model


@pytest.mark.parametrize("name", NAMES)
def test_claims_its_own_models_files_and_data_only(adapters: dict[str, Adapter], cases: dict[str, Case],
                                                   name: str) -> None:
    adapter, own = _adapter(adapters, name), _case(cases, name)
    assert adapter.can_export(own.model) and adapter.can_load(own.file) and adapter.owns_data(own.data)
    assert adapter.can_export(adapter.load(own.file))
    for other, case in cases.items():
        if other != name:
            assert not adapter.can_export(case.model), f"{name} claims a {other} model"
            assert not adapter.can_load(case.file), f"{name} claims {case.file.name}"
            assert not adapter.owns_data(case.data), f"{name} claims {other} data"


@pytest.mark.parametrize("name", NAMES)
def test_export_is_valid_onnx_matching_the_framework(exports: dict[str, ExportResult], cases: dict[str, Case],
                                                     name: str) -> None:
    case = _case(cases, name)
    result = exports[name]
    assert isinstance(result, ExportResult) and result.exporter and result.opset >= 13
    onnx.checker.check_model(result.model, full_check=True)
    assert [i.name for i in result.model.graph.input] == ["x"]
    from onnxq.runtime import create_session

    (got,) = create_session(result.model).run(None, {"x": X})
    np.testing.assert_allclose(got, case.expected, atol=TOLERANCE, rtol=TOLERANCE)
    assert result.max_abs_error is None or result.max_abs_error <= TOLERANCE


@pytest.mark.parametrize("name", NAMES)
def test_framework_data_becomes_feeds(adapters: dict[str, Adapter], cases: dict[str, Case],
                                      exports: dict[str, ExportResult], name: str) -> None:
    adapter, case = _adapter(adapters, name), _case(cases, name)
    feeds = adapter.to_feeds(case.data, ["x"])
    batches = [inputs["x"] for inputs, _ in load_data(feeds, exports[name].model).batches()]
    np.testing.assert_array_equal(np.concatenate(batches), X)


@pytest.mark.parametrize("name", NAMES)
def test_describes_the_inputs_of_its_file(adapters: dict[str, Adapter], cases: dict[str, Case],
                                          exports: dict[str, ExportResult], name: str) -> None:
    adapter, case = _adapter(adapters, name), _case(cases, name)
    assert hasattr(adapter, "describe_inputs"), f"adapter {name!r} does not implement describe_inputs"
    described = describe_inputs(adapter, adapter.load(case.file))
    assert described is not None, f"{name} cannot describe the inputs of {case.file.name}"
    exported = exports[name].model.graph.input
    assert [i.name for i in described] == [i.name for i in exported]
    assert [i.dtype for i in described] == ["float32"]
    assert described[0].shape is not None and len(described[0].shape) == 2 and described[0].shape[1] == 6


@pytest.mark.parametrize("name", NAMES)
def test_refuses_bad_input_in_one_line(adapters: dict[str, Adapter], cases: dict[str, Case], name: str,
                                       tmp_path: Path) -> None:
    adapter, case = _adapter(adapters, name), _case(cases, name)
    _one_line_error(lambda: adapter.export(case.model, example_inputs=case.bad_inputs))
    corrupt = tmp_path / f"corrupt{case.file.suffix}"
    corrupt.write_bytes(b"this is not a model file" * 4)
    _one_line_error(lambda: adapter.load(corrupt))


# ------------------------------------------------------------------------------- isolation

_ISOLATED = """
import json, sys, tempfile
from importlib.metadata import entry_points
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_adapter_conformance import CASES, X
adapter = next(e for e in entry_points(group="onnxq.adapters") if e.name == {name!r}).load()()
with tempfile.TemporaryDirectory() as folder:
    case = CASES[{name!r}](Path(folder))
    assert adapter.can_export(case.model) and adapter.owns_data(case.data)
    adapter.to_feeds(case.data, ["x"])
    getattr(adapter, "describe_inputs", lambda m: None)(adapter.load(case.file))
    adapter.export(case.model, example_inputs=X)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


@pytest.mark.parametrize("name", NAMES)
def test_never_imports_another_framework(adapters: dict[str, Adapter], cases: dict[str, Case], name: str) -> None:
    """In a fresh process that uses this adapter only (load, data, describe, export)."""
    own = _case(cases, name).modules
    others = (FRAMEWORK_MODULES | {m for case in cases.values() for m in case.modules}) - set(own)
    done = subprocess.run([sys.executable, "-c", _ISOLATED.format(tests=str(HERE), name=name)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert not imported & others, f"the {name} adapter imported {sorted(imported & others)}"
