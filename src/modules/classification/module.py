"""LightningModule for image classification around any ``nn.Module`` (a timm model by default).

The competition recipe lives here as switches: label smoothing, class weights, mixup/cutmix
(timm's ``Mixup``) with an off-epoch, SAM, channels_last. EMA and SWA are Lightning callbacks
(``configs/callbacks/ema.yaml``, ``swa.yaml``); the sampler is the datamodule's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from timm.data import Mixup
from torch import nn
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from src.core.artifacts import NONFINITE_PRED
from src.core.errors import ConfigError
from src.core.io import atomic_path
from src.modules.base import PodiumModule
from src.modules.classification.sam import frozen_bn_stats, sam_ascend, sam_descend

#: The competition export of a predicted split.
SUBMISSION_FILE = "submission.csv"


class ImageClassifier(PodiumModule):
    """Cross-entropy classifier with accuracy metrics synced across processes.

    Args:
        net: Maps ``(batch, channels, H, W)`` images to ``(batch, num_classes)`` logits.
        optimizer: Partial optimizer, called with the parameters.
        scheduler: Optional partial scheduler, called with ``optimizer`` and ``total_steps``;
            stepped every optimizer step.
        num_classes: Number of classes.
        label_smoothing: Cross-entropy label smoothing in [0, 1).
        class_weights: None, ``"balanced"`` (n / (C · count_c) from the training split) or one
            weight per class.
        mixup: None, or ``timm.data.Mixup`` arguments (``mixup_alpha``, ``cutmix_alpha``,
            ``prob``, ``switch_prob``, ``mode``); needs an even per-device batch size.
        mixup_off_epoch: Epoch from which mixup/cutmix is switched off (clean final epochs).
        sam_rho: SAM neighbourhood radius; 0 trains with the plain optimizer.
        sam_adaptive: ASAM (element-wise scaled perturbation).
        grad_clip: Gradient-norm clip used on the SAM path (the Trainer's ``gradient_clip_val``
            applies otherwise).
        channels_last: Run the network in channels-last memory format.
        nonfinite_loss: ``raise`` stops the run at a NaN/Inf training loss; ``skip`` drops that batch.
    """

    task = "classification"
    evaluator = "src.metrics.classification.score_records"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        num_classes: int = 10,
        label_smoothing: float = 0.0,
        class_weights: str | Sequence[float] | None = None,
        mixup: dict[str, Any] | None = None,
        mixup_off_epoch: int | None = None,
        sam_rho: float = 0.0,
        sam_adaptive: bool = False,
        grad_clip: float | None = None,
        channels_last: bool = False,
        nonfinite_loss: str = "raise",
    ) -> None:
        super().__init__(nonfinite_loss=nonfinite_loss)
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.automatic_optimization = sam_rho <= 0
        self.mixup = Mixup(**dict(mixup), label_smoothing=label_smoothing, num_classes=num_classes) if mixup else None
        # A plain attribute, not a buffer: weight averaging (EMA/SWA) copies the module before
        # setup() fills in "balanced" weights, and buffer lists must match between the copies.
        self._class_weight = self._static_weights(class_weights, num_classes)
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        # Samples seen by validation across all processes: proves metrics are synced under DDP.
        self.val_samples = SumMetric()

    @staticmethod
    def _static_weights(class_weights: Any, num_classes: int) -> torch.Tensor | None:
        if class_weights is None or class_weights == "balanced":
            return None
        weights = torch.as_tensor(list(class_weights), dtype=torch.float32)
        if weights.numel() != num_classes or (weights <= 0).any():
            raise ConfigError(
                f"model.class_weights has {weights.numel()} values for {num_classes} classes",
                "give one positive weight per class, or 'balanced'",
            )
        return weights

    @override
    def setup(self, stage: str) -> None:
        if self.hparams.class_weights == "balanced" and stage == "fit":
            counts = torch.as_tensor(self.trainer.datamodule.class_counts(), dtype=torch.float32)
            self._class_weight = counts.sum() / (len(counts) * counts.clamp(min=1))

    @property
    def class_weight(self) -> torch.Tensor | None:
        """Cross-entropy class weights on the module's device (None: unweighted)."""
        w = self._class_weight
        return None if w is None else w.to(self.device)

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["image"])
        loss = F.cross_entropy(
            logits, batch["label"], weight=self.class_weight, label_smoothing=self.hparams.label_smoothing
        )
        return loss, logits

    def _mixing(self) -> bool:
        off = self.hparams.mixup_off_epoch
        return self.mixup is not None and (off is None or self.current_epoch < off)

    def _train_loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(images)
        if targets.dtype.is_floating_point:  # soft targets from mixup/cutmix (smoothing included)
            return F.cross_entropy(logits, targets, weight=self.class_weight), logits
        smoothing = self.hparams.label_smoothing
        return F.cross_entropy(logits, targets, weight=self.class_weight, label_smoothing=smoothing), logits

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        images, labels = batch["image"], batch["label"]
        targets = labels
        if self._mixing():
            images, targets = self.mixup(images, labels)
        saved = self.snapshot()
        loss, logits = self._train_loss(images, targets)
        if self.guard(loss, batch_idx, saved) is None:
            return None
        if not self.automatic_optimization:
            self._sam_step(loss, images, targets)
            loss = loss.detach()
        self.train_acc(logits.detach(), labels)
        n = labels.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _sam_step(self, loss: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> None:
        """One SAM update from the batch's loss: a second forward/backward at the perturbed weights.

        BN statistics are updated by the first forward pass (which produced ``loss``) only.
        """
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        moves = sam_ascend(self.parameters(), self.hparams.sam_rho, self.hparams.sam_adaptive)
        optimizer.zero_grad()
        with frozen_bn_stats(self.net):
            perturbed, _ = self._train_loss(images, targets)
        self.manual_backward(perturbed)
        sam_descend(moves)
        if self.hparams.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

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
        return {"id": batch["id"], "probs": self(batch["image"]).softmax(dim=-1), "label": batch["label"]}

    def _class_names(self) -> list[str] | None:
        """The attached datamodule's class names (``ClassLabels``), or None."""
        try:
            datamodule = self.trainer.datamodule
        except RuntimeError:  # not attached to a Trainer
            return None
        names = getattr(datamodule, "classes", None)
        return [str(n) for n in names] if names else None

    @override
    def predict_records(self, outputs: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """One record per image: ``gt`` ``{"label"}`` (null when unlabelled), ``pred`` ``{"label",
        "probs"}``; both with ``class_name`` when the datamodule names its classes."""
        ids = [str(i) for out in outputs for i in out["id"]]
        probs = torch.cat([out["probs"].detach().cpu() for out in outputs])
        labels = torch.cat([torch.as_tensor(out["label"]).cpu() for out in outputs]).tolist()
        finite = torch.isfinite(probs).all(dim=1).tolist()
        predicted = probs.argmax(dim=1).tolist()
        names = self._class_names()
        records = []
        for sample_id, row, y, y_hat, ok in zip(ids, probs.tolist(), labels, predicted, finite, strict=True):
            pred: dict[str, Any] = {"label": y_hat, "probs": row}
            gt: dict[str, Any] | None = None if y < 0 else {"label": int(y)}
            if names:
                pred["class_name"] = names[y_hat]
                if gt is not None:
                    gt["class_name"] = names[y]
            errors = [] if ok else [NONFINITE_PRED]
            records.append({"sample_id": sample_id, "split": split, "gt": gt, "pred": pred, "errors": errors})
        return records

    @override
    def export_predictions(
        self, records: Sequence[dict[str, Any]], out_dir: Path, keep_frames: bool = False
    ) -> dict[str, Path]:
        """``submission.csv``: ``sample_id,label`` (the predicted class index), plus ``class_name``
        when the records name the classes."""
        rows = [{"sample_id": r["sample_id"], "label": r["pred"]["label"]} for r in records]
        for row, record in zip(rows, records, strict=True):
            if "class_name" in record["pred"]:
                row["class_name"] = record["pred"]["class_name"]
        path = out_dir / SUBMISSION_FILE
        with atomic_path(path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        return {"submission": path}

    @torch.no_grad()
    def evaluate(self, loader: Any) -> dict[str, float]:
        """Unweighted loss and accuracy over a loader, outside the Trainer (e.g. SWA selection)."""
        was_training = self.training
        self.eval()
        total, correct, loss_sum = 0, 0, 0.0
        for batch in loader:
            images, labels = batch["image"].to(self.device), batch["label"].to(self.device)
            logits = self(images)
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=-1) == labels).sum())
            total += labels.shape[0]
        self.train(was_training)
        return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1)}
