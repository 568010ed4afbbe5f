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


class StepTimer(pl.Callback):
    """Record the wall time of every training step and log its running median.

    The interval runs from one ``on_train_batch_end`` to the next, so it counts everything a
    step costs: fetching the batch, forward, backward, optimizer, logging and callbacks.

    Args:
        skip: Steps ignored at the start of each epoch (warm-up, worker start).
        out_file: Optional JSON file the per-step seconds are written to when training ends.
    """

    def __init__(self, skip: int = 2, out_file: str | None = None) -> None:
        self.skip = skip
        self.out_file = out_file
        self.seconds: list[float] = []
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

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.seconds:
            pl_module.log("perf/step_seconds_median", float(np.median(self.seconds)))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.out_file and trainer.is_global_zero:
            write_json_atomic(Path(self.out_file), {"step_seconds": self.seconds})


def load_step_seconds(path: str | Path) -> list[float]:
    """Read the per-step seconds a StepTimer wrote."""
    return json.loads(Path(path).read_text())["step_seconds"]
