"""Case 1 and 2: calibration memory and time on a conv model with large activations.

Model (built with ``onnx.helper``, He-initialised, fixed seed)::

    input [N,3,S,S] -> Conv(C, 7x7, stride 2, pad 3) -> Relu -> Conv(C, 3x3) -> Relu
                    -> Conv(C, 3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(10)

Full / quick: C = 64, S = 224 (activations 64 x 112 x 112 = 3.2 MB per sample per tensor).
Tiny: C = 16, S = 56 (16 x 28 x 28).

Data: seeded standard-normal images (``np.random.default_rng(seed)``), written chunk by chunk
into a temporary ``.npz`` that both tools read. Random data is enough for memory and time
scaling; it says nothing about accuracy (the digits case covers accuracy).

Child tasks (run through :func:`bench.harness.run_job`, one process each):
    ``task_make_model``, ``task_make_data``, ``task_onnxq_calibrate``,
    ``task_ort_quantize_static``, ``task_ort_calibrate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .harness import iter_npz_batches, peak_rss_mb, run_job, write_npz_streamed

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_SIZE = 8

#: model sizes per mode
MODELS = {
    "full": {"channels": 64, "size": 224},
    "tiny": {"channels": 16, "size": 56},
}


# ------------------------------------------------------------------------------------------ model

def build_model(path: str | Path, *, channels: int = 64, size: int = 224, classes: int = 10,
                seed: int = 1234) -> Path:
    """Write the benchmark conv model (opset 17, dynamic batch) to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    inits = [
        numpy_helper.from_array(he((channels, 3, 7, 7), 3 * 49), "conv1.w"),
        numpy_helper.from_array(np.zeros(channels, np.float32), "conv1.b"),
        numpy_helper.from_array(he((channels, channels, 3, 3), channels * 9), "conv2.w"),
        numpy_helper.from_array(np.zeros(channels, np.float32), "conv2.b"),
        numpy_helper.from_array(he((channels, channels, 3, 3), channels * 9), "conv3.w"),
        numpy_helper.from_array(np.zeros(channels, np.float32), "conv3.b"),
        numpy_helper.from_array(he((classes, channels), channels), "fc.w"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "conv1.w", "conv1.b"], ["c1"], name="conv1", kernel_shape=[7, 7],
                         strides=[2, 2], pads=[3, 3, 3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], name="conv2", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "conv3.w", "conv3.b"], ["c3"], name="conv3", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], [OUTPUT_NAME], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "bench_conv",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxq-bench")
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save_model(model, path)
    return path


def data_chunks(count: int, size: int, seed: int, chunk: int = 16) -> Iterator[np.ndarray]:
    """Seeded standard-normal images, ``chunk`` at a time (the first k samples never depend on count)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < count:
        k = min(chunk, count - done)
        yield rng.standard_normal((k, 3, size, size), dtype=np.float32)
        done += k


# ------------------------------------------------------------------------------------ child tasks

def task_make_model(p: dict[str, Any]) -> dict[str, Any]:
    path = build_model(p["path"], channels=p["channels"], size=p["size"])
    return {"bytes": path.stat().st_size}


def task_make_data(p: dict[str, Any]) -> dict[str, Any]:
    size = p["size"]
    path = write_npz_streamed(p["path"], INPUT_NAME, (3, size, size), p["n"], data_chunks(p["n"], size, p["seed"]))
    return {"bytes": path.stat().st_size}


class _CallTimer:
    """Accumulates the wall time spent in one wrapped callable (measurement only; behaviour unchanged)."""

    def __init__(self) -> None:
        self.seconds, self.calls, self.installed = 0.0, 0, False

    def wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        self.installed = True

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return timed

    def value(self) -> float | None:
        return round(self.seconds, 3) if self.installed else None


def _patch(module_name: str, attr: str, timer: _CallTimer) -> None:
    """Time ``module.attr`` if it exists (internal names may move: then the breakdown is left out)."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return
    if callable(getattr(module, attr, None)):
        setattr(module, attr, timer.wrap(getattr(module, attr)))


def _timed_session(calibrator: Any, timer: _CallTimer) -> None:
    session = getattr(calibrator, "infer_session", None)
    if session is not None:
        session.run = timer.wrap(session.run)


def _npz_feeds(path: str, n: int) -> Iterator[dict[str, np.ndarray]]:
    for batch in iter_npz_batches(path, INPUT_NAME, BATCH_SIZE, limit=n):
        yield {INPUT_NAME: batch}


