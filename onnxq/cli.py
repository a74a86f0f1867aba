"""The ``onnxq`` console script: argument parsing that translates to the public API, nothing more."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path

from . import __version__
from .config import CalibrationMethod, Mode, QuantConfig, QuantType
from .errors import ConfigError, OnnxqError

logger = logging.getLogger("onnxq")


class ExitCode(IntEnum):
    """Documented exit codes of the ``onnxq`` command."""

    OK = 0               #: success
    CHECK_FAILED = 1     #: a comparison or accuracy gate did not hold (outputs are still written)
    USAGE_ERROR = 2      #: bad arguments, unreadable model or data, impossible configuration
    INTERNAL_ERROR = 3   #: a bug in onnxq or a dependency (run with --debug for the traceback)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="onnxq", description="Quantize ONNX models with ONNX Runtime and measure how close they stay to float.")
    parser.add_argument("--version", action="version", version=f"onnxq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info messages")
    common.add_argument("--debug", action="store_true", help="debug logging and full tracebacks on errors")
    timing = argparse.ArgumentParser(add_help=False)
    timing.add_argument("--threads", type=int, metavar="T", help="ORT threads for the latency measurement")
    timing.add_argument("--no-latency", action="store_true", help="skip the latency measurement")

    q = sub.add_parser("quantize", parents=[common, timing], help="quantize a float ONNX model",
                       description="Quantize a float ONNX model (static QDQ or dynamic) and validate it "
                                   "against the float model.")
    q.add_argument("model", metavar="IN", help="float ONNX model")
    q.add_argument("-o", "--output", required=True, metavar="OUT", help="where to write the quantized model")
    q.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.STATIC.value,
                   help="static: int8 activations calibrated on --calib data (default); "
                        "dynamic: int8 weights, activations quantized at run time (no data needed)")
    q.add_argument("--calib", metavar="DATA", help="calibration data: .npz, folder of .npy/.npz, or an ONNX "
                   "test_data_set folder (keys = input names, first axis = samples)")
    q.add_argument("--method", choices=[m.value for m in CalibrationMethod], default="minmax",
                   help="range estimator: minmax (default), entropy (KL divergence), percentile, mse")
    q.add_argument("--percentile", type=float, default=99.999, metavar="P",
                   help="percentile of values kept by --method percentile (default 99.999)")
    q.add_argument("--bins", type=int, default=2048, help="histogram bins for entropy/percentile/mse (default 2048)")
    q.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    q.add_argument("--activation-type", choices=[t.value for t in QuantType], default="uint8",
                   help="uint8 (default, U8S8: fused into integer kernels on x86) or int8 (S8S8)")
    q.add_argument("--reduce-range", action="store_true", help="7-bit weights (AVX2 CPUs without VNNI)")
    q.add_argument("--op-types", nargs="+", metavar="OP", help="quantize only these op types")
    q.add_argument("--exclude", nargs="+", default=[], metavar="NAME_OR_GLOB",
                   help="node names or glob patterns to keep in float")
    q.add_argument("--exclude-op", nargs="+", default=[], metavar="OP", help="op types to keep in float")
    q.add_argument("--include", nargs="+", default=[], metavar="NAME_OR_GLOB",
                   help="quantize only nodes matching these names or globs")
    q.add_argument("--no-transformer-policy", action="store_true",
                   help="on transformer graphs, quantize every supported op (ORT's default) instead of "
                        "only the linear layers")
    q.add_argument("--smooth-alpha", type=float, default=0.75, metavar="A",
                   help="SmoothQuant strength for transformer linear layers (default 0.75): moves activation "
                        "outliers into the weights before calibration, float-equivalent")
    q.add_argument("--no-smooth", action="store_true", help="disable SmoothQuant on transformer graphs")
    q.add_argument("--quantize-conv", action="store_true",
                   help="dynamic mode: also quantize Conv (ConvInteger, usually slower than float on CPU)")
    q.add_argument("--eval", metavar="DATA", help="held-out evaluation data (default: the calibration data)")
    q.add_argument("--report", metavar="FILE.json", help="write the validation report as JSON")
    q.add_argument("--samples", type=int, metavar="N", help="use at most N calibration samples")
    q.add_argument("--batch-size", type=int, default=8, metavar="B", help="samples per batch (default 8)")
    q.add_argument("--shuffle", action="store_true", help="shuffle calibration samples (seeded) before --samples")
    q.add_argument("--seed", type=int, default=0, help="seed for --shuffle (default 0)")
    q.add_argument("--cache-dir", metavar="DIR", help="reuse calibration ranges cached in DIR "
                   "(keyed by model hash, data hash and settings)")
    q.add_argument("--allow-pickle", action="store_true",
                   help="allow loading pickled framework model files (this runs code from the file)")
    q.set_defaults(func=_cmd_quantize)

    e = sub.add_parser("export", parents=[common], help="export a framework model file to ONNX",
                       description="Export a PyTorch (.pt2, TorchScript .pt) or Keras (.keras, .h5, SavedModel) "
                                   "model to ONNX through an installed adapter, checking ONNX Runtime against "
                                   "the framework's outputs.")
    e.add_argument("model", metavar="MODEL", help="framework model file or folder")
    e.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the ONNX model")
    e.add_argument("--data", metavar="DATA", help="example inputs (.npz etc.) when the file does not carry them")
    e.add_argument("--opset", type=int, help="ONNX opset to export with (default: the adapter's)")
    e.add_argument("--allow-pickle", action="store_true",
                   help="allow loading pickled model files (this runs code from the file)")
    e.set_defaults(func=_cmd_export)

    v = sub.add_parser("validate", parents=[common, timing], help="compare a quantized model with its float model",
                       description="Run both models on the same data and report per-output closeness, "
                                   "size and latency.")
    v.add_argument("float_model", metavar="FLOAT", help="float ONNX model")
    v.add_argument("quant_model", metavar="QUANT", help="quantized ONNX model")
    v.add_argument("--data", required=True, metavar="DATA", help="evaluation data (.npz, folder, test_data_set)")
    v.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    v.add_argument("--samples", type=int, metavar="N", help="use at most N samples")
    v.add_argument("--batch-size", type=int, default=8, metavar="B", help="samples per batch (default 8)")
    v.set_defaults(func=_cmd_validate)

    i = sub.add_parser("inspect", parents=[common], help="describe a model: inputs, outputs, ops, quantized share",
                       description="Inputs/outputs with shapes, opset, op counts and the share of compute "
                                   "that is quantized.")
    i.add_argument("model", metavar="MODEL", help="ONNX model")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.set_defaults(func=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet, args.debug)
    try:
        return int(args.func(args))
    except OnnxqError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"onnxq: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    except KeyboardInterrupt:
        print("onnxq: interrupted", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    except Exception as exc:  # a bug: one line unless --debug
        if args.debug:
            raise
        print(f"onnxq: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return ExitCode.INTERNAL_ERROR


def _configure_logging(quiet: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not debug else "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("onnxq")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _check_output_path(output: str, *inputs: str | None) -> None:
    out = Path(output)
    for path in inputs:
        if path and Path(output).resolve() == Path(path).resolve():
            raise ConfigError(f"refusing to overwrite the input {path}: choose another output path")
    if out.is_dir():
        raise ConfigError(f"output {output} is a directory: give a file name")
    if not out.resolve().parent.is_dir():
        raise ConfigError(f"output folder {out.parent} does not exist")


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .api import quantize

    inputs = (args.model, args.calib, args.eval)
    _check_output_path(args.output, *inputs)
    if args.report:
        _check_output_path(args.report, *inputs, args.output)
    config = QuantConfig(
        mode=args.mode, method=args.method, percentile=args.percentile, num_bins=args.bins,
        per_channel=not args.per_tensor, activation_type=args.activation_type, reduce_range=args.reduce_range,
        op_types=tuple(args.op_types) if args.op_types else None, exclude_nodes=tuple(args.exclude),
        exclude_op_types=tuple(args.exclude_op), include_nodes=tuple(args.include),
        transformer_policy=not args.no_transformer_policy, quantize_conv_dynamic=args.quantize_conv,
        smooth_alpha=None if args.no_smooth else args.smooth_alpha,
        samples=args.samples, batch_size=args.batch_size, shuffle=args.shuffle, seed=args.seed)
    if config.mode is Mode.STATIC and not args.calib:
        raise ConfigError("static quantization needs calibration data: pass --calib DATA "
                          "(or --mode dynamic, which needs none)")
    result = quantize(args.model, args.calib, config=config, evaluation=args.eval, progress=not args.quiet,
                      cache_dir=args.cache_dir, latency=not args.no_latency, threads=args.threads,
                      allow_pickle=args.allow_pickle)
    written = result.save(args.output)
    if args.report:
        result.report.to_json(args.report)
    if not args.quiet:
        print(result.report.format())
        quantized = len(result.plan.nodes_to_quantize)
        print(f"\n{quantized} node(s) quantized, {len(result.plan.float_nodes)} kept in float")
        print(f"wrote {written}" + (f" and {args.report}" if args.report else ""))
    return ExitCode.OK


def _cmd_export(args: argparse.Namespace) -> int:
    from .api import resolve_model
    from .model import save_model

    _check_output_path(args.output, args.model, args.data)
    options = {"opset": args.opset} if args.opset else {}
    model, notes = resolve_model(args.model, data=args.data, export_options=options,
                                 allow_pickle=args.allow_pickle)
    written = save_model(model, args.output, protect=[args.model])
    if not args.quiet:
        for note in notes:
            print(note)
        print(f"wrote {written}")
    return ExitCode.OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validate import validate

    report = validate(args.float_model, args.quant_model, args.data, batch_size=args.batch_size,
                      limit=args.samples, latency=not args.no_latency, threads=args.threads,
                      progress=not args.quiet and not args.json)
    print(report.to_json() if args.json else report.format())
    return ExitCode.OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .model import load_model, summarize

    summary = summarize(load_model(args.model, check=False))
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.format())
    return ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
