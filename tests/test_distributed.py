"""Dask scale-out (issue 14) on a LocalCluster over loopback: 2 single-threaded worker processes.

Sharded calibration and validation must give exactly the in-process ranges and report; ``onnxq
batch`` records a broken model and carries on; a missing Dask names the extra; a worker killed
mid-run costs a retry, not a different result; ``import onnxq`` never imports Dask.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from conftest import CNN_INPUT, make_cnn_model, make_images, make_labels

distributed = pytest.importorskip("distributed", reason="needs the dask extra: pip install 'onnxq[dask]'")

import onnxq  # noqa: E402
from onnxq import QuantConfig  # noqa: E402
from onnxq.distributed.batch import ERROR, OK, read_items, run_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A LocalCluster of 2 worker processes (1 thread each) on 127.0.0.1, shared by this module."""
    local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                     dashboard_address=None, silence_logs=40)
    client = distributed.Client(local, set_as_default=False)
    client.wait_for_workers(2, timeout=60)
    yield local, client
    client.close()
    local.close()


@pytest.fixture(scope="module")
def client(cluster: Any) -> Any:
    return cluster[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """calib.npz (203 samples: shards do not split evenly), the same as a folder of .npz files, eval.npz
    with labels."""
    folder = tmp_path_factory.mktemp("distributed")
    calib, evaluation = folder / "calib.npz", folder / "eval.npz"
    np.savez(calib, image=make_images(203, seed=1))
    np.savez(evaluation, image=make_images(150, seed=3), labels=make_labels(150, seed=4))
    model = folder / "model.onnx"
    onnx.save_model(make_cnn_model(), model)
    chunks = folder / "calib_chunks"  # the same 203 samples as a folder of .npz files of 50 (the last 3)
    chunks.mkdir()
    images = make_images(203, seed=1)
    for start in range(0, 203, 50):
        np.savez(chunks / f"part{start // 50}.npz", image=images[start:start + 50])
    return {"calib": calib, "calib_folder": chunks, "eval": evaluation, "model": model, "folder": folder}


def _strip(report: onnxq.Report) -> dict[str, Any]:
    """The report without wall-clock fields."""
    d = report.to_dict()
    d.pop("timings", None)
    d.pop("latency", None)
    for record in d.get("passes", []):
        record.pop("seconds", None)
    return d


# ------------------------------------------------------------------ calibration


@pytest.mark.parametrize("config", [
    QuantConfig(method="minmax"),
    QuantConfig(method="minmax", moving_average=True, batch_size=5),
    QuantConfig(method="entropy"),
    QuantConfig(method="percentile", percentile=99.9, batch_size=7),
], ids=["minmax", "minmax-moving-average", "entropy", "percentile"])
@pytest.mark.parametrize("source", ["npz", "folder", "shipped"])
def test_ranges_equal_in_process(client: Any, data: dict[str, Path], config: QuantConfig, source: str) -> None:
    """A path the workers read themselves, or batches shipped from the client: the very same ranges."""
    calibration = {"npz": data["calib"], "folder": data["calib_folder"],
                   "shipped": {CNN_INPUT: make_images(203, seed=1)}}[source]
    local = onnxq.calibrate(data["model"], calibration, config=config)
    sharded = onnxq.calibrate(data["model"], calibration, config=config, client=client)
    assert sharded.to_dict() == local.to_dict()
    assert sharded.samples == 203


def test_shuffled_limited_path_source(client: Any, data: dict[str, Path]) -> None:
    """shuffle + samples on a folder: each worker draws the same permutation as the client."""
    config = QuantConfig(method="percentile", shuffle=True, seed=3, samples=150, batch_size=16)
    local = onnxq.calibrate(data["model"], data["calib_folder"], config=config)
    assert onnxq.calibrate(data["model"], data["calib_folder"], config=config, client=client).to_dict() == \
        local.to_dict()


def test_histograms_with_more_shards_than_workers(client: Any, data: dict[str, Path]) -> None:
    """Five shards of an entropy calibration: the replayed histograms equal the single-process ones."""
    from onnxq.calibration.runner import collect_ranges as in_process
    from onnxq.distributed.calibrate import collect_ranges
    from onnxq.feeds import load_data

    model = make_cnn_model()
    tensors = ["image", "conv_out", "relu_out", "pool_out", "flat", "logits"]
    config = QuantConfig(method="entropy", num_bins=512)
    dataset = load_data(data["calib"], model, batch_size=4)
    ranges, timings = collect_ranges(client, model, dataset, tensors, config, source=data["calib"], shards=5)
    assert ranges.to_dict() == in_process(model, dataset, tensors, config).to_dict()
    assert len(timings) == 10 and sum(t.samples for t in timings) == 2 * 203  # two passes


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_quantize_on_cluster_equals_in_process(client: Any, data: dict[str, Path], mode: str) -> None:
    """Same ranges, same model bytes, same report (latency aside) with ``client=``."""
    config = QuantConfig(mode=mode, method="entropy") if mode == "static" else QuantConfig(mode=mode)
    calibration = data["calib"] if mode == "static" else None
    local = onnxq.quantize(data["model"], calibration, config=config, evaluation=data["eval"], latency=False)
    sharded = onnxq.quantize(data["model"], calibration, config=config, evaluation=data["eval"], latency=False,
                             client=client)
    assert _strip(sharded.report) == _strip(local.report)
    assert sharded.report.samples == 150 and sharded.report.quant_accuracy is not None
    assert sharded.model.SerializeToString() == local.model.SerializeToString()
    if mode == "static":
        assert sharded.ranges.to_dict() == local.ranges.to_dict()


def test_fallback_tuning_on_cluster_equals_in_process(client: Any, data: dict[str, Path]) -> None:
    """Each fallback candidate is validated on the cluster (the workers replay the float outputs):
    the same steps, report and model."""
    config = QuantConfig(method="entropy", target="sqnr>=45")
    local = onnxq.quantize(data["model"], data["calib"], config=config, evaluation=data["eval"], latency=False)
    sharded = onnxq.quantize(data["model"], data["calib"], config=config, evaluation=data["eval"], latency=False,
                             client=client)
    assert len(local.report.fallback) >= 2  # at least one node kept float
    assert _strip(sharded.report) == _strip(local.report)
    assert sharded.model.SerializeToString() == local.model.SerializeToString()

    def replayed_batches() -> int:  # the float outputs the workers kept for the next candidate
        from onnxq.distributed import shards
        from onnxq.engine import ReplayRunner

        return sum(len(v.seen) for v in shards._CACHE.values() if isinstance(v, ReplayRunner))

    assert sum(client.run(replayed_batches).values()) > 0


def test_config_executor_runs_on_its_own_cluster(data: dict[str, Path]) -> None:
    """``QuantConfig(executor="local:2")`` is ``client="local:2"``: a cluster for the run, the same model;
    a malformed spec is a one-line ConfigError (a non-string at once, a bad string before any work)."""
    config = QuantConfig(method="entropy")
    local = onnxq.quantize(data["model"], data["calib"], config=config, latency=False)
    sharded = onnxq.quantize(data["model"], data["calib"], config=config.replace(executor="local:2"), latency=False)
    assert sharded.model.SerializeToString() == local.model.SerializeToString()
    assert sharded.ranges.to_dict() == local.ranges.to_dict()
    assert sharded.report.timings["validate"] > 0  # the sharded pass, timed on the client
    with pytest.raises(onnxq.ConfigError, match="executor must be 'local:N' or a Dask scheduler address"):
        QuantConfig(executor=2)
    with pytest.raises(onnxq.ConfigError, match="--dask expects tcp://HOST:PORT"):
        onnxq.calibrate(data["model"], data["calib"], config=QuantConfig(executor="local:two"))


def test_revert_one_ranking_on_cluster_equals_in_process(client: Any) -> None:
    """The fallback's ranking runs its gate settings on the workers: the same errors, in the same order,
    and the same ranking."""
    from builders import cnn_data, tiny_cnn

    import onnxq.pipelines as pipelines
    from onnxq.data import load_data
    from onnxq.distributed.gated import ClusterGatedRuns
    from onnxq.prepare import prepare
    from onnxq.sensitivity import GatedRuns, emulation_model, node_sensitivities

    config = QuantConfig()
    model = prepare(tiny_cnn(), config)
    data = load_data(cnn_data(32), model, batch_size=8)
    built = pipelines.static(pipelines.Job(model, config, data))
    emulation, gates = emulation_model(built.recipe.model, built.model, unbiased=built.recipe.unbiased,
                                       tensor_gates=True)
    local = GatedRuns(model, emulation, gates, data, 16)
    remote = ClusterGatedRuns(client, model, emulation, gates, data, 16)
    try:
        settings = [[key] for key in gates] + [list(gates)]
        assert remote.errors(settings) == local.errors(settings)

        def gated_sessions() -> list[str]:
            from onnxq.distributed import shards

            return [key for key in shards._CACHE if ":gated:" in key]

        assert any(client.run(gated_sessions).values())  # the workers ran the emulation graph
        assert (node_sensitivities(model, emulation, gates, data, list(gates), runs=remote)
                == node_sensitivities(model, emulation, gates, data, list(gates), runs=local))
    finally:
        remote.close()


def test_validation_notes_equal_without_client_sessions(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without latency the client runs nothing (no session per fallback candidate), and the report --
    notes of a non-numeric output and of labels without class scores included -- is the in-process one."""
    from onnx import TensorProto, helper

    from onnxq.distributed import validate as sharded

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 2]),
               helper.make_tensor_value_info("s", TensorProto.STRING, ["N", 3, 2])]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"]),
                               helper.make_node("Cast", ["x"], ["s"], to=TensorProto.STRING)], "g", [x], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = {"x": np.random.default_rng(0).normal(size=(40, 3, 2)).astype(np.float32),
            "labels": np.arange(40) % 3}
    local = onnxq.validate(model, model, data, latency=False, batch_size=8)
    from onnxq import engine

    monkeypatch.setattr(engine, "create_session", lambda *a, **k: pytest.fail("a session on the client"))
    report, _ = sharded.validate_on_cluster(client, model, model, onnxq.data.load_data(data, model, batch_size=8),
                                            latency=False)
    assert len(local.notes) == 2 and _strip(report) == _strip(local)


def test_fixed_batch_model_shards_start_where_the_single_process_runs_start(client: Any, tmp_path: Path) -> None:
    """A model that takes batches of exactly 8, data in batches of 5: the engine re-cuts the stream
    into runs of 8; each shard starts on such a run, so the sums (and the report) are bit-identical."""
    from test_engine import _fixed_batch_model

    from onnxq.data import load_data
    from onnxq.distributed.validate import validate_on_cluster
    from onnxq.engine import sample_specs

    model = _fixed_batch_model(8)
    quantized = onnxq.quantize(model, {CNN_INPUT: make_images(40, seed=1)}, latency=False).model
    path = tmp_path / "eval.npz"
    np.savez(path, **{CNN_INPUT: make_images(61, seed=3)}, labels=make_labels(61, seed=4))
    data = load_data(path, sample_specs(model), batch_size=5)
    local = onnxq.validate(model, quantized, data, latency=False)
    for source in (None, path):  # shipped batches, and the path the workers read themselves
        sharded, timings = validate_on_cluster(client, model, quantized, data, source=source, latency=False,
                                               shards=3)
        assert len(timings) >= 2 and all(t.samples % 8 == 0 for t in timings[:-1])
        assert _strip(sharded) == _strip(local) and sharded.samples == 61


def test_validation_report_equal_with_uneven_shards(client: Any, data: dict[str, Path]) -> None:
    """Three shards of batches of 7 over 150 labelled samples: the report of one process, exactly."""
    from onnxq.distributed.validate import validate_on_cluster
    from onnxq.feeds import load_data

    float_model = make_cnn_model()
    quant = onnxq.quantize(float_model, {CNN_INPUT: make_images(64)}, latency=False).model
    dataset = load_data(data["eval"], float_model, batch_size=7)
    local = onnxq.validate(float_model, quant, dataset, latency=False)
    for source in (data["eval"], None):  # row ranges / shipped batches
        report, timings = validate_on_cluster(client, float_model, quant, dataset, source=source, shards=3,
                                              latency=False)
        assert _strip(report) == _strip(local)
        assert [t.samples for t in timings] == [56, 56, 38]  # 22 batches of 7: 8 + 8 + 6


# ------------------------------------------------------------------ analysis and compare


def _layers_json(layers: list[Any]) -> str:
    from onnxq.report.schema import to_jsonable

    return json.dumps(to_jsonable(layers), allow_nan=False)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_analyze_on_cluster_equals_in_process(client: Any, data: dict[str, Path], mode: str) -> None:
    """Per-layer metrics folded from the workers' per-batch accumulators: the in-process ranking, exactly.

    static: a data path the workers read (3 shards); dynamic: batches shipped from the client."""
    float_model = make_cnn_model()
    config = QuantConfig(mode=mode)
    quant = onnxq.quantize(float_model, {CNN_INPUT: make_images(64)} if mode == "static" else None, config=config,
                           latency=False).model
    source: Any = data["eval"] if mode == "static" else {CNN_INPUT: make_images(150, seed=3)}
    local = onnxq.analyze(float_model, quant, source, batch_size=7)
    sharded = onnxq.analyze(float_model, quant, source, batch_size=7, client=client)
    assert any(m.kind == "activation" for m in local)
    assert _layers_json(sharded) == _layers_json(local)


def test_compare_on_cluster_equals_in_process(client: Any, data: dict[str, Path]) -> None:
    """compare(client=): the same report and verdicts, with labels in the data file or given apart."""
    from onnxq.compare import compare

    quant = onnxq.quantize(make_cnn_model(), {CNN_INPUT: make_images(64)}, latency=False).model
    unlabelled = {CNN_INPUT: make_images(150, seed=3)}
    for source, labels in ((data["eval"], None), (unlabelled, make_labels(150, seed=4))):
        local = compare(make_cnn_model(), quant, source, metric="accuracy-drop", threshold=5.0, labels=labels,
                        batch_size=16)
        sharded = compare(make_cnn_model(), quant, source, metric="accuracy-drop", threshold=5.0, labels=labels,
                          batch_size=16, client=client)
        assert _strip(sharded.report) == _strip(local.report) and sharded.report.quant_accuracy is not None
        assert [vars(c) for c in sharded.checks] == [vars(c) for c in local.checks]


def test_cli_analyze_and_compare_with_dask(cluster: Any, data: dict[str, Path], quantized_cnn_path: Path,
                                          run_cli: Any) -> None:
    """``onnxq analyze --dask`` / ``onnxq compare --dask`` on a running scheduler print what in-process prints."""
    address = cluster[0].scheduler_address
    args = ["analyze", data["model"], quantized_cnn_path, "--data", data["eval"], "--json", "--batch-size", "16"]
    code, in_process, err = run_cli(*args)
    assert code == 0, err
    code, on_cluster, err = run_cli(*args, "--dask", address)
    assert code == 0, err
    assert json.loads(on_cluster) == json.loads(in_process)
    args = ["compare", data["model"], quantized_cnn_path, "--data", data["eval"], "--json", "--metric", "cosine",
            "--threshold", "0.9"]
    results = []
    for extra in ((), ("--dask", address)):
        code, out, err = run_cli(*args, *extra)
        assert code == 0, err
        result = json.loads(out)
        for key in ("seconds", "timestamp"):
            result.pop(key)
        result["report"].pop("timings", None)
        results.append(result)
    assert results[0] == results[1] and results[1]["report"]["samples"] == 150


def test_calibration_workers_run_one_intra_op_thread(client: Any, data: dict[str, Path]) -> None:
    """The tapped model's session on a single-threaded worker runs 1 intra-op thread, not one per core."""
    onnxq.calibrate(data["model"], data["calib"], config=QuantConfig(method="minmax"), client=client)

    def threads() -> list[tuple[Any, int]]:
        from onnxq.distributed import shards
        from onnxq.engine import TappedModel

        return [(v.threads, v.runner.session.get_session_options().intra_op_num_threads)
                for v in shards._CACHE.values() if isinstance(v, TappedModel) and v.runner is not None]

    seen = [pair for pairs in client.run(threads).values() for pair in pairs]
    assert seen and all(pair == (1, 1) for pair in seen)


def test_cli_dask_local_2(data: dict[str, Path], tmp_path: Path, run_cli: Any) -> None:
    """``--dask local:2`` starts and closes its own cluster; the model is the in-process one."""
    args = ["quantize", data["model"], "--calib", data["calib"], "--method", "percentile", "--no-latency", "-q"]
    code, _, err = run_cli(*args, "-o", tmp_path / "local.onnx")
    assert code == 0, err
    code, _, err = run_cli(*args, "-o", tmp_path / "dask.onnx", "--dask", "local:2")
    assert code == 0, err
    assert (tmp_path / "dask.onnx").read_bytes() == (tmp_path / "local.onnx").read_bytes()


def test_cli_validate_on_a_running_scheduler(cluster: Any, data: dict[str, Path], quantized_cnn_path: Path,
                                             run_cli: Any) -> None:
    """``--dask tcp://HOST:PORT`` joins a running cluster (and leaves it running): the same report."""
    local, client = cluster
    args = ["validate", data["model"], quantized_cnn_path, "--data", data["eval"], "--json", "--no-latency",
            "--batch-size", "16"]
    code, in_process, err = run_cli(*args)
    assert code == 0, err
    code, on_cluster, err = run_cli(*args, "--dask", local.scheduler_address)
    assert code == 0, err
    strip = [json.loads(text) for text in (in_process, on_cluster)]
    for report in strip:
        report.pop("timings", None)
    assert strip[0] == strip[1] and strip[1]["samples"] == 150
    assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2  # still running


def test_bad_dask_spec_is_a_usage_error(data: dict[str, Path], tmp_path: Path, run_cli: Any) -> None:
    code, _, err = run_cli("quantize", data["model"], "-o", tmp_path / "q.onnx", "--calib", data["calib"],
                           "--dask", "local:zero")
    assert code == 2 and "--dask expects tcp://HOST:PORT" in err and len(err.strip().splitlines()) == 1


def test_local_workers_keep_the_allocator_of_a_plain_process(cluster: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_ (a fixed mmap threshold: numpy's large temporaries
    page-fault on every batch, 1.7x slower statistics): ``local:N`` workers get a fixed 32 MiB mmap
    threshold; joining a cluster whose workers lack it warns once, naming the fix."""
    from onnxq.distributed.cluster import MMAP_HINT, connect

    def mmap_threshold() -> str | None:
        return os.environ.get("MALLOC_MMAP_THRESHOLD_")

    with caplog.at_level("WARNING", logger="onnxq.distributed.cluster"):
        own = connect("local:1")
        try:
            assert set(own.client.run(mmap_threshold).values()) == {MMAP_HINT.split("=")[1]}
        finally:
            own.close()
        assert not [r for r in caplog.records if r.name == "onnxq.distributed.cluster"]
        joined = connect(cluster[0].scheduler_address)  # the fixture's plain LocalCluster: Dask's defaults
        joined.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "onnxq.distributed.cluster"]
    assert len(warnings) == 1 and "2 Dask worker(s) run with MALLOC_TRIM_THRESHOLD_" in warnings[0]
    assert MMAP_HINT in warnings[0]


def test_scheduler_without_workers_is_a_config_error() -> None:
    from onnxq.distributed.cluster import connect

    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None, silence_logs=40) as empty:
        # 5 s: the same timeout bounds connecting, which took over 1 s on a loaded machine
        with pytest.raises(onnxq.ConfigError, match="has no worker after 5 s; start some with `dask worker"):
            connect(empty.scheduler_address, timeout=5)


def test_shards_are_placed_anywhere_while_the_scheduler_lists_no_worker(client: Any) -> None:
    """A moment with no worker listed (workers reconnecting under load) submits without placement
    instead of failing on Dask's allow_other_workers check (seen once in a long fallback run)."""
    from onnxq.distributed._run import map_shards

    class NoneListed:
        loop = client.loop

        def scheduler_info(self, n_workers: int = 5) -> dict[str, Any]:
            return {"workers": {}}

        def submit(self, *args: Any, **kwargs: Any) -> Any:
            assert "workers" not in kwargs and "allow_other_workers" not in kwargs
            return client.submit(*args, **kwargs)

    def indexed(index: int) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(index=index)

    results = map_shards(NoneListed(), indexed, ((k,) for k in range(3)), in_flight=2)
    assert [r.index for r in results] == [0, 1, 2]


def test_a_shard_that_keeps_killing_workers_is_a_model_error() -> None:
    """Dask gives up after allowed-failures deaths (KilledWorker): one line, not a traceback."""
    from onnxq.distributed._run import _result

    class Dead:
        def result(self) -> None:
            raise distributed.KilledWorker("_observe_shard-1", None, 3)

    with pytest.raises(onnxq.ModelError, match="Dask workers died running '_observe_shard-1' again and again"):
        _result(Dead())


# ------------------------------------------------------------------ onnxq batch


@pytest.fixture
def zoo(tmp_path: Path) -> Path:
    """Three small CNNs (one with its own data), and one file that is not a model."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    for seed in range(3):
        onnx.save_model(make_cnn_model(seed=seed), folder / f"cnn{seed}.onnx")
    np.savez(folder / "cnn1.npz", image=make_images(24, seed=9))
    (folder / "broken.onnx").write_bytes(b"this is not an ONNX model")
    return folder


def test_batch_folder_with_a_broken_model(zoo: Path, data: dict[str, Path], tmp_path: Path, run_cli: Any) -> None:
    out = tmp_path / "out"
    code, stdout, err = run_cli("batch", zoo, "-o", out, "--calib", data["calib"], "-q")
    assert code == 1, err  # some model failed
    assert "4 model(s): 3 ok, 0 failed, 1 error(s)" in stdout
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["ok"] == 3 and summary["errors"] == 1
    assert {r["name"]: r["status"] for r in summary["results"]} == {"broken": "error", "cnn0": "ok", "cnn1": "ok",
                                                                      "cnn2": "ok"}
    for seed in range(3):
        assert onnx.load(out / f"cnn{seed}.quant.onnx").graph.node
    suite = ET.parse(out / "batch_junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("errors") == "1"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == {"broken", "cnn0", "cnn1", "cnn2"}
    error = cases["broken"].find("error")
    assert error is not None and error.get("type") == "ModelError"
    assert all(cases[n].find("error") is None and cases[n].find("failure") is None for n in ("cnn0", "cnn1", "cnn2"))


def test_batch_on_cluster_matches_in_process(client: Any, zoo: Path, tmp_path: Path) -> None:
    """The same outcomes on the cluster (one task per model); a manifest with per-model options."""
    manifest = zoo / "batch.json"
    manifest.write_text(json.dumps({"defaults": {"options": {"mode": "dynamic"}}, "models": [
        {"model": "cnn0.onnx"}, {"model": "broken.onnx"},
        {"model": "cnn1.onnx", "name": "cnn1-static", "calibration": "cnn1.npz", "options": {"mode": "static"}},
        {"model": "cnn2.onnx", "evaluation": "cnn1.npz", "options": {"per_channel": False}}]}))
    items = read_items(manifest, tmp_path / "out")
    local = run_batch(items)
    remote = run_batch([item.__class__(**{**item.__dict__, "output": item.output + ".dask"}) for item in items],
                       client=client)
    assert [o.status for o in local] == [o.status for o in remote] == [OK, ERROR, OK, OK]
    assert [o.cosine for o in local] == [o.cosine for o in remote]
    assert [o.mode for o in remote] == ["dynamic", None, "static", "dynamic"]
    assert all(o.worker.startswith("tcp://127.0.0.1") for o in remote)


def test_batch_item_with_its_own_executor_is_refused(zoo: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"models": [{"model": str(next(zoo.glob("*.onnx"))),
                                                "options": {"executor": "local:2"}}]}))
    with pytest.raises(onnxq.ConfigError, match="sets option 'executor'.*onnxq batch --dask"):
        read_items(manifest, tmp_path / "out")


def test_batch_junit_failure_and_error_cases(tmp_path: Path) -> None:
    """A missed target is a <failure>, an exception an <error>; counts on the suite."""
    from onnxq.distributed.batch import FAILED, BatchOutcome, to_junit

    outcomes = [BatchOutcome("a", "a.onnx", OK, 1.0, output="a.q.onnx", cosine=0.999),
                BatchOutcome("b", "b.onnx", FAILED, 2.0, message="target cosine>=0.999 not met"),
                BatchOutcome("c", "c.onnx", ERROR, 0.5, message="bad\x00model", error_type="ModelError")]
    suite = ET.fromstring(to_junit(outcomes, tmp_path / "j.xml").split("\n", 1)[1]).find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["b"].find("failure").get("type") == "TargetNotMet"  # type: ignore[union-attr]
    assert cases["c"].find("error").get("message") == "bad?model"  # type: ignore[union-attr]
    assert (tmp_path / "j.xml").read_text().startswith("<?xml")


# ------------------------------------------------------------------ worker loss


def test_worker_killed_mid_run_gives_the_same_ranges(cluster: Any, client: Any, tmp_path: Path) -> None:
    """SIGKILL one worker process while it calibrates a shard: Dask reruns the shard elsewhere."""
    calib = tmp_path / "big.npz"
    np.savez(calib, image=make_images(8000, seed=5))
    config = QuantConfig(method="entropy", batch_size=4)
    expected = onnxq.calibrate(make_cnn_model(), calib, config=config)
    local, _ = cluster
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["ranges"] = onnxq.calibrate(make_cnn_model(), calib, config=config, client=client)
        except BaseException as exc:  # surfaced by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=run)
    start = time.monotonic()
    thread.start()
    killed = _kill_a_busy_worker(client, local, "_observe_shard")
    thread.join(timeout=120)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    assert killed, "no worker was caught running a shard"
    assert result["ranges"].to_dict() == expected.to_dict()
    removed = [event for _, event in client.get_events(killed) if event.get("action") == "remove-worker"]
    lost = [key for event in removed for key in event.get("processing-tasks", ())]
    assert any(str(key).startswith("_observe_shard") for key in lost)  # a shard died with it and was rerun
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the worker for the tests that follow


def _kill_a_busy_worker(client: Any, local: Any, prefix: str, timeout: float = 60.0) -> str | None:
    """SIGKILL the process of a worker that is running a task whose key starts with ``prefix``; its address."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processing = client.processing()
        for address, keys in processing.items():
            if any(str(key).startswith(prefix) for key in keys):
                for nanny in local.workers.values():
                    if nanny.worker_address == address and nanny.process is not None:  # at once: mid-shard
                        os.kill(nanny.process.process.pid, signal.SIGKILL)
                        return str(address)
        time.sleep(0.01)
    return None


# ------------------------------------------------------------------ Dask stays optional

_BLOCK_DASK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dask", "distributed"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, _Block())
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_onnxq_never_imports_dask_without_the_option() -> None:
    done = _python("import sys, onnxq, onnxq.cli\n"
                   "from conftest import make_cnn_model, make_images\n"
                   "onnxq.quantize(make_cnn_model(), {'image': make_images(16)}, latency=False)\n"
                   "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_extra_names_it(data: dict[str, Path], tmp_path: Path) -> None:
    """Without Dask, --dask / client= fail at once with one line naming pip install 'onnxq[dask]'."""
    done = _python(_BLOCK_DASK + "from onnxq.cli import main\n"
                   f"code = main(['quantize', {str(data['model'])!r}, '-o', {str(tmp_path / 'q.onnx')!r}, "
                   f"'--calib', {str(data['calib'])!r}, '--dask', 'local:2'])\n"
                   "import onnxq\n"
                   "try:\n"
                   f"    onnxq.calibrate({str(data['model'])!r}, {str(data['calib'])!r}, client='local:2')\n"
                   "except onnxq.ConfigError as exc:\n"
                   "    print('api:', exc)\n"
                   "sys.exit(code)")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == ["onnxq: error: running on Dask needs the optional extra: pip install 'onnxq[dask]'"]
    assert "api: running on Dask needs the optional extra: pip install 'onnxq[dask]'" in done.stdout
    assert not (tmp_path / "q.onnx").exists()
