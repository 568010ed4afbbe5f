"""Epoch aggregates that survive a checkpoint taken in the middle of a training epoch.

Lightning restores weights, optimizer and loop position from a mid-epoch checkpoint (the one it
writes when SLURM asks a job to requeue) but not what the interrupted epoch had accumulated so
far: the running sums behind ``self.log(..., on_epoch=True)`` and the states of the module's
torchmetrics (``train/acc``). Without them the resumed epoch's aggregates cover only the batches
after the resume, and MLflow records a different ``train/loss_epoch`` for that epoch than an
uninterrupted run would.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.trainer.states import TrainerFn
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from src.core.private_api import ResultMetric, epoch_accumulators, forget_computed, set_update_count

log = logging.getLogger("podium")

KEY = "podium_partial_epoch"


def _cpu(state: Any) -> Any:
    """A detached CPU copy of a metric state (a tensor, or a list of them for ``cat`` states)."""
    return apply_to_collection(state, Tensor, lambda t: t.detach().cpu().clone())


def _module_metrics(pl_module: pl.LightningModule) -> dict[str, Metric]:
    return {name: m for name, m in pl_module.named_modules() if isinstance(m, Metric) and name}


def _logged(trainer: pl.Trainer) -> dict[str, ResultMetric]:
    """The training loop's epoch accumulators of plain values (metrics objects hold their own state)."""
    results = epoch_accumulators(trainer)
    return {k: v for k, v in results.items() if isinstance(v, ResultMetric) and v.is_tensor and v.meta.on_epoch}


def _resumes_at(trainer: pl.Trainer, saved: dict[str, Any], batch_idx: int) -> bool:
    """Whether this batch is the one the saved epoch stopped before."""
    return trainer.current_epoch == saved["epoch"] and batch_idx == saved["batches_done"]


class PartialEpochState(pl.Callback):
    """Save the interrupted epoch's running aggregates in mid-epoch checkpoints; restore them on resume.

    Saved only when a checkpoint is written with training batches of the epoch still to come. The
    run resumed from it restores the module's metric states before its first batch and adds the
    saved running sums of ``self.log`` values to its own after that batch (when the accumulators
    exist again). Under DDP every process's share is gathered into the checkpoint and each process
    takes back its own; a different number of processes on resume drops the aggregates with a
    warning (weights and position still resume).
    """

    def __init__(self) -> None:
        self._restore: dict[str, Any] | None = None  # loaded, not yet applied
        self._pending_logged: dict[str, Any] | None = None  # to add once the first batch has logged

    @staticmethod
    def _mid_epoch(trainer: pl.Trainer) -> int | None:
        """Batches of the current epoch already trained, if the epoch has more to come."""
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return None  # (a validation inside an epoch still counts: the epoch goes on after it)
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        total = trainer.num_training_batches
        return done if 0 < done < total else None

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        done = self._mid_epoch(trainer)
        if done is None:
            return
        mine = {
            "logged": {
                key: {"value": _cpu(rm.value), "count": _cpu(getattr(rm, "cumulated_batch_size", torch.tensor(0)))}
                for key, rm in _logged(trainer).items()
            },
            "metrics": {
                name: {"state": {k: _cpu(v) for k, v in m.metric_state.items()}, "updates": m.update_count}
                for name, m in _module_metrics(pl_module).items()
            },
        }
        shares = [mine]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            shares = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, mine)
        checkpoint[KEY] = {"epoch": trainer.current_epoch, "batches_done": done, "shares": shares}

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        saved = checkpoint.get(KEY)
        if saved is None:
            return
        if len(saved["shares"]) != trainer.world_size:
            log.warning(
                "the checkpoint holds partial-epoch aggregates of %d processes, this run has %d: epoch %d's "
                "aggregates will cover only the batches after the resume",
                len(saved["shares"]),
                trainer.world_size,
                saved["epoch"],
            )
            return
        self._restore = {**saved, "share": saved["shares"][trainer.global_rank]}

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        restore, self._restore = self._restore, None
        if restore is None or not _resumes_at(trainer, restore, batch_idx):
            return  # nothing saved, or resumed elsewhere (a later epoch): the sums are not this epoch's
        metrics = _module_metrics(pl_module)
        for name, saved in restore["share"]["metrics"].items():
            metric = metrics.get(name)
            if metric is None:
                continue
            for attr, value in saved["state"].items():
                setattr(metric, attr, move_data_to_device(value, metric.device))
            set_update_count(metric, saved["updates"])
        self._pending_logged = restore["share"]["logged"]

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        pending, self._pending_logged = self._pending_logged, None
        if pending is None:
            return
        logged = _logged(trainer)
        for key, saved in pending.items():
            rm = logged.get(key)
            if rm is None:
                continue
            value = saved["value"].to(rm.value.device, rm.value.dtype)
            if rm.meta.is_mean_reduction:
                rm.value = rm.value + value
                rm.cumulated_batch_size = rm.cumulated_batch_size + saved["count"].to(rm.cumulated_batch_size.device)
            elif rm.meta.is_max_reduction or rm.meta.is_min_reduction:
                rm.value = rm.meta.reduce_fx(rm.value, value)
            elif rm.meta.is_sum_reduction:
                rm.value = rm.value + value
            forget_computed(rm)
