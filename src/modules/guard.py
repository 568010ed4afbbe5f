"""What a training step does with a NaN or infinite loss: stop with a clear error, or skip the batch.

Skipping also rolls back the module's buffers: the forward pass of a poisoned batch has already
written NaN into BatchNorm's running statistics, which would turn every later evaluation into NaN.
Stopping happens before the backward pass, so the weights (and the last checkpoint) stay as they
were after the last good step; Lightning then writes ``on_exception.ckpt`` and marks the MLflow
run FAILED. Skipping returns no loss, so Lightning neither back-propagates nor steps the optimizer
for that batch. Under DDP every process takes the same decision (one bad shard skips the batch on
all of them), because a backward pass on some processes only would hang the gradient all-reduce.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from src.core.errors import ConfigError, TrainingError

log = logging.getLogger("podium")

#: The values of a module's ``nonfinite_loss`` setting.
POLICIES = ("raise", "skip")


def check_policy(policy: str) -> str:
    """Validate a ``nonfinite_loss`` setting at construction time."""
    if policy not in POLICIES:
        raise ConfigError(f"model.nonfinite_loss={policy!r} is not a policy", f"use one of {', '.join(POLICIES)}")
    return policy


def snapshot_buffers(module: nn.Module, policy: str) -> list[Tensor] | None:
    """Copies of the module's buffers, taken before a forward pass when bad batches are skipped.

    Returns None with the ``raise`` policy, which needs no rollback (and costs nothing).
    """
    if policy != "skip":
        return None
    return [b.detach().clone() for b in module.buffers()]


def _restore_buffers(module: nn.Module, saved: list[Tensor] | None) -> None:
    if saved is None:
        return
    with torch.no_grad():
        for buffer, copy in zip(module.buffers(), saved, strict=True):
            buffer.copy_(copy)


def _all_finite(module: pl.LightningModule, loss: Tensor) -> tuple[bool, bool]:
    """(this process's loss is finite, every process's loss is finite)."""
    here = bool(torch.isfinite(loss.detach()).all())
    try:
        trainer = module.trainer
    except RuntimeError:  # not attached: the module is driven by hand (tests, notebooks)
        trainer = None
    everywhere = here if trainer is None else bool(trainer.strategy.reduce_boolean_decision(here, all=True))
    return here, everywhere


def guard_loss(
    module: pl.LightningModule, loss: Tensor, batch_idx: int, policy: str, saved: list[Tensor] | None = None
) -> Tensor | None:
    """Return ``loss`` if it is finite on every process; else raise or skip per ``policy``.

    Args:
        module: The training module (its trainer gives the step, epoch and DDP strategy).
        loss: The scalar training loss of this batch, before backward.
        batch_idx: The batch's index within the epoch.
        policy: ``raise`` (stop the run) or ``skip`` (drop this batch and go on).
        saved: :func:`snapshot_buffers` taken before the batch's forward pass; restored on a skip.

    Returns:
        ``loss``, or None when the batch is skipped.

    Raises:
        TrainingError: With ``raise``, naming the global step, epoch, batch and the fix.
    """
    here, everywhere = _all_finite(module, loss)
    if everywhere:
        return loss
    where = f"global step {module.global_step} (epoch {module.current_epoch}, batch {batch_idx})"
    value = "finite here, non-finite on another process" if here else str(float(loss.detach().float().mean()))
    if policy == "skip":
        _restore_buffers(module, saved)
        module.skipped_batches = getattr(module, "skipped_batches", 0) + 1
        log.warning("skipping a batch with a non-finite training loss (%s) at %s", value, where)
        # Every process skips together, so the count is the same on all of them.
        count = float(module.skipped_batches)
        module.log("train/skipped_batches", count, on_step=False, on_epoch=True, reduce_fx="max")
        return None
    raise TrainingError(
        f"non-finite training loss ({value}) at {where}; the weights are those of the last good step and "
        "checkpoints/last.ckpt holds the last completed epoch",
        "look for NaN/Inf in the inputs of that batch, lower model.optimizer.lr or clip gradients "
        "(trainer.gradient_clip_val), or set model.nonfinite_loss=skip to skip such batches",
    )
