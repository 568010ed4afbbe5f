"""The run directory contract: ``outputs/<experiment>/<run_name>/``.

```
config.yaml        resolved config of the run
manifest.json      provenance (git, command, config hash, packages, host, data) + MLflow run id
checkpoints/       last.ckpt (resume point), the best checkpoint, on_exception.ckpt; previous/
                   holds an earlier attempt's checkpoints when the run started over (fresh start)
hpc_ckpt_<n>.ckpt  Lightning's SLURM requeue checkpoints (resume points too; only on SLURM)
metrics.json       final metrics; written atomically when the run finishes
train.log          the job's log (cv.log, ensemble.log, predict.log for those entry points): config
                   hash, resumes, each epoch's metrics, warnings, the full traceback of an error
```

What writes these files, and when, is :class:`src.core.lifecycle.RunLifecycle`'s business; the log
is Hydra's job log (``configs/hydra/job_logging/podium.yaml``).

State is read off the files alone: ``metrics.json`` present means finished, a resume point
(``last.ckpt`` or ``hpc_ckpt_<n>.ckpt``) present without it means resumable, neither means fresh.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from src.core.errors import RunStateError
from src.core.io import write_json_atomic

#: predict.py's folder in a run directory: ``predictions/<split>[-<data fingerprint>]/``.
PREDICTIONS_DIR = "predictions"
#: Where a fresh start sets aside an earlier attempt's checkpoints: ``checkpoints/previous/``.
PREVIOUS_ATTEMPT = "previous"
#: Lightning's name for the checkpoint it writes on SLURM's requeue signal.
HPC_CKPT = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


class RunState(StrEnum):
    """Where a run directory stands."""

    FRESH = "fresh"
    RESUMABLE = "resumable"
    FINISHED = "finished"


@dataclass(frozen=True)
class RunDir:
    """Paths and state of one run directory.

    Args:
        path: The run directory (``cfg.paths.output_dir``).
    """

    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def manifest_file(self) -> Path:
        return self.path / "manifest.json"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    def hpc_checkpoints(self) -> list[Path]:
        """Lightning's SLURM requeue checkpoints in this run directory, by number (newest last).

        On the requeue signal Lightning saves ``hpc_ckpt_<n>.ckpt`` into ``trainer.default_root_dir``
        (the run directory, ``configs/trainer/default.yaml``), ``n`` one above the highest present.
        """
        matches = (HPC_CKPT.fullmatch(p.name) for p in self.path.glob("hpc_ckpt_*.ckpt"))
        numbered = sorted((int(m.group(1)), self.path / m.group(0)) for m in matches if m)
        return [p for _, p in numbered if p.is_file()]

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint a resumed run continues from, or None when there is none.

        The newer (by modification time) of ``checkpoints/last.ckpt`` and the highest-numbered
        ``hpc_ckpt_<n>.ckpt``: a requeued job resumes from the checkpoint Lightning wrote on the
        requeue signal, and a job that trained past it and was then killed, from its later
        ``last.ckpt``. Lightning itself would prefer the hpc checkpoint only when no checkpoint is
        passed to ``fit``, and then even when it is older, so podium chooses here and passes it.
        """
        candidates = [p for p in (self.last_ckpt, *self.hpc_checkpoints()[-1:]) if p.is_file()]
        return max(candidates, key=lambda p: p.stat().st_mtime_ns, default=None)

    def state(self) -> RunState:
        """Finished, resumable or fresh, from the files present."""
        if self.metrics_file.is_file():
            return RunState.FINISHED
        if self.resume_checkpoint() is not None:
            return RunState.RESUMABLE
        return RunState.FRESH

    def read_json(self, path: Path) -> dict[str, Any]:
        """Read one of the run's JSON files; an unreadable one is a RunStateError naming it."""
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunStateError(
                f"{path} is not valid JSON ({exc})",
                "delete it, or rerun with force=true to start this run over",
            ) from exc

    def manifest(self) -> dict[str, Any]:
        return self.read_json(self.manifest_file)

    def metrics(self) -> dict[str, Any]:
        return self.read_json(self.metrics_file)

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` atomically: its presence marks the run finished."""
        return write_json_atomic(self.metrics_file, metrics)

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        return write_json_atomic(self.manifest_file, manifest)

    @property
    def previous_checkpoints(self) -> Path:
        return self.checkpoints / PREVIOUS_ATTEMPT

    def set_aside_checkpoints(self) -> list[Path]:
        """Move an earlier attempt's checkpoints into ``checkpoints/previous/`` before a fresh start.

        A run directory starts fresh without ``force`` when the attempt before left no resume
        point: it was killed or crashed before its first ``last.ckpt``, or ``last.ckpt`` was
        deleted. Whatever that attempt wrote must not mix with the new attempt's files: its
        monitored checkpoint would make the new one's ``best-epoch000-v1.ckpt`` (so
        ``best/checkpoint`` would depend on the earlier attempt), and Lightning resumes a fit
        started without a checkpoint from the newest of ``last.ckpt`` and an exception
        checkpoint, while podium's contract is that only ``last.ckpt`` resumes a run. The files
        are kept, one attempt back, for a post-mortem or ``init_from=``; nothing reads
        ``checkpoints/previous/``.

        Returns:
            The files' new paths (empty when there was nothing to set aside).
        """
        earlier = sorted(p for p in self.checkpoints.glob("*.ckpt") if p.is_file())
        if not earlier:
            return []
        shutil.rmtree(self.previous_checkpoints, ignore_errors=True)
        self.previous_checkpoints.mkdir(parents=True)
        return [p.replace(self.previous_checkpoints / p.name) for p in earlier]

    def reset(self) -> None:
        """Forget a previous run here (``force=true``): checkpoints, predictions, metrics and manifest go.

        The old MLflow run stays in the store; the next start creates a new one. The requeue
        checkpoints go too: on SLURM, Lightning resumes a fit started without a checkpoint from
        the newest of them.
        """
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        # Records predicted from the old checkpoints must not pass for the new run's (cv.py reuses
        # a fold's complete prediction folder).
        shutil.rmtree(self.path / PREDICTIONS_DIR, ignore_errors=True)
        for ckpt in self.hpc_checkpoints():
            ckpt.unlink(missing_ok=True)
        for f in (self.metrics_file, self.manifest_file):
            f.unlink(missing_ok=True)
