"""Bootstrap intervals of a run's metric and of paired differences between two runs.

A replicate draws the data's groups with replacement (each sample its own group when the data has
none): ``picks = rng.integers(0, G, size=(B, G))``, and a sample counts as often as its group was
drawn. The statistic of a replicate is the metric over the samples so weighted: a weighted mean
when the metric is the mean of a per-sample column (accuracy is the mean of ``correct``, the lens
score the mean of per-image scores), else the evaluator run again on the replicate's records.
The interval is the percentile interval at ``level``. A paired difference applies the same
replicates to both runs over the samples they share, so it measures the runs, not the draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from src.core.evaluating import as_evaluation

#: A statistic of weighted samples: ``(B, n)`` integer weights -> ``(B,)`` values.
Statistic = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float64]]


@dataclass(frozen=True)
class Bootstrap:
    """Resampling settings.

    Args:
        samples: Replicates when the metric is a per-sample mean (vectorised: cheap).
        rescore_samples: Replicates when the evaluator has to score each replicate again.
        level: Coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
        seed: Seed of the draws (the same seed draws the same replicates).
        min_groups: Fewer groups than this cannot show the spread (a validation fold of two
            groups would give two values): samples are resampled one by one instead.
    """

    samples: int = 1000
    rescore_samples: int = 200
    level: float = 0.95
    seed: int = 0
    min_groups: int = 10

    def units(self, groups: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The resampled unit of each sample: its group, or itself when there are too few groups."""
        n_groups = int(groups.max()) + 1 if len(groups) else 0
        return groups if n_groups >= self.min_groups else np.arange(len(groups), dtype=np.int64)

    def weights(self, groups: npt.NDArray[np.int64], replicates: int) -> npt.NDArray[np.int64]:
        """``(replicates, n)`` sample weights: how often each sample's unit was drawn."""
        groups = self.units(groups)
        n_groups = int(groups.max()) + 1 if len(groups) else 0
        picks = np.random.default_rng(self.seed).integers(0, n_groups, size=(replicates, n_groups))
        counts = np.stack([np.bincount(row, minlength=n_groups) for row in picks])
        return counts[:, groups]

    def interval(self, values: npt.NDArray[np.float64]) -> tuple[float, float]:
        """The percentile interval of replicate values (NaN ones dropped)."""
        finite = values[np.isfinite(values)]
        if not len(finite):
            return math.nan, math.nan
        tail = 100 * (1 - self.level) / 2
        lo, hi = np.percentile(finite, [tail, 100 - tail])
        return float(lo), float(hi)


def mean_column(per_sample: pd.DataFrame | None, value: float, named: str | None = None) -> str | None:
    """The per-sample column whose mean is the metric's ``value`` (``named`` when configured).

    Returns:
        The column, or None when no numeric column averages to the value (the metric is not a
        per-sample mean: the evaluator scores each replicate again).
    """
    if per_sample is None:
        return None
    if named is not None:
        return named if named in per_sample.columns else None
    for column in per_sample.columns:
        series = per_sample[column]
        if series.dtype == bool or pd.api.types.is_numeric_dtype(series):
            mean = float(series.astype(float).mean())
            if math.isfinite(mean) and math.isclose(mean, value, rel_tol=1e-6, abs_tol=1e-9):
                return str(column)
    return None


def column_statistic(values: Sequence[float]) -> Statistic:
    """The weighted mean of a per-sample column."""
    x = np.asarray(values, dtype=np.float64)

    def stat(weights: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        total = weights.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ x) / total

    return stat


