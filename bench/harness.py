"""Run every measured job in its own capped subprocess and read back what it measured.

Parent side: :func:`run_job` starts ``python -m bench.harness JOB.json RESULT.json`` with an
address-space cap (``RLIMIT_AS``) and a wall-clock timeout, waits for it with ``os.wait4`` so the
child's own peak RSS is known even when it crashes, and turns every outcome into a row:
``status`` is ``ok``, ``memory_cap`` (the child ran out of its address-space cap), ``timeout``
or ``error``. A run that hits a cap is reported, never dropped.

Child side: ``python -m bench.harness JOB.json RESULT.json`` imports ``job["task"]``
(``"module:function"``), calls it with ``job["params"]`` and writes its dict plus the child's
``RUSAGE_SELF`` peak RSS to ``RESULT.json``.

Also here: the streamed ``.npz`` writer and reader both tools read their calibration data with,
so neither tool's numbers include holding the whole data set in memory.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30

_MEMORY_MARKERS = ("MemoryError", "bad_alloc", "Unable to allocate", "Failed to allocate", "out of memory",
                   "Cannot allocate memory", "std::bad_alloc", "ArrayMemoryError")


# --------------------------------------------------------------------------------------------- parent

def run_job(task: str, params: dict[str, Any], *, workdir: str | os.PathLike[str], label: str,
            mem_cap_gib: float, timeout_s: float, threads: int | None = None,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``task(params)`` in a fresh capped interpreter and return its measurements.

    The returned dict always has ``label``, ``status``, ``peak_rss_mb`` (from ``wait4``; ``None``
    only if the child could not even start), ``child_wall_s`` and, for ``ok``, every key the task
    returned. ``error`` holds the last lines of the child's stderr for failures.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    job_path, result_path = workdir / f"{label}.job.json", workdir / f"{label}.result.json"
    log_path = workdir / f"{label}.log"
    result_path.unlink(missing_ok=True)
    job_path.write_text(json.dumps({"task": task, "params": params}))

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONHASHSEED", "0")
    env["TQDM_DISABLE"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cap_bytes = int(mem_cap_gib * GIB)

    def limit() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))
        os.setsid()  # own process group: a timeout kills the whole tree

    load_before = _load_1min()
    started = time.perf_counter()
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "bench.harness", str(job_path), str(result_path)],
                                cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                preexec_fn=limit)
        timed_out, status_code, usage = False, None, None
        while True:
            pid, status_code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout_s:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _, status_code, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status_code)  # we reaped it ourselves
    wall = time.perf_counter() - started

    row: dict[str, Any] = {"label": label, "task": task, "params": params, "mem_cap_gib": mem_cap_gib,
                           "timeout_s": timeout_s, "child_wall_s": round(wall, 3),
                           "peak_rss_mb": round(usage.ru_maxrss / 1024, 1) if usage else None,
                           "exit_code": proc.returncode, "load_1min_before": load_before,
                           "load_1min_after": _load_1min()}
    result: dict[str, Any] = {}
    if result_path.exists():
        try:
            result = json.loads(result_path.read_text())
        except ValueError:
            result = {}
    tail = _tail(log_path)
    if timed_out:
        row.update(status="timeout", error=f"timed out after {timeout_s:g} s")
    elif result.get("ok") and proc.returncode == 0:
        row.update(status="ok")
        row.update(result.get("values", {}))
    else:
        text = (result.get("error") or "") + "\n" + tail
        died_by = -proc.returncode if proc.returncode and proc.returncode < 0 else None
        if any(marker in text for marker in _MEMORY_MARKERS) or died_by == signal.SIGKILL:
            row.update(status="memory_cap",
                       error=f"> {mem_cap_gib:g} GiB address-space cap" +
                             (f" (killed by {signal.Signals(died_by).name})" if died_by else "") +
                             ": " + _last_line(result.get("error") or tail))
        else:
            row.update(status="error", error=_last_line(result.get("error") or tail) or f"exit code {proc.returncode}")
        row["log_tail"] = tail[-2000:]
        if result.get("values"):
            row.update({k: v for k, v in result["values"].items() if k not in row})
    if log:
        log(_describe(row))
    return row


def _load_1min() -> float | None:
    """The 1-minute load average (other work on the machine makes wall times noisy)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _describe(row: dict[str, Any]) -> str:
    bits = [f"{row['label']:<34}", f"{row['status']:<10}", f"rss {row['peak_rss_mb']} MB"]
    for key in ("calib_s", "total_s"):
        if row.get(key) is not None:
            bits.append(f"{key} {row[key]:.2f}")
    bits.append(f"wall {row['child_wall_s']:.1f} s")
    if row["status"] != "ok":
        bits.append(row.get("error", ""))
    return "  ".join(bits)


# ---------------------------------------------------------------------------------------------- child

