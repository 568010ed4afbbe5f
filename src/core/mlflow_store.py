"""Lightning's MLflow logger bound to podium's run directory and store (``<root>/mlruns``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from src.core.mlflow_client import (
    RUN_DIR_TAG,
    artifact_root,
    close_orphans,
    ensure_store,
    flatten,
    log_run_dir,
    tracking_uri,
)

__all__ = ["PodiumMLFlowLogger", "artifact_root", "flatten", "tracking_uri"]


class PodiumMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger bound to the run directory.

    Reuses the MLflow run id recorded in the run directory's ``manifest.json`` (so a resumed run
    logs into the same MLflow run), logs params without clashing with those already logged, and
    uploads the run directory's files as artifacts at the end.

    Args:
        store_dir: The MLflow store folder (``<root>/mlruns``).
        experiment_name: MLflow experiment (the experiment config's name).
        run_name: MLflow run name (the run directory's name).
        manifest_path: The run directory's ``manifest.json``.
        tags: Extra run tags.
        log_checkpoints: Also upload ``checkpoints/`` as artifacts.
        parent_run_id: Nest this run under a parent run (cross-validation folds).
    """

    def __init__(
        self,
        store_dir: str,
        experiment_name: str,
        run_name: str,
        manifest_path: str | None = None,
        tags: Iterable[str] | Mapping[str, Any] | None = None,
        log_checkpoints: bool = False,
        parent_run_id: str | None = None,
    ) -> None:
        uri = ensure_store(store_dir)
        run_id = None
        if manifest_path and Path(manifest_path).is_file():
            try:
                run_id = json.loads(Path(manifest_path).read_text()).get("mlflow_run_id")
            except json.JSONDecodeError:
                run_id = None
        if tags is not None and not isinstance(tags, Mapping):
            tags = {str(t): "true" for t in tags}
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        # Tagged at creation, so a run whose manifest never got written can be found again.
        self._run_dir = str(Path(manifest_path).parent) if manifest_path else None
        if self._run_dir is not None:
            tags.setdefault(RUN_DIR_TAG, self._run_dir)
        self._fresh = run_id is None and self._run_dir is not None  # a new run: close what it supersedes
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=uri,
            tags=tags,
            artifact_location=artifact_root(store_dir),
            run_id=run_id,
        )
        self.log_checkpoints = log_checkpoints
        self._logged: dict[str, set[int]] | None = None

    @property
    @override
    def experiment(self) -> Any:
        # Several processes may create the same experiment at once; the losers of that race
        # see a unique-constraint error and simply look the experiment up again.
        for attempt in range(5):
            try:
                client = super().experiment
                break
            except Exception as exc:
                if attempt == 4 or "UNIQUE" not in str(exc).upper():
                    raise
                time.sleep(0.2 * (attempt + 1))
        if self._fresh and self._initialized:
            self._fresh = False
            close_orphans(client, self._experiment_id, self._run_dir, keep=self._run_id)
        return client

    @override
    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Log params not yet on the run (a resumed run already has them)."""
        if not isinstance(params, Mapping):
            params = vars(params)
        existing = self.experiment.get_run(self.run_id).data.params
        fresh = {k: v for k, v in flatten(params).items() if k not in existing}
        if fresh:
            super().log_hyperparams(fresh)

    def _logged_steps(self) -> dict[str, set[int]]:
        """Steps already on the run per metric key (a resumed run has those of its first life)."""
        if self._logged is None:
            client, run_id = self.experiment, self.run_id
            keys = client.get_run(run_id).data.metrics
            self._logged = {k: {m.step for m in client.get_metric_history(run_id, k)} for k in keys}
        return self._logged

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log each (metric, step) once: a resumed run replays the steps after its checkpoint.

        Replayed steps carry the same values (resume is exact), so the first record stands and
        the MLflow history has every step of every metric exactly once, with no gaps.
        """
        at = step or 0
        logged = self._logged_steps()
        fresh = {k: v for k, v in metrics.items() if at not in logged.get(k, ())}
        if fresh:
            super().log_metrics(fresh, step)
        for key in fresh:
            logged.setdefault(key, set()).add(at)

    @rank_zero_only
    def log_run_dir(self, run_dir: str | Path) -> None:
        """Upload the run directory's files as artifacts (checkpoints only if configured).

        Lightning writes its SLURM requeue checkpoints beside ``config.yaml``, not in ``checkpoints/``.
        """
        skip = {"csv"} | (set() if self.log_checkpoints else {"checkpoints", "hpc_ckpt_*.ckpt"})
        log_run_dir(self.experiment, self.run_id, run_dir, skip=skip)

    @rank_zero_only
    def set_tag(self, key: str, value: str) -> None:
        self.experiment.set_tag(self.run_id, key, value)
