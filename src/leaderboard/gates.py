"""Promotion gates: named rules a run must pass before it may become the ``champion``.

A gate is a dict in ``configs/gates/<experiment>.yaml`` (``gates:``) with a ``name`` and a
``kind``:

- ``threshold``: ``metric`` (a name of :meth:`Candidate.values`: ``eval/ece``, ``val/acc``, ...),
  optionally minus another (``minus``), within ``min`` and/or ``max``;
- ``bucket``: every bucket of the per-sample table (``by`` a column) with at least ``min_support``
  samples has its ``stat`` (``mean``, ``zero_rate``, ``rate``) of ``column`` within ``min``/``max``;
- ``margin``: beats the champion on the ranking metric by at least ``min`` on the samples both
  scored, and the paired interval's lower bound is above 0 (passes when there is no champion);
- ``checksum``: the records are the ones ``eval/`` scored, and every checkpoint that predicted
  them is unchanged since (sha256 recorded at predict time);
- ``duplicate``: the records are not byte-identical to an earlier run's (a resubmission is not
  new evidence);
- ``proxy``: the run has ``metric`` (the real scorer's), not only a proxy of it; and no gate or
  ranking may rest on a metric listed under ``proxies``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from src.core.errors import ConfigError
from src.core.io import sha256_file

KINDS = ("threshold", "bucket", "margin", "checksum", "duplicate", "proxy")
STATS = ("mean", "zero_rate", "rate")


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict on one run.

    Attributes:
        name: The gate's name.
        kind: Its kind.
        passed: Whether the run passed it.
        detail: What was measured and against what (always set: the table shows it).
    """

    name: str
    kind: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Context:
    """What gates see besides the run: the board's ranking metric, the proxies, the champion's
    paired comparison and the earlier runs' record checksums."""

    metric: str
    proxies: tuple[str, ...]
    champion: str | None
    paired: Mapping[str, Any]
    earlier: Mapping[str, str]


def _bounds(spec: Mapping[str, Any]) -> str:
    lo, hi = spec.get("min"), spec.get("max")
    return " and ".join(p for p in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if p)


def within(value: float, spec: Mapping[str, Any]) -> bool:
    lo, hi = spec.get("min"), spec.get("max")
    return math.isfinite(value) and (lo is None or value >= lo) and (hi is None or value <= hi)


def threshold(cand: Any, spec: Mapping[str, Any], ctx: Context) -> tuple[bool, str]:
    values = cand.values()
    names = [spec["metric"], *([spec["minus"]] if spec.get("minus") else [])]
    proxies = [n for n in names if n in ctx.proxies]
    if proxies:
        return False, f"{', '.join(proxies)} is a proxy (proxies): a proxy cannot promote"
    absent = [n for n in names if n not in values]
    if absent:
        return False, f"the run has no {', '.join(absent)}"
    value = values[names[0]] - (values[names[1]] if len(names) > 1 else 0.0)
    shown = " - ".join(names)
    return within(value, spec), f"{shown} = {value:.6g} (needs {_bounds(spec)})"


def bucket_stat(frame: pd.DataFrame, column: str, stat: str) -> pd.Series:
    grouped = frame.groupby(frame.columns[0], sort=True)[column]
    if stat == "mean":
        return grouped.mean()
    if stat == "zero_rate":
        return grouped.apply(lambda s: float((s.astype(float) <= 0).mean()))
    return grouped.apply(lambda s: float(s.astype(bool).mean()))


def bucket(cand: Any, spec: Mapping[str, Any], ctx: Context) -> tuple[bool, str]:
    table = cand.evidence.per_sample if cand.evidence is not None else None
    by, column = str(spec["by"]), str(spec["column"])
    if table is None or by not in table.columns or column not in table.columns:
        have = ", ".join(map(str, table.columns)) if table is not None else "no per-sample table"
        return False, f"the per-sample table has no {by!r}/{column!r} (it has: {have})"
    frame = table[[by, column]]
    counts = frame.groupby(by, sort=True).size()
    judged = counts[counts >= int(spec.get("min_support", 1))].index
    stats = bucket_stat(frame[frame[by].isin(judged)], column, str(spec.get("stat", "mean")))
    failing = [f"{k}={v:.4g}" for k, v in stats.items() if not within(float(v), spec)]
    what = f"{spec.get('stat', 'mean')} of {column} per {by} (buckets with >= {spec.get('min_support', 1)})"
    if failing:
        return False, f"{what} not {_bounds(spec)}: {', '.join(failing)}"
    if stats.empty:
        return True, f"no {by} has >= {spec.get('min_support', 1)} samples: none judged"
    return True, f"{what}: all {len(stats)} {_bounds(spec)}"


