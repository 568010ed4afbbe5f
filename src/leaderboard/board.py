"""The leaderboard of an experiment: ranked runs, intervals, paired differences, gate results.

``python leaderboard.py experiment=<name> [filter=...]`` (``configs/leaderboard.yaml``) reads the
settings of ``configs/gates/<name>.yaml`` (ranking metric and mode, groups, proxies, composite,
model name, gates), every finished run of the experiment and its evaluation artifact, and writes
``leaderboard.csv`` and a self-contained ``leaderboard.html`` into
``outputs/leaderboard/<name>/`` (and as artifacts of a run of the MLflow experiment
``leaderboard``). ``promote.py`` builds the same board to judge one run.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from src.core.errors import ConfigError, DataError
from src.core.io import atomic_path, write_text_atomic
from src.leaderboard.bootstrap import Bootstrap, Estimate, Paired, estimate, group_codes, paired
from src.leaderboard.composite import check_terms, composite_terms, order
from src.leaderboard.gates import Context, GateResult, apply_gates, check_specs
from src.leaderboard.registry import champion_run
from src.leaderboard.runs import Candidate, group_table, load_candidates, store_error

CSV_FILE, HTML_FILE = "leaderboard.csv", "leaderboard.html"


@dataclass
class Settings:
    """The experiment's leaderboard settings (its gates file, then the command line).

    Attributes:
        source: The gates file ("(none)" when the experiment has none).
        metric: The evaluator metric runs are ranked and bootstrapped by (null: the last part of
            the runs' ``optimized_metric``).
        mode: ``max`` or ``min`` (null: the runs' monitor mode for that metric, else ``max``).
        groups: ``{file, id_column, group_column}`` of the data's groups, or None.
        per_sample_columns: ``metric -> per-sample column`` whose mean the metric is (else found
            by matching means, else the evaluator scores each replicate).
        proxies: Metrics that are proxies of the real score (they cannot promote).
        composite: ``{terms, tie_breakers}`` or None.
        model_name: The registered model the champion alias lives on.
        gates: The gate specs.
    """

    source: str
    metric: str | None
    mode: str | None
    groups: dict[str, Any] | None
    per_sample_columns: dict[str, str]
    proxies: tuple[str, ...]
    composite: dict[str, Any] | None
    model_name: str
    gates: list[dict[str, Any]] = field(default_factory=list)


def gates_path(cfg: DictConfig) -> Path:
    """``gates_file``, else the experiment's file in ``gates_dir``, else its ``default.yaml``.

    Raises:
        ConfigError: ``gates_file`` names a file that does not exist.
    """
    if cfg.get("gates_file"):
        path = Path(str(cfg.gates_file))
        if not path.is_file():
            raise ConfigError(f"gates_file={path} does not exist", "pass the path of a gates file, or gates_file=null")
        return path
    own = Path(str(cfg.gates_dir)) / f"{cfg.experiment_name}.yaml"
    return own if own.is_file() else Path(str(cfg.gates_dir)) / "default.yaml"


def read_gates_file(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """A gates file, merged over the file its ``extends:`` names (in the same folder).

    Raises:
        ConfigError: Invalid YAML, a missing or circular ``extends``.
    """
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # OmegaConf raises YAML parser errors of several types
        raise ConfigError(f"{path} is not valid YAML ({exc})", "fix the file") from exc
    base = node.pop("extends", None)
    if base is None:
        return node
    parent = path.parent / str(base)
    if not parent.is_file() or parent in seen:
        what = "does not exist" if not parent.is_file() else "extends itself in a circle"
        raise ConfigError(f"{path}: extends: {base} {what}", "name another gates file of the same folder")
    return OmegaConf.merge(read_gates_file(parent, (*seen, path)), node)


def load_settings(cfg: DictConfig) -> Settings:
    """The gates file of ``cfg.experiment`` merged into the config (its ``${paths...}`` resolve),
    with ``metric=``/``mode=`` of the command line winning.

    Raises:
        ConfigError: The file is not valid YAML or ``mode`` is not max/min.
    """
    path = gates_path(cfg)
    node = read_gates_file(path) if path.is_file() else OmegaConf.create({})
    merged = copy.deepcopy(cfg)
    OmegaConf.set_struct(merged, False)
    merged.board = node
    board = OmegaConf.to_container(merged.board, resolve=True) or {}
    mode = cfg.get("mode") or board.get("mode")
    if mode not in (None, "max", "min"):
        raise ConfigError(f"mode={mode!r} ({path})", "use mode=max or mode=min")
    return Settings(
        source=str(path) if path.is_file() else "(none)",
        metric=cfg.get("metric") or board.get("metric"),
        mode=mode,
        groups=board.get("groups"),
        per_sample_columns=dict(board.get("per_sample_columns") or {}),
        proxies=tuple(board.get("proxies") or ()),
        composite=board.get("composite"),
        model_name=str(cfg.get("model_name") or board.get("model_name") or f"podium.{cfg.experiment_name}"),
        gates=list(board.get("gates") or []),
    )


def default_metric(cands: list[Candidate]) -> tuple[str | None, str | None]:
    """The last part of the runs' ``optimized_metric`` and the monitor mode when the monitor
    watches it (``val/acc`` → ``acc``, ``max``)."""
    for cand in cands:
        optimized = cand.params.get("optimized_metric")
        if optimized and optimized != "None":
            same = cand.params.get("callbacks.monitor.metric") == optimized
            return optimized.rsplit("/", 1)[-1], cand.params.get("callbacks.monitor.mode") if same else None
    return None, None


@dataclass
class Board:
    """A built leaderboard.

    Attributes:
        experiment: The experiment.
        settings: Its settings.
        metric: The ranking metric (an evaluator metric of the evaluation artifacts).
        mode: ``max`` or ``min``.
        candidates: Every run, ranked ones first in rank order, then those without evidence.
        estimates: Run id → the metric with its interval.
        paired: Run id → its paired difference with the champion.
        gates: Run id → gate results.
        champion: The champion's run id, or None.
        table: The leaderboard as a frame (what the CSV holds).
    """

    experiment: str
    settings: Settings
    metric: str
    mode: str
    candidates: list[Candidate]
    estimates: dict[str, Estimate]
    paired: dict[str, Paired]
    gates: dict[str, list[GateResult]]
    champion: str | None
    table: pd.DataFrame
    boot: Bootstrap

    def find(self, run: str) -> Candidate:
        """The candidate of a run id or a run directory.

        Raises:
            ConfigError: No candidate matches, naming the runs there are.
        """
        path = Path(run).expanduser()
        for cand in self.candidates:
            if run == cand.run_id or (
                cand.run_dir is not None and path.is_dir() and path.resolve() == cand.run_dir.resolve()
            ):
                return cand
        shown = ", ".join(f"{c.run_id} ({c.label})" for c in self.candidates)
        raise ConfigError(
            f"run={run} is not a finished run of experiment {self.experiment} (its runs: {shown})",
            "pass run=<an MLflow run id or a run directory of that experiment>",
        )


def choose_metric(settings: Settings, ranked: list[Candidate]) -> tuple[str, str]:
    """The ranking metric and mode, checked against what the evaluation artifacts have.

    Raises:
        ConfigError: No metric can be chosen, or no artifact has it (naming those there are).
    """
    metric, mode = default_metric(ranked)
    metric, mode = settings.metric or metric, settings.mode or mode or "max"
    where = settings.source if settings.source != "(none)" else "configs/gates/<experiment>.yaml"
    have = sorted({k for c in ranked for k in c.evidence.metrics})
    if not metric or not any(metric in c.evidence.metrics for c in ranked):
        raise ConfigError(
            f"the ranking metric {metric!r} is not a metric of the runs' evaluation artifacts "
            f"(they have: {', '.join(have)})",
            f"set metric: <one of them> in {where}, or pass metric=<name>",
        )
    return str(metric), str(mode)


def first_by_checksum(cands: list[Candidate]) -> dict[str, str]:
    """sha256 of records → the earliest run that has them."""
    first: dict[str, str] = {}
    for cand in cands:
        if cand.evidence is not None:
            first.setdefault(cand.evidence.sha256, cand.run_id)
    return first


def known_values(cands: list[Candidate]) -> set[str]:
    return {k for c in cands for k in c.values()}


def build_board(cfg: DictConfig, client: Any, uri: str, cache: Path) -> Board:
    """Load the runs, estimate, compare with the champion, gate and rank.

    Raises:
        DataError: No finished run, no run with an evaluation artifact, an unreadable store.
        ConfigError: Settings, gates or composite that name what no run has.
    """
    settings = load_settings(cfg)
    experiment = str(cfg.experiment_name)
    cands = load_candidates(client, uri, experiment, cfg, cache)
    ranked = [c for c in cands if c.evidence is not None]
    if not ranked:
        problems = "\n  ".join(f"{c.label} ({c.run_id}): {c.problem}" for c in cands)
        raise DataError(
            f"no run of experiment {experiment} has an evaluation artifact:\n  {problems}", "make one as shown"
        )
    metric, mode = choose_metric(settings, ranked)
    known = known_values(cands)
    check_specs(settings.gates, settings.source, known)  # before any bootstrap: a bad gate fails fast
    if settings.composite:
        check_terms(settings.composite, settings.source, known)
    boot = Bootstrap(**OmegaConf.to_container(cfg.bootstrap, resolve=True))
    table = group_table(settings.groups)
    columns = settings.per_sample_columns
    estimates = {c.run_id: estimate(c.evidence, metric, codes(c, table), boot, columns) for c in ranked}
    champion = champion_id(client, uri, settings.model_name)
    pairs = compare_with(champion, ranked, metric, table, boot, columns)
    ctx = Context(metric, settings.proxies, champion, pairs, first_by_checksum(cands))
    gates = {c.run_id: apply_gates(c, settings.gates, ctx) for c in cands}
    board = Board(experiment, settings, metric, mode, cands, estimates, pairs, gates, champion, pd.DataFrame(), boot)
    rank(board)
    return board


def codes(cand: Candidate, table: dict[str, str] | None) -> Any:
    """The group code of each of the candidate's scored samples."""
    return group_codes(cand.evidence.sample_ids, cand.evidence.records, table)


def compare_with(
    champion: str | None,
    ranked: list[Candidate],
    metric: str,
    table: dict[str, str] | None,
    boot: Bootstrap,
    columns: dict[str, str],
) -> dict[str, Paired]:
    """Each ranked run's paired difference with the champion (none when the champion is not
    among them, or for runs that share no sample with it)."""
    reference = next((c for c in ranked if c.run_id == champion), None)
    if reference is None:
        return {}
    pairs = {}
    for cand in ranked:
        if cand is not reference:
            pair = paired(cand.evidence, reference.evidence, metric, table, boot, columns)
            if pair is not None:
                pairs[cand.run_id] = pair
    return pairs


def champion_id(client: Any, uri: str, model_name: str) -> str | None:
    try:
        return champion_run(client, model_name)
    except DataError:
        raise
    except Exception as exc:  # a damaged registry raises store-specific errors
        raise store_error(uri, exc) from exc


def rank(board: Board) -> None:
    """Order the candidates and build ``board.table``."""
    ranked = [c for c in board.candidates if c.run_id in board.estimates]
    values = pd.DataFrame([c.values() for c in ranked], index=[c.run_id for c in ranked])
    primary = pd.Series({c.run_id: board.estimates[c.run_id].value for c in ranked})
    terms = None
    if board.settings.composite:
        terms = composite_terms(values, board.settings.composite["terms"])
        ids = order(terms["composite"], "max", values, board.settings.composite.get("tie_breakers") or [])
    else:
        ids = order(primary, board.mode, values, [])
    by_id = {c.run_id: c for c in board.candidates}
    board.candidates = [by_id[i] for i in ids] + [c for c in board.candidates if c.run_id not in board.estimates]
    rows = [
        row(board, c, i + 1 if c.run_id in board.estimates else None, terms) for i, c in enumerate(board.candidates)
    ]
    board.table = pd.DataFrame(rows).astype({"rank": "Int64"})


def row(board: Board, cand: Candidate, position: int | None, terms: pd.DataFrame | None) -> dict[str, Any]:
    """One line of the leaderboard."""
    est = board.estimates.get(cand.run_id)
    pair = board.paired.get(cand.run_id)
    results = board.gates.get(cand.run_id, [])
    line: dict[str, Any] = {
        "rank": position,
        "run": cand.label,
        "run_id": cand.run_id,
        "champion": cand.run_id == board.champion,
        board.metric: est.value if est else math.nan,
        "lo": est.lo if est else math.nan,
        "hi": est.hi if est else math.nan,
        "method": est.method if est else "",
        "samples": len(cand.evidence.records) if cand.evidence else 0,
        "groups": est.groups if est else 0,
        "vs_champion": pair.diff if pair else math.nan,
        "vs_champion_lo": pair.lo if pair else math.nan,
        "vs_champion_hi": pair.hi if pair else math.nan,
    }
    if terms is not None:
        line |= {
            k: (float(terms.loc[cand.run_id, k]) if cand.run_id in terms.index else math.nan) for k in terms.columns
        }
    line["gates_passed"] = f"{sum(r.passed for r in results)}/{len(results)}"
    line |= {f"gate:{r.name}": "pass" if r.passed else "FAIL" for r in results}
    line["note"] = cand.problem or ""
    return line


def write_outputs(board: Board, out_dir: Path, html: str) -> tuple[Path, Path]:
    """``leaderboard.csv`` and ``leaderboard.html`` into ``out_dir`` (each written atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / CSV_FILE
    with atomic_path(csv_path) as tmp:
        board.table.to_csv(tmp, index=False)
    return csv_path, write_text_atomic(out_dir / HTML_FILE, html)
