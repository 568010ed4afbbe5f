"""The base of every task's LightningModule: what each of them would otherwise repeat.

* the non-finite-loss guard (``nonfinite_loss: raise|skip``, :mod:`src.modules.guard`);
* optimizers and schedulers from config partials (``model.optimizer``, ``model.scheduler``),
  built once at start-up by :meth:`PodiumModule.check_optimizers` so that a bad value
  (``lr=nan``) is refused before the run directory exists;
* the prediction contract: ``predict_step`` returns a dict of per-sample tensors or lists, and
  :meth:`PodiumModule.predict_records` turns the gathered outputs into the records of
  ``gt_vs_pred.jsonl`` (``src.core.artifacts``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from src.core.errors import ConfigError
from src.modules.guard import check_policy, guard_loss, snapshot_buffers


class PodiumModule(pl.LightningModule):
    """Base LightningModule of every podium task.

    Subclasses call ``super().__init__(nonfinite_loss=...)`` first, then
    ``self.save_hyperparameters(logger=False, ignore=["net"])`` with ``optimizer`` (a partial
    called with the parameters) and ``scheduler`` (a partial called with ``optimizer`` and
    ``total_steps``, or None) among their arguments.

    Args:
        nonfinite_loss: ``raise`` stops the run at a NaN/Inf training loss; ``skip`` drops that batch.
    """

    #: The name of the task, written into the prediction artifact (``resolved_config.json``).
    task: str = ""
    #: Dotted path of the task's ``score_records(records) -> (metrics, per_sample)``, written into
    #: ``resolved_config.json`` so that ``evaluate.py`` and ``cv.py`` score the records with it.
    evaluator: str = ""

    def __init__(self, nonfinite_loss: str = "raise") -> None:
        super().__init__()
        self.nonfinite_policy = check_policy(nonfinite_loss)

    # ---- the loss guard ---------------------------------------------------------------------------

    def snapshot(self) -> list[Tensor] | None:
        """Buffers to restore if this batch's loss turns out non-finite (None with ``raise``)."""
        return snapshot_buffers(self, self.nonfinite_policy)

    def guard(self, loss: Tensor, batch_idx: int, saved: list[Tensor] | None) -> Tensor | None:
        """``loss`` if finite on every process; else raise or skip (None) per ``nonfinite_loss``."""
        return guard_loss(self, loss, batch_idx, self.nonfinite_policy, saved)

    # ---- optimizers -------------------------------------------------------------------------------

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimizer updates."""
        return (p for p in self.parameters() if p.requires_grad)

    def _make_optimizer(self) -> torch.optim.Optimizer | None:
        partial: Callable[..., torch.optim.Optimizer] | None = self.hparams.get("optimizer")
        params = list(self.trainable_parameters())
        if partial is None or not params:
            return None
        return partial(params=params)

    def check_optimizers(self) -> None:
        """Build the optimizer once, so that a value it refuses fails at start-up, not mid-run.

        Raises:
            ConfigError: naming ``model.optimizer`` and the optimizer's own message.
        """
        try:
            self._make_optimizer()
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"model.optimizer: {exc} (optimizer {self.hparams.get('optimizer')})",
                "fix the value on the command line, e.g. model.optimizer.lr=1e-3",
            ) from exc

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self._make_optimizer()
        if optimizer is None or self.hparams.get("scheduler") is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        scheduler = self.hparams.scheduler(optimizer=optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- predictions ------------------------------------------------------------------------------

    def predict_records(self, outputs: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """The records of ``gt_vs_pred.jsonl`` from ``trainer.predict``'s outputs.

        Args:
            outputs: One dict per batch, as returned by ``predict_step`` (after any predict-time
                calibration callbacks).
            split: The split predicted (``val``, ``test``, ...).

        Returns:
            One dict per sample with the keys ``sample_id``, ``split``, ``gt`` (None when
            unlabelled), ``pred`` and ``errors`` (see ``src.core.artifacts``).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement predict_records")

    def export_predictions(
        self, records: Sequence[dict[str, Any]], out_dir: Path, keep_frames: bool = False
    ) -> dict[str, Path]:
        """Write the competition export of a split, derived from its records alone.

        Called after :meth:`predict_records` and before the records are written, so an export
        that writes one file per sample may add its path to each record (``restored_path``).

        Args:
            records: The split's records (attachments included, see ``src.core.artifacts``).
            out_dir: The predictions folder of the split.
            keep_frames: Also write the per-sample outputs too large for a record (restored
                frames, masks) where the task has any.

        Returns:
            Artifact name -> written path (inside ``out_dir``). The default writes nothing.
        """
        return {}
