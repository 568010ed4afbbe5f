"""A self-contained HTML report of an ensemble run: tables and inline CSS, no external assets."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tr.best td { background: #eef7ee; font-weight: 600; }
.note { color: #666; font-size: 0.85em; max-width: 60em; }
"""


def _table(frame: pd.DataFrame, highlight: str | None = None) -> str:
    """An HTML table of ``frame`` (values escaped); the row whose first cell is ``highlight`` is marked."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row)
        cls = ' class="best"' if highlight is not None and str(row[0]) == highlight else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def render_report(
    title: str,
    summary: Mapping[str, Any],
    ranking: pd.DataFrame,
    sections: Sequence[tuple[str, pd.DataFrame]] = (),
    final: str | None = None,
) -> str:
    """The report page.

    Args:
        title: Page heading (the run's name).
        summary: Key facts shown as a two-column table (members, best candidate, ...).
        ranking: The ranking table (first column: candidate name).
        sections: Further ``(heading, table)`` pairs (calibration, pair experts, ...).
        final: Name of the candidate whose predictions were submitted (highlighted).

    Returns:
        A complete HTML document.
    """
    facts = pd.DataFrame({"": list(summary.keys()), "value": [_fmt(v) for v in summary.values()]})
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        _table(facts),
        "<h2>Ranking (out-of-fold)</h2>",
        '<p class="note">Every fitted candidate is scored on nested out-of-fold predictions: each row comes '
        "from a blend fitted without that row's fold. Audit columns: 5th-percentile bootstrap accuracy, "
        "worst and mean stratified hold-out accuracy, median and worst group hold-out accuracy.</p>",
        _table(ranking, highlight=final),
    ]
    for heading, frame in sections:
        parts += [f"<h2>{html.escape(heading)}</h2>", _table(frame)]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )
