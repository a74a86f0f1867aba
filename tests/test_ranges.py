"""Ranges as data: JSON round trip, merge, the on-disk cache, errors on bad files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from onnxq.calibration import RangeCache, Ranges, TensorRange, default_cache_dir
from onnxq.errors import CalibrationError


def _ranges(**kw) -> Ranges:
    values = {"conv1": TensorRange(-1.5, 2.25), "relu1": TensorRange(0.0, float(np.float32(6.123456789))),
              "mask": TensorRange(float(np.finfo(np.float32).min), 0.0)}
    defaults = {"method": "entropy", "samples": 64, "model_hash": "m" * 64, "data_hash": "d" * 16,
                "settings": {"method": "entropy", "num_bins": 2048}}
    defaults.update(kw)
    return Ranges(tensors=values, **defaults)


def test_mapping_protocol():
    ranges = _ranges()
    assert len(ranges) == 3
    assert "conv1" in ranges and "nope" not in ranges
    assert ranges["conv1"] == TensorRange(-1.5, 2.25)
    assert sorted(ranges) == ["conv1", "mask", "relu1"]
    with pytest.raises(KeyError):
        ranges["nope"]


def test_dict_round_trip_is_exact_and_plain():
    ranges = _ranges()
    data = ranges.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert all(type(v) is float for r in data["tensors"].values() for v in r.values())
    assert Ranges.from_dict(json.loads(text)) == ranges


def test_json_file_round_trip_and_atomic_write(tmp_path):
    ranges = _ranges()
    path = ranges.to_json(tmp_path / "sub" / "ranges.json")
    assert path == tmp_path / "sub" / "ranges.json"
    restored = Ranges.from_json(path)
    assert restored == ranges
    assert restored["relu1"].high == float(np.float32(6.123456789))
    _ranges(samples=1).to_json(path)      # overwrite in place
    assert Ranges.from_json(path).samples == 1
    assert [p.name for p in path.parent.iterdir()] == ["ranges.json"]   # no temporary files left


def test_merge_is_union_and_adds_samples():
    a = Ranges({"x": TensorRange(-1.0, 1.0), "y": TensorRange(0.0, 2.0)}, method="minmax", samples=10,
               model_hash="m", data_hash="d1")
    b = Ranges({"x": TensorRange(-0.5, 3.0), "z": TensorRange(-4.0, 0.0)}, method="minmax", samples=5,
               model_hash="m", data_hash="d2")
    merged = a.merge(b)
    assert merged.tensors == {"x": TensorRange(-1.0, 3.0), "y": TensorRange(0.0, 2.0), "z": TensorRange(-4.0, 0.0)}
    assert merged.samples == 15 and merged.model_hash == "m" and merged.data_hash is None
    assert a["x"] == TensorRange(-1.0, 1.0)                  # inputs untouched
    assert merged is not a and merged.tensors["y"] is not a.tensors["y"]


@pytest.mark.parametrize("other", [
    Ranges({}, method="entropy"),
    Ranges({}, method="minmax", model_hash="other"),
    Ranges({}, method="minmax", settings={"num_bins": 128}),
])
def test_merge_refuses_mismatches(other):
    with pytest.raises(CalibrationError):
        Ranges({}, method="minmax", model_hash="m").merge(other)


@pytest.mark.parametrize("low, high", [(1.0, -1.0), (float("nan"), 1.0), (0.0, float("inf")), ("a", 1.0)])
def test_tensor_range_validation(low, high):
    with pytest.raises(CalibrationError):
        TensorRange(low, high)


def test_from_json_missing_file(tmp_path):
    with pytest.raises(CalibrationError, match="not found") as info:
        Ranges.from_json(tmp_path / "missing.json")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [
    "{not json", "", "[1, 2]", '{"tensors": {"x": {"low": 2.0, "high": 1.0}}}',
    '{"tensors": {"x": [0.0]}}', '{"format": "something-else", "tensors": {}}', '{"tensors": {}, "version": 99}',
    '{"tensors": {}, "samples": -1}', '{"tensors": {"x": {"low": "NaN", "high": 1.0}}}',
])
def test_from_json_corrupt_file(tmp_path, content):
    path = tmp_path / "ranges.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CalibrationError) as info:
        Ranges.from_json(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------
# cache


def test_cache_miss_put_get(tmp_path):
    cache = RangeCache(tmp_path / "cache")
    ranges = _ranges()
    assert cache.get(ranges.model_hash, ranges.data_hash, ranges.settings) is None
    path = cache.put(ranges)
    assert path.parent == tmp_path / "cache" and path.suffix == ".json"
    assert cache.get(ranges.model_hash, ranges.data_hash, {"num_bins": 2048, "method": "entropy"}) == ranges
    assert cache.get(ranges.model_hash, ranges.data_hash, {"method": "entropy", "num_bins": 512}) is None
    assert cache.get("other", ranges.data_hash, ranges.settings) is None


def test_cache_put_adds_method_to_settings(tmp_path):
    cache = RangeCache(tmp_path)
    ranges = _ranges(method="minmax", settings={})
    cache.put(ranges)
    hit = cache.get(ranges.model_hash, ranges.data_hash, {"method": "minmax"})
    assert hit is not None and hit.tensors == ranges.tensors
    assert ranges.settings == {}   # the caller's object is not mutated


def test_cache_key_is_stable_and_order_independent(tmp_path):
    cache = RangeCache(tmp_path)
    key = cache.key("m", "d", {"method": "percentile", "percentile": 99.99, "num_bins": 2048})
    assert key == RangeCache(tmp_path / "elsewhere").key("m", "d", {"num_bins": 2048, "percentile": 99.99,
                                                                    "method": "percentile"})
    assert key != cache.key("m", "d", {"method": "percentile", "percentile": 99.9, "num_bins": 2048})
    assert key != cache.key("m", "d2", {"method": "percentile", "percentile": 99.99, "num_bins": 2048})
    assert len(key) == 32 and int(key, 16) >= 0


def test_cache_corrupt_entry_is_a_miss(tmp_path, caplog):
    cache = RangeCache(tmp_path)
    ranges = _ranges()
    path = cache.put(ranges)
    path.write_text("{broken", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="onnxq.calibration.ranges"):
        assert cache.get(ranges.model_hash, ranges.data_hash, ranges.settings) is None
    assert "corrupt" in caplog.text
    cache.put(ranges)
    assert cache.get(ranges.model_hash, ranges.data_hash, ranges.settings) == ranges


def test_cache_put_needs_hashes(tmp_path):
    with pytest.raises(CalibrationError):
        RangeCache(tmp_path).put(_ranges(model_hash=None))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXQ_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("ONNXQ_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "onnxq" / "ranges"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == Path(tmp_path / "home" / ".cache" / "onnxq" / "ranges")
