"""Stochastic weight averaging that keeps the averaged weights only if they validate better."""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import StochasticWeightAveraging
from typing_extensions import override

from src.core.contracts import SelfEvaluating
from src.core.private_api import swa_average_model


class SelectiveSWA(StochasticWeightAveraging):
    """Lightning's ``StochasticWeightAveraging``, then a choice: SWA or the raw final weights.

    When training ends (after Lightning's batch-norm refresh of the averaged weights), both the
    averaged and the raw weights are scored on the validation loader with the module's
    ``evaluate(loader)``; the better one by ``metric`` stays in the module. The choice and both
    scores go to ``trainer.callback_metrics`` (so into ``metrics.json``) and to the loggers as
    ``swa/selected`` (1 = SWA kept), ``swa/<metric>`` and ``raw/<metric>``.

    Args:
        metric: Key of ``evaluate``'s result to compare (``loss`` or ``acc``).
        mode: ``min`` or ``max``.
        **kwargs: ``StochasticWeightAveraging`` arguments (``swa_lrs``, ``swa_epoch_start``, ...).
    """

    module_hooks = (SelfEvaluating,)

    def __init__(self, metric: str = "loss", mode: str = "min", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric, self.mode = metric, mode
        self._raw_state: dict[str, torch.Tensor] | None = None

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning overwrites the raw weights with the average at the start of the extra
        # batch-norm epoch: keep a copy first.
        if trainer.current_epoch == self.swa_end + 1:  # swa_end is inf when max_epochs=-1
            self._raw_state = copy.deepcopy(pl_module.state_dict())
        super().on_train_epoch_start(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._raw_state is None and swa_average_model(self) is not None:
            self._raw_state = copy.deepcopy(pl_module.state_dict())  # no batch norm: no extra epoch
        super().on_train_end(trainer, pl_module)
        if self._raw_state is None or not hasattr(pl_module, "evaluate"):
            return
        loader = trainer.datamodule.val_dataloader()
        swa_state = copy.deepcopy(pl_module.state_dict())
        swa_score = pl_module.evaluate(loader)[self.metric]
        pl_module.load_state_dict(self._raw_state)
        raw_score = pl_module.evaluate(loader)[self.metric]
        keep_swa = swa_score <= raw_score if self.mode == "min" else swa_score >= raw_score
        if keep_swa:
            pl_module.load_state_dict(swa_state)
        record = {"swa/selected": float(keep_swa), f"swa/{self.metric}": swa_score, f"raw/{self.metric}": raw_score}
        for key, value in record.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        for logger in trainer.loggers:
            logger.log_metrics(record, step=trainer.global_step)
        self._raw_state = None
