"""The ``onnxq`` console script: argument parsing that translates to the public API, nothing more."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .config import CalibrationMethod, Mode, QuantConfig, QuantType
from .data import DEFAULT_BATCH_SIZE
from .errors import ConfigError, DataError, ModelError, OnnxqError, one_line

logger = logging.getLogger("onnxq")


class ExitCode(IntEnum):
    """Documented exit codes of the ``onnxq`` command."""

    OK = 0               #: success
    CHECK_FAILED = 1     #: a comparison or accuracy gate did not hold (outputs are still written)
    USAGE_ERROR = 2      #: bad arguments, unreadable model or data, impossible configuration
    INTERNAL_ERROR = 3   #: a bug in onnxq or a dependency (run with --debug for the traceback)
    INTERRUPTED = 130    #: stopped by SIGINT (Ctrl-C); temporary files removed, nothing half-written
    TERMINATED = 143     #: stopped by SIGTERM; cleaned up as for SIGINT


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to read more, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(ExitCode.USAGE_ERROR, f"{self.prog}: error: {text} (see `{self.prog} --help`)\n")


class _ReportPath(argparse.Action):
    """``--report FILE`` (JSON or HTML by its suffix); spelled ``--html`` it must name an HTML file."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if option_string == "--html" and Path(str(values)).suffix.lower() not in (".html", ".htm"):
            parser.error(f"--html expects a file name ending in .html or .htm, got {values!r} "
                         "(--report FILE.json writes JSON)")
        setattr(namespace, self.dest, values)


