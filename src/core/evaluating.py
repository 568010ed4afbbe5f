"""The job behind ``evaluate.py``: score a prediction artifact offline, without model or data.

``python evaluate.py path=<predictions folder or a gt_vs_pred.jsonl> [task=<name>] [strict=true]``
reads the records (:mod:`src.core.artifacts`), scores the labelled ones without errors with the
task's evaluator, and writes ``<folder>/eval/per_sample.jsonl`` and (last)
``<folder>/eval/metrics.json`` = ``{"metrics": {...}, "counters": {...}}``. When the folder's
``resolved_config.json`` names an MLflow run that exists, the metrics are logged into it as
``eval/<folder name>/<metric>``.

The evaluator is a dotted path to ``score_records(records) -> (metrics, per_sample)``: the one in
``resolved_config.json`` wins, else ``evaluators[<task>]`` of ``configs/evaluate.yaml``. Nothing
here imports a task.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig

from src.core.artifacts import (
    RECORDS_FILE,
    RESOLVED_CONFIG_FILE,
    RecordError,
    read_record_lines,
    read_resolved_config,
    record_counts,
    write_json,
    write_jsonl,
)
from src.core.errors import ConfigError, DataError
from src.core.mlflow_client import log_metrics

#: Folder (inside the predictions folder) that evaluate.py writes.
EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
PER_SAMPLE_FILE = "per_sample.jsonl"
Scorer = Callable[[list[dict[str, Any]]], tuple[dict[str, float], list[dict[str, Any]]]]


def locate(path: str) -> tuple[Path, Path]:
    """``(folder, records file)`` of ``path``: a predictions folder or a records file itself.

    Raises:
        DataError: Nothing there, or a folder without ``gt_vs_pred.jsonl``.
    """
    target = Path(path).expanduser()
    if target.is_file():
        return target.parent, target
    if not target.is_dir():
        raise DataError(
            f"path={path} does not exist",
            f"point path at a predictions folder (<run>/predictions/<split>) or a {RECORDS_FILE}",
        )
    records = target / RECORDS_FILE
    if not records.is_file():
        raise DataError(
            f"{target} holds no {RECORDS_FILE}: it is not a predictions folder",
            f"point path at <run dir>/predictions/<split> (python predict.py writes it) or at a {RECORDS_FILE}",
        )
    return target, records


def choose_task(cfg: DictConfig, resolved: Mapping[str, Any] | None, folder: Path) -> str:
    """The task of the artifact: its ``resolved_config.json``'s, or ``task=`` for a foreign file.

    Raises:
        ConfigError: No task known, or ``task=`` contradicts the artifact's.
    """
    named, written = cfg.get("task"), (resolved or {}).get("task")
    if named and written and named != written:
        raise ConfigError(
            f"task={named} but {folder / RESOLVED_CONFIG_FILE} says the records are of task {written!r}",
            "drop task= (the folder names its task), or point path at predictions of that task",
        )
    task = named or written
    if not task:
        raise ConfigError(
            f"the task of {folder} is unknown: it has no {RESOLVED_CONFIG_FILE} (written by another tool?)",
            f"name it: task=<one of {', '.join(cfg.evaluators)}>",
        )
    return str(task)


def load_scorer(cfg: DictConfig, resolved: Mapping[str, Any] | None, task: str) -> tuple[str, Scorer]:
    """The evaluator's dotted path and function (``resolved_config.json`` first, then config).

    Raises:
        ConfigError: No evaluator for the task, or one that cannot be imported.
    """
    dotted = (resolved or {}).get("evaluator") or cfg.evaluators.get(task)
    if not dotted:
        raise ConfigError(
            f"no evaluator for task {task!r} (evaluators: {', '.join(f'{k}={v}' for k, v in cfg.evaluators.items())})",
            f"pass evaluators.{task}=<module.score_records>, or task=<one of {', '.join(cfg.evaluators)}>",
        )
    return str(dotted), import_scorer(
        str(dotted), task, f"pass evaluators.{task}=<module.function>, or fix the evaluator in {RESOLVED_CONFIG_FILE}"
    )


def import_scorer(dotted: str, task: str, fix: str) -> Scorer:
    """The scoring function at ``dotted``.

    Raises:
        ConfigError: It cannot be imported (naming the path, the task and ``fix``).
    """
    try:
        return get_method(dotted)
    except (ImportError, ValueError, AttributeError) as exc:
        raise ConfigError(f"evaluator {dotted!r} of task {task!r} cannot be imported ({exc})", fix) from exc


def score(path: Path, records: list[dict[str, Any]], lines: list[int], scorer: Scorer) -> tuple[dict, list]:
    """Run the scorer; a record it cannot use is reported as ``<path>:<line>: ...``."""
    try:
        return scorer(records)
    except RecordError as exc:
        raise DataError(f"{path}:{lines[exc.index]}: {exc.what}", exc.fix) from exc


def log_to_mlflow(resolved: Mapping[str, Any] | None, prefix: str, metrics: Mapping[str, float]) -> str:
    """Log ``metrics`` into the artifact's MLflow run; returns what happened as a counter name.

    ``mlflow_none`` (the artifact names no run), ``mlflow_store_missing`` (its SQLite store is
    not on this machine: nothing is created), ``mlflow_run_missing`` (the store lacks the run or
    cannot be reached), ``mlflow_logged``.
    """
    info = (resolved or {}).get("mlflow") or {}
    uri, run_id = info.get("tracking_uri"), info.get("run_id")
    if not uri or not run_id:
        return "mlflow_none"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return "mlflow_store_missing"
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(uri)
    try:
        client.get_run(run_id)
    except (MlflowException, OSError):
        return "mlflow_run_missing"
    log_metrics(client, run_id, {f"{prefix}/{k}": v for k, v in metrics.items()})
    return "mlflow_logged"


def _counters(reader: Counter[str], records: list[dict[str, Any]], scored: int) -> dict[str, int]:
    counters = {**record_counts(records), "scored": scored}
    counters.update(sorted(reader.items()))
    return counters


def _report(folder: Path, task: str, metrics: Mapping[str, float], counters: Mapping[str, int]) -> None:
    shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if math.isfinite(v))
    skipped = {k: v for k, v in counters.items() if k not in ("records", "labelled", "scored") and v}
    print(
        f"podium: evaluated {counters['scored']} of {counters['records']} {task} records in {folder}\n"
        f"  metrics: {shown or 'none (no labelled record without errors)'}\n"
        f"  counters: {', '.join(f'{k}={v}' for k, v in skipped.items()) or 'nothing skipped'}\n"
        f"  written: {folder / EVAL_DIR / METRICS_FILE}",
        flush=True,
    )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score the artifact at ``cfg.path`` and write ``eval/metrics.json`` and ``eval/per_sample.jsonl``.

    Records with ``gt`` null are counted (``unlabelled``), records with error codes are counted
    (``with_errors``), and neither is scored. Malformed lines are counted and skipped, or with
    ``strict`` stop the command naming ``<path>:<line>``.

    Args:
        cfg: The composed config (``configs/evaluate.yaml``).

    Returns:
        The metrics.
    """
    folder, path = locate(str(cfg.path))
    resolved = read_resolved_config(folder)
    task = choose_task(cfg, resolved, folder)
    _, scorer = load_scorer(cfg, resolved, task)
    records, lines, reader = read_record_lines(path, strict=bool(cfg.strict))
    if not records:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(reader.items())) or "the file is empty"
        raise DataError(
            f"{path} holds no valid record ({detail})", f"point path at a {RECORDS_FILE} written by predict.py"
        )
    metrics, per_sample, scored = score_usable(path, records, lines, scorer)
    counters = _counters(reader, records, scored)
    if bool(cfg.log_mlflow) and metrics:
        counters[log_to_mlflow(resolved, f"{EVAL_DIR}/{folder.name}", metrics)] = 1
    write_evaluation(folder, metrics, per_sample, counters)
    _report(folder, task, metrics, counters)
    return metrics


def score_usable(
    path: Path, records: list[dict[str, Any]], lines: list[int], scorer: Scorer
) -> tuple[dict[str, float], list[dict[str, Any]], int]:
    """Score the labelled records without error codes (the others are only counted).

    Returns:
        ``(metrics, per_sample, number of records scored)``.
    """
    usable = [i for i, r in enumerate(records) if r["gt"] is not None and not r["errors"]]
    if not usable:
        return {}, [], 0
    metrics, per_sample = score(path, [records[i] for i in usable], [lines[i] for i in usable], scorer)
    return metrics, per_sample, len(usable)


def write_evaluation(
    folder: Path, metrics: Mapping[str, float], per_sample: list[dict[str, Any]], counters: Mapping[str, int]
) -> Path:
    """Write ``<folder>/eval/per_sample.jsonl`` then (last) ``eval/metrics.json``; returns the latter."""
    out = folder / EVAL_DIR
    write_jsonl(out / PER_SAMPLE_FILE, per_sample)
    return write_json(out / METRICS_FILE, {"metrics": dict(metrics), "counters": dict(counters)})
