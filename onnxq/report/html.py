"""One self-contained HTML file per report: tables plus matplotlib plots as inline PNG data URIs.

The file needs no network and no JavaScript: CSS is inline and every image is a
``data:image/png;base64,...`` URI, so it can be attached to a CI run, mailed, or opened offline.
matplotlib (``pip install matplotlib`` or ``pip install 'onnxq[html]'``) draws the plots with its
Agg backend; it is imported only when an HTML report is written.

Sections (each only when its data is there):

* summary: per output cosine, min cosine, SQNR, max/mean abs error, top-1/top-5 agreement; size,
  latency, accuracy, notes and the nodes kept in float;
* the goal of an automatic fallback and whether it was met (``Report.target``/``target_met``);
* per-layer SQNR bars of the worst layers (``Report.layers``);
* calibration histograms of the worst tensors with the chosen clipping range marked;
* float-versus-quantized output scatter plots;
* the fallback steps (``Report.fallback_steps``) as a table and a plot.

:func:`write_html` renders what it is given and runs no model: the histograms and scatter samples
are gathered by :mod:`onnxq.evidence` on the streaming engine (``html_report``, ``collect_scatter``,
``clipping_ranges``), from the models and the report of the run.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import write_text_atomic
from ..errors import ConfigError
from .schema import Report, format_bytes, format_number, format_percent

logger = logging.getLogger(__name__)

__all__ = ["require_matplotlib", "write_html"]

#: ``name -> (counts, edges, low, high)``: a histogram and the clipping range chosen for it.
Histograms = Mapping[str, tuple[Any, Any, float, float]]
#: ``output name -> (float values, quantized values)``, already subsampled.
Scatter = Mapping[str, tuple[Any, Any]]

_MAX_LAYER_BARS = 40
_MAX_LAYER_ROWS = 25
_DPI = 96

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#1d232a;padding:0 1em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #d0d7de;
padding-bottom:.2em}.meta{color:#57606a;margin-top:0}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em;display:block;max-width:100%;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:.3em .6em}
th{background:#f6f8fa;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{background:#ffebe9}.ok{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
img{max-width:100%;height:auto;display:block;margin:.6em 0;border:1px solid #eaeef2}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.85em}code{font-size:.9em}
details{margin:.6em 0}ul{margin:.3em 0}
"""


# ============================================================================ public API


def write_html(report: Report, path: str | os.PathLike[str], *, histograms: Histograms | None = None,
               scatter: Scatter | None = None, title: str | None = None) -> Path:
    """Write ``report`` as one self-contained HTML file (atomically).

    Args:
        report: the report to render. ``layers``, ``fallback_steps``, ``target`` and
            ``target_met`` are rendered when the report has them.
        path: the ``.html`` file to write.
        histograms: ``tensor name -> (counts, edges, low, high)``: calibration histograms (e.g.
            of the worst tensors, in the order to show) with the clipping range chosen for each.
        scatter: ``output name -> (float values, quantized values)``: subsampled output values.
        title: page title; default ``"onnxq report"`` plus the mode.

    Returns:
        The path written.

    Raises:
        ConfigError: matplotlib is not installed.
    """
    figure_class = _figure_class()
    title = title or ("onnxq report" + (f" ({report.mode})" if report.mode else ""))
    parts: list[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{report.samples} evaluation samples &middot; report schema '
        f"{report.schema_version} &middot; onnxq {_e(_version())}</p>",
    ]
    parts += _summary_section(report)
    parts += _target_section(report)
    parts += _layers_section(report, figure_class)
    if histograms:
        parts += _histogram_section(histograms, figure_class)
    if scatter:
        parts += _scatter_section(scatter, figure_class)
    parts += _fallback_section(report, figure_class)
    parts += _details_section(report)
    parts.append("</body></html>")
    written = write_text_atomic(path, "\n".join(parts) + "\n")
    logger.info("wrote HTML report %s", written)
    return written


# ============================================================================ sections


