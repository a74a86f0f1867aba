"""``python -m bench.latency_repeat FLOAT QUANT --data EVAL [--repeats 5] [-- VALIDATE-FLAGS]``:
is onnxq's latency figure reproducible?

Runs ``onnxq validate FLOAT QUANT --data EVAL --json`` in ``--repeats`` fresh processes (each
measures with :mod:`onnxq.latency`: warm-up, interleaved blocks, until the medians settle) and
prints every run's medians and int8/float ratio, then the median ratio and the largest deviation
of a run's ratio from it (issue 12 item 5's target: within +-15 % across 5 runs on an idle machine).
Flags after ``--`` go to ``onnxq validate`` (``--threads``, ``--latency-batch``, ``--samples`` ...).
Not part of ``python -m bench``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any


def one_run(float_model: str, quant_model: str, data: str, extra: list[str]) -> dict[str, Any]:
    """One ``onnxq validate --json`` in a fresh process; its ``latency`` section."""
    command = [sys.executable, "-c", "import sys; from onnxq.cli import main; sys.exit(main())", "validate",
               float_model, quant_model, "--data", data, "--json", "-q", *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"onnxq validate failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)["latency"]


def summary(ratios: list[float]) -> dict[str, float]:
    """Median of the quantized/float ratios and the largest relative deviation of one run from it."""
    median = statistics.median(ratios)
    return {"median_ratio": median, "min_ratio": min(ratios), "max_ratio": max(ratios),
            "max_deviation": max(abs(r / median - 1.0) for r in ratios)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m bench.latency_repeat", description=__doc__.split("\n")[1])
    parser.add_argument("float_model")
    parser.add_argument("quant_model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    ratios = []
    for index in range(args.repeats):
        lat = one_run(args.float_model, args.quant_model, args.data, extra)
        ratio = lat["quant_ms"] / lat["float_ms"]
        ratios.append(ratio)
        print(f"run {index + 1}: float {lat['float_ms']:.3f} ms ({lat['float_p10_ms']:.3f}-{lat['float_p90_ms']:.3f}) "
              f"quant {lat['quant_ms']:.3f} ms ({lat['quant_p10_ms']:.3f}-{lat['quant_p90_ms']:.3f}) "
              f"int8/float {ratio:.4f}; {lat['runs']} runs, {lat['stop']}, {lat['seconds']:.1f} s", flush=True)
    s = summary(ratios)
    print(f"median int8/float {s['median_ratio']:.4f}, range {s['min_ratio']:.4f}-{s['max_ratio']:.4f}, "
          f"largest deviation from the median {100 * s['max_deviation']:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
