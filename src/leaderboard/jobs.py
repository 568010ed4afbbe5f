"""The jobs behind ``leaderboard.py`` and ``promote.py``.

``leaderboard``: build the board (:func:`src.leaderboard.board.build_board`), print it as a rich
table, write ``leaderboard.csv`` and ``leaderboard.html`` and log both to a run of the MLflow
experiment ``leaderboard``. ``promote``: build the same board, judge one run by every gate; on
pass register its model and move ``champion`` to it (``dry_run``: say what would happen);
on fail print every failed gate, change nothing and exit 1. ``rollback``: ``champion`` back to
the version before.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from src.core.errors import ConfigError, DataError, PodiumError
from src.core.mlflow_client import (
    bound_http_retries,
    configured_tracking_uri,
    experiment_id,
    is_server,
    log_metrics,
    redact,
    resolve_tracking_uri,
    tracking_uri,
)
from src.leaderboard import registry
from src.leaderboard.board import Board, build_board, load_settings, write_outputs
from src.leaderboard.html import render
from src.leaderboard.runs import Candidate, store_error


class GateFailure(PodiumError):
    """The run failed a promotion gate: nothing was changed."""

    exit_code = 1


def store_uri(cfg: DictConfig) -> str:
    """The tracking URI (:func:`src.core.mlflow_client.resolve_tracking_uri`): ``tracking_uri`` or
    ``logger.mlflow.tracking_uri`` when set, else ``$MLFLOW_TRACKING_URI``, else the embedded store,
    which must exist.

    Raises:
        ConfigError: A URI of an unknown kind.
        DataError: The embedded store has no database yet.
    """
    store = Path(str(cfg.paths.mlflow_dir))
    uri = resolve_tracking_uri(store, configured_tracking_uri(cfg))
    if is_server(uri):
        bound_http_retries()
    if uri != tracking_uri(store):
        return uri
    if not (store / "mlflow.db").is_file():
        raise DataError(
            f"there is no MLflow store at {store} (no mlflow.db): no run has been logged there yet",
            "train a run first (python train.py experiment=<name>), or point paths.mlflow_dir at the store",
        )
    return tracking_uri(store)


def open_client(cfg: DictConfig) -> tuple[Any, str]:
    """A client on the store, tried once (a damaged store is refused here, naming it).

    Raises:
        DataError: No store, or one that cannot be read.
    """
    import mlflow

    uri = store_uri(cfg)
    try:
        client = mlflow.MlflowClient(uri, registry_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # SQLAlchemy, sqlite3, HTTP and OS errors of a damaged or absent store
        raise store_error(redact(uri), exc) from exc
    return client, redact(uri)


def make_board(cfg: DictConfig) -> tuple[Board, Any, str]:
    client, uri = open_client(cfg)
    return build_board(cfg, client, uri, Path(str(cfg.out_dir)) / ".artifacts"), client, uri


def print_board(board: Board) -> None:
    """The leaderboard as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    title = f"leaderboard {board.experiment}: {board.metric} ({board.mode}), {board.boot.level:.0%} intervals"
    table = Table(title=title, show_lines=False)
    gate_cols = [c for c in board.table.columns if c.startswith("gate:")]
    term_cols = [c for c in board.table.columns if c.startswith("term:") or c == "composite"]
    for name in ["rank", "run", board.metric, "interval", "vs champion", *term_cols, "gates", "failed"]:
        table.add_column(name, overflow="fold")
    for cand, (_, line) in zip(board.candidates, board.table.iterrows(), strict=True):
        failed = [c[5:] for c in gate_cols if line[c] != "pass"]
        table.add_row(
            "" if _nan(line["rank"]) else str(int(line["rank"])),
            ("* " if line["champion"] else "") + cand.label,
            _num(line[board.metric]),
            f"[{_num(line['lo'])}, {_num(line['hi'])}]" if not _nan(line["lo"]) else "",
            f"{line['vs_champion']:+.4f} [{line['vs_champion_lo']:+.4f}, {line['vs_champion_hi']:+.4f}]"
            if not _nan(line["vs_champion"])
            else "",
            *[_num(line[c]) for c in term_cols],
            line["gates_passed"],
            ", ".join(failed) or ("" if not cand.problem else "no evidence"),
        )
    Console(width=200).print(table)
    for cand in board.candidates:
        if cand.problem:
            print(f"podium: {cand.label} ({cand.run_id}): {cand.problem}")


