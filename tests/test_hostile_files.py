"""Hostile framework files must not run code without --allow-pickle (issue 11, item 1)."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import onnxq  # noqa: E402
from onnxq.errors import AdapterError  # noqa: E402


class _Payload:
    """Unpickling this creates a marker file: proof that code from the archive ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.marker}",))


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):  # noqa: D102
        return self.fc(x)


def _good_archive(path: Path) -> Path:
    program = torch.export.export(_Linear(), (torch.randn(1, 4),))
    torch.export.save(program, str(path))
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            zout.writestr(info, data)
    return dst


def _pickled_weight(tmp: Path, marker: Path) -> Path:
    """The weights config flags a weight as pickled and the weight file is a payload."""
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            config["config"]["fc.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            return pickle.dumps(_Payload(marker))
        return data
    return _rewrite(_good_archive(tmp / "good.pt2"), tmp / "evil_weight.pt2", edit)


def _pickled_inputs(tmp: Path, marker: Path) -> Path:
    """The sample inputs are a payload (torch falls back to weights_only=False for them)."""
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("data/sample_inputs/model.pt"):
            return pickle.dumps(_Payload(marker))
        return data
    return _rewrite(_good_archive(tmp / "good.pt2"), tmp / "evil_inputs.pt2", edit)


@pytest.mark.parametrize("make", [_pickled_weight, _pickled_inputs], ids=["weight", "sample-inputs"])
def test_pt2_payload_never_runs_without_opt_in(tmp_path: Path, make, run_cli) -> None:
    marker = tmp_path / "pwned"
    evil = make(tmp_path, marker)
    with pytest.raises(AdapterError, match="allow-pickle"):
        onnxq.api.resolve_model(evil)
    assert not marker.exists()
    code, _, err = run_cli("export", evil, "-o", tmp_path / "m.onnx")
    assert code == 2 and "allow-pickle" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()
    code, _, err = run_cli("quantize", evil, "-o", tmp_path / "q.onnx", "--mode", "dynamic")
    assert code == 2 and "allow-pickle" in err
    assert not marker.exists() and not (tmp_path / "q.onnx").exists()


def test_pt2_payload_runs_only_with_opt_in(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _pickled_weight(tmp_path, marker)
    from onnxq_torch.files import load_file

    try:
        load_file(evil, allow_pickle=True)
    except Exception:  # noqa: BLE001 - the payload is not a tensor; what matters is that it was the user's choice
        pass
    assert marker.exists()


def test_clean_pt2_still_loads(tmp_path: Path) -> None:
    from onnxq_torch.files import load_file

    loaded = load_file(_good_archive(tmp_path / "good.pt2"))
    assert loaded.kind == "exported program" and loaded.example_inputs is not None


def _external_model(folder: Path) -> Path:
    """A small model whose weights live in ``weights.bin`` next to it."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    import onnx

    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    return folder / "model.onnx"


@pytest.mark.parametrize("spelling", ["weights.bin", "./weights.bin", "sub/../weights.bin", "link.bin"])
def test_output_never_lands_on_the_inputs_external_data(tmp_path: Path, run_cli, spelling: str) -> None:
    import hashlib

    model = _external_model(tmp_path / "dir")
    (tmp_path / "dir" / "sub").mkdir()
    (tmp_path / "dir" / "link.bin").symlink_to(tmp_path / "dir" / "weights.bin")
    before = hashlib.sha256((tmp_path / "dir" / "weights.bin").read_bytes()).hexdigest()
    code, _, err = run_cli("quantize", model, "-o", tmp_path / "dir" / spelling, "--mode", "dynamic", "-q")
    assert code == 2 and "refusing" in err and "weights.bin" in err
    assert hashlib.sha256((tmp_path / "dir" / "weights.bin").read_bytes()).hexdigest() == before
    onnxq.model.load_model(model)  # still loadable
    code, _, err = run_cli("quantize", model, "-o", tmp_path / "dir" / "q.onnx", "--mode", "dynamic", "-q",
                           "--report", tmp_path / "dir" / spelling)
    assert code == 2 and "refusing" in err


def test_python_save_refuses_the_inputs_external_data(tmp_path: Path) -> None:
    model = _external_model(tmp_path)
    result = onnxq.quantize(model, config=onnxq.QuantConfig(mode="dynamic"), latency=False)
    with pytest.raises(onnxq.ModelError, match="weights.bin"):
        result.save(tmp_path / "weights.bin")
    result.save(tmp_path / "q.onnx")