def rescore_statistic(records: list[dict[str, Any]], scorer: Callable[..., Any], metric: str) -> Statistic:
    """``metric`` of the evaluator run on each replicate's records (a sample drawn k times is
    given k times, its copies renamed ``<id>#<copy>`` so that no evaluator sees a repeated id)."""

    def one(row: npt.NDArray[np.int64]) -> float:
        picked = []
        for i in np.flatnonzero(row):
            base = records[i]
            picked += [{**base, "sample_id": f"{base['sample_id']}#{c}"} for c in range(int(row[i]))]
        return float(as_evaluation(scorer(picked)).metrics.get(metric, math.nan)) if picked else math.nan

    def stat(weights: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return np.asarray([one(row) for row in weights], dtype=np.float64)

    return stat


@dataclass(frozen=True)
class Estimate:
    """A metric with its bootstrap interval.

    Attributes:
        value: The metric over every sample.
        lo: Lower bound of the interval.
        hi: Upper bound.
        method: ``mean:<column>`` or ``rescore``.
        replicates: Replicates drawn.
        groups: Units resampled (groups, or samples when there were too few groups).
    """

    value: float
    lo: float
    hi: float
    method: str
    replicates: int
    groups: int


def statistic_for(evidence: Any, metric: str, columns: Mapping[str, str] | None = None) -> tuple[Statistic, str]:
    """The statistic of ``metric`` over ``evidence``'s samples (weights over ``evidence.records``)
    and its method: ``mean:<column>`` or ``rescore``."""
    value = evidence.metrics.get(metric, math.nan)
    column = mean_column(evidence.per_sample, value, (columns or {}).get(metric))
    if column is not None:
        return column_statistic(evidence.per_sample[column].astype(float).to_numpy()), f"mean:{column}"
    return rescore_statistic(evidence.records, evidence.scorer, metric), "rescore"


def estimate(
    evidence: Any,
    metric: str,
    groups: npt.NDArray[np.int64],
    boot: Bootstrap,
    columns: Mapping[str, str] | None = None,
) -> Estimate:
    """The metric over every sample of ``evidence`` and its bootstrap interval."""
    stat, method = statistic_for(evidence, metric, columns)
    replicates = boot.samples if method != "rescore" else boot.rescore_samples
    values = stat(boot.weights(groups, replicates))
    lo, hi = boot.interval(values)
    units = boot.units(groups)
    n_groups = int(units.max()) + 1 if len(units) else 0
    return Estimate(float(evidence.metrics.get(metric, math.nan)), lo, hi, method, replicates, n_groups)


@dataclass(frozen=True)
class Paired:
    """The difference ``candidate - reference`` of a metric over the samples both scored.

    Attributes:
        diff: The difference over every shared sample.
        lo: Lower bound of its bootstrap interval.
        hi: Upper bound.
        shared: Samples both runs scored.
    """

    diff: float
    lo: float
    hi: float
    shared: int


def subset(evidence: Any, ids: list[str]) -> Any:
    """``evidence`` restricted to ``ids`` (in that order), its metrics recomputed by the evaluator
    (or by the per-sample mean when that is what the metric is)."""
    index = {s: i for i, s in enumerate(evidence.sample_ids)}
    rows = [index[s] for s in ids]
    records = [evidence.records[i] for i in rows]
    per_sample = None if evidence.per_sample is None else evidence.per_sample.iloc[rows].reset_index(drop=True)
    metrics = dict(evidence.metrics)
    if len(rows) != len(evidence.records):
        metrics = dict(as_evaluation(evidence.scorer(records)).metrics)
    return replace(evidence, records=records, per_sample=per_sample, metrics=metrics)


def paired(
    cand: Any,
    ref: Any,
    metric: str,
    table: Mapping[str, str] | None,
    boot: Bootstrap,
    columns: Mapping[str, str] | None = None,
) -> Paired | None:
    """The paired difference of ``metric`` between two runs' evidence; None when they share no sample."""
    ref_ids = set(ref.sample_ids)
    ids = [s for s in cand.sample_ids if s in ref_ids]
    if not ids:
        return None
    a, b = subset(cand, ids), subset(ref, ids)
    groups = group_codes(ids, a.records, table)
    stat_a, method_a = statistic_for(a, metric, columns)
    stat_b, method_b = statistic_for(b, metric, columns)
    rescore = "rescore" in (method_a, method_b)
    weights = boot.weights(groups, boot.rescore_samples if rescore else boot.samples)
    lo, hi = boot.interval(stat_a(weights) - stat_b(weights))
    diff = float(a.metrics.get(metric, math.nan)) - float(b.metrics.get(metric, math.nan))
    return Paired(diff, lo, hi, len(ids))


def group_codes(sample_ids: list[str], records: list[dict[str, Any]], table: Mapping[str, str] | None) -> np.ndarray:
    """An integer group per sample: from ``table`` (``sample_id -> group``), else the records'
    own ``group`` key, else each sample its own group (ungrouped data)."""
    if table is not None:
        keys = [table.get(s, f"\0{s}") for s in sample_ids]
    elif records and all("group" in r for r in records):
        keys = [str(r["group"]) for r in records]
    else:
        keys = list(sample_ids)
    return pd.factorize(pd.Series(keys, dtype=str))[0].astype(np.int64)