def _summary_section(report: Report) -> list[str]:
    out = ["<h2>Summary</h2>"]
    if report.outputs:
        out.append("<table><tr><th>output</th><th>cosine</th><th>min cosine</th><th>SQNR dB</th>"
                   "<th>max abs</th><th>mean abs</th><th>top-1 agreement</th><th>top-5 agreement</th></tr>")
        for o in report.outputs:
            cells = [format_number(o.cosine, ".6f"), format_number(o.min_cosine, ".6f"),
                     format_number(o.sqnr_db, ".2f"), format_number(o.max_abs_error, ".4g"),
                     format_number(o.mean_abs_error, ".4g"), format_percent(o.top1_agreement),
                     format_percent(o.top5_agreement)]
            out.append(f"<tr><td><code>{_e(o.name)}</code></td>"
                       + "".join(f'<td class="num">{_e(c)}</td>' for c in cells) + "</tr>")
        out.append("</table>")
    else:
        out.append("<p>No output was compared.</p>")
    rows = [("mode", _e(report.mode or "-")), ("samples", str(report.samples)),
            ("size", f"{_e(format_bytes(report.float_size_bytes))} &rarr; "
                     f"{_e(format_bytes(report.quant_size_bytes))} "
                     f"(x{_e(format_number(report.size_ratio, '.2f'))})")]
    if report.latency is not None:
        rows.append(("latency", _e(report.latency.format())))
    if report.float_accuracy is not None or report.quant_accuracy is not None:
        rows.append(("accuracy", f"{_e(format_percent(report.float_accuracy))} &rarr; "
                                 f"{_e(format_percent(report.quant_accuracy))}"))
    rows.append(("float nodes", str(len(report.float_nodes))))
    out.append("<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
    if report.notes:
        out.append("<h3>Notes</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>")
    details = list(getattr(report, "float_node_details", None) or [])
    if details:
        out.append(f"<details{' open' if len(details) <= 20 else ''}><summary>Nodes that run in float "
                   f"({len(details)})</summary>")
        out += _records_table(_named(details, report, "name"))
        out.append("</details>")
    elif report.float_nodes:
        items = "".join(f"<li><code>{_e(report.display_name(n))}</code></li>" for n in report.float_nodes)
        out.append(f"<details{' open' if len(report.float_nodes) <= 20 else ''}><summary>"
                   f"Nodes kept in float ({len(report.float_nodes)})</summary><ul>{items}</ul></details>")
    return out


def _target_section(report: Report) -> list[str]:
    target = getattr(report, "target", None)
    met = getattr(report, "target_met", None)
    if target is None and met is None:
        return []
    verdict = ("-" if met is None else '<span class="ok">met</span>' if met
               else '<span class="fail">not met</span>')
    return ["<h2>Accuracy goal</h2>",
            f"<table><tr><th>goal</th><td>{_e(_describe(target))}</td></tr>"
            f"<tr><th>result</th><td>{verdict}</td></tr></table>"]


def _layers_section(report: Report, figure_class: Any) -> list[str]:
    layers = _layers(report)
    if not layers:
        return []
    scored = [(layer, _number(_get(layer, "sqnr_db", _get(layer, "sqnr")))) for layer in layers]
    finite = sorted(((layer, v) for layer, v in scored if v is not None and math.isfinite(v)), key=lambda x: x[1])
    out = ["<h2>Per-layer error</h2>",
           f"<p>{len(layers)} quantized tensors; the lowest SQNR (most quantization error) first.</p>"]
    if finite:
        shown = finite[:_MAX_LAYER_BARS]
        fig = figure_class(figsize=(9, 0.8 + 0.24 * len(shown)))
        ax = fig.add_subplot()
        labels = [_short(_layer_name(layer)) + (f" ({_get(layer, 'framework_name')})"
                                                 if _get(layer, "framework_name") else "") for layer, _ in shown]
        colors = ["#cf6a00" if str(_get(layer, "kind", "")).lower() == "weight" else "#0969da"
                  for layer, _ in shown]
        ax.barh(range(len(shown)), [v for _, v in shown], color=colors)
        ax.set_yticks(range(len(shown)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("SQNR (dB), higher is better")
        ax.set_title(f"Per-layer SQNR, worst {len(shown)} of {len(layers)}")
        ax.grid(axis="x", alpha=0.3)
        out.append(_img(fig, "per-layer SQNR bars"))
    out += _records_table([layer for layer, _ in (finite or scored)][:_MAX_LAYER_ROWS])
    return out


def _histogram_section(histograms: Histograms, figure_class: Any) -> list[str]:
    from ..calibration.histograms import estimated_sqnr_db

    out = ["<h2>Calibration histograms</h2>",
           "<p>Value distribution of the worst tensors on the calibration data (log scale); the red "
           "lines mark the clipping range chosen by calibration, values outside it are clipped.</p>",
           "<table><tr><th>tensor</th><th>data min</th><th>data max</th><th>clip low</th><th>clip high</th>"
           "<th>clipped</th><th>est. SQNR dB</th></tr>"]
    images = []
    for name, (counts, edges, low, high) in histograms.items():
        counts = np.asarray(counts, dtype=np.float64)
        edges = np.asarray(edges, dtype=np.float64)
        total = counts.sum()
        outside = counts[(edges[1:] <= low) | (edges[:-1] >= high)].sum()  # bins wholly outside
        nonzero = np.nonzero(counts)[0]
        data_min = edges[nonzero[0]] if nonzero.size else math.nan
        data_max = edges[nonzero[-1] + 1] if nonzero.size else math.nan
        sqnr = estimated_sqnr_db(counts, edges, low, high)
        clipped = outside / total if total > 0 else 0.0
        out.append(f"<tr><td><code>{_e(name)}</code></td>"
                   + "".join(f'<td class="num">{_e(v)}</td>' for v in (
                       format_number(data_min, ".4g"), format_number(data_max, ".4g"),
                       format_number(low, ".4g"), format_number(high, ".4g"),
                       f"{100.0 * clipped:.3f}%", format_number(sqnr, ".2f"))) + "</tr>")
        fig = figure_class(figsize=(9, 2.8))
        ax = fig.add_subplot()
        shown_counts, shown_edges = _coarsen(counts, edges)
        ax.stairs(shown_counts, shown_edges, fill=True, color="#57606a", alpha=0.8)
        if (counts > 0).any():
            ax.set_yscale("log")
        occupied = (data_min, data_max) if nonzero.size else (edges[0], edges[-1])
        lo_x, hi_x = min(occupied[0], low), max(occupied[1], high)
        pad = 0.03 * (hi_x - lo_x) if hi_x > lo_x else 1.0
        ax.axvspan(lo_x - pad, low, color="#cf222e", alpha=0.06)
        ax.axvspan(high, hi_x + pad, color="#cf222e", alpha=0.06)
        ax.axvline(low, color="#cf222e", lw=1.4)
        ax.axvline(high, color="#cf222e", lw=1.4)
        ax.set_xlim(lo_x - pad, hi_x + pad)
        ax.set_title(f"{_short(name, 60)}: clip [{low:.4g}, {high:.4g}], {100.0 * clipped:.3f}% clipped, "
                     f"est. SQNR {format_number(sqnr, '.1f')} dB", fontsize=9)
        ax.set_xlabel("value")
        ax.set_ylabel("count")
        images.append(_img(fig, f"histogram of {name}"))
    out.append("</table>")
    return out + images


def _scatter_section(scatter: Scatter, figure_class: Any) -> list[str]:
    out = ["<h2>Float vs quantized outputs</h2>",
           "<p>A uniform random subsample of output values; points on the diagonal are exact.</p>"]
    for name, (ref, cand) in scatter.items():
        ref = np.asarray(ref, dtype=np.float64).reshape(-1)
        cand = np.asarray(cand, dtype=np.float64).reshape(-1)
        if ref.size == 0:
            continue
        fig = figure_class(figsize=(5.5, 5))
        ax = fig.add_subplot()
        finite = np.concatenate([ref[np.isfinite(ref)], cand[np.isfinite(cand)]])
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            ax.plot([lo, hi], [lo, hi], color="#cf222e", lw=0.8, ls="--", zorder=1)
        ax.scatter(ref, cand, s=5, alpha=0.5, color="#0969da", linewidths=0, zorder=2)
        ax.set_xlabel("float")
        ax.set_ylabel("quantized")
        ax.set_title(f"{_short(name, 50)} ({ref.size} values)", fontsize=10)
        ax.grid(alpha=0.3)
        out.append(_img(fig, f"float vs quantized scatter of {name}"))
    return out


def _fallback_section(report: Report, figure_class: Any) -> list[str]:
    steps = list(getattr(report, "fallback", None) or getattr(report, "fallback_steps", None) or [])
    if not steps:
        return []
    out = ["<h2>Fallback steps</h2>",
           f"<p>{len(steps)} step(s): nodes moved back to float, one step at a time, most harmful first.</p>"]
    key = _plot_key(steps)
    if key is not None:
        points = [(s, _number(_get(s, "step", i)), _number(_get(s, key))) for i, s in enumerate(steps)]
        points = [(s, x, y) for s, x, y in points if x is not None and y is not None]
        xs, ys = [x for _, x, _ in points], [y for _, _, y in points]
        if ys:
            fig = figure_class(figsize=(8, 3))
            ax = fig.add_subplot()
            ax.plot(xs, ys, marker="o", color="#0969da")
            threshold = _target_threshold(getattr(report, "target", None))
            if threshold is not None:
                ax.axhline(threshold, color="#cf222e", ls="--", lw=1, label="goal")
                ax.legend(loc="best", fontsize=8)
            for step, x, y in points:
                label = _get(step, "node")
                if label:
                    ax.annotate(_short(str(label), 24), (x, y), textcoords="offset points", xytext=(4, -10),
                                fontsize=7, color="#57606a")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_xlabel("step")
            ax.set_ylabel(key)
            ax.set_title(f"{key} after each fallback step", fontsize=10)
            ax.grid(alpha=0.3)
            out.append(_img(fig, "fallback steps"))
    return out + _records_table(_named(steps, report, "node", "nodes"))


def _details_section(report: Report) -> list[str]:
    if not report.config:
        return []
    text = json.dumps(report.to_dict().get("config"), indent=2, sort_keys=True)
    return ["<h2>Configuration</h2>", f"<details><summary>QuantConfig</summary><pre>{_e(text)}</pre></details>"]


# ============================================================================ helpers


def _version() -> str:
    """onnxq's version, read from the loaded package (importing it here would import every stage)."""
    return str(getattr(sys.modules.get("onnxq"), "__version__", "?"))


def require_matplotlib() -> None:
    """Check that HTML reports can be drawn.

    Raises:
        ConfigError: matplotlib is not installed (the message names the pip command).
    """
    _figure_class()


def _figure_class() -> Any:
    """matplotlib's Figure on the Agg canvas (no pyplot, no global backend switch)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("HTML reports need matplotlib: pip install matplotlib "
                          "(or pip install 'onnxq[html]')") from exc

    class _AggFigure(Figure):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, layout="constrained", **kwargs)
            FigureCanvasAgg(self)

    return _AggFigure


def _img(fig: Any, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{_e(alt)}">'


def _coarsen(counts: np.ndarray, edges: np.ndarray, bins: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The occupied part of a histogram, merged into at most ``bins`` bins for display."""
    nonzero = np.nonzero(counts)[0]
    if nonzero.size == 0:
        return counts, edges
    counts = counts[nonzero[0]:nonzero[-1] + 1]
    edges = edges[nonzero[0]:nonzero[-1] + 2]
    factor = max(1, math.ceil(counts.size / bins))
    if factor == 1:
        return counts, edges
    padded = np.concatenate([counts, np.zeros((-counts.size) % factor)])
    merged = padded.reshape(-1, factor).sum(axis=1)
    width = edges[1] - edges[0]
    return merged, edges[0] + width * factor * np.arange(merged.size + 1)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "\u2026" + name[-(width - 1):]


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """A field of a dataclass/object or a key of a dict."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _layers(report: Report) -> list[Any]:
    return list(getattr(report, "layers", None) or [])


def _layer_name(layer: Any) -> str:
    for key in ("name", "tensor", "node"):
        value = _get(layer, key)
        if value:
            return str(value)
    return "?"


def _record(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    return {"value": obj}


def _named(records: Sequence[Any], report: Report, *keys: str) -> list[dict[str, Any]]:
    """``records`` with the node names under ``keys`` shown as ``name (framework name)``."""
    rows = [_record(r) for r in records]
    for row in rows:
        for key in keys:
            value = row.get(key)
            if isinstance(value, str):
                row[key] = report.display_name(value)
            elif isinstance(value, (list, tuple)):
                row[key] = [report.display_name(str(v)) for v in value]
    return rows


def _records_table(records: Sequence[Any]) -> list[str]:
    """A table of dataclasses / dicts; the columns are the union of their fields, in order."""
    rows = [_record(r) for r in records]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    if not rows:
        return []
    out = ["<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>")
    out.append("</table>")
    return out


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, (int, np.integer)):
        return f'<td class="num">{int(value)}</td>'
    if isinstance(value, (float, np.floating)):
        return f'<td class="num">{_e(format_number(float(value), ".6g"))}</td>'
    if value is None:
        return "<td>-</td>"
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [str(v) for v in value]
        text = ", ".join(items[:12]) + (f", ... (+{len(items) - 12})" if len(items) > 12 else "")
        return f"<td><code>{_e(text)}</code></td>"
    return f"<td>{_e(_describe(value))}</td>"


def _describe(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (str, int, float)):
        return str(value)
    record = _record(value)
    return ", ".join(f"{k}={v}" for k, v in record.items() if v is not None)


def _target_threshold(target: Any) -> float | None:
    """The number of a goal: ``"cosine>=0.999"`` -> 0.999, or a ``threshold`` field."""
    if isinstance(target, str):
        match = re.search(r"(?:>=|<=|>|<|=)\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)", target)
        return float(match.group(1)) if match else None
    return _number(_get(target, "threshold"))


def _plot_key(steps: Sequence[Any]) -> str | None:
    """The numeric field of a fallback step worth plotting against the step number."""
    first = _record(steps[0])
    for key in ("value", "metric_value", "score", "cosine", "sqnr_db", "accuracy", "top1_agreement"):
        if _number(first.get(key)) is not None:
            return key
    for key, value in first.items():
        if key not in ("step", "index") and isinstance(value, (float, np.floating)):
            return key
    return None