def task_onnxq_calibrate(p: dict[str, Any]) -> dict[str, Any]:
    """onnxq's public ``calibrate``; data from the .npz path (``source='npz'``) or streamed by a generator."""
    import onnxq

    config = onnxq.QuantConfig(method=p["method"], num_bins=p.get("num_bins", 2048), batch_size=BATCH_SIZE)
    # breakdown: ORT inference inside the calibration loop, and model preparation
    inference, preparation = _CallTimer(), _CallTimer()
    _patch("onnxq.calibration.runner", "run", inference)
    _patch("onnxq.api", "prepare", preparation)
    source: Any = p["data"] if p["source"] == "npz" else _npz_feeds(p["data"], p["n"])
    before = peak_rss_mb()
    start = time.perf_counter()
    ranges = onnxq.calibrate(p["model"], source, config=config)
    calib_s = time.perf_counter() - start
    tensors = getattr(ranges, "tensors", {})
    return {"calib_s": round(calib_s, 3), "inference_s": inference.value(), "prepare_s": preparation.value(),
            "rss_before_mb": before, "tensors": len(tensors), "samples": getattr(ranges, "samples", None)}


def _ort_reader(path: str, n: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class NpzReader(CalibrationDataReader):
        """Streams the .npz batch by batch; holds one batch at a time."""

        def __init__(self) -> None:
            self._it = _npz_feeds(path, n)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return NpzReader()


def _ort_op_types() -> list[str]:
    """What ``quantize_static`` calibrates when ``op_types_to_quantize`` is left empty."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def _ort_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax}[name]


def task_ort_quantize_static(p: dict[str, Any]) -> dict[str, Any]:
    """ORT's ``quantize_static`` (QDQ, per-channel, U8S8) with its own calibration, timed whole.

    The calibration part is timed too, from ``create_calibrator`` to the end of ``compute_data``
    (``quantize_static``'s calibrator factory is wrapped; nothing it does is changed).
    """
    import sys

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    # the package re-exports a function named ``quantize``; the module is only in sys.modules
    ort_quantize = sys.modules["onnxruntime.quantization.quantize"]

    marks: dict[str, float] = {}
    original = ort_quantize.create_calibrator
    inference = _CallTimer()

    def timed_create_calibrator(*args: Any, **kwargs: Any) -> Any:
        marks["calib_start"] = time.perf_counter()
        calibrator = original(*args, **kwargs)
        _timed_session(calibrator, inference)
        compute = calibrator.compute_data

        def timed_compute() -> Any:
            out = compute()
            marks["calib_end"] = time.perf_counter()
            return out

        calibrator.compute_data = timed_compute
        return calibrator

    ort_quantize.create_calibrator = timed_create_calibrator
    out_path = Path(p["out"])
    before = peak_rss_mb()
    start = time.perf_counter()
    try:
        quantize_static(p["model"], out_path, _ort_reader(p["data"], p["n"]), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=_ort_method(p["method"]))
        total_s = time.perf_counter() - start
    finally:
        ort_quantize.create_calibrator = original
        out_path.unlink(missing_ok=True)
    calib_s = marks["calib_end"] - marks["calib_start"] if "calib_end" in marks else None
    return {"total_s": round(total_s, 3), "calib_s": round(calib_s, 3) if calib_s is not None else None,
            "inference_s": inference.value(), "rss_before_mb": before}


def task_ort_calibrate(p: dict[str, Any]) -> dict[str, Any]:
    """ORT's calibrator alone: ``create_calibrator`` + ``collect_data`` + ``compute_data``.

    Used for entropy with 2048 bins, which ``quantize_static`` in this onnxruntime cannot ask for
    (it forwards no bin counts to the calibrator).
    """
    from onnxruntime.quantization import create_calibrator

    extra = {}
    if p["method"] == "entropy":
        extra = {"num_bins": p["num_bins"], "num_quantized_bins": p.get("num_quantized_bins", 128)}
    before = peak_rss_mb()
    start = time.perf_counter()
    calibrator = create_calibrator(Path(p["model"]), _ort_op_types(), augmented_model_path=p["augmented"],
                                   calibrate_method=_ort_method(p["method"]), extra_options=extra)
    inference = _CallTimer()
    _timed_session(calibrator, inference)
    collect_start = time.perf_counter()
    calibrator.collect_data(_ort_reader(p["data"], p["n"]))
    compute_start = time.perf_counter()
    tensors = calibrator.compute_data()
    end = time.perf_counter()
    Path(p["augmented"]).unlink(missing_ok=True)
    return {"calib_s": round(end - start, 3), "collect_s": round(compute_start - collect_start, 3),
            "compute_s": round(end - compute_start, 3), "inference_s": inference.value(), "rss_before_mb": before,
            "tensors": len(tensors.data) if hasattr(tensors, "data") else None}


# ----------------------------------------------------------------------------------------- parent

def _median_row(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The repetition with the median calibration time (all failed: the first failure)."""
    ok = sorted((r for r in reps if r["status"] == "ok" and r.get("calib_s") is not None), key=lambda r: r["calib_s"])
    if not ok:
        return reps[0]
    row = dict(ok[(len(ok) - 1) // 2])
    row["calib_s_all"] = [r.get("calib_s") for r in reps]
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    return row


def run(mode: str, workdir: Path, *, caps: dict[str, float], log: Callable[[str], None]) -> dict[str, Any]:
    """Run the scaling and entropy-timing jobs for ``mode`` (full, quick, tiny)."""
    spec = MODELS["tiny" if mode == "tiny" else "full"]
    # timing_reps: the entropy-timing runs are repeated (alternating tools) and the median is kept
    if mode == "tiny":  # seconds: fewer bins keep ORT's pure-Python KL search short
        ns, ours_extra, timing_n, timing_reps, bins, streamed = [4, 8], [], 8, 1, 512, False
    elif mode == "quick":  # a smoke run of the full mode: fewer samples, no generator variant
        ns, ours_extra, timing_n, timing_reps, bins, streamed = [32, 64], [], 64, 1, 2048, False
    else:  # ORT too at every N: a run that exceeds the memory or time cap is a measured outcome
        ns, ours_extra, timing_n, timing_reps, bins, streamed = [32, 128, 512, 2048], [], 128, 3, 2048, True
    seed = 0
    job = {"workdir": workdir, "mem_cap_gib": caps["mem_gib"], "timeout_s": caps["timeout_s"], "log": log}

    model = workdir / "conv_model.onnx"
    made = run_job("bench.calibration_scaling:task_make_model", {"path": str(model), **spec}, label="make-model",
                   **job)
    if made["status"] != "ok":
        raise RuntimeError(f"could not build the benchmark model: {made.get('error')}")

    rows: list[dict[str, Any]] = []
    timing: dict[str, Any] = {"n": timing_n, "num_bins": bins, "num_quantized_bins": 128}
    for n in sorted(set(ns) | set(ours_extra)):
        data = workdir / f"data_{n}.npz"
        made = run_job("bench.calibration_scaling:task_make_data",
                       {"path": str(data), "n": n, "size": spec["size"], "seed": seed}, label=f"make-data-{n}", **job)
        if made["status"] != "ok":
            raise RuntimeError(f"could not write the calibration data: {made.get('error')}")
        common = {"model": str(model), "data": str(data), "n": n}
        for method in ("entropy", "minmax"):
            if method == "minmax" and mode == "tiny" and n != max(ns):
                continue  # keep the smoke run short: MinMax only at the largest N
            row = run_job("bench.calibration_scaling:task_onnxq_calibrate",
                          {**common, "method": method, "num_bins": bins, "source": "npz"},
                          label=f"onnxq-{method}-npz-{n}", **job)
            rows.append({"tool": "onnxq", "method": method, "source": "npz path", "n": n, **row})
            if method == "entropy" and streamed:
                row = run_job("bench.calibration_scaling:task_onnxq_calibrate",
                              {**common, "method": method, "num_bins": bins, "source": "stream"},
                              label=f"onnxq-{method}-stream-{n}", **job)
                rows.append({"tool": "onnxq", "method": method, "source": "generator", "n": n, **row})
            if n in ns:
                row = run_job("bench.calibration_scaling:task_ort_quantize_static",
                              {**common, "method": method, "out": str(workdir / f"ort_{method}_{n}.onnx")},
                              label=f"ort-{method}-{n}", **job)
                rows.append({"tool": "ort", "method": method, "source": "CalibrationDataReader (streamed)", "n": n,
                             **row})
        if n == timing_n:
            ours_reps, ort_reps = [], []
            for rep in range(timing_reps):
                if timing_reps == 1:  # a single run: the scaling run above is that run
                    ours_reps.append(next(r for r in rows if r["tool"] == "onnxq" and r["method"] == "entropy"
                                          and r["n"] == n and r["source"] == "npz path"))
                else:
                    ours_reps.append(run_job("bench.calibration_scaling:task_onnxq_calibrate",
                                             {**common, "method": "entropy", "num_bins": bins, "source": "npz"},
                                             label=f"timing-onnxq-entropy{bins}-{n}-rep{rep + 1}", **job))
                ort_reps.append(run_job("bench.calibration_scaling:task_ort_calibrate",
                                        {**common, "method": "entropy", "num_bins": bins, "num_quantized_bins": 128,
                                         "augmented": str(workdir / "augmented.onnx")},
                                        label=f"timing-ort-entropy{bins}-{n}-rep{rep + 1}", **job))
            timing["repetitions"] = timing_reps
            timing["onnxq"], timing["onnxq_reps"] = _median_row(ours_reps), ours_reps
            timing["ort"], timing["ort_reps"] = _median_row(ort_reps), ort_reps
        data.unlink(missing_ok=True)
    model_bytes = model.stat().st_size
    return {
        "calibration_scaling": {
            "model": {**spec, "activation_shape": [spec["channels"], spec["size"] // 2, spec["size"] // 2],
                      "bytes": model_bytes, "layers": "Conv7x7/2-Relu-Conv3x3-Relu-Conv3x3-Relu-GAP-Flatten-Gemm"},
            "data": f"np.random.default_rng({seed}) standard-normal images [N,3,{spec['size']},{spec['size']}] "
                    "float32 in a temporary .npz (random data: valid for memory/time scaling only)",
            "batch_size": BATCH_SIZE,
            "num_bins": bins,
            "ns": ns, "ours_only_ns": ours_extra,
            "rows": rows,
        },
        "entropy_timing": timing,
    }
