"""The fold runner behind ``cv.py``: K folds of one model as child runs of one parent run.

```
outputs/<experiment>/<run_name>/          parent: manifest.json (parent MLflow run id),
  fold_0/ ... fold_{K-1}/                 one ordinary run directory per fold (resumable)
  fold_k/predictions/val/                 fold k's out-of-fold records (predict.py's artifact)
  oof/gt_vs_pred.jsonl                    every fold's validation records, one file (+ "fold")
  oof/resolved_config.json, summary.json  the artifact contract: evaluate.py scores it again
  oof/eval/metrics.json                   the merged records scored by the task's evaluator
  oof/oof.parquet, oof/test.parquet       classification tables for ensemble.py (with an OOF
                                          writer callback: TTA, test split averaged over folds)
  metrics.json                            fold mean/std of each metric + the OOF score
  cv.log                                  the job's log (every fold's epochs, errors in full)
```

The parent's run directory lives like any run's (:class:`src.core.lifecycle.RunLifecycle`).
Finished folds are skipped on a rerun and a killed fold resumes from its own ``last.ckpt`` (both
by :func:`src.core.training.train`). Folds may also run as separate jobs (Hydra multirun on a
cluster, ``cv.folds=[k]`` each): they share the parent through a file lock, and whichever job
sees every fold finished merges the out-of-fold tables and closes the parent run.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from src.core.artifacts import (
    FLOAT_DIGITS,
    RECORDS_FILE,
    RESOLVED_CONFIG_FILE,
    SUMMARY_FILE,
    build_resolved_config,
    build_summary,
    read_record_lines,
    read_resolved_config,
    write_artifact,
)
from src.core.contracts import TaskModule
from src.core.errors import ConfigError, DataError
from src.core.evaluating import evaluation_counters, import_scorer, score_usable, write_evaluation
from src.core.io import atomic_path, write_json_atomic
from src.core.lifecycle import RunLifecycle, build_components
from src.core.mlflow_client import RunSpec, configured_tracking_uri
from src.core.predicting import predict
from src.core.rundir import PREDICTIONS_DIR, RunDir, RunState
from src.core.training import train

OOF_DIR = "oof"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing), across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fold_list(cfg: DictConfig) -> list[int]:
    """The folds this invocation runs: ``cv.folds`` or all ``data.n_folds``.

    Raises:
        ConfigError: The datamodule has no folds, or a fold is out of range.
    """
    if cfg.data.get("n_folds") is None:
        raise ConfigError(
            f"{cfg.experiment_name}: its datamodule ({cfg.data.get('_target_')}) has no folds (data.n_folds), "
            "so there is nothing to cross-validate",
            "pass data.n_folds=<K> where the datamodule supports it (video: K blocks in time), or train "
            "it with python train.py",
        )
    n_folds = int(cfg.data.n_folds)
    folds = list(range(n_folds)) if cfg.cv.folds is None else [int(k) for k in cfg.cv.folds]
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad:
        raise ConfigError(
            f"cv.folds={folds} has fold(s) {bad} outside 0..{n_folds - 1} (data.n_folds={n_folds})",
            f"pass cv.folds=[...] with folds in 0..{n_folds - 1}, or cv.folds=null for all of them",
        )
    return folds


def fold_dir(parent: RunDir, k: int) -> Path:
    return parent.path / f"fold_{k}"


def fold_config(cfg: DictConfig, parent: RunDir, k: int, parent_run_id: str | None) -> DictConfig:
    """The config of fold ``k``: same everything, its own run directory and validation fold."""
    child = copy.deepcopy(cfg)
    with open_dict(child):
        child.data.fold = k
        child.run_name = f"{cfg.run_name}/fold_{k}"
        child.paths.output_dir = str(fold_dir(parent, k))
        if _uses_mlflow(child):
            child.logger.mlflow.parent_run_id = parent_run_id
            child.logger.mlflow.run_name = f"{cfg.run_name}/fold_{k}"
        child.tags = [*cfg.get("tags", []), f"fold_{k}"]
    return child


def _mlflow_spec(cfg: DictConfig) -> RunSpec | None:
    """The parent's MLflow run: tagged ``podium.cv=parent``, its folds' folders not uploaded."""
    if not _uses_mlflow(cfg):
        return None
    return RunSpec(
        cfg.paths.mlflow_dir,
        cfg.experiment_name,
        cfg.run_name,
        {"podium.cv": "parent"},
        ("fold_*",),
        configured_tracking_uri(cfg),
        float(cfg.logger.mlflow.get("retry_s", 30.0)),
    )


def _uses_mlflow(cfg: DictConfig) -> bool:
    return bool(cfg.get("logger")) and bool(cfg.logger.get("mlflow"))


def check_folds(cfg: DictConfig, parent: RunDir, folds: list[int]) -> None:
    """Build what the first fold builds and check the out-of-fold scorer, so that a value they
    refuse stops ``cv.py`` before the parent run is written or any fold trains."""
    components = build_components(fold_config(cfg, parent, folds[0], None))
    model = components.model
    if not isinstance(model, TaskModule) or not model.evaluator:
        raise ConfigError(
            f"model {type(model).__name__} writes no out-of-fold records (predict_records) or names no evaluator",
            "use a model built on src.modules.base.PodiumModule with task and evaluator set",
        )
    import_scorer(model.evaluator, model.task, f"fix {type(model).__name__}.evaluator")
    if cfg.cv.ckpt not in ("last", "best"):
        raise ConfigError(f"cv.ckpt={cfg.cv.ckpt!r} is not a fold checkpoint", "pass cv.ckpt=last or cv.ckpt=best")


@rank_zero_only
def open_parent(cfg: DictConfig, parent: RunLifecycle) -> bool:
    """Start the parent run (config.yaml, manifest.json, MLflow run) unless another job did.

    Returns:
        True when this call started it (False: reopened the one another job started).
    """
    with locked(parent.run.path / ".cv.lock"):
        if parent.run.manifest_file.is_file() and not parent.force:
            parent.reopen(_mlflow_spec(cfg))
            return False
        parent.start(mlflow=_mlflow_spec(cfg), extra={"folds": int(cfg.data.n_folds)})
        return True


@rank_zero_only
def discard_unused_parent(parent: RunLifecycle) -> None:
    """Undo :func:`open_parent` after a failure before any fold recorded anything.

    A command rejected at its first fold (data a loader refuses mid-setup) then leaves no parent
    manifest behind, and the entry point removes the folder like any stray run directory. The
    parent MLflow run, if one was created, is marked FAILED.
    """
    with locked(parent.run.path / ".cv.lock"):
        if not any(parent.run.path.glob("fold_*/manifest.json")):  # else the parent resumes them
            parent.abandon()


def merge_oof(parent: RunDir, n_folds: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Concatenate the folds' validation tables; average their test tables by sample id."""
    vals, tests = [], []
    for k in range(n_folds):
        oof = fold_dir(parent, k) / OOF_DIR
        if not (oof / "val.parquet").is_file():
            raise DataError(
                f"fold {k} finished without out-of-fold predictions ({oof / 'val.parquet'})",
                "add an OOF writer callback to the experiment (e.g. callbacks=[default,oof_images])",
            )
        vals.append(pd.read_parquet(oof / "val.parquet"))
        if (oof / "test.parquet").is_file():
            tests.append(pd.read_parquet(oof / "test.parquet"))
    val = pd.concat(vals, ignore_index=True)
    dup = val.sample_id[val.sample_id.duplicated()]
    if not dup.empty:
        raise DataError(f"sample {dup.iloc[0]!r} is in the validation fold of two folds", "rewrite the folds file")
    test = None
    if len(tests) == n_folds:
        test = pd.concat(tests).groupby("sample_id", sort=False).mean(numeric_only=True).reset_index()
    return val, test


