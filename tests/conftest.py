"""Shared fixtures: a small float CNN classifier, calibration / evaluation data, a CLI runner."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

CNN_INPUT = "image"
CNN_OUTPUT = "logits"
CNN_CLASSES = 10
CNN_SAMPLES = 64


def make_cnn_model(seed: int = 0) -> onnx.ModelProto:
    """image float32 [N,1,8,8] -> Conv(8, 3x3, pad 1) -> Relu -> MaxPool 2 -> Flatten -> Gemm(10) -> logits [N,10].

    Opset 17, fixed random weights drawn from ``seed``; passes ``onnx.checker``.
    """
    rng = np.random.default_rng(seed)
    conv_w = (rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32)
    conv_b = (rng.standard_normal(8) * 0.1).astype(np.float32)
    gemm_w = (rng.standard_normal((CNN_CLASSES, 8 * 4 * 4)) * 0.2).astype(np.float32)
    gemm_b = (rng.standard_normal(CNN_CLASSES) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", [CNN_INPUT, "conv_w", "conv_b"], ["conv_out"], name="Conv_0",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="Relu_0"),
        helper.make_node("MaxPool", ["relu_out"], ["pool_out"], name="MaxPool_0",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool_out"], ["flat"], name="Flatten_0", axis=1),
        helper.make_node("Gemm", ["flat", "gemm_w", "gemm_b"], [CNN_OUTPUT], name="Gemm_0", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info(CNN_INPUT, TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info(CNN_OUTPUT, TensorProto.FLOAT, ["N", CNN_CLASSES])],
        initializer=[numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(conv_b, "conv_b"),
                     numpy_helper.from_array(gemm_w, "gemm_w"), numpy_helper.from_array(gemm_b, "gemm_b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxq-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_images(samples: int = CNN_SAMPLES, seed: int = 1) -> np.ndarray:
    """Smooth-ish random images in [0, 1], float32 [samples, 1, 8, 8]."""
    rng = np.random.default_rng(seed)
    return rng.random((samples, 1, 8, 8), dtype=np.float32)


def make_labels(samples: int = CNN_SAMPLES, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CNN_CLASSES, size=samples).astype(np.int64)


@dataclass(frozen=True)
class CnnFiles:
    """The files of the CNN fixture, all inside one fresh ``tmp_path``."""

    folder: Path
    model: Path
    calib: Path
    eval: Path


@pytest.fixture
def cnn_model() -> onnx.ModelProto:
    """The float CNN classifier as an in-memory ModelProto."""
    return make_cnn_model()


@pytest.fixture
def cnn_files(tmp_path: Path, cnn_model: onnx.ModelProto) -> CnnFiles:
    """``model.onnx`` (the float CNN), ``calib.npz`` and ``eval.npz`` (64 samples each, key
    ``image`` + ``labels``) written into ``tmp_path``."""
    model_path = tmp_path / "model.onnx"
    onnx.save_model(cnn_model, model_path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, image=make_images(seed=1), labels=make_labels(seed=2))
    evaluation = tmp_path / "eval.npz"
    np.savez(evaluation, image=make_images(seed=3), labels=make_labels(seed=4))
    return CnnFiles(folder=tmp_path, model=model_path, calib=calib, eval=evaluation)


@pytest.fixture(scope="session")
def quantized_cnn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static U8S8 QDQ quantization of the CNN (built once per session with the public API)."""
    from onnxq import QuantConfig, quantize

    folder = tmp_path_factory.mktemp("quantized_cnn")
    result = quantize(make_cnn_model(), {CNN_INPUT: make_images(seed=1)}, config=QuantConfig(),
                      latency=False)
    path = folder / "model.q.onnx"
    result.save(path)
    return path


CliResult = tuple[int, str, str]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Call ``onnxq.cli.main(list(args))`` in-process; return ``(exit_code, stdout, stderr)``.

    ``SystemExit`` raised by argparse (``--help``, ``--version``, usage errors) is turned into
    its exit code.
    """
    from onnxq.cli import main

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return int(code), out, err

    return run


@pytest.fixture(scope="session")
def onnxq_script() -> Path:
    """The installed ``onnxq`` console script of the running interpreter's environment."""
    script = Path(sys.executable).parent / "onnxq"
    assert script.exists(), f"console script not installed at {script}: pip install -e ."
    return script


def perturbed_cnn(scale: float = 0.03, seed: int = 5) -> onnx.ModelProto:
    """The test CNN with noise added to its classifier weights: same inputs/outputs, clearly different."""
    model = make_cnn_model()
    rng = np.random.default_rng(seed)
    for i, init in enumerate(model.graph.initializer):
        if init.name == "gemm_w":
            w = numpy_helper.to_array(init)
            noisy = (w + scale * rng.standard_normal(w.shape)).astype(np.float32)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(noisy, "gemm_w"))
    return model
