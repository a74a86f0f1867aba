"""Tests of the ``onnxq`` command line: happy paths, --help/--version, and every bad input.

Contract under test (from the CLI issue):
    * errors: one line on stderr starting with ``onnxq: error:``, exit code 2, no traceback
      unless ``--debug``;
    * a failed command leaves no output file and no temporary file behind, and never
      overwrites one of its inputs;
    * ``--help`` on every command says what each option does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxq
from onnxq.cli import ExitCode, build_parser, main
from onnxq.errors import ConfigError, DataError, ModelError, OnnxqError

from conftest import CNN_INPUT, CNN_OUTPUT, CnnFiles, make_cnn_model, make_images, make_labels

RunCli = Callable[..., tuple[int, str, str]]

# The slow part of a quantize run is the latency benchmark; only one test keeps it.
FAST = ("--no-latency",)


# --------------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _restore_onnxq_logger() -> Iterator[None]:
    """``cli.main`` reconfigures the ``onnxq`` logger (handlers, level, propagate=False); undo it so
    that caplog-based tests in other modules still see onnxq's records."""
    logger = logging.getLogger("onnxq")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def listing(folder: Path) -> set[str]:
    """Every entry of ``folder`` (hidden files included: temp files start with a dot)."""
    return set(os.listdir(folder))


def assert_one_line_error(code: int, err: str, *parts: str) -> str:
    """Exit code 2, exactly one line on stderr, prefixed ``onnxq: error:``, containing ``parts``."""
    assert code == ExitCode.USAGE_ERROR == 2, f"exit code {code}, stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = err.splitlines()  # also splits on '\r' (progress bars): those count as extra lines
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
    line = lines[0]
    assert line.startswith("onnxq: error: "), line
    for part in parts:
        assert part in line, f"{part!r} not in {line!r}"
    return line


def assert_nothing_left(folder: Path, before: set[str], *outputs: Path) -> None:
    """No output file and no stray (temporary) file appeared in ``folder``."""
    for output in outputs:
        assert not output.exists(), f"{output} was left behind"
    assert listing(folder) == before, f"new files: {sorted(listing(folder) - before)}"


def op_types(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(path).graph.node]


def assert_quantized_qdq(path: Path) -> onnx.ModelProto:
    model = onnx.load(path)  # conformance (onnx.checker) is tested on its own below
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    return model


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output if out}


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    raise KeyError(name)


def weight_scale(model: onnx.ModelProto, weight: str) -> np.ndarray:
    """The scale of the DequantizeLinear that dequantizes initializer ``weight`` (its quantized copy)."""
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] == f"{weight}_DequantizeLinear_Output":
            return initializer(model, node.input[1])
    raise KeyError(f"no DequantizeLinear for {weight}")


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------------------ happy paths


def test_quantize_static_with_eval_and_report(run_cli: RunCli, cnn_files: CnnFiles,
                                              tmp_path_factory: pytest.TempPathFactory,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path_factory.mktemp("cwd")  # ORT likes to drop temp files into the cwd
    monkeypatch.chdir(workdir)
    model_bytes = cnn_files.model.read_bytes()
    before = listing(cnn_files.folder)
    out, report = cnn_files.folder / "model.q.onnx", cnn_files.folder / "r.json"

    code, stdout, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                                "--eval", cnn_files.eval, "--report", report)

    assert code == 0, err
    assert "Traceback" not in err
    assert_quantized_qdq(out)
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["mode"] == "static"
    assert data["samples"] == 64
    assert data["outputs"][0]["name"] == CNN_OUTPUT
    assert data["outputs"][0]["cosine"] > 0.99
    assert data["float_accuracy"] is not None and data["quant_accuracy"] is not None
    assert data["latency"] is not None
    assert not any("calibration data" in note for note in data["notes"]), data["notes"]
    assert f"wrote {out}" in stdout and str(report) in stdout
    assert CNN_OUTPUT in stdout and "cosine" in stdout
    # exactly the two outputs appeared; the input is untouched; the cwd stays clean
    assert listing(cnn_files.folder) == before | {out.name, report.name}
    assert cnn_files.model.read_bytes() == model_bytes
    assert listing(workdir) == set()