def _nan(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _num(value: Any) -> str:
    return "" if _nan(value) else f"{float(value):.4f}"


def log_board(client: Any, cfg: DictConfig, board: Board, files: tuple[Path, Path]) -> str:
    """A run of the MLflow experiment ``leaderboard`` holding the CSV and the HTML; returns its id."""
    exp = experiment_id(client, str(cfg.mlflow_experiment), str(cfg.paths.mlflow_dir))
    tags = {"podium.leaderboard_of": board.experiment, "podium.champion_run": board.champion or ""}
    run = client.create_run(exp, run_name=board.experiment, tags=tags)
    run_id = run.info.run_id
    for key, value in {"metric": board.metric, "mode": board.mode, "filter": cfg.get("filter")}.items():
        client.log_param(run_id, key, str(value))
    log_metrics(client, run_id, {"runs": len(board.candidates), "ranked": len(board.estimates)})
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def leaderboard(cfg: DictConfig) -> Board:
    """Build, print, write and log the leaderboard of ``cfg.experiment``."""
    board, client, uri = make_board(cfg)
    print_board(board)
    files = write_outputs(board, Path(str(cfg.out_dir)), render(board, uri, cfg.get("ui_url")))
    logged = log_board(client, cfg, board, files) if cfg.get("log_mlflow") else None
    print(f"podium: written {files[0]} and {files[1]}" + (f"; logged as MLflow run {logged}" if logged else ""))
    return board


def model_files(cand: Candidate) -> list[tuple[Path, str]]:
    """What a promotion uploads as the run's model: the checkpoints that made the scored
    predictions (a cross-validation: one per fold, in ``fold_<k>/``) and the run's config;
    an ensemble, whose model is its predictions: its out-of-fold records and config."""
    files: list[tuple[Path, str]] = []
    for path, _ in cand.evidence.checkpoints if cand.evidence else []:
        fold = next((p for p in path.parts if p.startswith("fold_")), "")
        files.append((path, fold))
    if cand.run_dir is not None and (cand.run_dir / "config.yaml").is_file():
        files.append((cand.run_dir / "config.yaml", ""))
    if not files and cand.evidence is not None:
        files += [(p, "") for p in sorted(cand.evidence.folder.glob("*.json*")) if p.is_file()]
    return files


def report_gates(board: Board, cand: Candidate) -> list[Any]:
    """Print every gate's verdict on ``cand``; returns the failed ones."""
    results = board.gates[cand.run_id]
    print(f"podium: gates of {cand.label} ({cand.run_id}), model {board.settings.model_name}:")
    for r in results:
        print(f"  {'pass' if r.passed else 'FAIL'}  {r.name} ({r.kind}): {r.detail}")
    if not results:
        print(f"  (no gates configured in {board.settings.source})")
    return [r for r in results if not r.passed]


def promote(cfg: DictConfig) -> str | None:
    """``promote.py``: promote ``cfg.run`` (or roll back with ``action=rollback``).

    Returns:
        The model version that is champion afterwards (None for a dry run).

    Raises:
        GateFailure: A gate failed (every failed gate printed; nothing changed).
        RunStateError: Another promotion holds the model, or the champion moved meanwhile.
    """
    if cfg.action == "rollback":
        return rollback(cfg)
    if not cfg.get("run"):
        raise ConfigError(
            "promote.py needs run=<an MLflow run id or a run directory>", "pass run=... (leaderboard.py lists them)"
        )
    board, client, _ = make_board(cfg)
    cand = board.find(str(cfg.run))
    failed = report_gates(board, cand)
    model = board.settings.model_name
    if failed:
        raise GateFailure(
            f"{cand.label} ({cand.run_id}) failed {len(failed)} gate(s): {', '.join(r.name for r in failed)}; "
            f"model {model!r} was not changed",
            f"see each gate above; its rules are in {board.settings.source}",
        )
    if cand.run_id == board.champion:
        print(f"podium: {cand.label} is already the champion of {model!r}; nothing to do")
        return None
    if cfg.dry_run:
        print(f"podium: dry run: would register {cand.label} as a new version of {model!r} and move 'champion' to it "
              f"('previous' -> run {board.champion or 'none'})")  # fmt: skip
        return None
    version = registry.register(
        client, model, board.experiment, cand.run_id, model_files(cand), board.gates[cand.run_id], board.champion,
        Path(str(cfg.paths.mlflow_dir)),
    )  # fmt: skip
    print(f"podium: {cand.label} is now 'champion' of {model!r} (version {version}); undo: python promote.py rollback "
          f"experiment={board.experiment}")  # fmt: skip
    return version


def rollback(cfg: DictConfig) -> str:
    """``champion`` back to the version promoted before the current one."""
    client, _ = open_client(cfg)
    model = load_settings(cfg).model_name
    if cfg.dry_run:
        chain = registry.history(client, model)
        print(f"podium: dry run: would move 'champion' of {model!r} from version {chain[-1] if chain else 'none'} "
              f"to {chain[-2] if len(chain) > 1 else 'none'}")  # fmt: skip
        return chain[-1] if chain else ""
    was, now = registry.rollback(client, model, Path(str(cfg.paths.mlflow_dir)))
    print(f"podium: 'champion' of {model!r} moved back from version {was} to version {now}")
    return now


def argv_aliases(argv: list[str]) -> list[str]:
    """``promote.py``'s command-line words as Hydra overrides: ``rollback`` → ``action=rollback``,
    ``--dry-run`` → ``dry_run=true``."""
    words = {"rollback": "action=rollback", "--dry-run": "dry_run=true", "--dry_run": "dry_run=true"}
    return [words.get(a, a) for a in argv]


def patch_argv() -> None:
    sys.argv[1:] = argv_aliases(sys.argv[1:])
