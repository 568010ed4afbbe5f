"""Per-epoch and per-batch seeding: the randomness of batch ``b`` of epoch ``e`` depends on
(seed, e, b) alone.

Lightning restores weights, optimizer and loop state on resume but not the global random number
generators. Reseeding Python, NumPy and torch at the start of every training epoch makes dropout,
augmentation and DataLoader worker seeds of a resumed epoch identical to those of an uninterrupted
run, which is what makes "kill, rerun, same final metrics" hold. Reseeding again before every
training batch does the same for a run resumed in the middle of an epoch (the checkpoint Lightning
writes when SLURM asks a job to requeue).
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override

from src.datamodules.seeding import batch_seed, epoch_seed


def _reseed(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


class EpochSeed(pl.Callback):
    """Reseed every random number generator at the start of each training epoch and batch.

    Args:
        seed: The run's seed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _reseed(epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank))

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning does not call on_train_epoch_start when it resumes mid-epoch.
        _reseed(batch_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))
