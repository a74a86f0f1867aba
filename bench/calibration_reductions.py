"""MinMax calibration wall time: in-graph reductions (ReduceMin/ReduceMax) vs full taps reduced in numpy.

Issue 13 item 2. Same model as :mod:`bench.calibration_scaling` (3 Conv+Relu, GAP, Gemm; every node
output and the input calibrated), seeded standard-normal data, batch 8. Both paths run through
:func:`onnxq.engine.observe` (``reduce=False`` is exactly how calibration ran before: every tapped
activation leaves ONNX Runtime and ``MinMaxObserver.update`` reduces it in numpy); the two are
interleaved ``repeats`` times and the minimum and median wall times are reported, with a check that
both give the same observer state (hence the same ranges).

Run: ``python -m bench.calibration_reductions [--size tiny|full] [--samples N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from onnxq.calibration.observers import MinMaxObserver
from onnxq.data import load_data
from onnxq.engine import observe

from .calibration_scaling import INPUT_NAME, MODELS, build_model


def measure(size: str = "tiny", samples: int = 128, repeats: int = 5, batch_size: int = 8) -> dict[str, object]:
    """Wall times (s) of both paths and whether their observers agree."""
    spec = MODELS[size]
    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(build_model(Path(tmp) / "model.onnx", channels=spec["channels"], size=spec["size"]))
    images = np.random.default_rng(0).standard_normal((samples, 3, spec["size"], spec["size"])).astype(np.float32)
    data = load_data({INPUT_NAME: images}, model, batch_size=batch_size)
    tensors = [INPUT_NAME] + [t for node in model.graph.node for t in node.output]
    times: dict[bool, list[float]] = {False: [], True: []}
    states: dict[bool, dict[str, dict]] = {}
    for _ in range(repeats):
        for reduce in (False, True):
            start = time.perf_counter()
            observers, _ = observe(model, data, tensors, MinMaxObserver, reduce=reduce)
            times[reduce].append(time.perf_counter() - start)
            states[reduce] = {n: o.to_dict() for n, o in observers.items()}
    return {"size": size, "samples": samples, "tensors": len(tensors), "same_ranges": states[False] == states[True],
            "full_taps_s": times[False], "in_graph_s": times[True]}


def per_batch(size: str = "full", batch_size: int = 8, repeats: int = 12) -> dict[str, float]:
    """Best-of-``repeats`` seconds for one batch: the plain model, full taps (+ numpy MinMax), in-graph."""
    from onnxq.engine import Runner, TappedModel, tapped

    spec = MODELS[size]
    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(build_model(Path(tmp) / "model.onnx", channels=spec["channels"], size=spec["size"]))
    feeds = {INPUT_NAME: np.random.default_rng(0).standard_normal((batch_size, 3, spec["size"], spec["size"]))
             .astype(np.float32)}
    tensors = [INPUT_NAME] + [t for node in model.graph.node for t in node.output]
    plain, full = Runner.create(model), Runner.create(tapped(model, tensors), tensors)
    reduced = TappedModel(model, tensors, reduce=True).runner

    def full_numpy() -> None:
        for values in full.run(feeds):
            MinMaxObserver().update(values)

    cases = {"plain model": lambda: plain.run(feeds), "full taps + numpy": full_numpy,
             "in-graph reductions": lambda: reduced.run(feeds)}
    best = {}
    for name, run in cases.items():
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        best[name] = min(times)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--per-batch", action="store_true", help="time one batch of 8 per path (best of 12)")
    args = parser.parse_args()
    if args.per_batch:
        for name, seconds in per_batch(args.size).items():
            print(f"{args.size} one batch of 8, {name}: {seconds * 1000:.1f} ms (best of 12)")
        return
    r = measure(args.size, args.samples, args.repeats)
    for key, label in (("full_taps_s", "full taps + numpy"), ("in_graph_s", "in-graph reductions")):
        values = r[key]
        print(f"{r['size']} N={r['samples']} {label}: min {min(values):.3f} s, median {statistics.median(values):.3f} s "
              f"over {len(values)} runs")
    print(f"same observer state (ranges): {r['same_ranges']}")


if __name__ == "__main__":
    main()
