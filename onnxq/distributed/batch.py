"""``onnxq batch``: quantize many models as independent tasks, in-process or on a Dask cluster.

Input: a folder of ``.onnx`` files, or a manifest (``.yaml``/``.yml``/``.json``) listing models with
their own data and options::

    defaults:                    # optional: applies to every model
      calibration: data/calib.npz
      options: {mode: static, method: entropy}
    models:                      # or the file is just this list
      - model: a.onnx            # paths are relative to the manifest's folder
        evaluation: data/a_eval.npz
        options: {target: "cosine>=0.99"}
      - {model: b.onnx, name: b-dynamic, options: {mode: dynamic}}

In a folder, a model ``m.onnx`` is calibrated on ``m.npz`` beside it when that file exists, else on
the data given to the command. Each model goes through the public API (``onnxq.quantize``,
``QuantConfig``, ``QuantResult.save``); one model's failure is recorded and never stops the others.
On a cluster every model is one task, run by a worker that reads the paths itself (shared storage).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._junit import finish_junit, junit_timestamp, xml_text
from ..errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["BatchItem", "BatchOutcome", "format_table", "quantize_one", "read_items", "run_batch", "to_junit",
           "write_summary"]

#: Outcome statuses: the model was quantized (and met its target), missed its target, or raised.
OK, FAILED, ERROR = "ok", "failed", "error"


@dataclass(frozen=True)
class BatchItem:
    """One model of a batch: where it is, its data, where its quantized model goes, its options."""

    name: str
    model: str
    output: str
    calibration: str | None = None
    evaluation: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchOutcome:
    """What became of one model (plain data: the JSON summary and the JUnit case are made from it)."""

    name: str
    model: str
    status: str
    seconds: float
    output: str | None = None
    message: str = ""
    error_type: str | None = None
    mode: str | None = None
    size_ratio: float | None = None
    cosine: float | None = None
    sqnr_db: float | None = None
    top1_agreement: float | None = None
    worker: str = "local"


def read_items(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, calibration: str | None = None,
               evaluation: str | None = None, options: dict[str, Any] | None = None) -> list[BatchItem]:
    """The models of a folder or a manifest, with their data, options and output paths.

    Args:
        source: a folder of ``.onnx`` files, or a ``.yaml``/``.yml``/``.json`` manifest.
        out_dir: folder for the quantized models (``NAME.quant.onnx`` unless a manifest says otherwise).
        calibration: data for every model without its own (folder: ``m.npz`` beside ``m.onnx`` wins).
        evaluation: evaluation data for every model without its own.
        options: ``QuantConfig`` fields for every model (a manifest's own options win).

    Raises:
        ConfigError: the source is missing, empty, unreadable, names a model twice, or gives a model
            its own Dask ``executor``.
    """
    path = Path(source)
    if path.is_dir():
        items = _folder_items(path, Path(out_dir), calibration, evaluation, options or {})
    elif path.is_file() and path.suffix.lower() in (".yaml", ".yml", ".json"):
        items = _manifest_items(path, Path(out_dir), calibration, evaluation, options or {})
    elif path.exists():
        raise ConfigError(f"batch input '{source}' must be a folder of .onnx files or a .yaml/.json manifest")
    else:
        raise ConfigError(f"batch input '{source}' does not exist")
    if not items:
        raise ConfigError(f"batch input '{source}' lists no model")
    clustered = next((item.name for item in items if "executor" in item.options), None)
    if clustered is not None:  # a cluster per model, inside a batch that may itself run on one
        raise ConfigError(f"batch input '{source}': model {clustered!r} sets option 'executor'; a batch runs each "
                          "model as one task: put the whole batch on a cluster with onnxq batch --dask")
    seen: dict[str, str] = {}
    for item in items:
        for key in (item.name, os.path.abspath(item.output)):
            if key in seen:
                raise ConfigError(f"batch input '{source}': {key!r} appears twice; give the models distinct names")
            seen[key] = item.model
    return items


def _folder_items(folder: Path, out_dir: Path, calibration: str | None, evaluation: str | None,
                  options: dict[str, Any]) -> list[BatchItem]:
    items = []
    for model in sorted(folder.glob("*.onnx")):
        own = model.with_suffix(".npz")
        data = os.fspath(own) if own.is_file() else calibration
        items.append(BatchItem(model.stem, os.fspath(model), os.fspath(out_dir / f"{model.stem}.quant.onnx"),
                               data, evaluation, dict(options)))
    return items


def _manifest_items(path: Path, out_dir: Path, calibration: str | None, evaluation: str | None,
                    options: dict[str, Any]) -> list[BatchItem]:
    document = _load_manifest(path)
    defaults: dict[str, Any] = {}
    entries = document
    if isinstance(document, dict):
        defaults, entries = document.get("defaults") or {}, document.get("models")
    if not isinstance(entries, list) or not isinstance(defaults, dict):
        raise ConfigError(f"manifest '{path}': expected a list of models, or 'models:' (and 'defaults:')")
    base = path.parent

    def where(value: Any) -> str | None:
        return None if value is None else os.fspath(base / str(value))

    items = []
    for number, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            raise ConfigError(f"manifest '{path}': entry {number} needs a 'model' path")
        unknown = set(entry) - {"model", "name", "calibration", "evaluation", "output", "options"}
        if unknown:
            raise ConfigError(f"manifest '{path}': entry {number} has unknown keys {sorted(unknown)}")
        model = where(entry["model"])
        assert model is not None
        name = str(entry.get("name") or Path(model).stem)
        merged = {**options, **(defaults.get("options") or {}), **(entry.get("options") or {})}
        output = where(entry["output"]) if entry.get("output") else os.fspath(out_dir / f"{name}.quant.onnx")
        items.append(BatchItem(name, model, output,  # type: ignore[arg-type]
                               where(entry.get("calibration", defaults.get("calibration"))) or calibration,
                               where(entry.get("evaluation", defaults.get("evaluation"))) or evaluation, merged))
    return items


def _load_manifest(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read manifest '{path}': {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"manifest '{path}' is not valid JSON: {exc}") from None
    try:
        import yaml
    except ImportError:
        raise ConfigError("a YAML manifest needs PyYAML: pip install pyyaml (or write the manifest as JSON)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"manifest '{path}' is not valid YAML: {' '.join(str(exc).split())}") from None


def quantize_one(item: BatchItem, *, latency: bool = False) -> BatchOutcome:
    """Quantize one model through the public API; never raises (an error becomes the outcome)."""
    import onnxq

    from ._run import worker_name

    start = time.perf_counter()
    try:
        config = onnxq.QuantConfig(**item.options)
        result = onnxq.quantize(item.model, item.calibration, config=config, evaluation=item.evaluation,
                                latency=latency)
        Path(item.output).parent.mkdir(parents=True, exist_ok=True)
        written = result.save(item.output)
    except Exception as exc:  # one model's failure is recorded; the batch goes on
        message = " ".join(str(exc).split()) or type(exc).__name__
        return BatchOutcome(item.name, item.model, ERROR, time.perf_counter() - start, message=message,
                            error_type=type(exc).__name__, worker=worker_name())
    report = result.report
    outcome = BatchOutcome(item.name, item.model, OK, time.perf_counter() - start, output=os.fspath(written),
                           mode=report.mode, size_ratio=report.size_ratio, worker=worker_name())
    if report.outputs:
        worst = report.worst("cosine")
        outcome.cosine, outcome.sqnr_db, outcome.top1_agreement = worst.cosine, worst.sqnr_db, worst.top1_agreement
    if report.target_met is False:
        outcome.status, outcome.message = FAILED, f"target {report.target} not met"
    return outcome


def run_batch(items: Iterable[BatchItem], *, client: Any = None, latency: bool = False,
              progress: bool = False) -> list[BatchOutcome]:
    """Quantize every item: in this process one after the other, or as one Dask task each on ``client``.

    Returns:
        One outcome per item, in the order of ``items``.
    """
    items = list(items)
    if client is None:
        from .._progress import progress as progress_bar

        return [quantize_one(item, latency=latency)
                for item in progress_bar(items, desc="batch", total=len(items), enabled=progress, unit="model")]
    futures = [client.submit(quantize_one, item, latency=latency, pure=False) for item in items]
    outcomes = []
    for item, future in zip(items, futures):
        try:
            outcomes.append(future.result())
        except Exception as exc:  # the task itself died (worker lost too often, killed, ...)
            outcomes.append(BatchOutcome(item.name, item.model, ERROR, 0.0, message=" ".join(str(exc).split()),
                                         error_type=type(exc).__name__, worker="?"))
    return outcomes


def format_table(outcomes: list[BatchOutcome]) -> str:
    """The terminal summary: one row per model, then the totals."""
    header = ("model", "status", "seconds", "mode", "size x", "cosine", "SQNR dB", "top-1", "message")
    rows = [header] + [(o.name, o.status, f"{o.seconds:.1f}", o.mode or "-", _num(o.size_ratio, ".2f"),
                        _num(o.cosine, ".6f"), _num(o.sqnr_db, ".1f"), _num(o.top1_agreement, ".3f"),
                        o.message[:80]) for o in outcomes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    counts = {s: sum(o.status == s for o in outcomes) for s in (OK, FAILED, ERROR)}
    lines.append(f"{len(outcomes)} model(s): {counts[OK]} ok, {counts[FAILED]} failed, {counts[ERROR]} error(s)")
    return "\n".join(line.rstrip() for line in lines)


def _num(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec) if math.isfinite(value) else str(value)


def write_summary(outcomes: list[BatchOutcome], path: str | os.PathLike[str]) -> Path:
    """The JSON summary (atomically): totals and one record per model."""
    from .._atomic import write_text_atomic

    document = {"models": len(outcomes), "ok": sum(o.status == OK for o in outcomes),
                "failed": sum(o.status == FAILED for o in outcomes), "errors": sum(o.status == ERROR for o in outcomes),
                "results": [{k: _json_number(v) for k, v in asdict(o).items()} for o in outcomes]}
    return write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def to_junit(outcomes: list[BatchOutcome], path: str | os.PathLike[str] | None = None) -> str:
    """JUnit XML, one ``<testcase classname="onnxq.batch" name=MODEL>`` per model: ``<failure>`` for a
    missed target, ``<error>`` for a model that could not be quantized; written atomically to ``path``.

    Same layout and helpers as ``onnxq compare``'s JUnit (:meth:`onnxq.compare.Comparison.to_junit`).
    """
    failures = sum(o.status == FAILED for o in outcomes)
    errors = sum(o.status == ERROR for o in outcomes)
    total = sum(o.seconds for o in outcomes)
    counts = {"tests": str(len(outcomes)), "failures": str(failures), "errors": str(errors)}
    root = ET.Element("testsuites", {"name": "onnxq", **counts, "time": f"{total:.3f}"})
    stamp = junit_timestamp(datetime.now(timezone.utc).isoformat(timespec="seconds"))
    suite = ET.SubElement(root, "testsuite", {"name": "onnxq batch", **counts, "skipped": "0",
                                              "time": f"{total:.3f}", "timestamp": stamp})
    for outcome in outcomes:
        case = ET.SubElement(suite, "testcase", {"classname": "onnxq.batch", "name": xml_text(outcome.name),
                                                 "time": f"{outcome.seconds:.3f}"})
        message = xml_text(outcome.message)
        if outcome.status == FAILED:
            ET.SubElement(case, "failure", {"message": message, "type": "TargetNotMet"}).text = message
        elif outcome.status == ERROR:
            ET.SubElement(case, "error", {"message": message, "type": outcome.error_type or "Error"}).text = message
        out = ET.SubElement(case, "system-out")
        out.text = xml_text(f"model: {outcome.model}\noutput: {outcome.output}\nworker: {outcome.worker}\n"
                             f"mode: {outcome.mode}\nsize_ratio: {outcome.size_ratio}\ncosine: {outcome.cosine}\n"
                             f"sqnr_db: {outcome.sqnr_db}\ntop1_agreement: {outcome.top1_agreement}")
    return finish_junit(root, path)