def _int_in(low: int | None, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (``low=None``: the upper bound only; QuantConfig
    checks the lower one with its own message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if low is None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        if low is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value
    parse.__name__ = "int"
    return parse


def _float_in(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [low, high] (or (low, high] with ``low_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text}")
        return value
    parse.__name__ = "float"
    return parse


def _latency_runs(text: str) -> int | None:
    """An argparse type: ``auto`` (``None``: until the median is stable) or a run count."""
    from .latency import MAX_RUNS

    return None if text.strip().lower() == "auto" else _int_in(1, MAX_RUNS)(text)


def _latency(args: argparse.Namespace) -> Any:
    """``latency=`` for the API: ``False``, or the LatencyOptions of the --latency-* flags.

    Raises:
        ConfigError: --latency-* flags without a latency measurement.
    """
    from .latency import LatencyOptions

    given = [f"--latency-{k}" for k in ("runs", "batch", "budget") if getattr(args, f"latency_{k}") is not None]
    measure = args.latency if hasattr(args, "latency") else not args.no_latency
    if not measure:
        if given:
            raise ConfigError(f"{', '.join(given)} without a latency measurement: "
                              + ("add --latency" if hasattr(args, "latency") else "drop --no-latency"))
        return False
    budget = {} if args.latency_budget is None else {"budget_s": args.latency_budget}
    return LatencyOptions(runs=args.latency_runs, batch=args.latency_batch, **budget)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


#: Bounds of the numeric options: beyond them a run exhausts memory or time instead of helping.
MAX_BINS = 1 << 16
MAX_BATCH_SIZE = 1 << 16
MAX_BLOCK_SIZE = 1 << 16
MAX_THREADS = 1024
MAX_STEPS = 10_000
MAX_SECONDS = 7 * 24 * 3600.0
_SAMPLES = _int_in(None, 2**62)
_BATCH = _int_in(None, MAX_BATCH_SIZE)
#: QuantConfig's defaults: the one source of the quantize flags' defaults and of their help texts.
_DEFAULTS = QuantConfig()
_THREADS = _int_in(1, MAX_THREADS)
_SECONDS = _float_in(0.0, MAX_SECONDS, low_open=True)


def _opset(text: str) -> int:
    """An argparse type: an opset the installed onnx package defines."""
    from onnx.defs import onnx_opset_version

    return _int_in(7, onnx_opset_version())(text)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests).

    Each command's options are shown in argument groups (:data:`GROUPS`); ``--help``, ``--quiet``
    and ``--debug`` stay under "options".
    """
    parser = _Parser(
        prog="onnxq", description="Quantize ONNX models with ONNX Runtime and measure how close they stay to float.")
    parser.add_argument("--version", action="version", version=f"onnxq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info messages")
    common.add_argument("--debug", action="store_true", help="debug logging and full tracebacks on errors")
    q = _add_quantize(sub, common)
    _add_export(sub, common)
    v = _add_validate(sub, common)
    c = _add_compare(sub, common)
    _add_inspect(sub, common)
    a = _add_analyze(sub, common)
    _add_presets(sub, common)
    _add_distributed(sub, common, quantize=q.add_argument_group("distributed"),
                     validate=v.add_argument_group("distributed"), compare=c.add_argument_group("distributed"),
                     analyze=a.add_argument_group("distributed"))
    return parser


#: The argument groups of each command's ``--help``, in order (``batch`` is defined with the
#: distributed code and keeps one list).
GROUPS: dict[str, tuple[str, ...]] = {
    "quantize": ("output", "data", "quantization", "float16 & weight-only", "selection", "accuracy passes",
                 "fallback", "validation & latency", "distributed"),
    "export": ("output", "data"),
    "validate": ("output", "data", "validation & latency", "distributed"),
    "compare": ("check", "output", "data", "validation & latency", "distributed"),
    "inspect": ("output",),
    "analyze": ("output", "data", "distributed"),
    "presets": ("output",),
}


def _groups(parser: argparse.ArgumentParser, command: str) -> dict[str, Any]:
    """The argument groups of ``command`` (:data:`GROUPS`), by title."""
    return {title: parser.add_argument_group(title) for title in GROUPS[command]
            if title != "distributed"}  # added by _add_distributed, after every other group


def _add_latency_flags(group: Any) -> None:
    """How latency is measured (onnxq.latency): --latency-runs, --latency-batch, --latency-budget."""
    from .latency import LatencyOptions

    group.add_argument("--latency-runs", type=_latency_runs, metavar="N|auto",
                       help="timed runs per model; auto (default): until the median is stable")
    group.add_argument("--latency-batch", type=_int_in(1, MAX_BATCH_SIZE), metavar="B",
                       help="samples per timed batch (default: the first evaluation batch)")
    group.add_argument("--latency-budget", type=_float_in(0.0, 3600.0, low_open=True), metavar="S",
                       help=f"at most S seconds of timed runs when --latency-runs is auto "
                            f"(default {LatencyOptions.budget_s:g})")


def _add_timing_flags(group: Any) -> None:
    """The latency flags plus --threads and --no-latency (quantize, validate)."""
    _add_latency_flags(group)
    group.add_argument("--threads", type=_THREADS, metavar="T", help="ORT threads for the latency measurement")
    group.add_argument("--no-latency", action="store_true", help="skip the latency measurement")


def _add_quantize(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``onnxq quantize``."""
    q = sub.add_parser("quantize", parents=[common], help="quantize a float ONNX model",
                       description="Quantize a float ONNX model (static QDQ or dynamic) and validate it "
                                   "against the float model.")
    q.add_argument("model", metavar="IN", help="float ONNX model")
    q.add_argument("--allow-pickle", action="store_true",
                   help="allow loading pickled framework model files (this runs code from the file)")
    g = _groups(q, "quantize")
    g["output"].add_argument("-o", "--output", required=True, metavar="OUT",
                             help="where to write the quantized model")
    g["output"].add_argument("--report", "--html", metavar="FILE.json|FILE.html", action=_ReportPath,
                             help="write the validation report: a self-contained HTML page with plots when the "
                                  "name ends in .html/.htm (needs matplotlib), JSON otherwise; --html FILE.html "
                                  "as in `onnxq validate`")
    _add_quantize_data(g["data"])
    _add_quantize_method(g["quantization"])
    _add_quantize_float_modes(g["float16 & weight-only"])
    _add_quantize_selection(g["selection"])
    _add_quantize_passes(g["accuracy passes"])
    _add_quantize_fallback(g["fallback"])
    _add_timing_flags(g["validation & latency"])
    q.set_defaults(func=_cmd_quantize)
    return q


def _add_quantize_data(g: Any) -> None:
    """quantize: calibration and evaluation data."""
    g.add_argument("--calib", metavar="DATA", help="calibration data: .npz, folder of .npy/.npz, or an ONNX "
                   "test_data_set folder (keys = input names, first axis = samples)")
    g.add_argument("--eval", metavar="DATA", help="held-out evaluation data (default: the calibration data)")
    g.add_argument("--samples", type=_SAMPLES, metavar="N", help="use at most N calibration samples")
    g.add_argument("--batch-size", type=_BATCH, default=_DEFAULTS.batch_size, metavar="B",
                   help=f"samples per batch (default {_DEFAULTS.batch_size})")
    g.add_argument("--shuffle", action="store_true", help="shuffle calibration samples (seeded) before --samples")
    g.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=None,
                   help=f"seed for --shuffle (default {_DEFAULTS.seed})")
    g.add_argument("--cache-dir", metavar="DIR", help="reuse calibration ranges cached in DIR "
                   "(keyed by model hash, data hash and settings)")


def _add_quantize_method(g: Any) -> None:
    """quantize: mode, hardware preset, types, range estimation, integer I/O."""
    g.add_argument("--mode", choices=[m.value for m in Mode], default=_DEFAULTS.mode.value,
                   help="static: int8 activations calibrated on --calib data; "
                        "dynamic: int8 weights, activations quantized at run time (no data needed); "
                        "float16: weights and activations in float16 (no data needed); "
                        "weight-only: int4/int8 block-wise MatMul weights (MatMulNBits), float activations "
                        f"(default {_DEFAULTS.mode.value})")
    g.add_argument("--target-hw", choices=_preset_names(), metavar="NAME",
                   help="hardware preset setting --activation-type, --reduce-range and per-channel weights "
                        f"({', '.join(_preset_names())}; see `onnxq presets`); explicit flags override it")
    g.add_argument("--method", choices=[m.value for m in CalibrationMethod], default=None,
                   help=f"range estimator (default {_DEFAULTS.method.value}): minmax, entropy (KL divergence), "
                        "percentile, mse, or auto "
                        "(per tensor, the one of these that best preserves the tensor's consumers)")
    g.add_argument("--percentile", type=_finite_float, default=None, metavar="P",
                   help=f"percentile of values kept by --method percentile (default {_DEFAULTS.percentile})")
    g.add_argument("--bins", type=_int_in(None, MAX_BINS), default=None,
                   help=f"histogram bins for entropy/percentile/mse (default {_DEFAULTS.num_bins}, "
                        f"at most {MAX_BINS})")
    # default None on the flags a --target-hw preset sets: only a flag given on the command line overrides it
    g.add_argument("--per-tensor", action="store_false", dest="per_channel", default=None,
                   help="one weight scale per tensor instead of per channel")
    g.add_argument("--activation-type", choices=[t.value for t in QuantType], default=None,
                   help=f"activation type (default {_DEFAULTS.activation_type.value}): uint8 (U8S8: fused into "
                        "integer kernels on x86), int8 (S8S8), or int16/uint16 "
                        "(16x8: 16-bit activations, int8 weights, opset 21; more accurate, but ONNX Runtime's "
                        "CPU kernels run 16-bit QDQ in float: accuracy, not speed)")
    g.add_argument("--io-type", choices=["uint8", "int8"], metavar="uint8|int8",
                   help="integer-only inputs and outputs: the model takes and returns uint8/int8 tensors; each "
                        "one's scale and zero point is stored in the model metadata (onnxq.io.<name>) and printed")
    g.add_argument("--strict", action="store_true",
                   help="strict integer mode: fail (exit 2) listing every node that would run in float "
                        "(name, op type, reason) instead of leaving it float")
    g.add_argument("--qat-quantize-rest", action="store_true",
                   help="for a model that already holds Q/DQ (QAT export): also quantize the nodes it left in "
                        "float (needs --calib); existing Q/DQ stay untouched. Default: pass it through unchanged")
    g.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="7-bit weights (AVX2 CPUs without VNNI); --no-reduce-range overrides a preset")
    g.add_argument("--quantize-conv", action="store_true",
                   help="dynamic mode: also quantize Conv (ConvInteger, usually slower than float on CPU)")
    g.add_argument("--optimize", choices=["accuracy", "balanced", "latency"], default=None,
                   help=f"static (default {_DEFAULTS.optimize}): accuracy keeps the plan; balanced keeps float "
                        "the nodes whose int8 "
                        "kernel takes over 1.1x the float time, latency those over 0.9x (profiled on a --calib "
                        "batch with --threads; used only when the whole model gets faster)")


