"""Int8 quantization-aware training of the post-filter from a configured epoch (torchao PT2E).

How the phases and resume fit together:

* ``setup`` (before any checkpoint is restored, before the optimizer exists) exports the conv
  stack and inserts torchao fake quantizers (``prepare_qat_pt2e``) *switched off*. A switched-off
  prepared graph computes exactly the float network, with the same parameter objects, so the
  float phase is ordinary training, and every checkpoint of the run — float or QAT phase — has the
  same structure. Resuming rebuilds the same prepared graph here, then Lightning loads weights,
  observer statistics and on/off flags into it; the callback's own ``active``/``frozen`` state
  comes back through ``state_dict``.
* At the start of epoch ``start_epoch`` fake quantization and observers switch on (int8 QAT);
  from ``freeze_observers_epoch`` the observers stop updating (scales frozen, weights adapt).
* Observers never update outside training batches: validation (the sanity check after a resume
  included), test and prediction run with frozen scales, so they cannot change the run.

Weight averaging (Lightning's ``EMAWeightAveraging``) keeps a deep copy of the module: ``setup``
re-runs its ``setup`` so the copy has the prepared structure, and at the QAT switch the average
restarts from the current weights (``restart_averaging``), so the exported EMA weights average QAT
steps only. The copy must not average buffers (``use_buffers: false``): averaging integer
zero points and on/off flags would corrupt them; the averaged model takes the training model's
observer state instead.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import WeightAveraging
from typing_extensions import override

from src.core.contracts import Quantizable
from src.core.errors import ConfigError
from src.core.private_api import weight_averaging_uses_buffers
from src.modules.postfilter.quant import PostFilterQuantizer, quantization_state, set_quantization


class QuantizationAwareTraining(pl.Callback):
    """Switch the post-filter to int8 QAT at ``start_epoch``.

    Args:
        start_epoch: First epoch trained with fake quantization (0-based).
        freeze_observers_epoch: Epoch from which observer statistics (activation and weight
            scales) stop updating; None keeps them updating to the end.
        restart_averaging: Restart weight averaging callbacks at the switch.
        averaging_constant: Moving-average constant of the observers (per training step).
    """

    module_hooks = (Quantizable,)

    def __init__(
        self,
        start_epoch: int = 0,
        freeze_observers_epoch: int | None = None,
        restart_averaging: bool = True,
        averaging_constant: float = 0.01,
    ) -> None:
        if start_epoch < 0 or (freeze_observers_epoch is not None and freeze_observers_epoch < start_epoch):
            raise ConfigError(
                f"callbacks.qat: start_epoch={start_epoch}, freeze_observers_epoch={freeze_observers_epoch}",
                "use start_epoch >= 0 and freeze_observers_epoch >= start_epoch (or null)",
            )
        self.start_epoch = int(start_epoch)
        self.freeze_observers_epoch = freeze_observers_epoch
        self.restart_averaging = restart_averaging
        self.quantizer = PostFilterQuantizer(averaging_constant=averaging_constant)
        self.active = False
        self.frozen = False

    def _averagers(self, trainer: pl.Trainer) -> list[WeightAveraging]:
        found = [cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging)]
        for cb in found:
            if weight_averaging_uses_buffers(cb):
                raise ConfigError(
                    f"{type(cb).__name__} averages buffers, which would average the fake quantizers' "
                    "integer zero points and on/off flags",
                    "set use_buffers: false on the averaging callback (e.g. callbacks.ema.use_buffers=false)",
                )
        return found

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "prepare_qat"):
            raise ConfigError(
                f"QuantizationAwareTraining needs a module with prepare_qat(), got {type(pl_module).__name__}",
                "use it with src.modules.postfilter.module.PostFilterModule, or drop callbacks.qat",
            )
        averagers = self._averagers(trainer)
        pl_module.prepare_qat(self.quantizer)  # no-op when already prepared
        if stage == "fit":
            # Their copy of the module may predate the prepared graph (callback order): copy again.
            for cb in averagers:
                cb.setup(trainer, pl_module, stage)

    def _training_state(self) -> tuple[bool, bool]:
        return self.active, self.active and not self.frozen

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self.active and epoch >= self.start_epoch:
            self.active = True
            if self.restart_averaging:
                for cb in self._averagers(trainer):
                    cb.setup(trainer, pl_module, "fit")
        if self.active and self.freeze_observers_epoch is not None and epoch >= self.freeze_observers_epoch:
            self.frozen = True

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        fake_quant, observe = self._training_state()
        set_quantization(pl_module.net.body, fake_quant, observe)

    def _evaluating(self, pl_module: pl.LightningModule) -> None:
        # Per batch, after every epoch-start hook: weight averaging swaps its copy's buffers in
        # there, whose flags can lag the switch. A module loaded from a QAT checkpoint for testing
        # carries its flag itself.
        fake_quant = self.active or quantization_state(pl_module.net.body)[0]
        set_quantization(pl_module.net.body, fake_quant, observe=False)

    @override
    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._evaluating(pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training:  # back to the training state, so checkpoints record the phase's flags
            set_quantization(pl_module.net.body, *self._training_state())

    @override
    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._evaluating(pl_module)

    @override
    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._evaluating(pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("qat/active", float(self.active), on_epoch=True, sync_dist=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"active": self.active, "frozen": self.frozen, "start_epoch": self.start_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.active = bool(state_dict["active"])
        self.frozen = bool(state_dict["frozen"])