def _summary(parent: RunDir, n_folds: int) -> dict[str, Any]:
    per_fold = [RunDir(fold_dir(parent, k)).metrics() for k in range(n_folds)]
    keys = sorted({k for m in per_fold for k, v in m.items() if isinstance(v, float)})
    summary: dict[str, Any] = {}
    for key in keys:
        values = np.array([m[key] for m in per_fold if key in m], dtype=float)
        summary[f"cv/{key}/mean"] = float(values.mean())
        summary[f"cv/{key}/std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def fold_records(parent: RunDir, k: int) -> Path:
    """Fold ``k``'s out-of-fold prediction folder."""
    return fold_dir(parent, k) / PREDICTIONS_DIR / "val"


def predict_fold(cfg: DictConfig, parent: RunDir, k: int) -> None:
    """Fold ``k``'s out-of-fold records: its validation fold predicted by ``predict.py``'s job with
    the fold's ``cv.ckpt`` checkpoint. Done once; a rerun finds the folder complete.

    Every process of a distributed job calls it (Lightning synchronises the processes inside the
    predict loop, even on one device each); rank zero writes the folder."""
    if (fold_records(parent, k) / SUMMARY_FILE).is_file():
        return
    child = fold_config(cfg, parent, k, None)
    with open_dict(child):
        child.ckpt, child.split = cfg.cv.ckpt, "val"
        child.keep_frames, child.float_digits, child.evaluator = False, FLOAT_DIGITS, None
    predict(child)


def merge_records(cfg: DictConfig, parent: RunDir, n_folds: int) -> dict[str, Any]:
    """Merge every fold's out-of-fold records into ``oof/`` and score them with the task's evaluator.

    Returns:
        ``oof/<metric>`` for each of the evaluator's metrics, ``oof/score`` (``cv.oof_metric``)
        and ``oof/samples``.
    """
    rows: list[dict[str, Any]] = []
    resolved: dict[str, Any] = {}
    for k in range(n_folds):
        records, _, _ = read_record_lines(fold_records(parent, k) / RECORDS_FILE, strict=True)
        resolved = resolved or read_resolved_config(fold_records(parent, k)) or {}
        rows.extend({**r, "fold": k} for r in records)
    twice = [sid for sid, n in Counter(r["sample_id"] for r in rows).items() if n > 1]
    if twice:
        raise DataError(f"sample {twice[0]!r} is in the validation fold of two folds", "rewrite the folds file")
    out = parent.path / OOF_DIR
    task, evaluator = resolved.get("task", ""), resolved.get("evaluator") or ""
    artifacts = {"records": RECORDS_FILE, "summary": SUMMARY_FILE, "resolved_config": RESOLVED_CONFIG_FILE}
    stages = [*resolved.get("stages", []), "cv:merge"]
    config = OmegaConf.to_container(cfg, resolve=True)
    summary = build_summary(rows, task, {"requested": cfg.cv.ckpt}, 0.0, folds=n_folds)
    write_artifact(out, rows, build_resolved_config(task, stages, artifacts, evaluator, None, config), summary)
    scorer = import_scorer(evaluator, task, "predict the folds again (delete fold_*/predictions)")
    lines = list(range(1, len(rows) + 1))
    evaluation, scored = score_usable(out / RECORDS_FILE, rows, lines, scorer)
    metrics = evaluation.metrics
    write_evaluation(out, evaluation, evaluation_counters(rows, scored, evaluation.counters))
    return {**{f"oof/{k}": v for k, v in metrics.items()}, **_oof_score(cfg, metrics), "oof/samples": len(rows)}


def _oof_score(cfg: DictConfig, metrics: dict[str, float]) -> dict[str, float]:
    """``oof/score``: ``cv.oof_metric``, by default the last part of ``optimized_metric``
    (``val/acc`` → ``acc``, ``val/cal/score2024`` → ``score2024``)."""
    name = cfg.cv.get("oof_metric") or str(cfg.get("optimized_metric") or "").rsplit("/", 1)[-1]
    if name in metrics:
        return {"oof/score": float(metrics[name])}
    rank_zero_only(print)(
        f"podium: the out-of-fold metrics have no {name or '(unnamed)'!r} for oof/score "
        f"(they have: {', '.join(sorted(metrics))}); set cv.oof_metric=<one of them>"
    )
    return {}


def merge_folds(cfg: DictConfig, parent: RunDir) -> dict[str, Any]:
    """Merge the folds' out-of-fold records (and classification tables, when the folds wrote
    them) into ``oof/``; fold statistics and the out-of-fold scores.

    Returns:
        The parent's metrics: ``cv/<metric>/mean|std``, ``oof/<metric>``, ``oof/score``,
        ``oof/samples``.
    """
    n_folds = int(cfg.data.n_folds)
    metrics = {**_summary(parent, n_folds), **merge_records(cfg, parent, n_folds)}
    if (fold_dir(parent, 0) / OOF_DIR / "val.parquet").is_file():
        merge_tables(parent, n_folds)
    return metrics


def merge_tables(parent: RunDir, n_folds: int) -> None:
    """The classification OOF tables of ``ensemble.py``: ``oof/oof.parquet``, ``oof/test.parquet``
    (averaged over folds) and ``oof/classes.json``."""
    val, test = merge_oof(parent, n_folds)
    out = parent.path / OOF_DIR
    for name, frame in (("oof.parquet", val), ("test.parquet", test)):
        if frame is not None:
            with atomic_path(out / name) as tmp:
                frame.to_parquet(tmp, index=False)
    classes = fold_dir(parent, 0) / OOF_DIR / "classes.json"
    if classes.is_file():
        write_json_atomic(out / "classes.json", json.loads(classes.read_text()))


@rank_zero_only
def close_parent(cfg: DictConfig, parent: RunLifecycle) -> dict[str, Any]:
    """Merge the folds (:func:`merge_folds`) and finish the parent run, once (under the lock)."""
    with locked(parent.run.path / ".cv.lock"):
        if parent.run.state() is RunState.FINISHED:
            return parent.run.metrics()
        metrics = merge_folds(cfg, parent.run)
        parent.finish(metrics, mlflow_metrics=metrics)
        return metrics


def run_cv(cfg: DictConfig) -> float | None:
    """Run the requested folds; when all are finished, merge and report the parent run.

    The parent's run directory has the lifecycle of any run (:class:`RunLifecycle`): finished →
    reported, another config → refused, ``force=true`` → every fold starts over.

    Args:
        cfg: The composed ``configs/cv.yaml`` (``train.yaml`` plus the ``cv`` node).

    Returns:
        The parent's ``oof/score`` (or None until every fold has finished).
    """
    parent = RunLifecycle(cfg, job="cross-validation", redo="run every fold again")
    finished = parent.begin()
    if finished is not None:
        return finished.get("oof/score")
    folds = fold_list(cfg)
    check_folds(cfg, parent.run, folds)
    created = open_parent(cfg, parent)
    parent_run_id = parent.mlflow.run_id if parent.mlflow is not None else None
    try:
        for k in folds:
            train(fold_config(cfg, parent.run, k, parent_run_id))
            predict_fold(cfg, parent.run, k)
    except Exception:
        if created:
            discard_unused_parent(parent)
        raise
    n_folds = int(cfg.data.n_folds)
    missing = [k for k in range(n_folds) if RunDir(fold_dir(parent.run, k)).state() is not RunState.FINISHED]
    if missing:
        rank_zero_only(print)(
            f"podium: folds {missing} of {parent.run.path} are not finished yet; the parent closes then"
        )
        return None
    for k in range(n_folds):
        predict_fold(cfg, parent.run, k)  # a fold trained by a job that ended before predicting it
    metrics = close_parent(cfg, parent) or {}
    return metrics.get("oof/score")