def _add_quantize_float_modes(g: Any) -> None:
    """quantize: the options of --mode float16 and --mode weight-only."""
    g.add_argument("--bits", type=int, choices=[4, 8],
                   help=f"weight-only: bits per weight (default {_DEFAULTS.weight_bits})")
    g.add_argument("--block-size", type=_int_in(None, MAX_BLOCK_SIZE), metavar="N",
                   help="weight-only: weights per scale along K, a power of two >= 16 "
                        f"(default {_DEFAULTS.block_size}, ORT's default; "
                        "smaller is more accurate and larger)")
    g.add_argument("--algorithm", choices=["rtn", "gptq", "hqq"],
                   help=f"weight-only (default {_DEFAULTS.weight_only_algorithm}): rtn (round to nearest), "
                        "gptq (needs --calib, 4 bits) or "
                        "hqq (no data, 4 bits, ORT's code needs torch)")
    g.add_argument("--symmetric", action="store_true", default=None,
                   help="weight-only: symmetric blocks without zero points (rtn, gptq)")
    g.add_argument("--fp16-block-ops", nargs="+", metavar="OP",
                   help="float16: op types kept in float32, in addition to the default block list")
    g.add_argument("--keep-io-types", action=argparse.BooleanOptionalAction, default=None,
                   help="float16: keep float32 model inputs/outputs or make them float16 (--no-keep-io-types); "
                        f"default --{'' if _DEFAULTS.float16_keep_io_types else 'no-'}keep-io-types")


def _add_quantize_selection(g: Any) -> None:
    """quantize: which nodes are quantized."""
    g.add_argument("--op-types", nargs="+", metavar="OP", help="quantize only these op types")
    g.add_argument("--exclude", nargs="+", default=[], metavar="NAME_OR_GLOB",
                   help="node names or glob patterns to keep in float")
    g.add_argument("--exclude-op", nargs="+", default=[], metavar="OP", help="op types to keep in float")
    g.add_argument("--include", nargs="+", default=[], metavar="NAME_OR_GLOB",
                   help="quantize only nodes matching these names or globs")
    g.add_argument("--keep-float", nargs="+", default=[], metavar="NAME_OR_GLOB",
                   help="nodes always kept float (pinned; not fallback steps)")
    g.add_argument("--no-transformer-policy", action="store_true",
                   help="on transformer graphs, quantize every supported op (ORT's default) instead of "
                        "only the linear layers")


def _add_quantize_passes(g: Any) -> None:
    """quantize: float-equivalent and error-reducing passes (static mode)."""
    g.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=None, dest="equalize",
                   help="static: cross-layer equalization of Conv/Gemm pairs before calibration (float-equivalent; "
                        "pairs through Relu6/Clip are skipped)")
    g.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="static: fold the quantized weights' expected output error, measured on --calib, into the "
                        "biases")
    g.add_argument("--rounding", choices=["nearest", "adaptive"], default=None,
                   help=f"static: weight rounding (default {_DEFAULTS.weight_rounding}): nearest or adaptive "
                        "(AdaRound, layer by layer on --calib; "
                        "takes minutes on a large CNN, see --rounding-seconds)")
    g.add_argument("--rounding-seconds", type=_SECONDS, default=None, metavar="S",
                   help="time budget of --rounding adaptive; layers not reached keep nearest rounding")
    g.add_argument("--smooth-alpha", type=_float_in(0.0, 1.0), default=None, metavar="A",
                   help=f"SmoothQuant strength for transformer linear layers (default {_DEFAULTS.smooth_alpha}): "
                        "moves activation "
                        "outliers into the weights before calibration, float-equivalent")
    g.add_argument("--no-smooth", action="store_true", help="disable SmoothQuant on transformer graphs")


def _add_quantize_fallback(g: Any) -> None:
    """quantize: the accuracy-driven fallback (--target)."""
    g.add_argument("--target", metavar="GOAL",
                   help="accuracy goal, e.g. 'cosine>=0.999', 'sqnr>=30', 'top1>=0.99', 'accuracy_drop<=0.5' "
                        "(points, needs labels): keep the most harmful nodes float, one step at a time, until it "
                        "holds; exit 1 when it is still missed after the budget (model and report are written)")
    g.add_argument("--metric-fn", metavar="MODULE:FUNC",
                   help="your task metric for --target 'metric>=X' / 'metric_drop<=X': a function "
                        "fn(outputs: dict[name, array], labels: array | None) -> float, higher is better, "
                        "imported from MODULE (on sys.path or the current folder)")
    g.add_argument("--max-steps", type=_int_in(0, MAX_STEPS), default=None, metavar="N",
                   help=f"at most N fallback steps (default {_DEFAULTS.max_fallback_steps})")
    g.add_argument("--max-tune-seconds", type=_SECONDS, metavar="S", help="stop the fallback after S seconds")
    g.add_argument("--force-quantize", nargs="+", default=[], metavar="NAME_OR_GLOB",
                   help="nodes the fallback never keeps float")


