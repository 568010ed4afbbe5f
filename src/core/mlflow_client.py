"""Plain MLflow client helpers for the repository's store (no Lightning import: cheap to load).

The store lives at ``<root>/mlruns``: a SQLite database plus an ``artifacts/`` folder.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
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


def log_new_params(mlf: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Flatten ``params`` and log the keys the run does not have yet (a resumed run has its first
    life's params, and MLflow refuses to log a param twice)."""
    existing = mlf.get_run(run_id).data.params
    log_params(mlf, run_id, {k: v for k, v in flatten(params).items() if k not in existing})


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


@dataclass
class MlflowRun:
    """The MLflow run a run directory records into.

    Attributes:
        client: An ``MlflowClient`` on the run's store.
        run_id: The run.
        skip: Top-level names or globs of the run directory not uploaded as artifacts.
    """

    client: Any
    run_id: str
    skip: tuple[str, ...] = ()

    @cached_property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    def log_new_params(self, params: Mapping[str, Any]) -> None:
        """Log the flattened ``params`` the run does not have yet."""
        log_new_params(self.client, self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Log the finite numbers among ``metrics`` at step 0."""
        log_metrics(self.client, self.run_id, metrics)

    def upload(self, run_dir: str | Path) -> None:
        """Upload the run directory's files as artifacts, except those ``skip`` names."""
        log_run_dir(self.client, self.run_id, run_dir, skip=self.skip)

    def terminate(self, status: str) -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self.client.set_terminated(self.run_id, status)


@dataclass(frozen=True)
class RunSpec:
    """Where and how a run directory's MLflow run is created.

    Args:
        store_dir: The MLflow store folder (``<root>/mlruns``).
        experiment: The MLflow experiment (the experiment config's name).
        run_name: The MLflow run name (the run directory's ``run_name``).
        tags: Tags set at creation (besides the run directory's, which :func:`start_run` adds).
        skip: Top-level names or globs of the run directory not uploaded as artifacts.
    """

    store_dir: str | Path
    experiment: str
    run_name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    skip: tuple[str, ...] = ()

    def open(self, run_dir: str | Path, recorded_id: str | None) -> MlflowRun:
        """The run ``recorded_id`` (a resumed run), or a new RUNNING run of ``run_dir``.

        A new run closes the RUNNING runs a killed process left for the same run directory.
        """
        mlf = client(self.store_dir)
        if recorded_id is None:
            experiment = experiment_id(mlf, self.experiment, self.store_dir)
            recorded_id = start_run(mlf, experiment, self.run_name, run_dir, tags=self.tags)
        return MlflowRun(mlf, recorded_id, self.skip)
