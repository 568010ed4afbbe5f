"""One line per training epoch in the job's log: ``epoch N: key=value ...``.

The console's progress bar is gone once a job ends; the run directory's ``train.log`` (Hydra's job
log, ``configs/hydra/job_logging/podium.yaml``) is what a user reads after a cluster job died, so
each epoch's metrics go there through the ``podium`` logger.
"""

from __future__ import annotations

import logging
import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

log = logging.getLogger("podium")


class EpochLog(pl.Callback):
    """Log the epoch's metrics (training aggregates and the latest validation) at INFO.

    Per-step values (keys ending in ``_step``) are left out: the epoch aggregate stands for them.

    Args:
        digits: Significant digits of each value.
    """

    def __init__(self, digits: int = 5) -> None:
        self.digits = int(digits)

    def line(self, trainer: pl.Trainer) -> str:
        """``epoch N: key=value ... (global step S)`` from the trainer's callback metrics."""
        shown = []
        for key, value in sorted(trainer.callback_metrics.items()):
            if key.endswith("_step") or (isinstance(value, torch.Tensor) and value.numel() != 1):
                continue
            number = float(value.detach().cpu()) if isinstance(value, torch.Tensor) else float(value)
            shown.append(f"{key}={number:.{self.digits}g}" if math.isfinite(number) else f"{key}={number}")
        return f"epoch {trainer.current_epoch}: {' '.join(shown)} (global step {trainer.global_step})"

    @override
    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log.info(self.line(trainer))
