"""Tests of the Report schema: JSON round trip, strict JSON, worst(), format()."""

from __future__ import annotations

import json
import math
from enum import Enum

import numpy as np
import pytest

from onnxq.errors import ConfigError, DataError
from onnxq.report import SCHEMA_VERSION, LatencyMetrics, OutputMetrics, Report


def _strict_loads(text: str):
    def refuse(name: str):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def make_report(**overrides) -> Report:
    fields = dict(
        outputs=[
            OutputMetrics("logits", max_abs_error=0.125, mean_abs_error=0.015625, cosine=0.998765,
                          min_cosine=0.95, sqnr_db=31.4159, top1_agreement=0.975,
                          top5_agreement=1.0),
            OutputMetrics("features", max_abs_error=0.0, mean_abs_error=0.0, cosine=1.0,
                          min_cosine=1.0, sqnr_db=math.inf),
        ],
        samples=40,
        float_size_bytes=4 * 1024 * 1024,
        quant_size_bytes=1024 * 1024,
        size_ratio=4.0,
        latency=LatencyMetrics(float_ms=2.5, quant_ms=1.25, speedup=2.0, batch_size=8, threads=4,
                               runs=20),
        float_accuracy=0.9,
        quant_accuracy=0.875,
        mode="static",
        config={"mode": "static", "per_channel": True, "percentile": 99.99, "op_types": ["Conv"]},
        notes=["Conv left in float: conv_7 (SQNR 3 dB)"],
        float_nodes=["conv_7"],
    )
    fields.update(overrides)
    return Report(**fields)


def test_reexports_and_version():
    assert SCHEMA_VERSION == 2  # 2: layers, fallback, target, target_met (issue 5)
    assert make_report().schema_version == 2


def test_dict_round_trip_is_exact():
    report = make_report()
    data = report.to_dict()
    assert data["outputs"][1]["sqnr_db"] == "inf"
    assert data["schema_version"] == 2
    assert Report.from_dict(data) == report


def test_json_round_trip_text_and_file(tmp_path):
    report = make_report()
    text = report.to_json()
    parsed = _strict_loads(text)  # strict JSON: no Infinity / NaN constants
    assert parsed["outputs"][1]["sqnr_db"] == "inf"
    assert Report.from_json(text) == report

    path = tmp_path / "report.json"
    written = report.to_json(path)
    assert path.read_text(encoding="utf-8").strip() == written
    assert Report.from_json(path) == report
    assert Report.from_json(str(path)) == report
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_minimal_report_round_trip():
    report = Report(outputs=[], samples=0, float_size_bytes=10, quant_size_bytes=5, size_ratio=2.0)
    assert Report.from_json(report.to_json()) == report
    assert report.latency is None and report.notes == [] and report.float_nodes == []
    assert report.format().splitlines()[1].startswith("output")  # header only, no rows


def test_nonfinite_values_are_strings():
    report = make_report(outputs=[OutputMetrics("y", math.nan, math.nan, math.nan, math.nan,
                                                -math.inf)])
    data = _strict_loads(report.to_json())
    out = data["outputs"][0]
    assert out["cosine"] == "nan" and out["sqnr_db"] == "-inf"
    back = Report.from_dict(data).outputs[0]
    assert math.isnan(back.cosine) and back.sqnr_db == -math.inf


def test_reading_accepts_other_spellings_and_ignores_unknown_keys():
    data = make_report().to_dict()
    data["outputs"][1]["sqnr_db"] = "Infinity"
    data["outputs"][0]["sqnr_db"] = 12  # an int is a number too
    data["from_the_future"] = {"x": 1}
    report = Report.from_dict(data)
    assert report.outputs[1].sqnr_db == math.inf
    assert report.outputs[0].sqnr_db == 12.0


def test_config_values_are_made_jsonable():
    class Kind(str, Enum):
        A = "a"

    report = make_report(config={"kind": Kind.A, "scale": np.float32(0.5), "axes": np.arange(3),
                                 "bins": np.int64(2048), "limit": math.inf})
    data = _strict_loads(report.to_json())
    assert data["config"] == {"kind": "a", "scale": 0.5, "axes": [0, 1, 2], "bins": 2048,
                              "limit": "inf"}


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(schema_version=3), "schema_version"),
    (lambda d: d.pop("samples"), "samples"),
    (lambda d: d["outputs"][0].pop("cosine"), "cosine"),
    (lambda d: d["outputs"][0].update(cosine="high"), "number"),
    (lambda d: d.update(outputs=None), "malformed"),
])
def test_from_dict_rejects_bad_reports(mutate, match):
    data = make_report().to_dict()
    mutate(data)
    with pytest.raises(DataError, match=match):
        Report.from_dict(data)


def test_from_json_errors(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        Report.from_json(tmp_path / "missing.json")
    with pytest.raises(DataError, match="not valid JSON"):
        Report.from_json("{not json")
    with pytest.raises(DataError, match="JSON object"):
        Report.from_dict([1, 2])  # type: ignore[arg-type]


def test_worst():
    report = make_report()
    assert report.worst().name == "logits"
    assert report.worst("sqnr_db").name == "logits"
    assert report.worst("max_abs_error").name == "logits"
    assert report.worst("top1_agreement").name == "logits"  # None values are skipped
    nan_out = OutputMetrics("broken", 0.0, 0.0, math.nan, math.nan, 50.0)
    assert make_report(outputs=[*report.outputs, nan_out]).worst("cosine").name == "broken"
    with pytest.raises(ConfigError, match="unknown metric"):
        report.worst("accuracy")
    with pytest.raises(ConfigError, match="no output"):
        make_report(outputs=[report.outputs[1]]).worst("top5_agreement")


def test_format_contains_the_numbers():
    report = make_report()
    text = report.format()
    assert str(report) == text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("output"))
    for column in ("cosine", "SQNR dB", "max abs", "top-1 agr."):
        assert column in header
    logits = next(line for line in lines if line.startswith("logits"))
    for number in ("0.998765", "0.950000", "31.42", "0.125", "97.50%"):
        assert number in logits
    features = next(line for line in lines if line.startswith("features"))
    assert "inf" in features and "1.000000" in features
    # aligned: the column separators line up across header and rows
    assert header.index("|") == logits.index("|") == features.index("|")
    assert "4.00 MiB -> 1.00 MiB (x4.00)" in text
    assert "2.500 ms" in text and "1.250 ms" in text and "x2.00" in text and "threads 4" in text
    assert "90.00% -> 87.50%" in text
    assert "Conv left in float: conv_7" in text
    assert "static" in text and "40 samples" in text


def test_format_without_optional_parts():
    report = make_report(latency=None, float_accuracy=None, quant_accuracy=None, notes=[],
                         float_nodes=[], mode=None)
    text = report.format()
    assert "latency" not in text and "accuracy" not in text
    assert "size:" in text