def test_report_file_is_readable_like_the_model(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    """The JSON report gets the same permissions as the model file (umask default), not mkstemp's 0600."""
    out, report = cnn_files.folder / "q.onnx", cnn_files.folder / "r.json"
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib, "--report", report,
                           "-q", *FAST)
    assert code == 0, err
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(out.stat().st_mode) == expected
    assert stat.S_IMODE(report.stat().st_mode) == expected, oct(stat.S_IMODE(report.stat().st_mode))


def test_quantize_dynamic_needs_no_data(run_cli: RunCli, cnn_files: CnnFiles,
                                        tmp_path_factory: pytest.TempPathFactory,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(workdir)
    out = cnn_files.folder / "dyn.onnx"
    before = listing(cnn_files.folder)

    code, stdout, err = run_cli("quantize", cnn_files.model, "-o", out, "--mode", "dynamic")

    assert code == 0, err
    model = onnx.load(out)
    ops = [node.op_type for node in model.graph.node]
    assert "Gemm" not in ops, ops  # decomposed into an integer MatMul
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops, ops
    assert "ConvInteger" not in ops and "Conv" in ops  # Conv stays float without --quantize-conv
    assert f"wrote {out}" in stdout
    assert listing(cnn_files.folder) == before | {out.name}
    assert listing(workdir) == set()


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_quantized_model_is_valid_onnx(run_cli: RunCli, cnn_files: CnnFiles, mode: str) -> None:
    """The written model passes onnx.checker (nodes topologically sorted, as the ONNX spec requires)."""
    out = cnn_files.folder / "q.onnx"
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib, "--mode", mode,
                           "-q", *FAST)
    assert code == 0, err
    onnx.checker.check_model(onnx.load(out), full_check=True)


@pytest.mark.parametrize("method", ["entropy", "percentile", "mse"])
def test_quantize_methods(run_cli: RunCli, cnn_files: CnnFiles, method: str) -> None:
    out, report = cnn_files.folder / f"{method}.onnx", cnn_files.folder / f"{method}.json"
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                           "--method", method, "--report", report, "-q", *FAST)
    assert code == 0, err
    assert err == ""  # --quiet: nothing on stderr
    assert_quantized_qdq(out)
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["config"]["method"] == method
    assert data["outputs"][0]["cosine"] > 0.95


def test_quantize_per_tensor(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    per_channel, per_tensor = cnn_files.folder / "pc.onnx", cnn_files.folder / "pt.onnx"
    for out, extra in ((per_channel, ()), (per_tensor, ("--per-tensor",))):
        code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                               "-q", *FAST, *extra)
        assert code == 0, err
    assert weight_scale(assert_quantized_qdq(per_channel), "conv_w").size == 8  # one scale per channel
    assert weight_scale(assert_quantized_qdq(per_tensor), "conv_w").size == 1


@pytest.mark.parametrize("activation_type, dtype", [("uint8", np.uint8), ("int8", np.int8)])
def test_quantize_activation_type(run_cli: RunCli, cnn_files: CnnFiles, activation_type: str,
                                  dtype: type) -> None:
    out = cnn_files.folder / "q.onnx"
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                           "--activation-type", activation_type, "-q", *FAST)
    assert code == 0, err
    model = assert_quantized_qdq(out)
    quantize_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize_nodes
    for node in quantize_nodes:
        assert initializer(model, node.input[2]).dtype == dtype, node.name


def test_quantize_exclude_glob_keeps_conv_float(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    out = cnn_files.folder / "q.onnx"
    code, stdout, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                                "--exclude", "Conv*", *FAST)
    assert code == 0, err
    model = assert_quantized_qdq(out)
    made_by = producers(model)
    convs = [n for n in model.graph.node if n.name.startswith("Conv")]
    assert convs, [n.name for n in model.graph.node]
    for conv in convs:
        assert conv.op_type == "Conv"
        feeder = made_by.get(conv.input[0])
        assert feeder is None or feeder.op_type != "DequantizeLinear", feeder
        weight = made_by.get(conv.input[1])
        assert weight is None or weight.op_type != "DequantizeLinear", weight
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert made_by[gemm.input[0]].op_type == "DequantizeLinear"  # the rest is still quantized
    assert "1 kept in float" in stdout