def _add_export(sub: Any, common: argparse.ArgumentParser) -> None:
    """``onnxq export``."""
    e = sub.add_parser("export", parents=[common], help="export a framework model file to ONNX",
                       description="Export a PyTorch (.pt2, TorchScript .pt) or Keras (.keras, .h5, SavedModel) "
                                   "model to ONNX through an installed adapter, checking ONNX Runtime against "
                                   "the framework's outputs.")
    e.add_argument("model", metavar="MODEL", help="framework model file or folder")
    e.add_argument("--allow-pickle", action="store_true",
                   help="allow loading pickled model files (this runs code from the file)")
    g = _groups(e, "export")
    g["output"].add_argument("-o", "--output", required=True, metavar="OUT.onnx",
                             help="where to write the ONNX model")
    g["output"].add_argument("--opset", type=_opset, help="ONNX opset to export with (default: the adapter's)")
    g["data"].add_argument("--data", metavar="DATA",
                           help="example inputs (.npz etc.) when the file does not carry them")
    e.set_defaults(func=_cmd_export)


def _add_eval_data(g: Any, *, what: str) -> None:
    """--data (required), --samples and --batch-size of the commands that run two models."""
    g.add_argument("--data", required=True, metavar="DATA", help=what)
    g.add_argument("--samples", type=_SAMPLES, metavar="N", help="use at most N samples")
    g.add_argument("--batch-size", type=_BATCH, default=DEFAULT_BATCH_SIZE, metavar="B",
                   help=f"samples per batch (default {DEFAULT_BATCH_SIZE})")


