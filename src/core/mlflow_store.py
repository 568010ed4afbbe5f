"""Lightning's MLflow logger bound to podium's run directory and tracking store.

The store is ``logger.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded one at
``<root>/mlruns`` (:func:`src.core.mlflow_client.resolve_tracking_uri`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from src.core.mlflow_client import (
    MlflowRun,
    RunSpec,
    artifact_location,
    artifact_root,
    ensure_store,
    flatten,
    log_new_params,
    tracking_uri,
)

__all__ = ["PodiumMLFlowLogger", "artifact_root", "flatten", "tracking_uri"]

#: The characters Lightning's MLFlowLogger removes from metric names.
_LIGHTNING_BAD_METRIC_CHARS = re.compile(r"[^a-zA-Z0-9_/. -]+")

#: MLflow's run status for the status Lightning finalizes a logger with.
RUN_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}


class PodiumMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger logging into the MLflow run of the run directory.

    Building it creates no MLflow run: the run lifecycle (``src.core.lifecycle.RunLifecycle``)
    calls :meth:`open` once the run has passed every start-up check, which binds the logger to the
    run recorded in ``manifest.json`` (a resumed run) or creates one with
    :func:`src.core.mlflow_client.start_run` (tagged with the run directory; it closes the runs a
    killed process left RUNNING there). Params are logged without clashing with those already on
    the run, and each (metric, step) once. While the store does not answer, what the bound run
    logs is kept in ``<run_dir>/mlflow_pending.jsonl`` and sent when it answers again, or at the
    run's next start (:class:`src.core.mlflow_client.MlflowRun`). Used without :meth:`open`, it
    behaves as Lightning's logger and creates its run on first use.

    Building it checks that the store answers, so a tracking server that is down stops the command
    (a ConfigError naming the URI) before anything is written or trained.

    Args:
        store_dir: The embedded MLflow store's folder (``<root>/mlruns``).
        experiment_name: MLflow experiment (the experiment config's name).
        run_name: MLflow run name (the run directory's name).
        tags: Extra run tags (a list of names is tagged ``name=true``).
        log_checkpoints: Also upload ``checkpoints/`` as artifacts.
        parent_run_id: Nest this run under a parent run (cross-validation folds).
        tracking_uri: A tracking server (``http(s)://``) or database (``postgresql://``,
            ``sqlite:///``) URI; None: ``$MLFLOW_TRACKING_URI``, else the embedded store.
        retry_s: Seconds between attempts to reach a store that stopped answering.
    """

    def __init__(
        self,
        store_dir: str,
        experiment_name: str,
        run_name: str,
        tags: Iterable[str] | Mapping[str, Any] | None = None,
        log_checkpoints: bool = False,
        parent_run_id: str | None = None,
        tracking_uri: str | None = None,
        retry_s: float = 30.0,
    ) -> None:
        uri = ensure_store(store_dir, tracking_uri)
        if tags is not None and not isinstance(tags, Mapping):
            tags = {str(t): "true" for t in tags}
        tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=uri,
            tags=tags,
            artifact_location=artifact_location(uri, store_dir),
        )
        # Lightning writes its SLURM requeue checkpoints beside config.yaml, not in checkpoints/.
        skip = ("csv",) + (() if log_checkpoints else ("checkpoints", "hpc_ckpt_*.ckpt"))
        self.spec = RunSpec(store_dir, experiment_name, run_name, tags, skip, tracking_uri, retry_s)
        self.log_checkpoints = log_checkpoints
        self._bound: MlflowRun | None = None
        self._logged: dict[str, set[int]] | None = None

    def open(self, run_dir: str | Path, recorded_id: str | None, recorded_store: str | None = None) -> MlflowRun:
        """Bind to the run ``recorded_id``, or create the run directory's run when it is None.

        Args:
            run_dir: The run directory (tagged on a new run; its pending records are sent first).
            recorded_id: The MLflow run id ``manifest.json`` records for a resumed run.
            recorded_store: The store ``manifest.json`` records (redacted URI), if any.

        Returns:
            The bound run (client, id and the run directory's files not to upload).
        """
        self._bound = self.spec.open(run_dir, recorded_id, recorded_store)
        self._logged = None
        return self._bound

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> Any:
        return super().experiment if self._bound is None else self._bound.client

    @property
    @override
    def run_id(self) -> str | None:
        return super().run_id if self._bound is None else self._bound.run_id

    @property
    @override
    def experiment_id(self) -> str | None:
        return super().experiment_id if self._bound is None else self._bound.experiment_id

    @override
    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self._bound is None:
            super().finalize(status)
        else:
            self._bound.terminate(RUN_STATUS.get(status, status.upper()))

    @override
    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Log params not yet on the run (a resumed run already has them)."""
        params = params if isinstance(params, Mapping) else vars(params)
        if self._bound is None:
            log_new_params(self.experiment, self.run_id, params)
        else:
            self._bound.log_new_params(params)

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
        the MLflow history has every step of every metric exactly once, with no gaps. A bound run
        keeps what the store does not take (:meth:`src.core.mlflow_client.MlflowRun.log_points`).
        """
        if self._bound is not None:
            now = int(time.time() * 1000)  # no prefix: the logger is built without one
            points = [
                (_LIGHTNING_BAD_METRIC_CHARS.sub("", k), float(v), now, step or 0)
                for k, v in metrics.items()
                if not isinstance(v, str)
            ]
            self._bound.log_points(points)
            return
        at = step or 0
        logged = self._logged_steps()
        fresh = {k: v for k, v in metrics.items() if at not in logged.get(k, ())}
        if fresh:
            super().log_metrics(fresh, step)
        for key in fresh:
            logged.setdefault(key, set()).add(at)
