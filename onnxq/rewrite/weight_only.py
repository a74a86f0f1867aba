"""Weight-only block-wise quantization of MatMul weights into ``MatMulNBits`` (ORT's weight-only quantizer).

Each MatMul with a constant 2-D weight ``[K, N]`` becomes a ``com.microsoft.MatMulNBits`` node:
the weight is stored as 4- or 8-bit integers in blocks of ``block_size`` values along K, each
block with its own float scale (and zero point unless symmetric); activations stay float. This is
the int4 mode of LLM deployment: about 4x-7x smaller MatMul weights, no calibration for RTN/HQQ.

Algorithms (``QuantConfig.weight_only_algorithm``):

* ``rtn``: round-to-nearest with each block's min/max (ORT's ``DefaultWeightOnlyQuantConfig``,
  C++ kernels, 4 or 8 bits). Default.
* ``gptq``: GPTQ (ORT's ``neural_compressor.gptq_quantize``): corrects the rounding error of
  each column with the inverse Hessian of the MatMul inputs; needs calibration data, 4 bits
  only. ORT holds every calibration batch in memory while it runs.
* ``hqq``: half-quadratic quantization (ORT's ``HQQWeightOnlyQuantConfig``): optimises scales and
  float zero points per block without data; asymmetric only; ORT's implementation needs torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import onnx

from ..config import QuantConfig
from ..errors import ConfigError, QuantizationError, first_line
from ..plan import QuantPlan

logger = logging.getLogger(__name__)

def quantize_weight_only(model: onnx.ModelProto, plan: QuantPlan, config: QuantConfig,
                         calibration: Any = None) -> onnx.ModelProto:
    """Rewrite the MatMuls ``plan`` selects into ``MatMulNBits``.

    Args:
        model: the prepared float model (not modified).
        plan: from :func:`onnxq.plan_modes.plan_weight_only`.
        config: bits, block size, symmetry and algorithm.
        calibration: GPTQ only: an iterable of ``{input_name: array}`` batches (an
            :class:`onnxq.data.Dataset`); ignored by RTN and HQQ.

    Raises:
        ConfigError: GPTQ without calibration data; HQQ without torch installed.
        QuantizationError: ORT's quantizer failed.
    """
    work = onnx.ModelProto()
    work.CopyFrom(model)
    if not plan.nodes_to_quantize:
        return work
    algorithm = config.weight_only_algorithm
    with _quiet_ort():
        try:
            if algorithm == "gptq":
                if calibration is None:
                    raise ConfigError("weight_only_algorithm='gptq' needs calibration data (calibration=...)")
                result = _gptq(work, plan, config, calibration)
            else:
                result = _nbits(work, plan, config)
        except (ConfigError, QuantizationError):
            raise
        except ImportError as exc:
            raise ConfigError(f"weight_only_algorithm={algorithm!r} needs a package ORT imports: "
                              f"{first_line(exc)} (hqq: pip install torch)") from exc
        except Exception as exc:
            raise QuantizationError(f"ONNX Runtime weight-only quantizer ({algorithm}) failed: "
                                    f"{first_line(exc)}") from exc
    leftover = [d for d in plan.decisions if d.quantize]
    missing = {n.name for n in result.graph.node if n.op_type == "MatMul"} & {d.name for d in leftover}
    if missing:
        raise QuantizationError(f"ONNX Runtime left {len(missing)} selected MatMul(s) unquantized, "
                                f"e.g. {sorted(missing)[0]!r}")
    return result


def _nbits(model: onnx.ModelProto, plan: QuantPlan, config: QuantConfig) -> onnx.ModelProto:
    """RTN (ORT's default block quantizer) or HQQ through ``MatMulNBitsQuantizer``."""
    nbits = _import_nbits()
    op_types = tuple(plan.op_types)  # MatMul
    excluded = [d.name for d in plan.decisions if d.candidate and not d.quantize]
    if config.weight_only_algorithm == "hqq":
        algo_config = nbits.HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=config.weight_bits,
                                                     op_types_to_quantize=op_types)
    else:
        algo_config = nbits.DefaultWeightOnlyQuantConfig(
            block_size=config.block_size, is_symmetric=config.weight_only_symmetric, bits=config.weight_bits,
            op_types_to_quantize=op_types)
    quantizer = nbits.MatMulNBitsQuantizer(model, bits=config.weight_bits, block_size=config.block_size,
                                           is_symmetric=config.weight_only_symmetric, nodes_to_exclude=excluded,
                                           algo_config=algo_config)
    quantizer.process()
    quantizer.model.topological_sort()
    return quantizer.model.model


def _gptq(model: onnx.ModelProto, plan: QuantPlan, config: QuantConfig, calibration: Any) -> onnx.ModelProto:
    """GPTQ through ORT's ``gptq_quantize`` with one weight config per MatMul ("fp32" = excluded)."""
    _import_nbits()  # the same logging guard: neural_compressor is imported by that module
    from onnxruntime.quantization.neural_compressor import gptq_quantize

    scheme = "sym" if config.weight_only_symmetric else "asym"
    weight_config: dict[str, Any] = {}
    for d in plan.decisions:
        if d.op_type == "MatMul":
            weight_config[d.name] = ({"bits": config.weight_bits, "group_size": config.block_size,
                                      "scheme": scheme, "algorithm": "GPTQ"} if d.quantize else "fp32")
    batches = list(_gptq_batches(calibration))
    if not batches:
        raise ConfigError("weight_only_algorithm='gptq' needs calibration data: the data holds no batch")
    result = gptq_quantize(model, batches, weight_config=weight_config, num_bits=config.weight_bits,
                           group_size=config.block_size, scheme=scheme, n_samples=-1,
                           providers=["CPUExecutionProvider"])
    result.topological_sort()
    return result.model


def _gptq_batches(calibration: Any) -> Iterator[tuple[dict[str, Any], None]]:
    """Our batches as the ``(inputs, label)`` pairs ORT's GPTQ data loader yields."""
    for inputs in calibration:
        yield dict(inputs), None


def _import_nbits() -> Any:
    """Import ORT's weight-only quantizer without keeping the root-logger handler it installs.

    ``matmul_nbits_quantizer`` calls ``logging.basicConfig(level=INFO)`` at import time, which would
    make every library's INFO messages appear in the user's program.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return matmul_nbits_quantizer


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """ORT's weight-only code logs one INFO line per node and prints a progress bar to stdout:
    keep both out of the user's output (our own logger says what happened)."""
    names = ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization.neural_compressor",
             "onnxruntime.quantization.neural_compressor.weight_only")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's non-writable array warning (hqq)
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)
