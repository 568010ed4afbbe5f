"""Plain MLflow client helpers for the repository's store (no Lightning import: cheap to load).

The store lives at ``<root>/mlruns``: a SQLite database plus an ``artifacts/`` folder.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MAX_PARAM_CHARS = 6000
_BAD_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def tracking_uri(store_dir: str | Path) -> str:
    """The SQLite tracking URI of the store at ``store_dir``."""
    return f"sqlite:///{Path(store_dir).resolve() / 'mlflow.db'}"


def ensure_store(store_dir: str | Path) -> str:
    """Create or upgrade the store's database under an exclusive file lock; return its URI.

    MLflow builds (and migrates) a SQLite store on first use; several runs that start at once
    against a new store would otherwise race through the same schema migration and fail.
    """
    import fcntl

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(store_dir)
    folder.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(folder)
    with open(folder / ".store.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            SqlAlchemyStore(uri, artifact_root(folder))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return uri


def artifact_root(store_dir: str | Path) -> str:
    """The artifact location new experiments of the store get."""
    return (Path(store_dir).resolve() / "artifacts").as_uri()


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested mapping into ``a.b.c -> str(value)`` MLflow params (lists kept whole)."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


def client(store_dir: str | Path) -> Any:
    """An ``MlflowClient`` on the store, creating the store if needed."""
    import mlflow

    return mlflow.MlflowClient(ensure_store(store_dir))


def experiment_id(mlf: Any, name: str, store_dir: str | Path) -> str:
    """Id of the experiment ``name``, created with the store's artifact root if missing.

    Several processes may create it at once; the losers of that race look it up again.
    """
    for attempt in range(5):
        exp = mlf.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return mlf.create_experiment(name, artifact_location=artifact_root(store_dir))
        except Exception:  # noqa: BLE001 - MLflow raises store-specific errors for the race
            time.sleep(0.2 * (attempt + 1))
    return mlf.get_experiment_by_name(name).experiment_id


RUN_DIR_TAG = "podium.run_dir"


def start_run(
    mlf: Any, experiment: str, run_name: str, run_dir: str | Path, tags: Mapping[str, str] | None = None
) -> str:
    """Create a RUNNING run tagged with its run directory and close the orphans it supersedes."""
    run_id = mlf.create_run(experiment, run_name=run_name, tags={**(tags or {}), RUN_DIR_TAG: str(run_dir)}).info.run_id
    close_orphans(mlf, experiment, run_dir, keep=run_id)
    return run_id


def close_orphans(mlf: Any, experiment: str, run_dir: str | Path, keep: str) -> None:
    """Mark KILLED the RUNNING runs of ``run_dir`` other than ``keep``.

    A process killed between creating its MLflow run and recording the run id in the run
    directory's ``manifest.json`` (or a run directory reset with ``force=true`` after a kill)
    leaves a run that would otherwise show as RUNNING forever; the fresh start that replaces it
    closes it, tagged ``podium.superseded_by``.
    """
    for run in mlf.search_runs([experiment], filter_string="attributes.status = 'RUNNING'"):
        if run.info.run_id != keep and run.data.tags.get(RUN_DIR_TAG) == str(run_dir):
            mlf.set_tag(run.info.run_id, "podium.superseded_by", keep)
            mlf.set_terminated(run.info.run_id, status="KILLED")


def log_params(mlf: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Log a flat dict of params in batches of 100 (MLflow's limit)."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlf.log_batch(run_id, params=items[start : start + 100])


def log_metrics(mlf: Any, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log finite float metrics in batches (keys sanitised to MLflow's allowed characters)."""
    import math

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [
        Metric(_BAD_METRIC_CHARS.sub("_", k), float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    for start in range(0, len(batch), 500):
        mlf.log_batch(run_id, metrics=batch[start : start + 500])


def log_run_dir(mlf: Any, run_id: str, run_dir: str | Path, skip: Iterable[str] = ()) -> None:
    """Upload a run directory's files as artifacts, keeping their relative folders.

    Hidden files and folders are left out, and so are top-level files and folders whose name
    matches a pattern in ``skip`` (names or globs: ``checkpoints``, ``hpc_ckpt_*.ckpt``).
    """
    run_dir, skip = Path(run_dir), list(skip)
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if any(fnmatch.fnmatchcase(rel.parts[0], pattern) for pattern in skip):
            continue
        mlf.log_artifact(run_id, str(path), artifact_path=str(rel.parent) if str(rel.parent) != "." else None)
