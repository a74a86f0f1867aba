"""A corpus of bad and unusual inputs (issue 11): every case fails cleanly and early.

Each case builds its inputs inside the test (one tiny model, small files) and runs ``onnxq.cli.main``
in-process. For every case: the exit code; exactly one stderr line and no traceback; no output,
temporary or stray file left (in the case's folder, which is also the working directory, and in
the temp folder); every input file unchanged (sha256); no hostile marker file created (pickled
payloads would create it); the time to the error within a generous bound; and, where the input is
at fault, that the model was never prepared (``onnxq.api.prepare`` not called).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import signal
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq.api
from onnxq.cli import main

#: Generous: a bad input fails in well under a second; the machine running the tests may be busy.
MAX_SECONDS = 20.0

MARKER = "pwned"  # a payload that runs creates this file next to the case's work folder


class _Payload:
    """Unpickling this runs ``touch <marker>``: proof that code from a data file was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch '{self.marker}'",))


# ------------------------------------------------------------------------------------ the model


def _tiny(seed: int = 0, *, inputs=None, nodes=None, inits=None, opset: int = 17,
          domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    """x float32 [N, 4] -> MatMul(w 4x3) -> Add(b) -> Relu -> y [N, 3]."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((4, 3)) * 0.5).astype(np.float32)
    b = (rng.standard_normal(3) * 0.1).astype(np.float32)
    nodes = nodes if nodes is not None else [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["y"], name="relu")]
    graph = helper.make_graph(
        nodes, "tiny",
        inputs if inputs is not None else [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits if inits is not None else [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]
                              + [helper.make_opsetid(d, 1) for d in domains])
    model.ir_version = 8
    return model


def _samples(n: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """m.onnx (float), q.onnx (its static quantization), calib.npz, eval.npz (with labels)."""
    folder = tmp_path_factory.mktemp("template")
    onnx.save_model(_tiny(), folder / "m.onnx")
    np.savez(folder / "calib.npz", x=_samples(seed=1))
    np.savez(folder / "eval.npz", x=_samples(seed=2), labels=np.arange(16) % 3)
    result = onnxq.api.quantize(folder / "m.onnx", folder / "calib.npz", latency=False)
    result.save(folder / "q.onnx")
    return folder


# ------------------------------------------------------------------------------------ the runner


@dataclass(frozen=True)
class Case:
    """One bad input: ``build(work)`` writes what it needs into ``work`` and returns the argv."""

    id: str
    build: Callable[[Path], list[str]]
    code: int = 2
    expect: str | None = None        # a piece of the stderr line
    before_prepare: bool = True      # the input is refused before the model is prepared


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: sha256 of regular files, the kind of anything else (FIFOs are
    never opened)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            mode = os.lstat(path).st_mode
            rel = str(path.relative_to(folder))
            if stat.S_ISREG(mode):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(mode):
                out[rel] = "link:" + os.readlink(path)
            else:
                out[rel] = "dir" if stat.S_ISDIR(mode) else f"mode:{stat.S_IFMT(mode)}"
    return out


def _alarm(_signum: int, _frame: object) -> None:
    raise TimeoutError("the case blocked (a FIFO opened?)")


def run_case(case: Case, template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    shutil.copytree(template, work)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.chdir(work)
    argv = [str(a) for a in case.build(work)]
    prepared: list[bool] = []
    real_prepare = onnxq.api.prepare
    monkeypatch.setattr(onnxq.api, "prepare", lambda *a, **k: prepared.append(True) or real_prepare(*a, **k))
    before = _snapshot(work)
    capsys.readouterr()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    started = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert code == case.code, f"exit {code}, expected {case.code}; stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {err!r}"
    if case.expect:
        assert case.expect in lines[0], f"{case.expect!r} not in {lines[0]!r}"
    after = _snapshot(work)
    if argv[:1] == ["compare"] and "j.xml" in after and "j.xml" not in before:  # issue 12: JUnit on every outcome
        assert "<error" in (work / "j.xml").read_text(encoding="utf-8")
        del after["j.xml"]
    assert after == before, "an input changed or a file was left behind"
    assert os.listdir(private_tmp) == [], f"temporary files left: {os.listdir(private_tmp)}"
    assert not (tmp_path / MARKER).exists(), "a hostile payload ran"
    assert elapsed < MAX_SECONDS, f"took {elapsed:.1f} s to fail"
    if case.before_prepare:
        assert not prepared, "the model was prepared before the bad input was refused"


# ------------------------------------------------------------------------------------ bad models


def _write(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, path)
    return path


def _external(work: Path, location: str, *, offset: str = "0", length: str | None = None,
              name: str = "ext.onnx", in_subgraph: bool = False) -> Path:
    """The tiny model with its weight ``w`` stored as external data at ``location``."""
    model = _tiny()
    tensor = model.graph.initializer[0]
    raw = tensor.raw_data
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length or str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    if in_subgraph:  # the weight comes from a Constant inside an If branch
        const = helper.make_node("Constant", [], ["w_sub"], value=tensor)
        branch = helper.make_graph([const], "branch", [],
                                   [helper.make_tensor_value_info("w_sub", TensorProto.FLOAT, [4, 3])])
        cond = numpy_helper.from_array(np.array(True), "cond")
        model.graph.initializer.remove(tensor)
        model.graph.initializer.append(cond)
        model.graph.node.insert(0, helper.make_node("If", ["cond"], ["w"], then_branch=branch,
                                                    else_branch=branch, name="if"))
    return _write(model, work / name)


def _nan_weight(value: float) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        model = _tiny()
        w = numpy_helper.to_array(model.graph.initializer[0]).copy()
        w[1, 2] = value
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
        return _write(model, work / "bad.onnx")
    return build


def _model_without_graph(work: Path) -> Path:
    path = work / "nograph.onnx"
    path.write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
    return path


def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        (work / name).write_bytes(data)
        return work / name
    return build


def _truncated(work: Path) -> Path:
    data = (work / "m.onnx").read_bytes()
    (work / "cut.onnx").write_bytes(data[: len(data) // 2])
    return work / "cut.onnx"


def _fifo(name: str) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        os.mkfifo(work / name)
        return work / name
    return build


def _folder_named(name: str) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        (work / name).mkdir()
        return work / name
    return build


def _pickle_named(name: str) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        (work / name).write_bytes(pickle.dumps(_Payload(work.parent / MARKER)))
        return work / name
    return build


def _zip_named(work: Path) -> Path:
    with zipfile.ZipFile(work / "zipped.onnx", "w") as archive:
        archive.write(work / "m.onnx", "m.onnx")
    return work / "zipped.onnx"


def _symlink_escape(work: Path) -> Path:
    outside = work.parent / "outside.bin"
    outside.write_bytes(np.zeros(12, np.float32).tobytes())
    (work / "link.bin").symlink_to(outside)
    return _external(work, "link.bin")


def _external_fifo(work: Path) -> Path:
    os.mkfifo(work / "w.bin")
    return _external(work, "w.bin")


def _external_short(work: Path) -> Path:
    (work / "w.bin").write_bytes(b"\0" * 8)
    return _external(work, "w.bin")


def _external_offset(work: Path) -> Path:
    (work / "w.bin").write_bytes(b"\0" * 48)
    return _external(work, "w.bin", offset="4096")


def _graph_edit(edit: Callable[[onnx.ModelProto], None], *, name: str = "bad.onnx") -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        model = _tiny()
        edit(model)
        return _write(model, work / name)
    return build


def _no_opset(model: onnx.ModelProto) -> None:
    del model.opset_import[:]


def _opset_999(model: onnx.ModelProto) -> None:
    model.opset_import[0].version = 999


def _undefined_input(model: onnx.ModelProto) -> None:
    model.graph.node[1].input[0] = "nowhere"


def _undefined_output(model: onnx.ModelProto) -> None:
    model.graph.output[0].name = "nothing"


def _unknown_op(model: onnx.ModelProto) -> None:
    model.graph.node[2].op_type = "NoSuchOp"


def _cycle(model: onnx.ModelProto) -> None:
    model.graph.node[0].input[0] = "y"


def _bad_raw_size(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].raw_data = b"\0" * 5


def _wrong_dims(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].dims[0] = 7


def _ir_version_0(model: onnx.ModelProto) -> None:
    model.ir_version = 0


def _input_type(elem: int) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        model.graph.input[0].type.tensor_type.elem_type = elem
    return edit


def _map_input(model: onnx.ModelProto) -> None:
    model.graph.input[0].CopyFrom(helper.make_value_info(
        "x", helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))))


def _scalar_input(model: onnx.ModelProto) -> None:
    del model.graph.input[0].type.tensor_type.shape.dim[:]


def _custom_domain(work: Path) -> Path:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["a"], name="add"),
             helper.make_node("Frobnicate", ["a"], ["y"], name="custom", domain="my.domain")]
    return _write(_tiny(nodes=nodes, domains=("my.domain",)), work / "custom.onnx")


#: (id, builder of the model path, expected stderr piece, refused before preparation)
BAD_MODELS: list[tuple[str, Callable[[Path], Path], str | None, bool]] = [
    ("missing", lambda w: w / "nope.onnx", "no such file", True),
    ("empty", _bytes("empty.onnx", b""), "not an ONNX file", True),
    ("random-bytes", _bytes("rand.onnx", bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8))),
     None, True),
    ("text", _bytes("text.onnx", b"this is not a model\n" * 20), None, True),
    ("truncated", _truncated, None, True),
    ("no-graph", _model_without_graph, "no graph", True),
    ("folder", _folder_named("dir.onnx"), "not a file", True),
    ("fifo", _fifo("pipe.onnx"), "not a file", True),
    ("pickle", _pickle_named("evil.onnx"), None, True),
    ("zip", _zip_named, None, True),
    ("ext-dotdot", lambda w: _external(w, "../outside.bin"), "outside", True),
    ("ext-absolute", lambda w: _external(w, "/etc/passwd"), "absolute", True),
    ("ext-proc", lambda w: _external(w, "/proc/self/environ"), "absolute", True),
    ("ext-symlink", _symlink_escape, "outside", True),
    ("ext-missing", lambda w: _external(w, "gone.bin"), "not found", True),
    ("ext-fifo", _external_fifo, "not a regular file", True),
    ("ext-short", _external_short, "exceeds", True),
    ("ext-offset", _external_offset, "exceeds", True),
    ("ext-bad-offset", lambda w: _external(w, "m.onnx", offset="abc"), "invalid offset", True),
    ("ext-subgraph", lambda w: _external(w, "../outside.bin", in_subgraph=True), "outside", True),
    ("no-opset", _graph_edit(_no_opset), None, True),
    ("opset-999", _graph_edit(_opset_999), None, True),
    ("undefined-input", _graph_edit(_undefined_input), None, True),
    ("undefined-output", _graph_edit(_undefined_output), None, True),
    ("unknown-op", _graph_edit(_unknown_op), None, True),
    ("cycle", _graph_edit(_cycle), None, True),
    ("raw-size", _graph_edit(_bad_raw_size), None, False),
    ("wrong-dims", _graph_edit(_wrong_dims), None, False),
    ("ir-version-0", _graph_edit(_ir_version_0), None, True),
    ("string-input", _graph_edit(_input_type(TensorProto.STRING)), None, True),
    ("no-elem-type", _graph_edit(_input_type(0)), None, True),
    ("map-input", _graph_edit(_map_input), "not a tensor", True),
    ("nan-weight", _nan_weight(float("nan")), "NaN", False),
    ("inf-weight", _nan_weight(float("inf")), "Inf", False),
    ("neg-inf-weight", _nan_weight(float("-inf")), "Inf", False),
]

#: Models that are refused only once data meets them (static quantization, validation).
DATA_FED_MODELS: list[tuple[str, Callable[[Path], Path], str | None, bool]] = [
    ("scalar-input", _graph_edit(_scalar_input), "scalar", True),
    ("custom-domain", _custom_domain, None, False),
]

#: Cases where the graph itself is fine for ``inspect`` (it reads the graph, not the weights).
_INSPECT_OK = {"raw-size", "wrong-dims", "nan-weight", "inf-weight", "neg-inf-weight", "no-opset", "opset-999",
               "undefined-input", "undefined-output", "unknown-op", "cycle", "ir-version-0", "string-input",
               "no-elem-type", "map-input"}

MODEL_COMMANDS: dict[str, Callable[[Path, Path], list]] = {
    "dynamic": lambda w, m: ["quantize", m, "-o", w / "out.onnx", "--mode", "dynamic", "--no-latency"],
    "static": lambda w, m: ["quantize", m, "-o", w / "out.onnx", "--calib", w / "calib.npz", "--no-latency"],
    "validate": lambda w, m: ["validate", m, w / "q.onnx", "--data", w / "eval.npz", "--no-latency"],
    "inspect": lambda w, m: ["inspect", m],
}


#: (model, command) pairs that are not bad inputs for that command: validation runs whatever ONNX
#: Runtime runs (no onnx checker, no quantization), and dynamic quantization feeds no data.
_NOT_BAD = {("ir-version-0", "validate"), ("nan-weight", "validate"), ("inf-weight", "validate"),
            ("neg-inf-weight", "validate"), ("string-input", "dynamic"), ("no-elem-type", "dynamic")}
#: Dynamic quantization feeds no data: a non-tensor input is found when ONNX Runtime loads the model.
_FOUND_BY_ORT = {("map-input", "dynamic"), ("raw-size", "validate"), ("wrong-dims", "validate")}


def _model_cases() -> list[Case]:
    cases = []
    for name, build, expect, early in BAD_MODELS:
        for command, argv in MODEL_COMMANDS.items():
            if (command == "inspect" and name in _INSPECT_OK) or (name, command) in _NOT_BAD:
                continue
            late = (name, command) in _FOUND_BY_ORT
            cases.append(Case(f"model-{name}-{command}", lambda w, b=build, a=argv: a(w, b(w)),
                              expect=None if late else expect, before_prepare=early and not late))
    for name, build, expect, early in DATA_FED_MODELS:
        for command in ("static", "validate"):
            cases.append(Case(f"model-{name}-{command}", lambda w, b=build, a=MODEL_COMMANDS[command]: a(w, b(w)),
                              expect=expect, before_prepare=early))
    return cases


# ------------------------------------------------------------------------------------ bad data


def _npz(name: str, **arrays: object) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        np.savez(work / name, **arrays)
        return work / name
    return build


def _npy(name: str, array: np.ndarray) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        np.save(work / name, array)
        return work / name
    return build


def _pickled_npz(work: Path) -> Path:
    payload = np.empty(16, dtype=object)
    payload[0] = _Payload(work.parent / MARKER)
    np.savez(work / "evil.npz", x=_samples(), labels=payload)
    return work / "evil.npz"


def _pickled_input_npz(work: Path) -> Path:
    payload = np.empty((16, 4), dtype=object)
    payload[0, 0] = _Payload(work.parent / MARKER)
    np.savez(work / "evil.npz", x=payload)
    return work / "evil.npz"


def _pickled_npy(work: Path) -> Path:
    payload = np.empty((16, 4), dtype=object)
    payload[0, 0] = _Payload(work.parent / MARKER)
    np.save(work / "evil.npy", payload, allow_pickle=True)
    return work / "evil.npy"


def _huge_header(work: Path) -> Path:
    """A .npy whose header claims 10^12 rows but holds 64 bytes."""
    path = work / "huge.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                       "shape": (10**12, 4)})
        handle.write(b"\0" * 64)
    return path


def _truncated_npz(work: Path) -> Path:
    np.savez(work / "full.npz", x=_samples(256))
    data = (work / "full.npz").read_bytes()
    (work / "full.npz").unlink()
    (work / "cut.npz").write_bytes(data[: len(data) // 2])
    return work / "cut.npz"


def _corrupt_compressed(work: Path) -> Path:
    np.savez_compressed(work / "c.npz", x=_samples(256))
    data = bytearray((work / "c.npz").read_bytes())
    for i in range(200, 600):
        data[i] ^= 0x5A
    (work / "c.npz").write_bytes(bytes(data))
    return work / "c.npz"


def _empty_npz(work: Path) -> Path:
    with zipfile.ZipFile(work / "e.npz", "w"):
        pass
    return work / "e.npz"


def _traversal_member(work: Path) -> Path:
    with zipfile.ZipFile(work / "t.npz", "w") as archive:
        with archive.open("../x.npy", "w") as member:
            np.lib.format.write_array(member, _samples())
    return work / "t.npz"


def _mixed_folder(work: Path) -> Path:
    (work / "mixed").mkdir()
    np.save(work / "mixed" / "x.npy", _samples())
    np.savez(work / "mixed" / "more.npz", x=_samples())
    return work / "mixed"


def _test_set(content: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        folder = work / "tds" / "test_data_set_0"
        folder.mkdir(parents=True)
        content(folder)
        return work / "tds"
    return build


def _garbage_pb(folder: Path) -> None:
    (folder / "input_0.pb").write_bytes(b"\xff\xfe garbage \x00" * 30)


def _fifo_pb(folder: Path) -> None:
    os.mkfifo(folder / "input_0.pb")


def _wrong_name_pb(folder: Path) -> None:
    # two named tensors: a single one, whatever its name, feeds a one-input model (issue 12)
    for index, name in enumerate(("not_x", "other")):
        tensor = numpy_helper.from_array(_samples(2), name)
        (folder / f"input_{index}.pb").write_bytes(tensor.SerializeToString())


def _symlink_loop(work: Path) -> Path:
    (work / "loop_a").symlink_to(work / "loop_b")
    (work / "loop_b").symlink_to(work / "loop_a")
    return work / "loop_a"


def _empty_folder(work: Path) -> Path:
    (work / "nothing").mkdir()
    return work / "nothing"


#: (id, builder of a data path, expected stderr piece)
BAD_DATA: list[tuple[str, Callable[[Path], Path], str | None]] = [
    ("missing", lambda w: w / "nope.npz", "does not exist"),
    ("fifo", _fifo("pipe.npz"), "not a regular file"),
    ("fifo-no-suffix", _fifo("pipe"), "not a regular file"),
    ("empty-folder", _empty_folder, "holds no data"),
    ("wrong-key", _npz("k.npz", z=_samples(), q=_samples()), "'z'"),  # one array would feed the input
    ("extra-key", _npz("k.npz", x=_samples(), extra=_samples()), "extra"),
    ("strings", _npz("s.npz", x=np.array([["a"] * 4] * 16)), "'x'"),
    ("pickled-labels", _pickled_npz, None),
    ("pickled-input", _pickled_input_npz, None),
    ("pickled-npy", _pickled_npy, None),
    ("rank-3", _npz("r.npz", x=np.zeros((16, 4, 2), np.float32)), "'x'"),
    ("rank-1", _npz("r.npz", x=np.zeros(16, np.float32)), "'x'"),
    ("fixed-dim", _npz("d.npz", x=np.zeros((16, 5), np.float32)), "'x'"),
    ("zero-samples", _npz("z.npz", x=np.zeros((0, 4), np.float32)), "no samples"),
    ("nan", _npz("n.npz", x=np.full((16, 4), np.nan, np.float32)), "NaN"),
    ("inf", _npz("i.npz", x=np.full((16, 4), np.inf, np.float32)), "Inf"),
    ("int-to-float", _npz("i.npz", x=np.ones((16, 4), np.int64)), "'x'"),
    ("complex", _npz("c.npz", x=np.ones((16, 4), np.complex64)), "'x'"),
    ("bool", _npz("b.npz", x=np.ones((16, 4), bool)), "'x'"),
    ("truncated", _truncated_npz, None),
    ("corrupt-compressed", _corrupt_compressed, None),
    ("not-a-zip", _bytes("fake.npz", b"not a zip file at all" * 10), None),
    ("empty-npz", _empty_npz, "holds no arrays"),
    ("empty-file", _bytes("e.npz", b""), None),
    ("txt", _bytes("data.txt", b"1,2,3,4\n"), "unsupported data file"),
    ("huge-header", _huge_header, None),
    ("npy-garbage", _bytes("g.npy", b"\x93NUMPY garbage"), None),
    ("mixed-folder", _mixed_folder, "mixes"),
    ("tds-garbage", _test_set(_garbage_pb), None),
    ("tds-fifo", _test_set(_fifo_pb), "not a regular file"),
    ("tds-wrong-name", _test_set(_wrong_name_pb), "not_x"),
    ("zip-traversal", _traversal_member, None),
    ("symlink-loop", _symlink_loop, None),
    ("labels-count", _npz("l.npz", x=_samples(), labels=np.arange(5)), "labels"),
]

DATA_COMMANDS: dict[str, Callable[[Path, Path], list]] = {
    "calib": lambda w, d: ["quantize", w / "m.onnx", "-o", w / "out.onnx", "--calib", d, "--no-latency"],
    "eval": lambda w, d: ["quantize", w / "m.onnx", "-o", w / "out.onnx", "--calib", w / "calib.npz", "--eval", d,
                          "--report", w / "r.json", "--no-latency"],
    "dynamic-eval": lambda w, d: ["quantize", w / "m.onnx", "-o", w / "out.onnx", "--mode", "dynamic", "--eval", d],
    "validate": lambda w, d: ["validate", w / "m.onnx", w / "q.onnx", "--data", d, "--no-latency"],
    "compare": lambda w, d: ["compare", w / "m.onnx", w / "q.onnx", "--data", d, "--threshold", "0.9",
                             "--junit", w / "j.xml"],
    "analyze": lambda w, d: ["analyze", w / "m.onnx", w / "q.onnx", "--data", d],
}


#: Data cases also run through every command (the others: calib, eval, validate and compare).
_EVERY_COMMAND = {"missing", "fifo", "wrong-key", "pickled-input", "nan", "corrupt-compressed", "huge-header",
                  "symlink-loop", "tds-fifo", "rank-3"}


def _data_cases() -> list[Case]:
    cases = []
    for name, build, expect in BAD_DATA:
        for command, argv in DATA_COMMANDS.items():
            if name == "labels-count" and command not in ("calib", "eval", "compare"):
                continue
            if command in ("dynamic-eval", "analyze") and name not in _EVERY_COMMAND:
                continue
            # NaN/Inf values are found by the full check that runs before calibration (after preparation)
            early = name not in ("nan", "inf") or command in ("validate", "compare", "analyze")
            cases.append(Case(f"data-{name}-{command}", lambda w, b=build, a=argv: a(w, b(w)), expect=expect,
                              before_prepare=early))
    return cases


# ------------------------------------------------------------------------------------ bad outputs


def _out_case(name: str, target: Callable[[Path], Path], expect: str | None, flag: str = "-o") -> Case:
    def build(work: Path) -> list:
        out = target(work)
        argv = ["quantize", work / "m.onnx", "-o", out if flag == "-o" else work / "out.onnx",
                "--calib", work / "calib.npz", "--no-latency"]
        if flag == "--report":
            argv += ["--report", out]
        if flag == "--cache-dir":
            argv += ["--cache-dir", out]
        return argv
    return Case(f"output-{name}{'' if flag == '-o' else flag}", build, expect=expect)


def _a_file(work: Path) -> Path:
    (work / "plain.txt").write_text("x")
    return work / "plain.txt"


def _dangling_into_missing(work: Path) -> Path:
    (work / "dangling.onnx").symlink_to(work / "no" / "where.onnx")
    return work / "dangling.onnx"


def _link_loop(work: Path) -> Path:
    (work / "l1.onnx").symlink_to(work / "l2.onnx")
    (work / "l2.onnx").symlink_to(work / "l1.onnx")
    return work / "l1.onnx"


def _link_to_input(work: Path) -> Path:
    (work / "alias.onnx").symlink_to(work / "m.onnx")
    return work / "alias.onnx"


OUTPUT_TARGETS: list[tuple[str, Callable[[Path], Path], str | None]] = [
    ("missing-folder", lambda w: w / "no" / "out.onnx", "does not exist"),
    ("under-a-file", lambda w: _a_file(w) / "out.onnx", "not a folder"),
    ("is-a-folder", _folder_named("adir"), "directory"),
    ("fifo", _fifo("pipe.onnx"), "not a regular file"),
    ("the-input", lambda w: w / "m.onnx", "refusing"),
    ("the-input-dotted", lambda w: w / "sub" / ".." / "m.onnx", None),
    ("the-calib", lambda w: w / "calib.npz", "refusing"),
    ("link-to-input", _link_to_input, "refusing"),
    ("link-loop", _link_loop, "loop"),
    ("dangling-link", _dangling_into_missing, "does not exist"),
    ("proc", lambda w: Path("/proc/onnxq-test/out.onnx"), None),
]


def _output_cases() -> list[Case]:
    cases = [_out_case(name, target, expect) for name, target, expect in OUTPUT_TARGETS]
    for name, target, expect in OUTPUT_TARGETS:
        if name not in ("the-input-dotted",):
            cases.append(_out_case(name, target, expect, flag="--report"))
    cases += [
        _out_case("same-as-output", lambda w: w / "out.onnx", "refusing", flag="--report"),
        _out_case("a-file", _a_file, "not a folder", flag="--cache-dir"),
        _out_case("under-a-file", lambda w: _a_file(w) / "cache", "not a folder", flag="--cache-dir"),
        _out_case("fifo", _fifo("cachepipe"), "not a folder", flag="--cache-dir"),
        Case("junit-missing-folder", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "eval.npz",
                                                "--threshold", "0.9", "--junit", w / "no" / "j.xml"],
             expect="does not exist"),
        Case("junit-folder", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "eval.npz",
                                        "--threshold", "0.9", "--junit", _folder_named("jd")(w)], expect="directory"),
        Case("junit-is-data", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "eval.npz",
                                         "--threshold", "0.9", "--junit", w / "eval.npz"], expect="refusing"),
        Case("html-missing-folder", lambda w: ["validate", w / "m.onnx", w / "q.onnx", "--data", w / "eval.npz",
                                               "--html", w / "no" / "r.html"], expect="does not exist"),
        Case("export-missing-folder", lambda w: ["export", w / "m.onnx", "-o", w / "no" / "e.onnx"],
             expect="does not exist"),
    ]
    return cases


# ------------------------------------------------------------------------------------ CLI misuse


def _q(*extra: object, calib: bool = True) -> Callable[[Path], list]:
    def build(work: Path) -> list:
        return ["quantize", work / "m.onnx", "-o", work / "out.onnx",
                *(["--calib", work / "calib.npz"] if calib else []), "--no-latency", *extra]
    return build


def _metric_module(source: str) -> Callable[[Path], list]:
    def build(work: Path) -> list:
        (work / "mymetric_bad.py").write_text(source)
        return _q("--target", "metric>=0.5", "--metric-fn", "mymetric_bad:score")(work)
    return build


MISUSE: list[Case] = [
    Case("no-command", lambda w: [], expect="COMMAND"),
    Case("unknown-command", lambda w: ["frobnicate"], expect="invalid choice"),
    Case("unknown-option", _q("--frob"), expect="unrecognized arguments"),
    Case("missing-output", lambda w: ["quantize", w / "m.onnx"], expect="-o/--output"),
    Case("bad-mode", _q("--mode", "half"), expect="invalid choice"),
    Case("bad-int", _q("--batch-size", "eight"), expect="invalid int value"),
    Case("bad-float", _q("--percentile", "high"), expect="invalid float value"),
    Case("bins-huge", _q("--method", "entropy", "--bins", "200000000"), expect="at most"),
    Case("bins-zero", _q("--method", "entropy", "--bins", "0"), expect="num_bins"),
    Case("batch-huge", _q("--batch-size", "1000000000"), expect="at most"),
    Case("batch-zero", _q("--batch-size", "0"), expect="batch_size"),
    Case("batch-negative", _q("--batch-size", "-3"), expect="batch_size"),
    Case("samples-zero", _q("--samples", "0"), expect="samples"),
    Case("samples-huge", _q("--samples", str(2**70)), expect="at most"),
    Case("block-size-huge", _q("--mode", "weight-only", "--block-size", str(2**30), calib=False), expect="at most"),
    Case("block-size-odd", _q("--mode", "weight-only", "--block-size", "24", calib=False), expect="power of two"),
    Case("percentile-nan", _q("--method", "percentile", "--percentile", "nan"), expect="finite"),
    Case("percentile-low", _q("--method", "percentile", "--percentile", "20"), expect="percentile"),
    Case("threads-zero", _q("--threads", "0"), expect="between"),
    Case("threads-huge", _q("--threads", "100000"), expect="between"),
    Case("seed-negative", _q("--shuffle", "--seed", "-1"), expect="between"),
    Case("max-steps-negative", _q("--target", "cosine>=0.9", "--max-steps", "-1"), expect="between"),
    Case("tune-seconds-inf", _q("--target", "cosine>=0.9", "--max-tune-seconds", "inf"), expect="number in"),
    Case("tune-seconds-zero", _q("--target", "cosine>=0.9", "--max-tune-seconds", "0"), expect="number in"),
    Case("smooth-alpha", _q("--smooth-alpha", "2"), expect="number in"),
    Case("rounding-seconds", _q("--rounding", "adaptive", "--rounding-seconds", "-1"), expect="number in"),
    Case("top-zero", lambda w: ["analyze", w / "m.onnx", w / "q.onnx", "--data", w / "eval.npz", "--top", "0"],
         expect="between"),
    Case("threshold-nan", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "eval.npz",
                                     "--threshold", "nan"], expect="finite"),
    Case("threshold-percent", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "eval.npz",
                                         "--threshold", "99"], expect="fraction"),
    Case("opset-99", lambda w: ["export", w / "m.onnx", "-o", w / "e.onnx", "--opset", "99"], expect="between"),
    Case("float16-calibration-flags", _q("--mode", "float16", "--method", "entropy", "--bins", "4096",
                                         "--samples", "3", calib=False), expect="--method"),
    Case("dynamic-bins", _q("--mode", "dynamic", "--method", "entropy", "--bins", "4096", calib=False),
         expect="--bins"),
    Case("dynamic-samples", _q("--mode", "dynamic", "--samples", "3", calib=False), expect="--samples"),
    Case("dynamic-shuffle", _q("--mode", "dynamic", "--shuffle", calib=False), expect="--shuffle"),
    Case("dynamic-cache", _q("--mode", "dynamic", "--cache-dir", "cache", calib=False), expect="--cache-dir"),
    Case("dynamic-activation-type", _q("--mode", "dynamic", "--activation-type", "int8", calib=False),
         expect="--activation-type"),
    Case("static-quantize-conv", _q("--quantize-conv"), expect="--quantize-conv"),
    Case("minmax-bins", _q("--bins", "4096"), expect="--bins"),
    Case("minmax-percentile", _q("--percentile", "99.9"), expect="--percentile"),
    Case("seed-without-shuffle", _q("--seed", "3"), expect="--seed"),
    Case("max-steps-without-target", _q("--max-steps", "3"), expect="--max-steps"),
    Case("weight-only-rtn-samples", _q("--mode", "weight-only", "--samples", "4", calib=False), expect="--samples"),
    Case("float16-per-tensor", _q("--mode", "float16", "--per-tensor", calib=False), expect="--per-tensor"),
    Case("static-without-calib", _q(calib=False), expect="calibration data"),
    Case("bad-target", _q("--target", "cosine>>0.9"), expect=None),
    Case("target-float16", _q("--mode", "float16", "--target", "cosine>=0.9", calib=False), expect="target"),
    Case("metric-fn-syntax", _metric_module("def score(:\n"), expect="SyntaxError"),
    Case("metric-fn-raises", _metric_module("raise RuntimeError('boom')\n"), expect="boom"),
    Case("metric-fn-missing-module", _q("--target", "metric>=0.5", "--metric-fn", "no_such_module_xyz:f"),
         expect="cannot import"),
    Case("metric-fn-no-colon", _q("--target", "metric>=0.5", "--metric-fn", "justamodule"), expect="MODULE:FUNC"),
    Case("metric-fn-not-callable", _metric_module("score = 3\n"), expect="not a function"),
    Case("labels-object", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "calib.npz",
                                     "--metric", "accuracy", "--threshold", "0.5",
                                     "--labels", _npy("l.npy", np.array(["a"] * 16, dtype=object))(w)],
         expect="labels"),
    Case("labels-pickled", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "calib.npz",
                                      "--metric", "accuracy", "--threshold", "0.5", "--labels", _pickled_npy(w)],
         expect="labels"),
    Case("labels-npz-object", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "calib.npz",
                                         "--metric", "accuracy", "--threshold", "0.5", "--labels", _pickled_npz(w)],
         expect="labels"),
    Case("labels-strings", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "calib.npz",
                                      "--metric", "accuracy", "--threshold", "0.5",
                                      "--labels", _npy("l.npy", np.array(["a"] * 16))(w)], expect="labels"),
    Case("labels-fifo", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "calib.npz",
                                   "--metric", "accuracy", "--threshold", "0.5", "--labels", _fifo("l.npy")(w)],
         expect="not a regular file"),
    Case("labels-missing", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "calib.npz",
                                      "--metric", "accuracy", "--threshold", "0.5", "--labels", w / "nope.npy"],
         expect="no such file"),
    Case("labels-count", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "calib.npz",
                                    "--metric", "accuracy", "--threshold", "0.5",
                                    "--labels", _npy("l.npy", np.arange(5))(w)], expect="labels"),
    Case("labels-3d", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "calib.npz",
                                 "--metric", "accuracy", "--threshold", "0.5",
                                 "--labels", _npy("l.npy", np.zeros((16, 2, 2)))(w)], expect="labels"),
    Case("accuracy-without-labels", lambda w: ["compare", w / "m.onnx", w / "q.onnx", "--data", w / "calib.npz",
                                               "--metric", "accuracy", "--threshold", "0.5"], expect="labels"),
    Case("analyze-same-model", lambda w: ["analyze", w / "m.onnx", w / "m.onnx", "--data", w / "eval.npz"],
         expect="no quantized layer"),
    Case("analyze-unrelated", lambda w: ["analyze", _write(_unrelated(), w / "other.onnx"), w / "q.onnx",
                                         "--data", w / "eval.npz"], expect="corresponds"),
    Case("analyze-other-shape", lambda w: ["analyze", _write(_unrelated(outputs=5), w / "other.onnx"),
                                           w / "q.onnx", "--data", w / "eval.npz"], expect="does not match"),
    Case("validate-swapped-io", lambda w: ["validate", w / "m.onnx", _write(_renamed(), w / "r.onnx"),
                                           "--data", w / "eval.npz"], expect="different"),
]


def _unrelated(outputs: int = 3) -> onnx.ModelProto:
    """Same input and output names as the tiny model, nothing else in common."""
    v = numpy_helper.from_array(np.ones((4, outputs), np.float32), "v")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "v"], ["y"], name="other_mm")], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])], [v])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _renamed() -> onnx.ModelProto:
    model = _tiny()
    model.graph.node[2].output[0] = "out"
    model.graph.output[0].name = "out"
    return model


CASES: list[Case] = _model_cases() + _data_cases() + _output_cases() + MISUSE


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    run_case(case, template, tmp_path, monkeypatch, capsys)


# ------------------------------------------------------------------------------------ unusual, but fine


def test_duplicate_node_names_quantize_quietly(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Duplicate node names are made unique; ORT's pre-processing traceback never reaches stderr."""
    model = _tiny()
    for node in model.graph.node:
        node.name = "same"
    onnx.save_model(model, tmp_path / "dup.onnx")
    monkeypatch.chdir(tmp_path)
    code = main(["quantize", str(tmp_path / "dup.onnx"), "-o", str(tmp_path / "q.onnx"), "--calib",
                 str(template / "calib.npz"), "--eval", str(template / "eval.npz"), "--no-latency", "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err == ""
    names = [n.name for n in onnx.load(tmp_path / "q.onnx").graph.node]
    assert len(names) == len(set(names))


def test_output_symlink_is_written_through(template: Path, tmp_path: Path, capsys) -> None:
    """-o that is a symbolic link: the link stays, its target receives the model (README, Security)."""
    real = tmp_path / "models" / "v1.onnx"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "current.onnx"
    link.symlink_to(real)
    report_real = tmp_path / "r-real.json"
    (tmp_path / "r.json").symlink_to(report_real)
    code = main(["quantize", str(template / "m.onnx"), "-o", str(link), "--mode", "dynamic", "-q",
                 "--report", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    assert link.is_symlink() and os.readlink(link) == str(real)
    onnx.checker.check_model(onnx.load(real))
    assert (tmp_path / "r.json").is_symlink() and report_real.read_text().startswith("{")
    assert sorted(p.name for p in real.parent.iterdir()) == ["v1.onnx"]  # no temporary file left
