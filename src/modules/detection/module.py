"""LightningModule for object detection around a torchvision detector (:mod:`.networks`).

Batches are the detection datamodule's: ``{"images": [(3, H, W)], "targets": [{"boxes",
"labels"}], "ids", "sizes"}`` with boxes ``[x1, y1, x2, y2]`` in pixels and labels 1..C (0 is the
background). The detector normalises and resizes inside (``min_size`` / ``max_size``) and returns
its losses in training mode and its detections, in the input image's pixels, in eval mode.

Validation logs COCO ``val/map``, ``val/map_50``, ``val/map_75`` and ``val/mar_100`` (torchmetrics'
``MeanAveragePrecision``, synchronised across processes) and ``val/samples`` (images scored, summed
over the processes). Predictions are the records of the
artifact contract that ``evaluate.py`` scores (:mod:`src.metrics.detection_scoring`).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import SumMetric
from torchmetrics.detection import MeanAveragePrecision
from typing_extensions import override

from src.core.artifacts import NONFINITE_PRED
from src.core.errors import ConfigError
from src.core.io import atomic_path
from src.modules.base import PodiumModule

# faster-coco-eval logs COCO's summary table at INFO on every compute (once per validation).
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)

#: The competition-style export of a predicted split (COCO results: one detection per row).
EXPORT_FILE = "detections.csv"
#: The COCO backend of the validation metric (faster-coco-eval: same numbers, several times faster).
MAP_BACKEND = "faster_coco_eval"


def _box(points: Sequence[float], desc: str, score: float | None = None) -> dict[str, Any]:
    box: dict[str, Any] = {"type": "bbox_2d", "points": [float(v) for v in points], "desc": desc}
    if score is not None:
        box["score"] = float(score)
    return box


class Detector(PodiumModule):
    """A torchvision detector trained on its own losses, scored by COCO mAP.

    Args:
        net: A torchvision detection model (``build_detector``).
        optimizer: Partial optimizer, called with the parameters.
        scheduler: Optional partial scheduler, called with ``optimizer`` and ``total_steps``.
        num_classes: Object classes without the background; checked against the datamodule.
        class_names: Optional names of classes 1..C for records written without a datamodule
            that names them; the attached datamodule's ``classes`` win.
        nonfinite_loss: ``raise`` stops the run at a NaN/Inf training loss; ``skip`` drops that batch.
    """

    task = "detection"
    evaluator = "src.metrics.detection_scoring.score_records"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Any = None,
        scheduler: Any = None,
        num_classes: int = 1,
        class_names: Sequence[str] | None = None,
        nonfinite_loss: str = "raise",
    ) -> None:
        super().__init__(nonfinite_loss=nonfinite_loss)
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=MAP_BACKEND)
        self.test_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=MAP_BACKEND)
        self.val_samples = SumMetric()

    @override
    def setup(self, stage: str) -> None:
        names = self._class_names()
        if names is not None and len(names) != self.hparams.num_classes:
            raise ConfigError(
                f"model.num_classes={self.hparams.num_classes} but the data has {len(names)} classes {names[:20]}",
                f"set data.num_classes={len(names)} (model.num_classes follows it)",
            )

    @override
    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        return self.net(images, targets)

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        saved = self.snapshot()
        losses = self.net(batch["images"], batch["targets"])
        loss = sum(losses.values())
        n = len(batch["images"])
        checked = self.guard(loss, batch_idx, saved)
        if checked is None:
            return None
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return checked

    def _detections(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """The detector's boxes per image, background (label 0) left out: FCOS and RetinaNet score
        every output class with a sigmoid, the background's included, so they can report it."""
        detections = self.net(batch["images"])
        return [{k: v[d["labels"] > 0] for k, v in d.items()} for d in detections]

    def _update_map(self, metric: MeanAveragePrecision, batch: dict[str, Any]) -> None:
        detections = self._detections(batch)
        metric.update(
            [{k: d[k] for k in ("boxes", "scores", "labels")} for d in detections],
            [{"boxes": t["boxes"], "labels": t["labels"]} for t in batch["targets"]],
        )

    def _log_map(self, metric: MeanAveragePrecision, stage: str) -> None:
        result = metric.compute()
        metric.reset()
        for name in ("map", "map_50", "map_75", "mar_100"):
            value = float(result[name])  # COCO's -1: no ground truth in the split
            self.log(f"{stage}/{name}", value if value >= 0 else math.nan, prog_bar=name == "map_50")

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._update_map(self.val_map, batch)
        self.val_samples.update(len(batch["images"]))

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")
        self.log("val/samples", self.val_samples.compute())
        self.val_samples.reset()

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._update_map(self.test_map, batch)

    @override
    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        detections = self._detections(batch)
        return {
            "ids": list(batch["ids"]),
            "sizes": [tuple(int(v) for v in s) for s in batch["sizes"]],
            "detections": [{k: v.detach().cpu() for k, v in d.items()} for d in detections],
            "targets": [{k: v.detach().cpu() for k, v in t.items()} for t in batch["targets"]],
        }

    def _class_names(self) -> list[str] | None:
        """The attached datamodule's class names, else ``class_names``, else None."""
        try:
            names = getattr(self.trainer.datamodule, "classes", None)
        except RuntimeError:  # not attached to a Trainer
            names = None
        names = names or self.hparams.get("class_names")
        return [str(n) for n in names] if names else None

    def _name(self, label: int, names: list[str] | None) -> str:
        if names and 1 <= label <= len(names):
            return names[label - 1]
        return str(label)

    @override
    def predict_records(self, outputs: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """One record per image: ``width``, ``height`` and ``gt`` / ``pred`` box lists.

        Boxes are ``{"type": "bbox_2d", "points": [x1, y1, x2, y2], "desc": <class name>}`` in the
        image's pixels; predictions add ``score`` and are ordered by decreasing score. A prediction
        holding NaN or infinity gives the record the error code ``nonfinite_pred`` (and no
        predictions).
        """
        names = self._class_names()
        records = []
        for out in outputs:
            for sample_id, size, det, target in zip(
                out["ids"], out["sizes"], out["detections"], out["targets"], strict=True
            ):
                finite = bool(torch.isfinite(det["boxes"]).all() and torch.isfinite(det["scores"]).all())
                order = torch.argsort(det["scores"], descending=True, stable=True) if finite else []
                pred = [
                    _box(det["boxes"][i].tolist(), self._name(int(det["labels"][i]), names), float(det["scores"][i]))
                    for i in order
                ]
                gt = [
                    _box(b.tolist(), self._name(int(c), names))
                    for b, c in zip(target["boxes"], target["labels"], strict=True)
                ]
                records.append(
                    {
                        "sample_id": str(sample_id),
                        "split": split,
                        "width": int(size[0]),
                        "height": int(size[1]),
                        "gt": gt,
                        "pred": pred,
                        "errors": [] if finite else [NONFINITE_PRED],
                    }
                )
        return records

    @override
    def export_predictions(
        self, records: Sequence[dict[str, Any]], out_dir: Path, keep_frames: bool = False
    ) -> dict[str, Path]:
        """``detections.csv``: ``sample_id,label,score,x1,y1,x2,y2`` per predicted box, from the records."""
        path = out_dir / EXPORT_FILE
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["sample_id", "label", "score", "x1", "y1", "x2", "y2"])
            for record in records:
                for box in record["pred"]:
                    coords = [f"{v:.6g}" for v in box["points"]]
                    writer.writerow([record["sample_id"], box["desc"], f"{box['score']:.6g}", *coords])
        return {"detections": path}
