"""Lightning's SLURM auto-requeue, run where a checkpoint is consistent.

With ``SLURMEnvironment(auto_requeue=True)`` (``configs/trainer/slurm.yaml``, or Lightning's own
when it detects SLURM) Lightning answers the requeue signal from inside the signal handler:
it saves ``<default_root_dir>/hpc_ckpt_<n>.ckpt`` and runs ``scontrol requeue <job id>``, and
SLURM's SIGTERM that follows ends the job. Python runs a handler between any two bytecodes, so
that checkpoint can be written halfway through an optimizer step (moments of one step, weights
of another) and the requeued job drifts from an uninterrupted run.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint
from typing_extensions import override

from src.core.private_api import cluster_environment

log = logging.getLogger("podium")


class RequeueAtStepBoundary(Checkpoint):
    """Defer Lightning's SLURM requeue handler to the next consistent point of training.

    When training starts, the handler Lightning installed for the requeue signal is replaced by
    one that only notes the signal; Lightning's handler then runs at the end of the next training
    batch (where step-based ``ModelCheckpoint`` saves), at the end of validation, or when training
    ends. Being a :class:`~lightning.pytorch.callbacks.Checkpoint`, this callback runs after the
    other callbacks' hooks, so the checkpoint holds their state for that batch too (EMA weights).
    The last batch of an epoch is skipped: its end is followed by validation, whose end is the
    save point then. In DDP the "signal seen" flag is reduced over the processes (one boolean
    all-reduce per step, only while a requeue handler is armed), so all of them save at the same
    step. Without a SLURM environment with ``auto_requeue`` this callback does nothing.
    """

    def __init__(self) -> None:
        self._signum: signal.Signals | None = None
        self._deferred: Any = None
        self._pending = False

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning's signal connector reads the environment from the same place and installs its
        # handlers just before training starts.
        env = cluster_environment(trainer)
        if not (isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal is not None):
            return
        handler = signal.getsignal(env.requeue_signal)
        if not callable(handler) or threading.current_thread() is not threading.main_thread():
            return  # Lightning installed none (another handler was there first): nothing to defer
        self._signum, self._deferred, self._pending = env.requeue_signal, handler, False
        signal.signal(env.requeue_signal, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self._pending = True
        log.info(f"requeue signal {signal.Signals(signum).name}: checkpointing at the next step boundary")

    def _requeue_if_signalled(self, trainer: pl.Trainer) -> None:
        if self._deferred is None:
            return
        if trainer.strategy.reduce_boolean_decision(self._pending, all=False):
            self._pending = False
            self._deferred(self._signum, None)  # Lightning's handler: hpc_ckpt_<n>.ckpt + scontrol requeue

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx + 1 < trainer.num_training_batches:
            self._requeue_if_signalled(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._requeue_if_signalled(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._requeue_if_signalled(trainer)
        self._deferred = None  # Lightning restores the signal's previous handler at teardown