def _add_validate(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``onnxq validate``."""
    v = sub.add_parser("validate", parents=[common], help="compare a quantized model with its float model",
                       description="Run both models on the same data and report per-output closeness, "
                                   "size and latency.")
    v.add_argument("float_model", metavar="FLOAT", help="float ONNX model")
    v.add_argument("quant_model", metavar="QUANT", help="quantized ONNX model")
    g = _groups(v, "validate")
    g["output"].add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    g["output"].add_argument("--html", metavar="FILE.html",
                             help="also write a self-contained HTML report with plots (needs matplotlib)")
    _add_eval_data(g["data"], what="evaluation data (.npz, folder, test_data_set)")
    _add_timing_flags(g["validation & latency"])
    v.set_defaults(func=_cmd_validate)
    return v


def _add_compare(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``onnxq compare``."""
    from .compare import METRICS

    c = sub.add_parser(
        "compare", parents=[common], help="CI gate: exit 1 when an output misses a threshold",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run both models on the same data and check every output against a threshold on one metric. "
                    "Exit 0 when every output meets it, 1 when one does not, 2 on bad input.",
        epilog="metrics (an output passes when):\n"
               "  cosine         mean per-sample cosine similarity >= X (e.g. 0.999)\n"
               "  min-cosine     worst sample's cosine similarity >= X\n"
               "  sqnr           signal-to-quantization-noise ratio in dB >= X (e.g. 30)\n"
               "  max-abs        largest |float - quantized| <= X\n"
               "  mean-abs       mean |float - quantized| <= X\n"
               "  top1           fraction of samples whose argmax agrees with float >= X (0..1; class scores only)\n"
               "  accuracy       quantized accuracy against the labels >= X, a fraction (0.98 = 98%)\n"
               "  accuracy-drop  float accuracy - quantized accuracy, in percentage points, <= X (e.g. 0.5)\n"
               "The accuracy metrics need labels: a 'labels' array in the data .npz, or --labels.")
    c.add_argument("float_model", metavar="FLOAT", help="float ONNX model")
    c.add_argument("quant_model", metavar="QUANT", help="quantized ONNX model")
    g = _groups(c, "compare")
    g["check"].add_argument("--metric", choices=list(METRICS), default="cosine", help="what to check (default cosine)")
    g["check"].add_argument("--threshold", type=float, required=True, metavar="X", help="the threshold (see below)")
    g["output"].add_argument("--junit", metavar="OUT.xml",
                             help="write JUnit XML (one test case per output), also on failure")
    g["output"].add_argument("--json", action="store_true", help="print the verdicts and the report as JSON")
    _add_eval_data(g["data"], what="evaluation data (.npz, folder, test_data_set)")
    g["data"].add_argument("--labels", metavar="FILE.npy|FILE.npz", help="class labels, one per sample, for the "
                           "accuracy metrics when the data file has none")
    _add_latency_flags(g["validation & latency"])
    g["validation & latency"].add_argument("--threads", type=_THREADS, metavar="T",
                                           help="ONNX Runtime intra-op threads")
    g["validation & latency"].add_argument("--latency", action="store_true",
                                           help="also measure latency (reported, never gated)")
    c.set_defaults(func=_cmd_compare)
    return c


def _add_inspect(sub: Any, common: argparse.ArgumentParser) -> None:
    """``onnxq inspect``."""
    i = sub.add_parser("inspect", parents=[common], help="describe a model: inputs, outputs, ops, quantized share",
                       description="Inputs/outputs with shapes, opset, op counts and the share of compute "
                                   "that is quantized.")
    i.add_argument("model", metavar="MODEL", help="ONNX model, or a framework model file (.keras, .h5, "
                   "SavedModel folder, .pt2): its inputs")
    _groups(i, "inspect")["output"].add_argument("--json", action="store_true", help="print JSON instead of text")
    i.set_defaults(func=_cmd_inspect)


def _add_analyze(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``onnxq analyze``."""
    a = sub.add_parser("analyze", parents=[common], help="per-layer quantization error, most harmful first",
                       description="For every quantized activation and weight: the SQNR and cosine that its own "
                                   "quantization costs, and what the quantized model computes there, ranked "
                                   "lowest SQNR first, with the nodes to keep float to remove each error.")
    a.add_argument("float_model", metavar="FLOAT", help="float ONNX model")
    a.add_argument("quant_model", metavar="QUANT", help="quantized ONNX model")
    g = _groups(a, "analyze")
    g["output"].add_argument("--top", type=_int_in(1, 2**31), metavar="K",
                             help="show the K most harmful entries only")
    g["output"].add_argument("--json", action="store_true",
                             help="print JSON (a list of layer metrics) instead of a table")
    _add_eval_data(g["data"], what="inputs to run both models on")
    a.set_defaults(func=_cmd_analyze)
    return a


def _add_presets(sub: Any, common: argparse.ArgumentParser) -> None:
    """``onnxq presets``."""
    p = sub.add_parser("presets", parents=[common], help="list the hardware presets of --target-hw",
                       description="The --target-hw presets: the settings each one picks and why.")
    _groups(p, "presets")["output"].add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_presets)


def _preset_names() -> list[str]:
    from .presets import preset_names

    return preset_names()


#: QuantConfig fields set by a --target-hw preset or by mode-specific flags: passed only when given,
#: so that argparse defaults never silently override the preset or trip another mode's checks.
_OPTIONAL_FIELDS = {"per_channel": "per_channel", "activation_type": "activation_type",
                    "reduce_range": "reduce_range", "weight_bits": "bits", "block_size": "block_size",
                    "weight_only_algorithm": "algorithm", "weight_only_symmetric": "symmetric",
                    "float16_keep_io_types": "keep_io_types", "equalization": "equalize",
                    "bias_correction": "bias_correction", "weight_rounding": "rounding",
                    "rounding_seconds": "rounding_seconds", "method": "method", "percentile": "percentile",
                    "num_bins": "bins", "smooth_alpha": "smooth_alpha", "seed": "seed",
                    "max_fallback_steps": "max_steps", "optimize": "optimize"}

#: Flags that act only in some modes: given in another one they would be silently ignored, so they
#: are refused (exit 2) before any work. dest -> (flag, modes where it acts).
_MODE_FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "method": ("--method", ("static",)), "percentile": ("--percentile", ("static",)),
    "bins": ("--bins", ("static",)), "cache_dir": ("--cache-dir", ("static",)),
    "smooth_alpha": ("--smooth-alpha", ("static",)), "no_smooth": ("--no-smooth", ("static",)),
    "activation_type": ("--activation-type", ("static",)),
    "samples": ("--samples", ("static", "weight-only")), "shuffle": ("--shuffle", ("static", "weight-only")),
    "seed": ("--seed", ("static", "weight-only")), "quantize_conv": ("--quantize-conv", ("dynamic",)),
    "optimize": ("--optimize", ("static",)),
    "per_channel": ("--per-tensor", ("static", "dynamic")), "reduce_range": ("--reduce-range", ("static", "dynamic")),
}
_SWITCHES = frozenset({"shuffle", "quantize_conv", "no_smooth"})  # store_true: False means not given
#: Calibration methods that read --bins / --percentile.
_BINS_METHODS = ("entropy", "percentile", "mse", "auto")
_PERCENTILE_METHODS = ("percentile", "auto")


def _check_mode_options(args: argparse.Namespace) -> None:
    """Refuse flags given explicitly that do nothing in the chosen mode or with the chosen method.

    Raises:
        ConfigError: one line naming every such flag and where it would act.
    """
    mode, method = args.mode, args.method or "minmax"
    calibrates = mode == "static" or (mode == "weight-only" and args.algorithm == "gptq")
    idle: list[str] = []
    for dest, (flag, modes) in _MODE_FLAGS.items():
        given = getattr(args, dest, None)
        if given is None or (given is False and dest in _SWITCHES):
            continue
        if mode not in modes or not calibrates and "weight-only" in modes:
            where = ", ".join(f"--mode {m}" + (" --algorithm gptq" if m == "weight-only" else "") for m in modes)
            idle.append(f"{flag} (acts with {where} only)")
        elif dest == "bins" and method not in _BINS_METHODS:
            idle.append(f"--bins (acts with --method {'/'.join(_BINS_METHODS)} only)")
        elif dest == "percentile" and method not in _PERCENTILE_METHODS:
            idle.append(f"--percentile (acts with --method {'/'.join(_PERCENTILE_METHODS)} only)")
        elif dest == "seed" and not args.shuffle:
            idle.append("--seed (acts with --shuffle only)")
    for flag, given in (("--max-steps", args.max_steps), ("--max-tune-seconds", args.max_tune_seconds),
                        ("--metric-fn", args.metric_fn)):
        if given is not None and not args.target:
            idle.append(f"{flag} (acts with --target only)")
    if idle:
        them = "it" if len(idle) == 1 else "them"
        raise ConfigError(f"{'; '.join(idle)}: would do nothing in this run (--mode {mode}"
                          f"{f' --method {method}' if mode == 'static' else ''}), drop {them}")


def _config(args: argparse.Namespace, **fields: object) -> QuantConfig:
    """QuantConfig from the flags: the --target-hw preset first, then every flag given explicitly."""
    from .presets import preset

    fields.update({name: getattr(args, dest) for name, dest in _OPTIONAL_FIELDS.items()
                   if getattr(args, dest, None) is not None})
    if getattr(args, "no_smooth", False):
        fields["smooth_alpha"] = None
    if args.fp16_block_ops:
        fields["float16_op_block_list"] = tuple(args.fp16_block_ops)
    return preset(args.target_hw, **fields) if args.target_hw else QuantConfig(**fields)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet, args.debug)
    with _signals_as_exceptions(), warnings.catch_warnings():
        if not args.debug:  # numpy / dependency warnings are not the user's business; --debug shows them
            warnings.simplefilter("ignore")
        try:
            return int(args.func(args))
        except OnnxqError as exc:
            if args.debug:
                traceback.print_exc()
            print(f"onnxq: error: {one_line(exc)}", file=sys.stderr)
            for node in getattr(exc, "nodes", []):  # StrictModeError: one line per float node
                print(f"  {node.format()}", file=sys.stderr)
            return ExitCode.USAGE_ERROR
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM (see _signals_as_exceptions)
            terminated = isinstance(exc, _Terminated)
            print(f"onnxq: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
            return ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED
        except Exception as exc:  # a bug: one line unless --debug
            if args.debug:
                raise
            print(f"onnxq: internal error: {type(exc).__name__}: {one_line(exc) if str(exc) else ''} "
                  "(run with --debug for the traceback)", file=sys.stderr)
            return ExitCode.INTERNAL_ERROR


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and temporary folder cleans up."""


@contextlib.contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    """SIGTERM raises :class:`_Terminated` (SIGINT already raises KeyboardInterrupt); after the
    first signal both are ignored so that the cleanup it starts runs to the end."""
    def on_signal(signum: int, _frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    try:  # a signal the shell made us ignore (nohup, background jobs) stays ignored
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(sig) is not signal.SIG_IGN}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _configure_logging(quiet: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not debug else "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("onnxq")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _check_output_path(output: str, *inputs: str | None, what: str = "output", model: bool = False) -> None:
    """Before any work: ``output`` can be written atomically and is none of the run's inputs (the
    model's external-data files included, in any spelling or through links)."""
    from ._paths import check_output_file

    check_output_file(output, what=what, protect=inputs, side_file=model)


def _check_data_paths(model: str, *sources: str | None, batch_size: int | None = None,
                      samples: int | None = None) -> None:
    """Before any work: every data source exists, is a folder or a regular file, and, when the
    model is an ONNX file, fits its inputs (names, dtypes, shapes; read from the headers only).
    ``samples`` limits the first source only (the calibration data)."""
    from .adapters import adapter_for_path
    from .data import check_data
    from .model import load_model_header

    given = [source for source in sources if source]
    if not given:
        return
    for source in given:
        path = Path(source)
        if not path.exists():
            raise DataError(f"data path '{source}' does not exist")
        if not (path.is_dir() or path.is_file()):
            raise DataError(f"data path '{source}' is not a regular file or a folder")
    if adapter_for_path(model) is not None:  # a framework file: its inputs are known after export
        return
    header = load_model_header(model)
    for index, source in enumerate(sources):
        if source:
            check_data(source, header, batch_size=batch_size, limit=samples if index == 0 else None)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .api import quantize

    inputs = (args.model, args.calib, args.eval)
    _check_output_path(args.output, *inputs, model=True)
    if args.report:
        _check_output_path(args.report, *inputs, args.output, what="report")
        if Path(args.report).suffix.lower() in (".html", ".htm"):
            from .report.html import require_matplotlib

            require_matplotlib()  # before any long work
    if args.cache_dir:
        from ._paths import check_output_folder

        check_output_folder(args.cache_dir, what="--cache-dir")
    config = _config(
        args, mode=args.mode, op_types=tuple(args.op_types) if args.op_types else None,
        exclude_nodes=tuple(args.exclude), exclude_op_types=tuple(args.exclude_op), include_nodes=tuple(args.include),
        transformer_policy=not args.no_transformer_policy, quantize_conv_dynamic=args.quantize_conv,
        samples=args.samples, batch_size=args.batch_size, shuffle=args.shuffle,
        io_type=args.io_type, strict=args.strict, qat_quantize_rest=args.qat_quantize_rest,
        target=args.target, max_tune_seconds=args.max_tune_seconds,
        keep_float=tuple(args.keep_float), force_quantize=tuple(args.force_quantize))
    _check_mode_options(args)
    if config.mode is Mode.STATIC and not args.calib:
        raise ConfigError("static quantization needs calibration data: pass --calib DATA "
                          "(or --mode dynamic, which needs none)")
    metric = _metric_fn(args.metric_fn)
    _check_data_paths(args.model, args.calib, args.eval, batch_size=args.batch_size, samples=args.samples)
    result = quantize(args.model, args.calib, config=config, evaluation=args.eval, progress=not args.quiet,
                      cache_dir=args.cache_dir, latency=_latency(args), threads=args.threads,
                      allow_pickle=args.allow_pickle, metric=metric, client=args.dask,
                      evidence=_html(args.report))  # an HTML report's plots taken in the run's passes
    written = result.save(args.output)
    if _html(args.report):
        from .evidence import html_report

        # the float model of the run: a framework model is not exported a second time
        html_report(result.float_model, result.model, args.eval or args.calib, args.report,
                    report=result.report,
                    ranges=result.ranges, calibration=args.calib, batch_size=args.batch_size,
                    progress=not args.quiet, collected=result.evidence)
    elif args.report:
        result.report.to_json(args.report)
    if not args.quiet:
        print(result.report.format())
        quantized = len(result.plan.nodes_to_quantize)
        print(f"\n{quantized} node(s) quantized, {len(result.plan.float_nodes)} kept in float")
        from .rewrite.io_types import io_params

        for p in io_params(result.model).values():
            print(f"{p.kind} {p.name}: {p.dtype}, scale {p.scale:.9g}, zero point {p.zero_point}"
                  " (float = scale * (int - zero_point))")
        print(f"wrote {written}" + (f" and {args.report}" if args.report else ""))
    if result.report.target_met is False:
        steps = max(len(result.report.fallback) - 1, 0)
        print(f"onnxq: target {result.report.target} not met after {steps} fallback step(s); "
              f"model and report written anyway", file=sys.stderr)
        return ExitCode.CHECK_FAILED
    return ExitCode.OK


def _metric_fn(spec: str | None) -> Any:
    """Import ``MODULE:FUNC`` for --metric-fn (the user's own code: it runs when imported)."""
    if spec is None:
        return None
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ConfigError(f"--metric-fn {spec!r}: expected MODULE:FUNC, e.g. mymetrics:f1_score")
    import importlib

    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the current folder, like `python -m`
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except Exception as exc:  # noqa: BLE001 - ImportError, SyntaxError, or whatever the module raises: its fault
        raise ConfigError(f"--metric-fn {spec!r}: cannot import it ({type(exc).__name__}: {one_line(exc)})") from exc
    if not callable(func):
        raise ConfigError(f"--metric-fn {spec!r} is not a function")
    return func


def _cmd_export(args: argparse.Namespace) -> int:
    from ._quiet import captured_output
    from .api import resolve_model
    from .model import save_model

    _check_output_path(args.output, args.model, args.data, model=True)
    _check_data_paths(args.model, args.data)
    options = {"opset": args.opset} if args.opset else {}
    with captured_output("exporter"):  # exporters print tracebacks and warnings of their own
        model, notes = resolve_model(args.model, data=args.data, export_options=options,
                                     allow_pickle=args.allow_pickle)
    written = save_model(model, args.output, protect=[args.model])
    if not args.quiet:
        for note in notes:
            print(note)
        print(f"wrote {written}")
    return ExitCode.OK


def _check_model_pair(float_model: str, quant_model: str, data: str | None, *, batch_size: int,
                      samples: int | None, quantized: bool = False) -> None:
    """Before any work: both models are ONNX files with the same inputs and outputs (headers only),
    the data fits them, and with ``quantized`` the second model holds quantized layers."""
    from .model import load_model_header
    from .validate import check_same_io

    float_header, quant_header = load_model_header(float_model), load_model_header(quant_model)
    check_same_io(float_header, quant_header)
    if quantized:  # analyze maps layers: the second model must be a quantization of the first
        _check_same_signature(float_header, quant_header)
        if not any(node.op_type in _QUANTIZED_OPS for node in quant_header.graph.node):
            raise ModelError(f"{quant_model} holds no quantized layer (no QuantizeLinear/DequantizeLinear or "
                             "integer op): give the quantized model second")
        weights = {t.name for t in float_header.graph.initializer}
        kept = {t.name.removesuffix("_quantized") for t in quant_header.graph.initializer}
        if weights and not weights & kept:
            raise ModelError(f"no quantized layer of {quant_model} corresponds to a node of {float_model} (they "
                             "share no weight): give the float model and its own quantized version")
    _check_data_paths(float_model, data, batch_size=batch_size, samples=samples)


def _check_same_signature(float_header: Any, quant_header: Any) -> None:
    """Inputs and outputs agree in element type and in every fixed dimension."""
    def signature(values: Any) -> dict[str, tuple[int, list[int | None]]]:
        out = {}
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            out[value.name] = (tensor.elem_type, dims)
        return out

    for what in ("input", "output"):
        f_sig = signature(getattr(float_header.graph, what))
        q_sig = signature(getattr(quant_header.graph, what))
        for name, (f_type, f_dims) in f_sig.items():
            if name not in q_sig:
                continue
            q_type, q_dims = q_sig[name]
            fixed_differ = len(f_dims) != len(q_dims) or any(
                a is not None and b is not None and a != b for a, b in zip(f_dims, q_dims))
            if f_type != q_type or fixed_differ:
                raise ModelError(f"{what} {name!r} does not match between the two models ({_sig_text(f_type, f_dims)} "
                                 f"vs {_sig_text(q_type, q_dims)}): analyze compares a model with its own quantization")


def _sig_text(elem_type: int, dims: list[int | None]) -> str:
    from onnx import TensorProto

    name = TensorProto.DataType.Name(elem_type).lower() if elem_type in TensorProto.DataType.values() else "?"
    return f"{name} [{', '.join('?' if d is None else str(d) for d in dims)}]"


#: Ops that mark a quantized model (QDQ, dynamic integer ops, QLinear ops, weight-only).
_QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                            "ConvInteger", "QLinearConv", "QLinearMatMul", "QGemm", "MatMulNBits",
                            "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM"})


def _html(report: str | None) -> bool:
    """Whether ``--report`` names an HTML file."""
    return bool(report) and Path(str(report)).suffix.lower() in (".html", ".htm")


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validate import validate

    if args.html:
        from .report.html import require_matplotlib

        _check_output_path(args.html, args.float_model, args.quant_model, args.data, what="--html report")
        require_matplotlib()
    _check_model_pair(args.float_model, args.quant_model, args.data, batch_size=args.batch_size,
                      samples=args.samples)
    from .evidence import ScatterSample, html_report

    sample = ScatterSample() if args.html and not args.dask else None  # taken in the validation pass
    report = (_validate_on_dask(args) if args.dask else
              validate(args.float_model, args.quant_model, args.data, batch_size=args.batch_size,
                       limit=args.samples, latency=_latency(args), threads=args.threads,
                       progress=not args.quiet and not args.json, consumers=[sample.update] if sample else []))
    if args.html:
        html_report(args.float_model, args.quant_model, args.data, args.html, report=report,
                    batch_size=args.batch_size, progress=not args.quiet and not args.json,
                    scatter=sample.result() if sample else None)
    print(report.to_json() if args.json else report.format())
    return ExitCode.OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import check_metric, compare, junit_error, read_labels
    from .metrics import get_metric

    check_metric(args.metric, args.threshold)  # a malformed request, like argparse's errors, writes no JUnit
    latency = _latency(args)
    if args.junit:
        _check_output_path(args.junit, args.float_model, args.quant_model, args.data, args.labels,
                           what="JUnit file")
    started = time.perf_counter()
    try:  # from here every outcome writes the JUnit file, unreadable data or models included (an <error> case)
        if args.labels:
            read_labels(args.labels)
        _check_model_pair(args.float_model, args.quant_model, args.data, batch_size=args.batch_size,
                          samples=args.samples)
        result = compare(args.float_model, args.quant_model, args.data, metric=args.metric,
                         threshold=args.threshold, labels=args.labels, batch_size=args.batch_size,
                         limit=args.samples, threads=args.threads, latency=latency,
                         progress=not args.quiet and not args.json, client=args.dask)
    except Exception as exc:  # any outcome gets its JUnit file: an <error> test case, then the usual exit
        if args.junit:
            junit_error(exc, args.junit, metric=get_metric(args.metric).cli_name, threshold=args.threshold,
                        float_model=args.float_model, quant_model=args.quant_model,
                        seconds=time.perf_counter() - started)
        raise
    if args.junit:
        result.to_junit(args.junit)
    if args.json:
        print(result.to_json())
    elif not args.quiet:
        print(result.report.format())
        print()
        print(result.format())
    for check in result.failures:
        print(f"onnxq: check failed: {check.message}", file=sys.stderr)
    return ExitCode.OK if result.passed else ExitCode.CHECK_FAILED


def _cmd_presets(args: argparse.Namespace) -> int:
    from .presets import list_presets

    presets = list_presets()
    if args.json:
        print(json.dumps([{"name": p.name, "reason": p.reason, "fused_ops": p.fused_ops,
                           "config": p.config.to_dict()} for p in presets], indent=2))
        return ExitCode.OK
    print(f"{'NAME':<10} {'ACT':<6} {'WEIGHT':<6} {'REDUCE':<6} {'PER-CH':<6} REASON")
    for p in presets:
        c = p.config
        print(f"{p.name:<10} {c.activation_type.value:<6} {c.weight_type.value:<6} {str(c.reduce_range):<6} "
              f"{str(c.per_channel):<6} {p.reason}")
    return ExitCode.OK


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze, format_layers
    from .report.schema import to_jsonable

    _check_model_pair(args.float_model, args.quant_model, args.data, batch_size=args.batch_size,
                      samples=args.samples, quantized=True)
    layers = analyze(args.float_model, args.quant_model, args.data, batch_size=args.batch_size,
                     limit=args.samples, progress=not args.quiet and not args.json, client=args.dask)
    if not layers:
        raise ModelError(f"no quantized layer of {args.quant_model} corresponds to a node of {args.float_model}: "
                         "give the float model and its own quantized version")
    shown = layers if args.top is None else layers[:args.top]
    if args.json:
        print(json.dumps(to_jsonable(shown), indent=2, allow_nan=False))
    else:
        print(format_layers(layers, top=args.top))
    return ExitCode.OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .adapters import adapter_for_path
    from .model import load_model_header, summarize

    if adapter_for_path(args.model) is not None:  # .keras, .h5, SavedModel, .pt2: inputs via the adapter
        from .api import inspect_framework_model

        summary: Any = inspect_framework_model(args.model)
    else:
        summary = summarize(load_model_header(args.model))  # the graph, not the weights: fast at any size
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.format())
    return ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


