"""SIGTERM cleans up like SIGINT (issue 11, item 9): no temporary folder, no ``.tmp`` file beside the
output, one stderr line, exit 143 for SIGTERM and 130 for SIGINT, as shells expect.

The run is held at a known point (inside ONNX Runtime's pre-processing, which works in a private
``onnxq-pre-*`` folder; or halfway through writing the output) by a patched function that creates a
"ready" file and sleeps; the test then signals the process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

#: ONNX Runtime itself writes this small file into the temp folder when it is imported (not onnxq's).
_ORT_SESSION_FILE = ".ses"

_HOLD_IN_PREPROCESS = """
import pathlib, sys, time
import onnxq.rewrite.qdq as qdq
def hold(*args, **kwargs):
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(120)
qdq.quant_pre_process = hold
from onnxq.cli import main
sys.exit(main(sys.argv[2:]))
"""

_HOLD_IN_SAVE = """
import pathlib, sys, time
import onnx
real_save = onnx.save_model
def hold(model, f, *args, **kwargs):
    real_save(model, f, *args, **kwargs)
    if str(f).startswith(sys.argv[2]):  # the temporary file beside the output exists now
        pathlib.Path(sys.argv[1]).touch()
        time.sleep(120)
onnx.save_model = hold
from onnxq.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _model(folder: Path) -> Path:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, folder / "m.onnx")
    return folder / "m.onnx"


@pytest.mark.parametrize("stage", ["preprocess", "save"])
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_cleans_up(tmp_path: Path, stage: str, signum: int, code: int) -> None:
    inputs, out_dir, private_tmp = tmp_path / "in", tmp_path / "out", tmp_path / "tmp"
    for folder in (inputs, out_dir, private_tmp):
        folder.mkdir()
    model = _model(inputs)
    ready = tmp_path / "ready"
    out = out_dir / "q.onnx"
    argv = ["quantize", str(model), "-o", str(out), "--mode", "dynamic", "-q"]
    script = _HOLD_IN_PREPROCESS if stage == "preprocess" else _HOLD_IN_SAVE
    extra = [] if stage == "preprocess" else [str(out_dir)]
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(ready), *extra, *argv], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, f"exited early: {proc.communicate()}"
            assert time.monotonic() < deadline, "the run never reached the point to interrupt"
            time.sleep(0.05)
        if stage == "preprocess":
            assert any(p.name.startswith("onnxq-pre-") for p in private_tmp.iterdir())
        else:
            assert any(p.name.endswith(".tmp") for p in out_dir.iterdir())
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("onnxq: terminated" if signum == signal.SIGTERM else "onnxq: interrupted")
    left = [p.name for p in private_tmp.iterdir() if p.name != _ORT_SESSION_FILE]
    assert left == [], f"temporary files left behind: {left}"
    assert list(out_dir.iterdir()) == [], "output or temporary file left behind"
    assert sorted(p.name for p in inputs.iterdir()) == ["m.onnx"]
