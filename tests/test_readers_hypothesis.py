"""Property tests (issue 11): the data readers and model loading raise onnxq's own errors, nothing else.

Whatever bytes a ``.npz``, ``.npy``, ``input_<i>.pb`` or ``.onnx`` file holds — random, a valid file
with bytes flipped or cut, or a well-formed container around odd contents — ``load_data`` (with a
full pass over the batches) and ``load_model`` either succeed or raise an ``OnnxqError`` subclass:
never a bare ``ValueError``, ``zlib.error``, ``DecodeError``, ``MemoryError`` from a lying header...
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from onnxq.data import InputSpec, load_data  # noqa: E402
from onnxq.errors import OnnxqError  # noqa: E402
from onnxq.model import load_model  # noqa: E402

#: 60 fixed examples per property in the suite; ONNXQ_HYPOTHESIS_EXAMPLES=N runs N random ones instead.
_EXAMPLES = os.environ.get("ONNXQ_HYPOTHESIS_EXAMPLES")
SETTINGS = settings(max_examples=int(_EXAMPLES or 60), deadline=None, derandomize=_EXAMPLES is None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SPECS = [InputSpec(name="x", dtype=np.dtype(np.float32), shape=("N", 4))]


def _read_all(source: Path, specs: list[InputSpec] = SPECS) -> None:
    """Load and iterate every batch; only onnxq's own errors may escape."""
    try:
        dataset = load_data(source, specs, batch_size=3)
        for _ in dataset.batches():
            pass
    except OnnxqError:
        pass


def _valid_npz(compressed: bool) -> bytes:
    buffer = io.BytesIO()
    arrays = {"x": np.arange(40, dtype=np.float32).reshape(10, 4), "labels": np.arange(10)}
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def _valid_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(40, dtype=np.float32).reshape(10, 4))
    return buffer.getvalue()


def _valid_pb() -> bytes:
    return numpy_helper.from_array(np.ones((2, 4), np.float32), "x").SerializeToString()


def _valid_model() -> bytes:
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@st.composite
def _mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few bytes overwritten, a cut, or bytes inserted."""
    data = bytearray(original)
    kind = draw(st.sampled_from(["flip", "cut", "insert"]))
    if kind == "cut":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=64)) + bytes(data[at:])
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _file(folder: str, name: str, data: bytes) -> Path:
    path = Path(folder) / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------ .npz


@SETTINGS
@given(st.one_of(st.binary(max_size=2048), _mutated(_valid_npz(False)), _mutated(_valid_npz(True))))
def test_npz_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _read_all(_file(folder, "d.npz", data))


_ARRAYS = hnp.arrays(
    dtype=st.one_of(hnp.scalar_dtypes(), hnp.unicode_string_dtypes(max_len=3), hnp.byte_string_dtypes(max_len=3)),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["x", "labels", "y", "x.npy", "../x", ""]), _ARRAYS, max_size=3),
       st.booleans())
def test_npz_of_any_arrays(arrays: dict[str, np.ndarray], compressed: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.npz"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as archive:
            for key, array in arrays.items():
                with archive.open(f"{key}.npy", "w") as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        _read_all(path)


# ------------------------------------------------------------------------------------ .npy


@SETTINGS
@given(st.one_of(st.binary(max_size=1024), _mutated(_valid_npy())))
def test_npy_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _read_all(_file(folder, "x.npy", data))
        folder_of_npy = Path(folder) / "set"
        folder_of_npy.mkdir()
        _file(str(folder_of_npy), "x.npy", data)
        _read_all(folder_of_npy)


@SETTINGS
@given(descr=st.sampled_from(["<f4", "<f8", "|u1", "<i8", "|b1", "<c8", "<U3", "|O", "|V8", "<f2", ">f4"]),
       shape=st.lists(st.integers(0, 10**12), max_size=4).map(tuple), fortran=st.booleans(),
       payload=st.binary(max_size=256))
def test_npy_lying_header(descr: str, shape: tuple[int, ...], fortran: bool, payload: bytes) -> None:
    """A header that claims any dtype and shape, followed by too few (or the right) bytes."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": fortran, "shape": shape})
    with tempfile.TemporaryDirectory() as folder:
        _read_all(_file(folder, "x.npy", buffer.getvalue() + payload))


# ------------------------------------------------------------------------------------ test_data_set


@st.composite
def _tensor_bytes(draw: st.DrawFn) -> bytes:
    tensor = TensorProto(name=draw(st.sampled_from(["", "x", "y"])),
                         data_type=draw(st.integers(0, 25)),
                         dims=draw(st.lists(st.integers(-2, 6), max_size=4)))
    how = draw(st.sampled_from(["raw", "float", "int64", "external", "none"]))
    if how == "raw":
        tensor.raw_data = draw(st.binary(max_size=256))
    elif how == "float":
        tensor.float_data.extend(draw(st.lists(st.floats(width=32), max_size=32)))
    elif how == "int64":
        tensor.int64_data.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=32)))
    elif how == "external":  # refers to a file: must never be read from outside the folder
        tensor.data_location = TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", draw(st.sampled_from(["../../etc/passwd", "/etc/passwd", "x.bin"]))
    return tensor.SerializeToString()


@SETTINGS
@given(st.one_of(st.binary(max_size=512), _mutated(_valid_pb()), _tensor_bytes()))
def test_test_data_set_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        test_set = Path(folder) / "test_data_set_0"
        test_set.mkdir()
        _file(str(test_set), "input_0.pb", data)
        _read_all(Path(folder))


# ------------------------------------------------------------------------------------ models


@SETTINGS
@given(st.one_of(st.binary(max_size=2048), _mutated(_valid_model())))
def test_model_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = _file(folder, "m.onnx", data)
        for check in (True, False):
            try:
                load_model(path, check=check)
            except OnnxqError:
                pass


@SETTINGS
@given(_mutated(_valid_model()))
def test_model_protos_in_memory(data: bytes) -> None:
    """A ModelProto that parses (whatever it holds) is loaded or refused with ModelError."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # noqa: BLE001 - not a proto at all: nothing to give load_model
        return
    try:
        load_model(model)
    except OnnxqError:
        pass