def margin(cand: Any, spec: Mapping[str, Any], ctx: Context) -> tuple[bool, str]:
    need = float(spec.get("min", 0.0))
    if ctx.metric in ctx.proxies:
        return False, f"ranked by {ctx.metric}, a proxy (proxies): a proxy cannot promote"
    if ctx.champion is None:
        return True, "no champion yet: nothing to beat"
    if cand.run_id == ctx.champion:
        return True, "is the champion"
    pair = ctx.paired.get(cand.run_id)
    if pair is None:
        return False, "shares no sample with the champion: not comparable"
    ok = pair.diff >= need and pair.lo > 0
    return ok, (
        f"{ctx.metric} - champion = {pair.diff:+.4g} [{pair.lo:+.4g}, {pair.hi:+.4g}] on {pair.shared} samples "
        f"(needs >= {need:+.4g} and lower bound > 0)"
    )


def checksum(cand: Any, spec: Mapping[str, Any], ctx: Context) -> tuple[bool, str]:
    ev = cand.evidence
    if ev.scored_sha256 is None:
        return False, f"{ev.folder} was never evaluated (no eval/ with a checksum): python evaluate.py path={ev.folder}"
    if ev.scored_sha256 != ev.sha256:
        return False, f"the records changed since eval/ scored them: python evaluate.py path={ev.folder}"
    for path, recorded in ev.checkpoints:
        if recorded is None:
            return False, f"no checksum recorded for {path} when it predicted: predict again"
        if not path.is_file() or sha256_file(path) != recorded:
            return False, f"{path} is not the checkpoint that predicted these records (missing or changed)"
    return True, f"records scored as they are; {len(ev.checkpoints)} checkpoint(s) unchanged"


def duplicate(cand: Any, spec: Mapping[str, Any], ctx: Context) -> tuple[bool, str]:
    twin = ctx.earlier.get(cand.evidence.sha256)
    if twin is not None and twin != cand.run_id:
        return False, f"predictions byte-identical to earlier run {twin}: not new evidence"
    return True, "predictions differ from every earlier run's"


def proxy(cand: Any, spec: Mapping[str, Any], ctx: Context) -> tuple[bool, str]:
    real = str(spec["metric"])
    if ctx.metric in ctx.proxies:
        return False, f"ranked by {ctx.metric}, a proxy: rank by the real scorer's metric ({real})"
    values = cand.values()
    if real in values and math.isfinite(values[real]):
        return True, f"scored by the real scorer ({real} = {values[real]:.6g})"
    seen = [p for p in ctx.proxies if p in values]
    return False, f"no {real}: " + (f"only proxies ({', '.join(seen)})" if seen else "not scored by the real scorer")


CHECKS = {
    "threshold": threshold,
    "bucket": bucket,
    "margin": margin,
    "checksum": checksum,
    "duplicate": duplicate,
    "proxy": proxy,
}
#: Keys each kind requires besides ``name`` and ``kind``.
REQUIRED = {"threshold": ("metric",), "bucket": ("by", "column"), "proxy": ("metric",)}


def check_specs(specs: Sequence[Mapping[str, Any]], source: str, known: set[str]) -> None:
    """Refuse gates that cannot be applied, before any is.

    Args:
        specs: The ``gates:`` list.
        source: The gates file (for messages).
        known: Every metric some candidate has (``Candidate.values``).

    Raises:
        ConfigError: A gate without name or with an unknown kind, a missing key, an unknown
            ``stat``, a repeated name, or a threshold over a metric that no run logs (naming the
            metric and the metrics that exist).
    """
    names: set[str] = set()
    for i, spec in enumerate(specs):
        name, kind = spec.get("name"), spec.get("kind")
        where = f"{source}: gates[{i}]" + (f" ({name})" if name else "")
        if not name or kind not in CHECKS:
            raise ConfigError(f"{where}: needs a name and a kind among {', '.join(KINDS)}", "fix the gate")
        if name in names:
            raise ConfigError(f"{where}: the name {name!r} is used twice", "give every gate its own name")
        names.add(str(name))
        missing = [k for k in REQUIRED.get(kind, ()) if not spec.get(k)]
        if missing:
            raise ConfigError(f"{where}: a {kind} gate needs {', '.join(missing)}", f"add {missing[0]}: ...")
        if kind == "bucket" and spec.get("stat", "mean") not in STATS:
            raise ConfigError(f"{where}: stat={spec.get('stat')!r}", f"use one of {', '.join(STATS)}")
        for key in ("metric", "minus") if kind == "threshold" else ():
            if spec.get(key) and spec[key] not in known:
                raise ConfigError(
                    f"{where}: no run logs the metric {spec[key]!r}",
                    f"name one that exists: {', '.join(sorted(known))}",
                )


def apply_gates(cand: Any, specs: Sequence[Mapping[str, Any]], ctx: Context) -> list[GateResult]:
    """Every gate's verdict on ``cand`` (a run without evidence fails every gate)."""
    results = []
    for spec in specs:
        name, kind = str(spec["name"]), str(spec["kind"])
        if cand.evidence is None and kind != "threshold":
            results.append(GateResult(name, kind, False, cand.problem or "no evaluation artifact"))
            continue
        passed, detail = CHECKS[kind](cand, spec, ctx)
        results.append(GateResult(name, kind, bool(passed), detail))
    return results