# ------------------------------------------------------------------ Dask (issue 14): --dask and `onnxq batch`
# Kept apart: Dask is imported only when --dask is given (onnxq.distributed.cluster names the extra).

_DASK_HELP = ("run on Dask: tcp://HOST:PORT (a running `dask scheduler`) or local:N (a LocalCluster of N "
              "single-threaded workers, closed at the end); needs pip install 'onnxq[dask]'")


def _add_distributed(sub: Any, common: argparse.ArgumentParser, *, quantize: Any, validate: Any, compare: Any,
                     analyze: Any) -> None:
    """``--dask`` on quantize, validate, compare and analyze, and the ``batch`` command."""
    quantize.add_argument("--dask", metavar="SPEC", help=_DASK_HELP + "; same ranges and report as in-process")
    validate.add_argument("--dask", metavar="SPEC", help=_DASK_HELP + "; same report as in-process")
    compare.add_argument("--dask", metavar="SPEC", help=_DASK_HELP + "; same verdicts and report as in-process")
    analyze.add_argument("--dask", metavar="SPEC", help=_DASK_HELP + "; same per-layer metrics as in-process")
    b = sub.add_parser("batch", parents=[common], help="quantize many models (a folder or a manifest) as independent tasks",
                       description="Quantize every model of a folder of .onnx files or of a YAML/JSON manifest; "
                                   "one model's failure never stops the others. Prints a summary table and "
                                   "writes a JSON summary and JUnit (one test case per model). Exit code 1 "
                                   "when a model failed or missed its target.")
    b.add_argument("source", metavar="IN", help="folder of .onnx files, or a .yaml/.yml/.json manifest")
    b.add_argument("-o", "--out", required=True, metavar="DIR", help="folder for the quantized models")
    b.add_argument("--calib", metavar="DATA", help="calibration data for models without their own")
    b.add_argument("--eval", metavar="DATA", help="evaluation data for models without their own")
    b.add_argument("--mode", choices=[m.value for m in Mode], help="quantization mode for every model")
    b.add_argument("--method", choices=[m.value for m in CalibrationMethod], help="calibration method")
    b.add_argument("--target", metavar="GOAL", help="accuracy goal for every model (e.g. cosine>=0.99)")
    b.add_argument("--latency", action="store_true", help="measure latency (off by default in a batch)")
    b.add_argument("--summary", metavar="OUT.json", help="JSON summary (default: DIR/batch_summary.json)")
    b.add_argument("--junit", metavar="OUT.xml", help="JUnit XML (default: DIR/batch_junit.xml)")
    b.add_argument("--dask", metavar="SPEC", help=_DASK_HELP + "; each model is one task")
    b.set_defaults(func=_cmd_batch)


