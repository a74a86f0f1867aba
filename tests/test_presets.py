"""Hardware presets: the documented configs, fresh objects, overrides, and the CLI's override order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import onnxq
from onnxq import ConfigError, QuantConfig, QuantType, list_presets, preset
from onnxq.hardware import saturates_u8s8

from conftest import CnnFiles

EXPECTED = {  # name: (activation, weight, reduce_range, per_channel)
    "x86-vnni": (QuantType.UINT8, QuantType.INT8, False, True),
    "x86-avx2": (QuantType.UINT8, QuantType.INT8, True, True),
    "arm64": (QuantType.INT8, QuantType.INT8, False, True),
    "generic": (QuantType.UINT8, QuantType.INT8, saturates_u8s8(), True),  # reduce_range follows the host
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_configs(name: str) -> None:
    config = preset(name)
    assert (config.activation_type, config.weight_type, config.reduce_range, config.per_channel) == EXPECTED[name]
    assert preset(name) is not preset(name)  # a new config each call, nothing shared


def test_generic_is_the_defaults() -> None:
    assert preset("generic") == QuantConfig()


def test_list_presets() -> None:
    presets = list_presets()
    assert [p.name for p in presets] == list(EXPECTED)
    for p in presets:
        assert p.reason and "\n" not in p.reason and p.fused_ops
        assert p.config == preset(p.name)
    assert onnxq.Preset is type(presets[0])


def test_overrides_win_and_do_not_mutate() -> None:
    config = preset("x86-avx2", reduce_range=False, method="entropy")
    assert not config.reduce_range and config.method.value == "entropy"
    assert preset("x86-avx2").reduce_range


@pytest.mark.parametrize("name, overrides, message", [
    ("x86-sse", {}, "unknown hardware preset"),
    ("arm64", {"no_such_field": 1}, "no_such_field"),
    ("arm64", {"activation_type": "int4"}, "activation_type"),
])
def test_bad_preset_requests(name: str, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        preset(name, **overrides)


def test_cli_lists_presets(run_cli) -> None:
    code, out, _ = run_cli("presets")
    assert code == 0 and all(name in out for name in EXPECTED)
    code, out, _ = run_cli("presets", "--json")
    rows = json.loads(out)
    assert {r["name"]: r["config"]["reduce_range"] for r in rows}["x86-avx2"] is True


@pytest.mark.parametrize("flags, activation, reduce_range, per_channel", [
    (["--target-hw", "x86-avx2"], "uint8", True, True),
    (["--target-hw", "x86-avx2", "--no-reduce-range"], "uint8", False, True),
    (["--target-hw", "arm64"], "int8", False, True),
    (["--target-hw", "arm64", "--activation-type", "uint8", "--per-tensor"], "uint8", False, False),
    ([], "uint8", saturates_u8s8(), True),
    (["--no-reduce-range"], "uint8", False, True),
    (["--reduce-range"], "uint8", True, True),
])
def test_cli_flags_override_the_preset(run_cli, cnn_files: CnnFiles, tmp_path: Path, flags: list[str],
                                       activation: str, reduce_range: bool, per_channel: bool) -> None:
    report = tmp_path / "report.json"
    code, _, err = run_cli("quantize", cnn_files.model, "-o", tmp_path / "q.onnx", "--calib", cnn_files.calib,
                           "--no-latency", "-q", "--report", report, *flags)
    assert code == 0, err
    config = json.loads(report.read_text())["config"]
    assert (config["activation_type"], config["reduce_range"], config["per_channel"]) == (
        activation, reduce_range, per_channel)


def test_cli_unknown_target_is_a_usage_error(run_cli, cnn_files: CnnFiles, tmp_path: Path) -> None:
    code, _, err = run_cli("quantize", cnn_files.model, "-o", tmp_path / "q.onnx", "--target-hw", "x86-sse")
    assert code == 2 and "x86-sse" in err


def test_default_reduce_range_follows_the_host_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxq.config
    import onnxq.hardware

    monkeypatch.setattr(onnxq.hardware.platform, "machine", lambda: "x86_64")
    for flags, expected in ((frozenset({"avx2"}), True), (frozenset({"avx2", "avx512_vnni"}), False),
                            (frozenset({"avx2", "avx_vnni"}), False), (frozenset(), False)):
        monkeypatch.setattr(onnxq.hardware, "cpu_flags", lambda flags=flags: flags)
        monkeypatch.setattr(onnxq.config, "saturates_u8s8", onnxq.hardware.saturates_u8s8)
        assert QuantConfig().reduce_range is expected
        assert QuantConfig(reduce_range=False).reduce_range is False
    monkeypatch.setattr(onnxq.hardware.platform, "machine", lambda: "aarch64")
    assert QuantConfig().reduce_range is False
