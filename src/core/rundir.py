"""The run directory contract: ``outputs/<experiment>/<run_name>/``.

```
config.yaml        resolved config of the run
manifest.json      provenance (git, command, config hash, packages, host, data) + MLflow run id
checkpoints/       last.ckpt (resume point), the best checkpoint, on_exception.ckpt
metrics.json       final metrics; written atomically when the run finishes
```

State is read off the files alone: ``metrics.json`` present means finished, ``last.ckpt`` present
without it means resumable, neither means fresh.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from src.core.errors import RunStateError
from src.core.io import write_json_atomic


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

    def state(self) -> RunState:
        """Finished, resumable or fresh, from the files present."""
        if self.metrics_file.is_file():
            return RunState.FINISHED
        if self.last_ckpt.is_file():
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

    def set_aside_exception_checkpoint(self) -> None:
        """Rename a crash's ``on_exception.ckpt`` so a fresh start does not resume from it.

        Lightning resumes from the newest of last.ckpt and the exception checkpoint when no
        checkpoint is passed; podium's contract is that only ``last.ckpt`` resumes a run. The
        file stays, as ``on_exception.previous.ckpt``, for a post-mortem.
        """
        crashed = self.checkpoints / "on_exception.ckpt"
        if crashed.is_file():
            crashed.replace(self.checkpoints / "on_exception.previous.ckpt")

    def reset(self) -> None:
        """Forget a previous run here (``force=true``): checkpoints, metrics and manifest go.

        The old MLflow run stays in the store; the next start creates a new one.
        """
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        for f in (self.metrics_file, self.manifest_file):
            f.unlink(missing_ok=True)
