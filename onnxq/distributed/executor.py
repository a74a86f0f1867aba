"""The Dask executor that ``onnxq.quantize(..., client=...)`` hands to the pipelines.

The pipelines call :meth:`DaskExecutor.collect_ranges` instead of in-process calibration and
:meth:`DaskExecutor.validate` instead of in-process validation, and the fallback ranks its
candidates with :meth:`DaskExecutor.gated_runs`; everything else (preparation, passes, rewrite)
stays on the client. The executor knows the raw data sources so that a data path
is read by the workers themselves instead of being shipped from the client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from ..calibration.ranges import Ranges
from ..config import QuantConfig
from ..data import Dataset
from ..report.schema import Report
from ._run import ShardTiming
from ..sensitivity import GatedRuns
from .calibrate import collect_ranges
from .gated import ClusterGatedRuns
from .cluster import require_dask
from .validate import validate_on_cluster

logger = logging.getLogger(__name__)

__all__ = ["DaskExecutor"]


@dataclass
class DaskExecutor:
    """Calibration and validation of one run on the workers of ``client``.

    Attributes:
        client: a connected ``distributed.Client``.
        calibration: the raw calibration source (a path is read by the workers themselves).
        evaluation: the raw evaluation source.
        shards: shards per data set (default: one per worker).
        timings: per-shard timings of every sharded step of the run, in order.
    """

    client: Any
    calibration: Any = None
    evaluation: Any = None
    shards: int | None = None
    timings: list[tuple[str, ShardTiming]] = field(default_factory=list)

    def __post_init__(self) -> None:
        require_dask()

    def collect_ranges(self, model: onnx.ModelProto, data: Dataset, tensors: Sequence[str], config: QuantConfig, *,
                       progress: bool = False) -> Ranges:
        """Sharded :func:`onnxq.calibration.runner.collect_ranges` (same ranges)."""
        ranges, timings = collect_ranges(self.client, model, data, tensors, config, source=self.calibration,
                                         shards=self.shards, progress=progress)
        self.timings += [("calibration", t) for t in timings]
        return ranges

    def gated_runs(self, reference_model: onnx.ModelProto, emulation: onnx.ModelProto, gates: dict[str, str],
                   data: Dataset, samples: int) -> GatedRuns:
        """The fallback ranking's runs of the emulation graph, many gate settings at once on the workers."""
        return ClusterGatedRuns(self.client, reference_model, emulation, gates, data, samples)

    def validate(self, float_model: onnx.ModelProto, quant_model: onnx.ModelProto, data: Dataset, *,
                 latency: Any = True, threads: int | None = None, progress: bool = False,
                 replay: bool = False) -> Report:
        """Sharded :func:`onnxq.validate.validate` (same report; latency measured on the client);
        ``replay``: the workers keep the float outputs for the next validation on the same data."""
        report, timings = validate_on_cluster(self.client, float_model, quant_model, data, source=self.evaluation,
                                              shards=self.shards, latency=latency, threads=threads,
                                              progress=progress, replay=replay)
        self.timings += [("validation", t) for t in timings]
        return report
