"""Validation reports: plain dataclasses that round-trip to JSON (see :mod:`onnxq.report.schema`)."""

from __future__ import annotations

from .schema import SCHEMA_VERSION, FallbackStep, LatencyMetrics, LayerMetrics, OutputMetrics, Report

__all__ = ["SCHEMA_VERSION", "FallbackStep", "LatencyMetrics", "LayerMetrics", "OutputMetrics", "Report"]
