"""The fold runner behind ``cv.py``: K folds of one model as child runs of one parent run.

```
outputs/<experiment>/<run_name>/          parent: manifest.json (parent MLflow run id),
  fold_0/ ... fold_{K-1}/                 one ordinary run directory per fold (resumable)
  oof/oof.parquet                         every fold's validation predictions, one table
  oof/test.parquet                        test predictions averaged over folds
  metrics.json                            fold mean/std of each metric + the OOF score
```

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
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from src.core import mlflow_client
from src.core.errors import ConfigError, DataError
from src.core.io import atomic_path, write_json_atomic, write_text_atomic
from src.core.manifest import build_manifest
from src.core.rundir import RunDir, RunState
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
    """The folds this invocation runs: ``cv.folds`` or all ``data.n_folds``."""
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


def _client(cfg: DictConfig) -> Any:
    return mlflow_client.client(cfg.paths.mlflow_dir)


@rank_zero_only
def open_parent(cfg: DictConfig, parent: RunDir) -> str | None:
    """Create (or reopen) the parent run: manifest.json and, with MLflow, the parent MLflow run."""
    with locked(parent.path / ".cv.lock"):
        manifest = parent.manifest()
        if manifest:
            return manifest.get("mlflow_run_id")
        run_id = None
        if _uses_mlflow(cfg):
            client = _client(cfg)
            exp_id = mlflow_client.experiment_id(client, cfg.experiment_name, cfg.paths.mlflow_dir)
            run_id = mlflow_client.start_run(client, exp_id, cfg.run_name, parent.path, tags={"podium.cv": "parent"})
            mlflow_client.log_params(client, run_id, mlflow_client.flatten(OmegaConf.to_container(cfg, resolve=True)))
        write_text_atomic(parent.config_file, OmegaConf.to_yaml(cfg, resolve=True))
        parent.write_manifest({**build_manifest(cfg, sys.argv, None, run_id), "folds": int(cfg.data.n_folds)})
        return run_id


@rank_zero_only
def discard_unused_parent(cfg: DictConfig, parent: RunDir, run_id: str | None) -> None:
    """Undo :func:`open_parent` after a failure before any fold recorded anything.

    A command rejected at its first fold (bad data, unknown model) then leaves no parent
    manifest behind, and the entry point removes the folder like any stray run directory. The
    parent MLflow run, if one was created, is marked FAILED.
    """
    with locked(parent.path / ".cv.lock"):
        if any(parent.path.glob("fold_*/manifest.json")):
            return  # some fold started for real: the parent is needed to resume it
        parent.manifest_file.unlink(missing_ok=True)
        parent.config_file.unlink(missing_ok=True)
    if run_id is not None:
        _client(cfg).set_terminated(run_id, "FAILED")


def _uses_mlflow(cfg: DictConfig) -> bool:
    return bool(cfg.get("logger")) and bool(cfg.logger.get("mlflow"))


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


@rank_zero_only
def close_parent(cfg: DictConfig, parent: RunDir, run_id: str | None) -> dict[str, Any]:
    """Merge OOF tables, compute fold statistics and the OOF score, finish the parent run."""
    n_folds = int(cfg.data.n_folds)
    with locked(parent.path / ".cv.lock"):
        if parent.state() is RunState.FINISHED:
            return parent.metrics()
        val, test = merge_oof(parent, n_folds)
        out = parent.path / OOF_DIR
        for name, frame in (("oof.parquet", val), ("test.parquet", test)):
            if frame is not None:
                with atomic_path(out / name) as tmp:
                    frame.to_parquet(tmp, index=False)
        classes = fold_dir(parent, 0) / OOF_DIR / "classes.json"
        if classes.is_file():
            write_json_atomic(out / "classes.json", json.loads(classes.read_text()))
        metrics = _summary(parent, n_folds)
        if cfg.cv.get("oof_score"):
            metrics["oof/score"] = float(instantiate(cfg.cv.oof_score)(val))
        metrics["oof/samples"] = len(val)
        if run_id is not None:
            client = _client(cfg)
            mlflow_client.log_metrics(client, run_id, metrics)
            mlflow_client.log_run_dir(client, run_id, parent.path, skip=[p.name for p in parent.path.glob("fold_*")])
        parent.write_metrics(metrics)
        if run_id is not None:
            client.log_artifact(run_id, str(parent.metrics_file))
            client.set_terminated(run_id, "FINISHED")
        return metrics


def run_cv(cfg: DictConfig) -> float | None:
    """Run the requested folds; when all are finished, merge and report the parent run.

    Args:
        cfg: The composed ``configs/cv.yaml`` (``train.yaml`` plus the ``cv`` node).

    Returns:
        The parent's ``oof/score`` (or None until every fold has finished).
    """
    parent = RunDir(Path(cfg.paths.output_dir))
    if parent.state() is RunState.FINISHED and not cfg.force:
        metrics = parent.metrics()
        rank_zero_only(print)(f"podium: cross-validation {parent.path} is already finished: {metrics.get('oof/score')}")
        return metrics.get("oof/score")
    if cfg.force and rank_zero_only.rank == 0:
        parent.reset()
    folds = fold_list(cfg)
    created = not parent.manifest_file.exists()
    run_id = open_parent(cfg, parent)
    try:
        for k in folds:
            train(fold_config(cfg, parent, k, run_id))
    except Exception:
        if created:
            discard_unused_parent(cfg, parent, run_id)
        raise
    n_folds = int(cfg.data.n_folds)
    missing = [k for k in range(n_folds) if RunDir(fold_dir(parent, k)).state() is not RunState.FINISHED]
    if missing:
        rank_zero_only(print)(f"podium: folds {missing} of {parent.path} are not finished yet; the parent closes then")
        return None
    metrics = close_parent(cfg, parent, run_id) or {}
    rank_zero_only(print)(f"podium: cross-validation finished: {parent.metrics_file}")
    return metrics.get("oof/score")
