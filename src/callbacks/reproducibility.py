"""Per-epoch seeding: the randomness of epoch ``e`` depends on (seed, e) alone.

Lightning restores weights, optimizer and loop state on resume but not the global random number
generators. Reseeding Python, NumPy and torch at the start of every training epoch makes dropout,
augmentation and DataLoader worker seeds of a resumed epoch identical to those of an uninterrupted
run, which is what makes "kill, rerun, same final metrics" hold.
"""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed mixing the run seed, the epoch and the process rank."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0])


class EpochSeed(pl.Callback):
    """Reseed every random number generator at the start of each training epoch.

    Args:
        seed: The run's seed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        s = epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
