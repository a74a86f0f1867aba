"""all-MiniLM-L6-v2: closeness to float with and without SmoothQuant, against ORT's own quantizers.

Run with ``HF_HUB_OFFLINE=1 .venv/bin/python -m bench.minilm_check`` (needs the extras listed in
``bench/cases/minilm.py``). Calibrates on the 64-sentence split, evaluates the cosine between the
float and the quantized sentence embeddings on the 136 held-out sentences and prints one row per
variant:

* ``onnxq`` without smoothing: ``prepare -> make_plan -> collect_ranges -> refine_plan ->
  rewrite.quantize_static`` (default config: transformer policy, U8S8 QDQ, per-channel, MinMax);
* the same pipeline with ``onnxq.smooth.smooth`` between ``make_plan`` and calibration, for each
  alpha in ``--alphas`` (default 0.5 0.75);
* ORT ``quantize_static`` with its defaults (fed the same 64 sentences) and ORT
  ``quantize_dynamic`` (defaults) as references;

then checks that the smoothed float model (before quantization) still computes the float
embeddings.

Built from the public pieces rather than ``onnxq.quantize`` so that it measures smoothing before
``api.py`` calls it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CALIB_BATCH = 16


def smoothed_float(model: onnx.ModelProto, calib: dict[str, np.ndarray], alpha: float) -> onnx.ModelProto:
    """The prepared float model after SmoothQuant (no quantization): must compute what ``model`` does."""
    from onnxq import QuantConfig, load_data, rewrite
    from onnxq.plan import make_plan
    from onnxq.prepare import prepare
    from onnxq.smooth import smooth

    config = QuantConfig(batch_size=CALIB_BATCH)
    prepared = prepare(model, config)
    plan = make_plan(prepared, config, supported_op_types=rewrite.static_op_types())
    return smooth(prepared, plan, load_data(calib, prepared, batch_size=config.batch_size), alpha=alpha)[0]


def onnxq_static(model: onnx.ModelProto, calib: dict[str, np.ndarray], alpha: float | None) -> onnx.ModelProto:
    """Our static pipeline, optionally with SmoothQuant at ``alpha``."""
    from onnxq import QuantConfig, load_data, rewrite
    from onnxq.calibration.runner import collect_ranges
    from onnxq.plan import make_plan, refine_plan
    from onnxq.prepare import prepare
    from onnxq.smooth import smooth

    config = QuantConfig(batch_size=CALIB_BATCH)
    prepared = prepare(model, config)
    plan = make_plan(prepared, config, supported_op_types=rewrite.static_op_types())
    data = load_data(calib, prepared, batch_size=config.batch_size)
    if alpha is not None:
        prepared, plan = smooth(prepared, plan, data, alpha=alpha)
    ranges = collect_ranges(prepared, data, plan.tensors_to_calibrate, config)
    plan = refine_plan(plan, prepared, ranges)
    return rewrite.quantize_static(prepared, plan, ranges, config)


@contextmanager
def _scratch_cwd():
    """Run in a private folder: ORT's ``quant_pre_process`` (reached through ``onnxq.prepare``, when
    symbolic shape inference fails on MiniLM) and its quantizers leave ``<uuid>.data`` and
    ``sym_shape_infer_temp.onnx`` files in the current directory."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(previous)


def ort_static(model_path: Path, calib: dict[str, np.ndarray]) -> onnx.ModelProto:
    """ORT ``quantize_static`` with every default, fed the calibration sentences in batches."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from bench.cases.minilm import iter_batches

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(list(iter_batches(calib, CALIB_BATCH)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with _scratch_cwd() as tmp:
        out = tmp / "ort_static.onnx"
        quantize_static(str(model_path), str(out), Reader())
        return onnx.load(out)


def ort_dynamic(model_path: Path) -> onnx.ModelProto:
    """ORT ``quantize_dynamic`` with every default."""
    from onnxruntime.quantization import quantize_dynamic

    with _scratch_cwd() as tmp:
        out = tmp / "ort_dynamic.onnx"
        quantize_dynamic(str(model_path), str(out))
        return onnx.load(out)


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table; every step runs in a private scratch folder (see ``_scratch_cwd``)."""
    with _scratch_cwd():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", type=float, nargs="*", default=[0.5, 0.75])
    parser.add_argument("--no-ort", action="store_true", help="skip the ORT reference rows")
    args = parser.parse_args(argv)

    from bench.cases.minilm import cosine, embed, export_minilm, split

    model_path = export_minilm()
    model = onnx.load(model_path)
    calib, evaluation = split(n_calib=64)
    reference = embed(model, evaluation)
    n_eval = len(reference)

    variants: list[tuple[str, Callable[[], onnx.ModelProto]]] = [
        ("onnxq static, no smoothing", lambda: onnxq_static(model, calib, None)),
    ]
    for alpha in args.alphas:
        variants.append((f"onnxq static + SmoothQuant alpha {alpha:g}",
                         lambda alpha=alpha: onnxq_static(model, calib, alpha)))
    if not args.no_ort:
        variants.append(("ORT quantize_static defaults", lambda: ort_static(model_path, calib)))
        variants.append(("ORT quantize_dynamic defaults", lambda: ort_dynamic(model_path)))

    print(f"all-MiniLM-L6-v2: calibration {len(calib['input_ids'])} sentences, evaluation {n_eval} sentences "
          f"(seq {evaluation['input_ids'].shape[1]})")
    print(f"{'variant':<42} {'mean cos':>9} {'min cos':>9} {'#Q':>4} {'build s':>8}")
    for label, build in variants:
        start = time.perf_counter()
        quantized = build()
        seconds = time.perf_counter() - start
        cos = cosine(reference, embed(quantized, evaluation))
        n_q = sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
        print(f"{label:<42} {cos.mean():>9.4f} {cos.min():>9.4f} {n_q:>4} {seconds:>8.1f}", flush=True)
    for alpha in args.alphas:
        smoothed = embed(smoothed_float(model, calib, alpha), evaluation)
        print(f"float equivalence, SmoothQuant alpha {alpha:g} (no quantization): max |diff| "
              f"{np.abs(smoothed - reference).max():.2e}, min cos {cosine(reference, smoothed).min():.7f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