def _child(job_path: str, result_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    module_name, _, func_name = job["task"].partition(":")
    out: dict[str, Any] = {"ok": False}
    code = 1
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        values = func(job["params"])
        out = {"ok": True, "values": values}
        code = 0
    except BaseException as exc:  # noqa: BLE001 - every failure is a reported outcome
        out = {"ok": False, "error": "".join(traceback.format_exception(exc))[-4000:],
               "error_type": type(exc).__name__}
        traceback.print_exc()
    out.setdefault("values", {})
    out["values"]["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(result_path).write_text(json.dumps(out, default=_json_default))
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def peak_rss_mb() -> float:
    """This process's peak RSS so far (Linux reports kB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ------------------------------------------------------------------------------------ streamed .npz

def write_npz_streamed(path: str | os.PathLike[str], key: str, sample_shape: tuple[int, ...], count: int,
                       chunks: Iterator[np.ndarray], dtype: str = "<f4") -> Path:
    """Write a one-array ``.npz`` (``np.load`` reads it normally) chunk by chunk, never holding it whole.

    ``chunks`` yields arrays of shape ``[k, *sample_shape]`` whose ``k`` add up to ``count``.
    """
    path = Path(path)
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (count, *sample_shape)}
    written = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open(f"{key}.npy", "w", force_zip64=True) as fp:
            np.lib.format.write_array_header_2_0(fp, header)
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=dtype)
                if chunk.shape[1:] != tuple(sample_shape):
                    raise ValueError(f"chunk shape {chunk.shape} does not match {sample_shape}")
                fp.write(chunk.tobytes())
                written += len(chunk)
    if written != count:
        path.unlink(missing_ok=True)
        raise ValueError(f"wrote {written} samples, expected {count}")
    return path


def iter_npz_batches(path: str | os.PathLike[str], key: str, batch_size: int,
                     limit: int | None = None) -> Iterator[np.ndarray]:
    """Read one array of an ``.npz`` batch by batch along axis 0 (only one batch in memory)."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fp:
        major, _minor = np.lib.format.read_magic(fp)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(fp)
        if fortran:
            raise ValueError("fortran-ordered arrays cannot be streamed")
        total = shape[0] if limit is None else min(shape[0], limit)
        per_sample = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        done = 0
        while done < total:
            n = min(batch_size, total - done)
            buf = fp.read(n * per_sample)
            if len(buf) != n * per_sample:
                raise ValueError(f"{path}: truncated array {key!r}")
            yield np.frombuffer(buf, dtype=dtype).reshape((n, *shape[1:]))
            done += n


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.harness JOB.json RESULT.json")
    sys.exit(_child(sys.argv[1], sys.argv[2]))


def ort_session(path: str, threads: int) -> Any:
    """A CPU InferenceSession with ``threads`` intra-op threads, as the latency measurements use."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def interleaved_latency(models: dict[str, str], feeds_for: Callable[[str], dict[str, Any]], threads: int, *,
                        warmup: int, rounds: int, per_round: int) -> dict[str, float]:
    """Median seconds of one run per model: ``rounds`` rounds over the models (order reversed every
    round), one live session at a time, ``warmup`` untimed runs then ``per_round`` timed runs per
    session (noise spreads over all). The timing loop is onnxq's own (:mod:`onnxq.latency`)."""
    from onnxq.latency import LatencyOptions, interleaved_times

    def opener(name: str) -> Callable[[], Callable[[], Any]]:
        def open_block() -> Callable[[], Any]:
            session, feeds = ort_session(models[name], threads), feeds_for(name)
            return lambda: session.run(None, feeds)
        return open_block

    options = LatencyOptions(runs=rounds * per_round, block=per_round, warmup=0, block_warmup=warmup)
    timings = interleaved_times({name: opener(name) for name in models}, options)
    return {name: statistics.median(t.seconds) for name, t in timings.items()}


def ort_pre_process(model: str, out: Path) -> tuple[str, str]:
    """ORT's recommended pre-processing, as a user would try it: (model to quantize, what happened)."""
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(model, str(out))
        return str(out), "quant_pre_process: ok"
    except Exception as exc:  # noqa: BLE001 - the fallback is part of what is measured
        first = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    try:
        quant_pre_process(model, str(out), skip_symbolic_shape=True)
        return str(out), f"quant_pre_process failed ({first}); ran again with skip_symbolic_shape=True"
    except Exception as exc:  # noqa: BLE001
        second = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return model, (f"quant_pre_process failed ({first}), also with skip_symbolic_shape=True ({second}); "
                       "quantized the original model")


def ort_reader(inputs: dict[str, Any], batch: int) -> Any:
    """An ORT ``CalibrationDataReader`` over in-memory ``inputs`` in batches of ``batch``; ``len`` and
    ``set_range`` count batches (what ORT's strided calibration, ``CalibStridedMinMax``, needs)."""
    from onnxruntime.quantization import CalibrationDataReader

    count = len(next(iter(inputs.values())))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.pos, self.end = 0, len(self)

        def __len__(self) -> int:
            return -(-count // batch)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pos, self.end = start_index, min(end_index, len(self))

        def get_next(self) -> dict[str, Any] | None:
            if self.pos >= self.end:
                return None
            self.pos += 1
            return {k: v[(self.pos - 1) * batch:self.pos * batch] for k, v in inputs.items()}

    return Reader()