def _cmd_batch(args: argparse.Namespace) -> int:
    from .distributed.batch import FAILED, ERROR, format_table, read_items, run_batch, to_junit, write_summary

    out = Path(args.out)
    options = {k: v for k, v in (("mode", args.mode), ("method", args.method), ("target", args.target)) if v}
    items = read_items(args.source, out, calibration=args.calib, evaluation=args.eval, options=options)
    summary, junit = args.summary or out / "batch_summary.json", args.junit or out / "batch_junit.xml"
    out.mkdir(parents=True, exist_ok=True)
    for path, what in ((summary, "--summary"), (junit, "--junit")):
        _check_output_path(str(path), what=what)
    if args.dask:
        from .distributed.cluster import open_cluster

        with open_cluster(args.dask) as client:
            outcomes = run_batch(items, client=client, latency=args.latency)
    else:
        outcomes = run_batch(items, latency=args.latency, progress=not args.quiet)
    write_summary(outcomes, summary)
    to_junit(outcomes, junit)
    print(format_table(outcomes))
    print(f"wrote {summary} and {junit}")
    return ExitCode.CHECK_FAILED if any(o.status in (FAILED, ERROR) for o in outcomes) else ExitCode.OK


def _validate_on_dask(args: argparse.Namespace) -> Any:
    """``onnxq validate --dask``: the evaluation batches sharded over the cluster's workers."""
    from .distributed.cluster import open_cluster
    from .distributed.validate import validate_on_cluster
    from .model import load_model
    from .validate import evaluation_data

    float_model = load_model(args.float_model, check=False)
    # every sample, as in-process validate loads it (a fixed batch size is padded by the engine)
    data = evaluation_data(args.data, float_model, batch_size=args.batch_size, limit=args.samples)
    with open_cluster(args.dask) as client:
        report, _ = validate_on_cluster(client, float_model, load_model(args.quant_model, check=False), data,
                                        source=args.data, latency=_latency(args), threads=args.threads,
                                        progress=not args.quiet and not args.json)
    return report
