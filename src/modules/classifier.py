"""LightningModule for image classification around any ``nn.Module`` (a timm model by default)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override


class ImageClassifier(pl.LightningModule):
    """Cross-entropy classifier with accuracy metrics synced across processes.

    Args:
        net: Maps ``(batch, channels, H, W)`` images to ``(batch, num_classes)`` logits.
        optimizer: Partial optimizer, called with the parameters.
        scheduler: Optional partial scheduler, called with ``optimizer`` and ``total_steps``;
            stepped every optimizer step.
        num_classes: Number of classes.
        label_smoothing: Cross-entropy label smoothing in [0, 1).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        num_classes: int = 10,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        # Samples seen by validation across all processes: proves metrics are synced under DDP.
        self.val_samples = SumMetric()

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.hparams.label_smoothing)
        return loss, logits

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logits = self._loss(batch)
        self.train_acc(logits, batch["label"])
        n = batch["label"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=n)
        return loss

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, logits = self._loss(batch)
        n = batch["label"].shape[0]
        self.val_acc(logits, batch["label"])
        self.val_samples.update(torch.tensor(float(n), device=self.device))
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=n)

    @override
    def on_validation_epoch_end(self) -> None:
        self.log("val/samples", self.val_samples.compute(), sync_dist=True)
        self.val_samples.reset()

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if bool((batch["label"] < 0).any()):
            return  # an unlabelled test split has predictions, not scores
        loss, logits = self._loss(batch)
        n = batch["label"].shape[0]
        self.test_acc(logits, batch["label"])
        self.log("test/loss", loss, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("test/acc", self.test_acc, on_epoch=True, batch_size=n)

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {"id": batch["id"], "probs": self(batch["image"]).softmax(dim=-1)}

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.hparams.optimizer(params=self.parameters())
        if self.hparams.scheduler is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        scheduler = self.hparams.scheduler(optimizer=optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