def test_quantize_exclude_op_keeps_gemm_float(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    out = cnn_files.folder / "q.onnx"
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                           "--exclude-op", "Gemm", "-q", *FAST)
    assert code == 0, err
    model = assert_quantized_qdq(out)
    made_by = producers(model)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert all(made_by.get(name) is None or made_by[name].op_type != "DequantizeLinear"
               for name in gemm.input[1:]), "Gemm weights are still dequantized"
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == gemm.output[0] for n in model.graph.node)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert made_by[conv.input[0]].op_type == "DequantizeLinear"


def test_validate_json(run_cli: RunCli, cnn_files: CnnFiles, quantized_cnn_path: Path) -> None:
    code, stdout, err = run_cli("validate", cnn_files.model, quantized_cnn_path, "--data", cnn_files.eval,
                                "--json", *FAST)
    assert code == 0, err
    data = json.loads(stdout)
    assert data["samples"] == 64
    assert [o["name"] for o in data["outputs"]] == [CNN_OUTPUT]
    assert data["outputs"][0]["cosine"] > 0.99
    assert data["quant_size_bytes"] > 0


def test_validate_table(run_cli: RunCli, cnn_files: CnnFiles, quantized_cnn_path: Path) -> None:
    code, stdout, err = run_cli("validate", cnn_files.model, quantized_cnn_path, "--data", cnn_files.eval,
                                "-q", *FAST)
    assert code == 0, err
    assert CNN_OUTPUT in stdout and "cosine" in stdout


def test_inspect_text(run_cli: RunCli, cnn_files: CnnFiles, quantized_cnn_path: Path) -> None:
    code, stdout, err = run_cli("inspect", cnn_files.model)
    assert code == 0, err
    for op in ("Conv", "Relu", "MaxPool", "Flatten", "Gemm"):
        assert op in stdout
    assert CNN_INPUT in stdout and CNN_OUTPUT in stdout
    assert "quantized:   0 nodes, 0.0%" in stdout

    code, stdout, err = run_cli("inspect", quantized_cnn_path)
    assert code == 0, err
    assert "DequantizeLinear" in stdout
    assert "quantized:   0 nodes" not in stdout


def test_inspect_json(run_cli: RunCli, cnn_files: CnnFiles, quantized_cnn_path: Path) -> None:
    code, stdout, err = run_cli("inspect", "--json", cnn_files.model)
    assert code == 0, err
    plain = json.loads(stdout)
    assert plain["op_counts"] == {"Conv": 1, "Flatten": 1, "Gemm": 1, "MaxPool": 1, "Relu": 1}
    assert plain["opset"] == 17
    assert [i["name"] for i in plain["inputs"]] == [CNN_INPUT]
    assert plain["quantized_ops"] == 0
    assert plain["quantized_compute_share"] == 0

    code, stdout, err = run_cli("inspect", quantized_cnn_path, "--json")
    assert code == 0, err
    quant = json.loads(stdout)
    assert quant["op_counts"]["QuantizeLinear"] > 0 and quant["op_counts"]["DequantizeLinear"] > 0
    assert quant["quantized_ops"] > 0
    assert 0 < quant["quantized_compute_share"] <= 1


def test_version(run_cli: RunCli) -> None:
    code, stdout, _ = run_cli("--version")
    assert code == 0
    assert stdout.strip() == f"onnxq {onnxq.__version__}"


