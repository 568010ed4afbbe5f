"""``leaderboard.html``: one self-contained page (inline CSS and SVG, no script, no external asset).

The page shows the settings, the ranked intervals (an SVG: one line per run, a dot at the value,
a bar over the interval, the champion marked), the table with every gate's pass/fail (its detail
as the cell's tooltip and in a list below), and links to each run's ``report.html`` and MLflow page.
"""

from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd

from src.leaderboard.board import Board

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
td.pass { background: #e6f4e6; } td.fail { background: #fbe3e3; font-weight: 600; }
tr.champion td { border-top: 2px solid #2a6; border-bottom: 2px solid #2a6; }
.note { color: #666; font-size: 0.85em; max-width: 70em; }
svg text { font-size: 12px; font-family: system-ui, sans-serif; }
"""
ROW_PX, LABEL_PX, PLOT_PX = 24, 260, 520


def esc(value: Any) -> str:
    return html.escape(str(value))


def fmt(value: Any) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def interval_plot(board: Board) -> str:
    """An SVG of each ranked run's value and interval on one axis."""
    ranked = [c for c in board.candidates if c.run_id in board.estimates]
    ests = [board.estimates[c.run_id] for c in ranked]
    points = [v for e in ests for v in (e.lo, e.hi, e.value) if math.isfinite(v)]
    if not points:
        return "<p class='note'>No finite interval to plot.</p>"
    lo, hi = min(points), max(points)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad

    def x(v: float) -> float:
        return LABEL_PX + (v - lo) / (hi - lo) * PLOT_PX

    height = ROW_PX * (len(ranked) + 1) + 10
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{LABEL_PX + PLOT_PX + 20}' height='{height}' role='img'>"]
    for i, (cand, est) in enumerate(zip(ranked, ests, strict=True)):
        y = ROW_PX * (i + 1)
        colour = "#2a6" if cand.run_id == board.champion else "#36c"
        parts.append(f"<text x='4' y='{y + 4}'>{i + 1}. {esc(cand.label)[:34]}</text>")
        if math.isfinite(est.lo) and math.isfinite(est.hi):
            parts.append(
                f"<line x1='{x(est.lo):.1f}' x2='{x(est.hi):.1f}' y1='{y}' y2='{y}' "
                f"stroke='{colour}' stroke-width='4'/>"
            )
        if math.isfinite(est.value):
            parts.append(
                f"<circle cx='{x(est.value):.1f}' cy='{y}' r='5' fill='#222'><title>{fmt(est.value)}</title></circle>"
            )
    axis_y = height - 8
    parts.append(f"<text x='{LABEL_PX}' y='{axis_y}'>{fmt(lo)}</text>")
    parts.append(f"<text x='{LABEL_PX + PLOT_PX - 50}' y='{axis_y}'>{fmt(hi)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def links(cand: Any, ui_url: str | None) -> str:
    """The run's report (when its run directory has one) and its MLflow page."""
    out = []
    if cand.run_dir is not None and (cand.run_dir / "report.html").is_file():
        out.append(f"<a href='{esc((cand.run_dir / 'report.html').resolve().as_uri())}'>report</a>")
    if ui_url:
        page = f"{ui_url.rstrip('/')}/#/experiments/{cand.experiment_id}/runs/{cand.run_id}"
        out.append(f"<a href='{esc(page)}'>MLflow</a>")
    return " ".join(out)


def cell(column: str, value: Any) -> str:
    """A table cell: the run left-aligned, the run id shortened (whole in the tooltip)."""
    if column == "run":
        return f"<td class='l'>{esc(fmt(value))}</td>"
    if column == "run_id":
        return f"<td title='{esc(value)}'><code>{esc(str(value)[:8])}</code></td>"
    return f"<td>{esc(fmt(value))}</td>"


def table(board: Board, ui_url: str | None) -> str:
    """The ranking table with gate cells coloured and explained in tooltips."""
    frame = board.table
    gate_cols = [c for c in frame.columns if c.startswith("gate:")]
    shown = [c for c in frame.columns if c not in gate_cols and c not in ("note", "champion")]
    head = "".join(f"<th class='l'>{esc(c)}</th>" if c == "run" else f"<th>{esc(c)}</th>" for c in shown)
    head += "".join(f"<th>{esc(c[5:])}</th>" for c in gate_cols) + "<th class='l'>links</th>"
    body = []
    for cand, (_, line) in zip(board.candidates, frame.iterrows(), strict=True):
        details = {r.name: r.detail for r in board.gates.get(cand.run_id, [])}
        cells = "".join(cell(c, line[c]) for c in shown)
        for col in gate_cols:
            verdict = line[col]
            cls = "pass" if verdict == "pass" else "fail"
            cells += f"<td class='{cls}' title='{esc(details.get(col[5:], ''))}'>{esc(verdict)}</td>"
        cells += f"<td class='l'>{links(cand, ui_url)}</td>"
        marked = " class='champion'" if line["champion"] else ""
        body.append(f"<tr{marked}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def gate_details(board: Board) -> str:
    items = []
    for cand in board.candidates:
        failed = [r for r in board.gates.get(cand.run_id, []) if not r.passed]
        if failed:
            lines = "".join(f"<li><b>{esc(r.name)}</b> ({esc(r.kind)}): {esc(r.detail)}</li>" for r in failed)
            items.append(f"<li>{esc(cand.label)} <code>{esc(cand.run_id)}</code><ul>{lines}</ul></li>")
        elif cand.problem:
            items.append(f"<li>{esc(cand.label)}: {esc(cand.problem)}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else "<p>Every run passed every gate.</p>"


def render(board: Board, store: str, ui_url: str | None = None) -> str:
    """The whole page."""
    s = board.settings
    facts = {
        "experiment": board.experiment,
        "ranked by": f"composite ({len(s.composite['terms'])} terms)"
        if s.composite
        else f"{board.metric} ({board.mode})",
        "interval": f"{board.boot.level:.0%} bootstrap over {'groups' if s.groups else 'samples'}, "
        f"seed {board.boot.seed}",
        "champion": board.champion or "none",
        "model": s.model_name,
        "gates file": s.source,
        "store": store,
    }
    rows = "".join(f"<tr><th class='l'>{esc(k)}</th><td class='l'>{esc(v)}</td></tr>" for k, v in facts.items())
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>leaderboard {esc(board.experiment)}</title><style>{CSS}</style></head><body>"
        f"<h1>Leaderboard: {esc(board.experiment)}</h1><table>{rows}</table>"
        f"<h2>Ranked intervals of {esc(board.metric)}</h2>{interval_plot(board)}"
        f"<h2>Runs and gates</h2>{table(board, ui_url)}"
        f"<h2>Failed gates</h2>{gate_details(board)}"
        "<p class='note'>Intervals: percentile bootstrap of the metric over the run's evaluation artifact; "
        "vs_champion: paired difference on the samples both runs scored, same replicates.</p>"
        "</body></html>"
    )
