"""Gate a quantized model in your own test suite: copy this file next to your tests.

It quantizes the repository's demo model (``examples/data/digits_cnn.onnx``, a small CNN trained on
scikit-learn's 8x8 digits) once per test session and checks, on held-out data, that the int8 model
stays close to the float model. A miss fails with a message that names the output, the metric, the
threshold, the measured value and the worst sample.

Run it with::

    pytest examples/ci/test_quantized_model.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

import onnxq
from onnxq.testing import assert_quantized_close

DATA = Path(__file__).resolve().parents[1] / "data"
FLOAT_MODEL = DATA / "digits_cnn.onnx"
CALIBRATION = DATA / "digits_calib.npz"
EVALUATION = DATA / "digits_eval.npz"


@pytest.fixture(scope="session")
def quantized_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model quantized to static int8 (U8S8, per-channel weights) in a temporary folder."""
    result = onnxq.quantize(FLOAT_MODEL, CALIBRATION, latency=False)
    path = tmp_path_factory.mktemp("quantized") / "digits_cnn.int8.onnx"
    result.save(path)
    return path


def test_outputs_stay_close(quantized_model: Path) -> None:
    assert_quantized_close(FLOAT_MODEL, quantized_model, EVALUATION, metric="cosine", threshold=0.999)


def test_predictions_agree(quantized_model: Path) -> None:
    assert_quantized_close(FLOAT_MODEL, quantized_model, EVALUATION, metric="top1", threshold=0.99)


def test_signal_to_noise(quantized_model: Path) -> None:
    assert_quantized_close(FLOAT_MODEL, quantized_model, EVALUATION, metric="sqnr", threshold=30.0)