def _subparsers() -> dict[str | None, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {None: parser, **action.choices}


@pytest.mark.parametrize("command", [None, "quantize", "validate", "inspect"])
def test_help_describes_every_option(run_cli: RunCli, monkeypatch: pytest.MonkeyPatch,
                                     command: str | None) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping: each help text stays on one line
    parser = _subparsers()[command]
    code, stdout, _ = run_cli(*([command] if command else []), "--help")
    assert code == 0
    assert stdout.startswith("usage: onnxq")
    text = " ".join(stdout.split())
    checked = 0
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in action.choices:
                assert name in text
            continue
        assert action.help and action.help != argparse.SUPPRESS, f"{action.dest} has no help"
        names = action.option_strings or [action.metavar or action.dest]
        helptext = " ".join(action.help.split())
        assert helptext in text, f"help of {names} missing from --help"
        for name in names:
            assert name in text, f"{name} missing from --help"
        # the help text follows the option, on the same or the next line of its entry (the
        # last line that starts with the option: the usage lines come first)
        lines = stdout.splitlines()
        entry = max(i for i, ln in enumerate(lines)
                    if ln.strip().split(" ")[0].rstrip(",") == names[0])
        following = " ".join(" ".join(lines[entry:entry + 2]).split())
        assert helptext in following, f"{names}: {following!r}"
        checked += 1
    assert checked >= {None: 2, "quantize": 25, "validate": 10, "inspect": 5}[command]


# ------------------------------------------------------------------------------------ bad inputs


def test_missing_model(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    missing, out = cnn_files.folder / "missing.onnx", cnn_files.folder / "out.onnx"
    before = listing(cnn_files.folder)
    code, _, err = run_cli("quantize", missing, "-o", out, "--calib", cnn_files.calib)
    assert_one_line_error(code, err, f"cannot read model '{missing}'", "no such file")
    assert_nothing_left(cnn_files.folder, before, out)


def test_model_that_is_not_onnx(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    garbage, out = cnn_files.folder / "garbage.onnx", cnn_files.folder / "out.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(300))
    before = listing(cnn_files.folder)
    code, _, err = run_cli("quantize", garbage, "-o", out, "--calib", cnn_files.calib)
    assert_one_line_error(code, err, f"cannot read model '{garbage}'", "not an ONNX file")
    assert_nothing_left(cnn_files.folder, before, out)


def test_empty_model_file(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    empty, out = cnn_files.folder / "empty.onnx", cnn_files.folder / "out.onnx"
    empty.write_bytes(b"")
    before = listing(cnn_files.folder)
    code, _, err = run_cli("quantize", empty, "-o", out, "--mode", "dynamic")
    assert_one_line_error(code, err, f"cannot read model '{empty}'", "not an ONNX file")
    assert_nothing_left(cnn_files.folder, before, out)


@pytest.mark.parametrize("spelling", ["same", "dot-slash", "dot-dot"])
def test_output_is_the_input(run_cli: RunCli, cnn_files: CnnFiles, monkeypatch: pytest.MonkeyPatch,
                             spelling: str) -> None:
    monkeypatch.chdir(cnn_files.folder)
    out = {"same": "model.onnx", "dot-slash": "./model.onnx",
           "dot-dot": f"../{cnn_files.folder.name}/model.onnx"}[spelling]
    original = cnn_files.model.read_bytes()
    before = listing(cnn_files.folder)
    code, _, err = run_cli("quantize", "model.onnx", "-o", out, "--calib", "calib.npz")
    assert_one_line_error(code, err, "refusing to overwrite the input", "model.onnx")
    assert cnn_files.model.read_bytes() == original
    assert listing(cnn_files.folder) == before


@pytest.mark.parametrize("collision", ["output=calib", "output=eval", "report=calib", "report=model",
                                       "report=output"])
def test_outputs_never_overwrite_inputs_or_each_other(run_cli: RunCli, cnn_files: CnnFiles,
                                                      collision: str) -> None:
    """Calibration/evaluation data are inputs too; and the report must not replace the model."""
    out, report = cnn_files.folder / "q.onnx", cnn_files.folder / "r.json"
    target = {"output=calib": cnn_files.calib, "output=eval": cnn_files.eval, "report=calib": cnn_files.calib,
              "report=model": cnn_files.model, "report=output": out}[collision]
    if collision.startswith("output="):
        out = target
    else:
        report = target
    inputs = {p: p.read_bytes() for p in (cnn_files.model, cnn_files.calib, cnn_files.eval)}
    before = listing(cnn_files.folder)

    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                           "--eval", cnn_files.eval, "--report", report, *FAST)

    assert_one_line_error(code, err, target.name)
    for path, content in inputs.items():
        assert path.read_bytes() == content, f"{path.name} was overwritten"
    assert listing(cnn_files.folder) == before, f"new files: {sorted(listing(cnn_files.folder) - before)}"


@pytest.mark.parametrize("which", ["output", "report"])
def test_output_folder_does_not_exist(run_cli: RunCli, cnn_files: CnnFiles, which: str) -> None:
    missing_dir = cnn_files.folder / "nodir"
    out = missing_dir / "q.onnx" if which == "output" else cnn_files.folder / "q.onnx"
    report = missing_dir / "r.json" if which == "report" else cnn_files.folder / "r.json"
    before = listing(cnn_files.folder)
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                           "--report", report, *FAST)
    assert_one_line_error(code, err, f"output folder {missing_dir} does not exist")
    assert not missing_dir.exists()
    assert_nothing_left(cnn_files.folder, before, out, report)


def test_output_is_a_directory(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    out = cnn_files.folder / "adir"
    out.mkdir()
    before = listing(cnn_files.folder)
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib)
    assert_one_line_error(code, err, f"output {out} is a directory")
    assert listing(out) == set()
    assert listing(cnn_files.folder) == before


def test_static_without_calib(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    out = cnn_files.folder / "q.onnx"
    before = listing(cnn_files.folder)
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out)
    assert_one_line_error(code, err, "static quantization needs calibration data: pass --calib DATA",
                          "--mode dynamic")
    assert_nothing_left(cnn_files.folder, before, out)


def _bad_data(folder: Path, case: str) -> tuple[Path, tuple[str, ...]]:
    """A calibration file for ``case`` and the parts its error message must contain."""
    images = make_images()
    path = folder / f"bad_{case}.npz"
    if case == "missing":
        return path, (f"data path '{path}' does not exist",)
    if case == "wrong-name":
        save_npz(path, img=images, extra=images)  # one array alone would feed the only input
        return path, ("unknown inputs 'img', 'extra'", "model inputs: 'image'")
    if case == "int-dtype":
        save_npz(path, image=(images * 255).astype(np.int64))
        return path, (f"input 'image' in '{path}'", "expected float32", "got int64")
    if case == "wrong-shape":
        save_npz(path, image=images[:, :, :7, :])
        return path, (f"input 'image' in '{path}'", "[N, 1, 8, 8]", "dimension 2 must be 8, got 7")
    if case == "wrong-rank":
        save_npz(path, image=images[:, 0])
        return path, (f"input 'image' in '{path}'", "[N, 1, 8, 8]")
    if case == "nan":
        images[5, 0, 1, 1] = np.nan
        save_npz(path, image=images)
        return path, (f"input 'image' in '{path}'", "sample 5 contains NaN")
    if case == "inf":
        images[7, 0, 2, 3] = np.inf
        save_npz(path, image=images)
        return path, (f"input 'image' in '{path}'", "sample 7")
    if case == "empty":
        save_npz(path, image=images[:0])
        return path, ("no samples", "0 samples")
    if case == "labels-count":
        save_npz(path, image=images, labels=make_labels(10))
        return path, ("labels",)
    if case == "not-npz":
        path.write_bytes(b"definitely not a zip file")
        return path, (f"'{path}'",)
    raise AssertionError(case)


BAD_DATA = ["missing", "wrong-name", "int-dtype", "wrong-shape", "wrong-rank", "nan", "inf", "empty",
            "labels-count", "not-npz"]


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_calibration_data(run_cli: RunCli, cnn_files: CnnFiles, case: str) -> None:
    calib, parts = _bad_data(cnn_files.folder, case)
    out, report = cnn_files.folder / "q.onnx", cnn_files.folder / "r.json"
    before = listing(cnn_files.folder)
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", calib, "--report", report)
    assert_one_line_error(code, err, *parts)
    assert_nothing_left(cnn_files.folder, before, out, report)


@pytest.mark.parametrize("case", ["wrong-name", "nan", "empty"])
def test_bad_evaluation_data_fails_before_calibration(run_cli: RunCli, cnn_files: CnnFiles, case: str) -> None:
    """Bad --eval data is refused up front (one line), not after a whole calibration run."""
    evaluation, parts = _bad_data(cnn_files.folder, case)
    out, report = cnn_files.folder / "q.onnx", cnn_files.folder / "r.json"
    before = listing(cnn_files.folder)
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib,
                           "--eval", evaluation, "--report", report, *FAST)
    assert "calibrating" not in err, f"--eval data was checked only after calibration: {err!r}"
    assert_one_line_error(code, err, *parts)
    assert_nothing_left(cnn_files.folder, before, out, report)


@pytest.mark.parametrize("args, parts", [
    (("--percentile", "20", "--method", "percentile"), ("percentile must be in (50, 100], got 20.0",)),
    (("--percentile", "20"), ("percentile must be in (50, 100], got 20.0",)),
    (("--batch-size", "0"), ("batch_size must be at least 1, got 0",)),
    (("--batch-size", "-3"), ("batch_size must be at least 1, got -3",)),
    (("--samples", "0"), ("samples must be at least 1, got 0",)),
    (("--bins", "0"), ("num_bins must be at least 128, got 0",)),
])
def test_impossible_configuration(run_cli: RunCli, cnn_files: CnnFiles, args: tuple[str, ...],
                                  parts: tuple[str, ...]) -> None:
    out = cnn_files.folder / "q.onnx"
    before = listing(cnn_files.folder)
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib, *args)
    assert_one_line_error(code, err, *parts)
    assert_nothing_left(cnn_files.folder, before, out)


