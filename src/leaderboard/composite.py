"""Composite ranking: a weighted sum of normalised metrics, ties broken by further metrics.

``composite: {terms: [{metric, weight, mode, target}], tie_breakers: [{metric, mode}]}`` in the
gates file. Each term's metric (or, with ``target``, its distance to it: a coverage gap) is
normalised over the ranked runs to [0, 1], 1 for the best value
(``mode: max`` the largest, ``min`` the smallest) and 0 for the worst; a run without the metric
gets 0. Its contribution is ``weight x normalised``; the composite is their sum. Runs whose
composites agree to 1e-9 are ordered by the tie-breakers in turn (a missing value ranks last).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from src.core.errors import ConfigError

MODES = ("max", "min")


def check_terms(spec: Mapping[str, Any], source: str, known: set[str]) -> None:
    """Refuse terms and tie-breakers with an unknown metric or mode, or a weight that is not a number.

    Raises:
        ConfigError: Naming the entry, and the metrics that exist.
    """
    entries = [("terms", t) for t in spec.get("terms") or []] + [
        ("tie_breakers", t) for t in spec.get("tie_breakers") or []
    ]
    if not spec.get("terms"):
        raise ConfigError(f"{source}: composite has no terms", "list terms: [{metric: ..., weight: ..., mode: max}]")
    for key, term in entries:
        metric, mode = term.get("metric"), term.get("mode", "max")
        if metric not in known:
            raise ConfigError(
                f"{source}: composite.{key}: no run logs the metric {metric!r}",
                f"name one that exists: {', '.join(sorted(known))}",
            )
        if mode not in MODES:
            raise ConfigError(f"{source}: composite.{key} {metric}: mode={mode!r}", "use max or min")
        weight = term.get("weight", 0.0 if key == "tie_breakers" else None)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise ConfigError(f"{source}: composite.terms {metric}: weight={weight!r}", "give a finite number")


def normalise(values: pd.Series, mode: str) -> pd.Series:
    """Values mapped to [0, 1], 1 the best; all equal → 1; missing → 0."""
    finite = values[np.isfinite(values.astype(float))]
    if finite.empty:
        return pd.Series(0.0, index=values.index)
    lo, hi = float(finite.min()), float(finite.max())
    if hi == lo:
        scaled = pd.Series(1.0, index=values.index)
    else:
        scaled = (values.astype(float) - lo) / (hi - lo)
        scaled = scaled if mode == "max" else 1.0 - scaled
    return scaled.where(np.isfinite(values.astype(float)), 0.0)


def composite_terms(values: pd.DataFrame, terms: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``term:<metric>`` (weight x normalised value) per term, and ``composite`` (their sum).

    Args:
        values: One row per run, one column per metric name.
        terms: The composite's terms.
    """
    out = pd.DataFrame(index=values.index)
    for term in terms:
        column = values.get(term["metric"], pd.Series(np.nan, index=values.index)).astype(float)
        if term.get("target") is not None:
            column = (column - float(term["target"])).abs()
        out[f"term:{term['metric']}"] = float(term["weight"]) * normalise(column, term.get("mode", "max"))
    out["composite"] = out.sum(axis=1)
    return out


def order(
    primary: pd.Series, primary_mode: str, values: pd.DataFrame, tie_breakers: Sequence[Mapping[str, Any]]
) -> list[Any]:
    """Index labels ranked by ``primary`` (rounded to 1e-9), then by each tie-breaker; missing last."""
    keys = [_sort_key(primary.round(9), primary_mode)]
    for tie in tie_breakers:
        column = values.get(tie["metric"], pd.Series(np.nan, index=values.index))
        keys.append(_sort_key(column, tie.get("mode", "max")))
    frame = pd.DataFrame({f"k{i}": k for i, k in enumerate(keys)}, index=primary.index)
    return list(frame.sort_values(list(frame.columns), kind="stable").index)


def _sort_key(column: pd.Series, mode: str) -> pd.Series:
    """Ascending sort key: the best first, missing values last."""
    key = -column.astype(float) if mode == "max" else column.astype(float)
    return key.fillna(math.inf)
