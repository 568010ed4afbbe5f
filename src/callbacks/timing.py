"""Step timing: wall-clock seconds between consecutive training steps, data loading included."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from typing_extensions import override

from src.core.io import write_json_atomic


def profiler_totals(profiler: Any) -> dict[str, dict[str, float]]:
    """Calls and total seconds per action of a profiler that records durations.

    Args:
        profiler: A Trainer's profiler; Lightning's ``SimpleProfiler`` keeps every action's
            durations (seconds) in ``recorded_durations``, other profilers record none here.

    Returns:
        ``{action: {"calls": n, "total_s": seconds}}``; empty for a profiler without durations.
    """
    durations = getattr(profiler, "recorded_durations", None) or {}
    return {name: {"calls": len(d), "total_s": float(sum(d))} for name, d in durations.items()}


class StepTimer(pl.Callback):
    """Record the wall time of every training step and log its running median.

    The interval runs from one ``on_train_batch_end`` to the next, so it counts everything a
    step costs: fetching the batch, forward, backward, optimizer, logging and callbacks.

    Args:
        skip: Steps ignored at the start of each epoch (warm-up, worker start).
        out_file: Optional JSON file written when training ends: the per-step seconds
            (``step_seconds``), the number of training batches run (``batches``) and, when the
            Trainer runs a profiler that records durations (``trainer.profiler=simple``), the
            calls and total seconds of every profiled hook (``profile``).
    """

    def __init__(self, skip: int = 2, out_file: str | None = None) -> None:
        self.skip = skip
        self.out_file = out_file
        self.seconds: list[float] = []
        self.batches = 0
        self._last: float | None = None
        self._in_epoch = 0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last, self._in_epoch = None, 0

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None and self._in_epoch > self.skip:
            self.seconds.append(now - self._last)
        self._last, self._in_epoch = now, self._in_epoch + 1
        self.batches += 1

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.seconds:
            pl_module.log("perf/step_seconds_median", float(np.median(self.seconds)))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.out_file and trainer.is_global_zero:
            record = {"step_seconds": self.seconds, "batches": self.batches}
            profile = profiler_totals(trainer.profiler)
            if profile:
                record["profile"] = profile
            write_json_atomic(Path(self.out_file), record)


def load_step_seconds(path: str | Path) -> list[float]:
    """Read the per-step seconds a StepTimer wrote."""
    return json.loads(Path(path).read_text())["step_seconds"]
