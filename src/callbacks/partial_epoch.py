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
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

log = logging.getLogger("podium")

KEY = "podium_partial_epoch"


def _cpu(state: Any) -> Any:
    if isinstance(state, Tensor):
        return state.detach().cpu().clone()
    return [_cpu(s) for s in state]


def _to(state: Any, device: torch.device) -> Any:
    if isinstance(state, Tensor):
        return state.to(device)
    return [_to(s, device) for s in state]


def _module_metrics(pl_module: pl.LightningModule) -> dict[str, Metric]:
    return {name: m for name, m in pl_module.named_modules() if isinstance(m, Metric) and name}


def _logged(trainer: pl.Trainer) -> dict[str, _ResultMetric]:
    """The training loop's epoch accumulators of plain values (metrics objects hold their own state)."""
    results = trainer.fit_loop.epoch_loop._results
    return {k: v for k, v in results.items() if isinstance(v, _ResultMetric) and v.is_tensor and v.meta.on_epoch}


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
        self._restore: dict[str, Any] | None = None

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
                name: {"state": {k: _cpu(v) for k, v in m.metric_state.items()}, "updates": m._update_count}
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
        if self._restore is None:
            return
        if not _resumes_at(trainer, self._restore, batch_idx):
            self._restore = None  # resumed elsewhere (a later epoch): the saved sums are not this epoch's
            return
        metrics = _module_metrics(pl_module)
        for name, saved in self._restore["share"]["metrics"].items():
            metric = metrics.get(name)
            if metric is None:
                continue
            for attr, value in saved["state"].items():
                setattr(metric, attr, _to(value, metric.device))
            metric._update_count = saved["updates"]
            metric._computed = None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._restore is None:
            return
        restore, self._restore = self._restore, None
        if not _resumes_at(trainer, restore, batch_idx):
            return
        logged = _logged(trainer)
        for key, saved in restore["share"]["logged"].items():
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
            rm._computed = None
