"""Exponential moving average of the weights that never hands back weights it has not averaged.

Lightning's ``EMAWeightAveraging`` builds its average as a copy of the model at ``setup`` and swaps
it in for validation, checkpoints and the end of training, whether or not it has been updated.
Before ``update_starting_at_step`` (or in a run shorter than that) the "average" is the initial
weights, so validation scores, ``best.ckpt`` and the final model of a short run are those of an
untrained network. :class:`EMAWeights` keeps the average equal to the current weights until its
first update, so every swap before then is a no-op, and optionally warms the decay up.
"""

from __future__ import annotations

import itertools
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor
from typing_extensions import override

from src.core.errors import ConfigError
from src.core.private_api import weight_averaging_model


class EMAWeights(WeightAveraging):
    """EMA of the weights; validation, checkpoints and the final model use the average once it exists.

    Args:
        decay: Weight of the running average per update (``0 <= decay < 1``).
        warmup: Use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run's
            average is not dominated by its first weights (off: the constant ``decay``).
        update_every_n_steps: Update after every n-th optimizer step.
        update_starting_at_step: First optimizer step (zero-based) that updates the average.
        update_starting_at_epoch: Also update at the end of each epoch from this one on.
        device: Where the average lives (default: the module's device).
        use_buffers: Average buffers too (else they are copied).
    """

    def __init__(
        self,
        decay: float = 0.999,
        warmup: bool = False,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        device: torch.device | str | int | None = None,
        use_buffers: bool = True,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"callbacks.ema.decay={decay}", "use a decay in [0, 1), e.g. 0.999")
        if update_every_n_steps < 1:
            raise ConfigError(f"callbacks.ema.update_every_n_steps={update_every_n_steps}", "use an integer >= 1")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.update_every_n_steps = int(update_every_n_steps)
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch
        super().__init__(device=device, use_buffers=use_buffers, avg_fn=self._average)

    @override
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """After optimizer steps from ``update_starting_at_step`` on (every n-th), and at epoch ends from
        ``update_starting_at_epoch`` on (when set); the rule of Lightning's ``EMAWeightAveraging``."""
        if step_idx is not None:
            start = self.update_starting_at_step
            if (start is None or step_idx >= start) and step_idx % self.update_every_n_steps == 0:
                return True
        start_epoch = self.update_starting_at_epoch
        return epoch_idx is not None and start_epoch is not None and epoch_idx >= start_epoch

    def effective_decay(self, n_averaged: int) -> float:
        """The decay applied at an update after ``n_averaged`` earlier ones."""
        return min(self.decay, (1.0 + n_averaged) / (10.0 + n_averaged)) if self.warmup else self.decay

    def _average(self, averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        decay = self.effective_decay(int(num_averaged))
        return decay * averaged + (1.0 - decay) * current

    @property
    def started(self) -> bool:
        """Whether the average has been updated at least once."""
        average = weight_averaging_model(self)
        return average is not None and int(average.n_averaged) > 0

    def _follow_current(self, pl_module: pl.LightningModule) -> None:
        """Before the first update, make the average a copy of the current weights."""
        model = weight_averaging_model(self)
        if model is None or self.started:
            return
        average = itertools.chain(model.module.parameters(), model.module.buffers())
        current = itertools.chain(pl_module.parameters(), pl_module.buffers())
        with torch.no_grad():
            for avg, cur in zip(average, current, strict=True):
                avg.data.copy_(cur.data)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._follow_current(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._follow_current(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._follow_current(pl_module)
        super().on_train_end(trainer, pl_module)