@pytest.mark.parametrize("args, message", [
    (("--method", "foo"), "argument --method: invalid choice: 'foo'"),
    (("--mode", "half"), "argument --mode: invalid choice: 'half'"),
    (("--activation-type", "int4"), "argument --activation-type: invalid choice: 'int4'"),
    (("--batch-size", "eight"), "argument --batch-size: invalid int value: 'eight'"),
    (("--percentile", "high"), "argument --percentile: invalid float value: 'high'"),
    (("--no-such-option",), "unrecognized arguments: --no-such-option"),
])
def test_argparse_errors(run_cli: RunCli, cnn_files: CnnFiles, args: tuple[str, ...], message: str) -> None:
    out = cnn_files.folder / "q.onnx"
    before = listing(cnn_files.folder)
    code, stdout, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib, *args)
    assert code == 2
    assert stdout == ""
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("onnxq"), last
    assert message in last, last
    assert_nothing_left(cnn_files.folder, before, out)


def test_missing_required_arguments(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    code, _, err = run_cli("quantize", cnn_files.model)
    assert code == 2 and "the following arguments are required: -o/--output" in err
    code, _, err = run_cli("validate", cnn_files.model, cnn_files.model)
    assert code == 2 and "the following arguments are required: --data" in err
    code, _, err = run_cli()
    assert code == 2 and "required: COMMAND" in err


def _renamed_output_model(folder: Path) -> Path:
    model = make_cnn_model()
    model.graph.node[-1].output[0] = "scores"
    model.graph.output[0].name = "scores"
    path = folder / "renamed.onnx"
    onnx.save_model(model, path)
    return path


def test_validate_models_with_different_outputs(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    other = _renamed_output_model(cnn_files.folder)
    before = listing(cnn_files.folder)
    code, stdout, err = run_cli("validate", cnn_files.model, other, "--data", cnn_files.eval, *FAST)
    assert_one_line_error(code, err, "different outputs", "only in float ['logits']",
                          "only in quantized ['scores']")
    assert stdout == ""
    assert listing(cnn_files.folder) == before


@pytest.mark.parametrize("case", ["missing-model", "missing-data", "nan"])
def test_validate_bad_inputs(run_cli: RunCli, cnn_files: CnnFiles, quantized_cnn_path: Path, case: str) -> None:
    quant, data = quantized_cnn_path, cnn_files.eval
    if case == "missing-model":
        quant = cnn_files.folder / "missing.onnx"
        parts: tuple[str, ...] = (f"cannot read model '{quant}'", "no such file")
    else:
        data, parts = _bad_data(cnn_files.folder, {"missing-data": "missing", "nan": "nan"}[case])
    before = listing(cnn_files.folder)
    code, stdout, err = run_cli("validate", cnn_files.model, quant, "--data", data, "--json", *FAST)
    assert_one_line_error(code, err, *parts)
    assert stdout == ""
    assert listing(cnn_files.folder) == before


@pytest.mark.parametrize("case", ["missing", "garbage", "directory"])
def test_inspect_bad_model(run_cli: RunCli, tmp_path: Path, case: str) -> None:
    path = tmp_path / "m.onnx"
    parts: tuple[str, ...] = (f"cannot read model '{path}'",)
    if case == "garbage":
        path.write_bytes(b"\x00\xffnot onnx at all\x13\x37" * 10)
        parts += ("not an ONNX file",)
    elif case == "directory":
        path.mkdir()
        parts += ("not a file",)
    else:
        parts += ("no such file",)
    code, stdout, err = run_cli("inspect", path, "--json")
    assert_one_line_error(code, err, *parts)
    assert stdout == ""


@pytest.mark.parametrize("error, args_of", [
    (ModelError, lambda f: ("quantize", f.folder / "missing.onnx", "-o", f.folder / "q.onnx", "--calib", f.calib)),
    (ConfigError, lambda f: ("quantize", f.model, "-o", f.folder / "q.onnx", "--calib", f.calib,
                             "--batch-size", "0")),
    (DataError, lambda f: ("quantize", f.model, "-o", f.folder / "q.onnx", "--calib", f.folder / "nope.npz")),
])
def test_debug_prints_traceback_and_keeps_exit_code(cnn_files: CnnFiles, error: type[OnnxqError],
                                                    args_of: Callable[[CnnFiles], tuple], capsys) -> None:
    """``--debug`` adds the traceback of the OnnxqError; the exit code stays 2 (bad input)."""
    args = [str(a) for a in args_of(cnn_files)]
    before = listing(cnn_files.folder)
    assert main([*args, "--debug"]) == ExitCode.USAGE_ERROR
    stderr = capsys.readouterr().err
    assert "Traceback" in stderr and error.__name__ in stderr
    assert stderr.rstrip().splitlines()[-1].startswith("onnxq: error:")
    assert listing(cnn_files.folder) == before


# ------------------------------------------------------------------------- the real console script


def _script(script: Path, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_console_script_version(onnxq_script: Path, tmp_path: Path) -> None:
    result = _script(onnxq_script, "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"onnxq {onnxq.__version__}"


def test_console_script_quantize_dynamic(onnxq_script: Path, cnn_files: CnnFiles) -> None:
    out = cnn_files.folder / "dyn.onnx"
    result = _script(onnxq_script, "quantize", "model.onnx", "-o", out.name, "--mode", "dynamic", "-q",
                     "--no-latency", cwd=cnn_files.folder)
    assert result.returncode == 0, result.stderr
    assert "MatMulInteger" in op_types(out)


def test_console_script_error_is_one_line(onnxq_script: Path, cnn_files: CnnFiles) -> None:
    out = cnn_files.folder / "q.onnx"
    before = listing(cnn_files.folder)
    result = _script(onnxq_script, "quantize", "model.onnx", "-o", out.name, "--calib", "missing.npz",
                     cwd=cnn_files.folder)
    assert_one_line_error(result.returncode, result.stderr, "data path 'missing.npz' does not exist")
    assert result.stdout == ""
    assert_nothing_left(cnn_files.folder, before, out)


def test_console_script_debug_shows_traceback(onnxq_script: Path, cnn_files: CnnFiles) -> None:
    out = cnn_files.folder / "q.onnx"
    before = listing(cnn_files.folder)
    result = _script(onnxq_script, "quantize", "model.onnx", "-o", out.name, "--calib", "missing.npz",
                     "--debug", cwd=cnn_files.folder)
    assert result.returncode == ExitCode.USAGE_ERROR
    assert "Traceback (most recent call last)" in result.stderr
    assert "DataError: data path 'missing.npz' does not exist" in result.stderr
    assert_nothing_left(cnn_files.folder, before, out)


def test_html_spells_an_html_report_like_validate(run_cli: RunCli, cnn_files: CnnFiles) -> None:
    """`quantize --html r.html` is `--report r.html` (validate's word); `--html r.json` is refused before any work."""
    from onnxq.cli import build_parser

    parsed = build_parser().parse_args(["quantize", "m.onnx", "-o", "q.onnx", "--html", "r.html"])
    assert parsed.report == "r.html"
    assert build_parser().parse_args(["quantize", "m.onnx", "-o", "q.onnx", "--report", "r.json"]).report == "r.json"
    out, report = cnn_files.folder / "q_html.onnx", cnn_files.folder / "r_html.json"
    before = listing(cnn_files.folder)
    code, _, err = run_cli("quantize", cnn_files.model, "-o", out, "--calib", cnn_files.calib, "--html", report, *FAST)
    assert code == ExitCode.USAGE_ERROR and len(err.splitlines()) == 1, err
    assert err.startswith("onnxq quantize: error: --html expects a file name ending in .html or .htm") and \
        "--report FILE.json writes JSON" in err
    assert listing(cnn_files.folder) == before
