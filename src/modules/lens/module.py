"""LightningModule of the lens-correction task: heuristic cameras and the learned correction.

``method`` picks the correction; all four run through ``train.py`` / ``predict.py`` with the same
data, folds, score and artifacts:

* ``identity``: the input as it is (the floor every method must beat);
* ``global``: one camera searched on the training pairs (:mod:`.heuristics`);
* ``bucket``: one camera per image-size bucket, falling back to the orientation's, then the global;
* ``learned``: :class:`~.networks.LensNet` predicts residuals over the bucket camera from the photo
  and its shape; trained through the differentiable warp on the score's differentiable parts
  (:mod:`.losses`) plus the camera's squared error where the data knows the camera.

The heuristics' search runs once at the start of fit (a run resumed from a checkpoint keeps the
table it saved) on ``fit_per_bucket`` training pairs per bucket at ``fit_long_side`` pixels. Every
candidate is ranked by the composite score (``score``, :class:`src.metrics.lens.LensScore`).

Validation (and test) corrects the pairs at the datamodule's working resolution and logs the mean
score (``val/score``), the share of zero scores (``val/zero_rate``) and, for the learned method,
the bucket heuristic's score on the same photos (``val/baseline_score``), and the photos scored
(``val/samples``, over every process). Prediction corrects the
photos at their own size with OpenCV's remap, scores them where the target exists, and writes the
records of the artifact contract; the export writes the corrected JPEGs, the upload zip, the scored
CSV, the bucket table and ``report.html`` (:mod:`.export`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric
from typing_extensions import override

from src.core.errors import ConfigError
from src.datamodules.lens.geometry import Camera, FrameError, torch_undistort, undistort
from src.metrics.lens import Gates, LensScore
from src.modules.base import PodiumModule
from src.modules.lens.export import export_lens
from src.modules.lens.heuristics import METHODS, CoefficientTable, SearchGrid, fit_table
from src.modules.lens.losses import check_weights, image_terms

#: Every correction method.
ALL_METHODS = (*METHODS, "learned")
#: Checkpoint key of the fitted coefficient table.
TABLE_KEY = "lens_coefficients"


def _to_uint8(image: Any) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 array from a predict sample's uint8 image or a work-size ``(3, h, w)``
    float tensor in [0, 1]."""
    if isinstance(image, Tensor) and image.is_floating_point():
        image = image.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0)
    array = image.cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    return np.ascontiguousarray(array, dtype=np.uint8)


class LensCorrector(PodiumModule):
    """Corrects lens distortion by warping the photo with a Brown–Conrady camera.

    Args:
        method: ``identity``, ``global``, ``bucket`` or ``learned``.
        net: The learned method's :class:`~.networks.LensNet` (None for the heuristics).
        search: The coefficient grid (:class:`~.heuristics.SearchGrid` fields).
        score: The composite score (:class:`src.metrics.lens.LensScore`); the defaults when None.
        gates: The promotion gates (:class:`src.metrics.lens.Gates` fields), reported in ``summary``.
        fit_long_side: Long side, in pixels, of the pairs the coefficient search scores.
        fit_per_bucket: Training pairs per bucket the search uses (None: all).
        min_support: Fewest pairs a bucket (or orientation) needs for a camera of its own.
        loss_weights: Weights of the image terms ``edge``, ``gradient``, ``ssim`` (learned method).
        camera_weight: Weight of the camera's squared error where the data knows the camera.
        shape_lr_scale: The learning rate of the network's shape path (``net.shape_head``) is this
            times the optimizer's: a lookup from the photo's shape to its camera, learnt in a few
            hundred steps where the image path needs many more.
        optimizer: Partial optimizer (learned method).
        scheduler: Optional partial scheduler.
        jpeg_quality: Quality of the corrected JPEGs.
        report_worst: Photos shown in ``report.html`` (the lowest scores).
        nonfinite_loss: ``raise`` or ``skip`` a batch whose loss is NaN/Inf.
    """

    task = "lens"
    evaluator = "src.metrics.lens.score_records"

    def __init__(
        self,
        method: str = "bucket",
        net: nn.Module | None = None,
        search: Mapping[str, Any] | None = None,
        score: LensScore | None = None,
        gates: Mapping[str, Any] | None = None,
        fit_long_side: int = 192,
        fit_per_bucket: int | None = 16,
        min_support: int = 8,
        loss_weights: Mapping[str, float] | None = None,
        camera_weight: float = 1.0,
        shape_lr_scale: float = 10.0,
        optimizer: Any = None,
        scheduler: Any = None,
        jpeg_quality: int = 95,
        report_worst: int = 8,
        nonfinite_loss: str = "raise",
    ) -> None:
        super().__init__(nonfinite_loss=nonfinite_loss)
        if method not in ALL_METHODS:
            raise ConfigError(f"model.method={method!r} is not a lens correction", f"use one of {list(ALL_METHODS)}")
        if (method == "learned") != (net is not None):
            raise ConfigError(
                f"model.method={method} {'needs' if method == 'learned' else 'takes no'} model.net",
                "use model=lens_learned for the learned method, model=lens_heuristic for the others",
            )
        if not (isinstance(jpeg_quality, int) and 1 <= jpeg_quality <= 100):
            raise ConfigError(f"model.jpeg_quality={jpeg_quality!r} is not 1..100", "use e.g. 95")
        if not (math.isfinite(shape_lr_scale) and shape_lr_scale > 0):
            raise ConfigError(f"model.shape_lr_scale={shape_lr_scale!r} must be a positive number", "use e.g. 10")
        if not (math.isfinite(camera_weight) and camera_weight >= 0):
            raise ConfigError(f"model.camera_weight={camera_weight!r} must be a finite number >= 0", "use e.g. 1.0")
        self.save_hyperparameters(logger=False, ignore=["net", "score"])
        self.net = net
        self.grid = SearchGrid(**dict(search or {}))
        self.scorer = score if score is not None else LensScore()
        self.gates = Gates(**dict(gates or {}))
        self.loss_weights = check_weights(loss_weights or {"edge": 1.0, "gradient": 1.0, "ssim": 1.0})
        self.table: CoefficientTable | None = None
        self.val_score, self.val_zero, self.val_baseline = MeanMetric(), MeanMetric(), MeanMetric()
        self.test_score, self.test_zero, self.test_baseline = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_samples = SumMetric()

    # ---- the heuristic table ------------------------------------------------------------------------

    @property
    def fit_method(self) -> str:
        """The heuristic whose table this method uses (the learned method starts from ``bucket``)."""
        return "bucket" if self.hparams.method == "learned" else self.hparams.method

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.net is None and self.trainer.world_size > 1:
            # Said here, before the strategy wraps the model: DistributedDataParallel refuses a model
            # without trainable parameters with an error that names neither the model nor the fix.
            raise ConfigError(
                f"model.method={self.hparams.method} has no trainable weights, so there is nothing to fit on "
                f"{self.trainer.world_size} processes (DistributedDataParallel refuses such a model)",
                "fit the heuristics on one process: trainer=cpu (their search needs no gradient sync)",
            )

    @override
    def on_fit_start(self) -> None:
        if self.table is not None:  # restored from the checkpoint of a resumed run
            return
        hp = self.hparams
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "pairs"):
            raise ConfigError(
                f"{type(self).__name__} fits its cameras on the datamodule's pairs(), which "
                f"{type(datamodule).__name__} lacks",
                "use data=lens or data=lens_toy",
            )
        pairs = datamodule.pairs("train", long_side=hp.fit_long_side, per_bucket=hp.fit_per_bucket, seed=0)
        self.table = fit_table(pairs, self.fit_method, self.grid, self.scorer, hp.min_support)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.table is not None:
            checkpoint[TABLE_KEY] = self.table.as_dict()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if TABLE_KEY in checkpoint:
            self.table = CoefficientTable.from_dict(checkpoint[TABLE_KEY])

    def _table(self) -> CoefficientTable:
        if self.table is None:
            raise ConfigError(
                f"{type(self).__name__} has no fitted cameras (neither fitted nor loaded from a checkpoint)",
                "train it first: python train.py experiment=lens_bucket",
            )
        return self.table

    def prior_cameras(self, buckets: Sequence[str], parents: Sequence[str]) -> list[Camera]:
        """The heuristic's camera for each photo."""
        table = self._table()
        return [table.camera_for(b, p)[0] for b, p in zip(buckets, parents, strict=True)]

    # ---- the learned correction ---------------------------------------------------------------------

    def _cameras(self, batch: Mapping[str, Any]) -> tuple[list[Camera], list[Camera], Tensor | None]:
        """(cameras, prior cameras, predicted ``(B, 4)`` tensor or None) for a batch."""
        priors = self.prior_cameras(batch["buckets"], batch["parents"])
        if self.net is None:
            return priors, priors, None
        predicted = self._predict_params(batch, priors)
        cameras = []
        for row, prior in zip(predicted.detach().double().cpu().tolist(), priors, strict=True):
            cameras.append(Camera(row[0], row[1], row[2], row[3], prior.focal))
        return cameras, priors, predicted

    def _predict_params(self, batch: Mapping[str, Any], priors: Sequence[Camera]) -> Tensor:
        prior = torch.tensor([[c.k1, c.k2, c.cx, c.cy] for c in priors], dtype=torch.float32, device=self.device)
        sizes = torch.tensor([list(s) for s in batch["sizes"]], dtype=torch.float32, device=self.device)
        return prior + self.net(batch["thumb"], sizes, prior)

    @override
    def _make_optimizer(self) -> torch.optim.Optimizer | None:
        partial = self.hparams.get("optimizer")
        shape_head = getattr(self.net, "shape_head", None)
        if partial is None or shape_head is None:
            return super()._make_optimizer()
        shape = list(shape_head.parameters())
        ids = {id(p) for p in shape}
        rest = [p for p in self.trainable_parameters() if id(p) not in ids]
        optimizer = partial(params=[{"params": rest}, {"params": shape}])
        optimizer.param_groups[1]["lr"] *= self.hparams.shape_lr_scale
        return optimizer

    @staticmethod
    def camera_targets(camera: Tensor) -> Tensor:
        """Known ``(B, 5)`` cameras ``(k1, k2, cx, cy, focal)`` as the ``(k1, k2, cx, cy)`` of a camera
        whose focal length is the image width: radii scale by the focal length, so ``k1 / f^2`` and
        ``k2 / f^4`` describe the same distortion (NaN rows stay NaN)."""
        f = camera[:, 4]
        return torch.stack([camera[:, 0] / f**2, camera[:, 1] / f**4, camera[:, 2], camera[:, 3]], dim=1)

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if self.net is None:
            # The heuristics have nothing to train: the search ran at the start of fit. Their loss is
            # what the search minimised, 100 - the mean composite score on the training pairs.
            loss = 100.0 - self._table().training_score()
            self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(batch["ids"]))
            return None
        saved = self.snapshot()
        priors = self.prior_cameras(batch["buckets"], batch["parents"])
        params = self._predict_params(batch, priors)
        n = params.shape[0]
        totals = dict.fromkeys(self.loss_weights, params.new_zeros(()))
        labelled = 0
        for i in range(n):
            if not bool(batch["labelled"][i]):
                continue
            image = batch["input"][i][None]
            warped = torch_undistort(image, params[i, 0], params[i, 1], params[i, 2], params[i, 3], priors[i].focal)
            for name, value in image_terms(warped, batch["target"][i][None]).items():
                totals[name] = totals[name] + value.sum()
            labelled += 1
        loss = params.new_zeros(())
        for name, weight in self.loss_weights.items():
            term = totals[name] / max(labelled, 1)
            self.log(f"train/{name}", term, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
            loss = loss + weight * term
        truth = self.camera_targets(batch["camera"].to(params))
        known = torch.isfinite(truth).all(dim=1)
        if known.any() and self.hparams.camera_weight > 0:
            scale = self.net.scale.to(params)
            camera_loss = (((params[known] - truth[known]) / scale) ** 2).mean()
            self.log("train/camera", camera_loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
            loss = loss + self.hparams.camera_weight * camera_loss
        checked = self.guard(loss, batch_idx, saved)
        if checked is None:
            return None
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        return checked

    # ---- correcting and scoring -------------------------------------------------------------------

    def correct(self, image: np.ndarray, camera: Camera, fallback: Camera | None = None) -> tuple[np.ndarray, bool]:
        """``(corrected image, whether the fallback camera was used)``: OpenCV's remap with ``camera``,
        or with ``fallback`` when ``camera`` leaves the frame."""
        try:
            return undistort(image, camera), False
        except FrameError:
            if fallback is None:
                raise
            return undistort(image, fallback), True

    def _score_batch(self, batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Correct and score each photo of a batch (uint8 for predict, float [0, 1] at working size)."""
        cameras, priors, _ = self._cameras(batch)
        results = []
        for i, (camera, prior) in enumerate(zip(cameras, priors, strict=True)):
            image = _to_uint8(batch["input"][i])
            corrected, fell_back = self.correct(image, camera, prior)
            result: dict[str, Any] = {"camera": prior if fell_back else camera, "fallback": fell_back}
            if bool(batch["labelled"][i]):
                target = _to_uint8(batch["target"][i])
                result["score"] = self.scorer(corrected, target)
                if self.net is not None:
                    result["baseline"] = self.scorer(self.correct(image, prior)[0], target)
            results.append(result)
        return results

    def _update(self, stage: str, batch: Mapping[str, Any]) -> None:
        score, zero, baseline = (getattr(self, f"{stage}_{name}") for name in ("score", "zero", "baseline"))
        for result in self._score_batch(batch):
            if "score" in result:
                score.update(result["score"].score)
                zero.update(float(result["score"].score == 0.0))
                if "baseline" in result:
                    baseline.update(result["baseline"].score)

    def _log_stage(self, stage: str) -> None:
        score, zero, baseline = (getattr(self, f"{stage}_{name}") for name in ("score", "zero", "baseline"))
        self.log(f"{stage}/score", score.compute(), prog_bar=stage == "val")
        self.log(f"{stage}/zero_rate", zero.compute())
        if self.net is not None:
            self.log(f"{stage}/baseline_score", baseline.compute())
        for metric in (score, zero, baseline):
            metric.reset()

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._update("val", batch)
        self.val_samples.update(len(batch["ids"]))

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_stage("val")
        self.log("val/samples", self.val_samples.compute())
        self.val_samples.reset()

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._update("test", batch)

    @override
    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        results = []
        for result in self._score_batch(batch):  # plain dicts: Lightning moves the outputs as collections
            plain = {"camera": result["camera"].as_dict(), "fallback": result["fallback"]}
            plain.update({k: result[k].as_dict() for k in ("score", "baseline") if k in result})
            results.append(plain)
        keys = ("ids", "buckets", "parents", "sizes", "input_paths", "target_paths")
        return {"results": results, **{k: list(batch[k]) for k in keys}}

    @override
    def predict_records(self, outputs: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """One record per photo: its bucket and size, input and target files, the camera used and,
        where the target exists, the score, its components and any hard fail (plus the bucket
        heuristic's score, ``baseline``, for the learned method)."""
        records = []
        for out in outputs:
            rows = zip(
                out["ids"], out["buckets"], out["sizes"], out["input_paths"], out["target_paths"], out["results"],
                strict=True,
            )  # fmt: skip
            for sample_id, bucket, size, input_path, target_path, result in rows:
                pred: dict[str, Any] = {"method": self.hparams.method, **result["camera"]}
                if result["fallback"]:
                    pred["fallback"] = "prior"
                if "score" in result:
                    pred.update(result["score"])
                if "baseline" in result:
                    pred["baseline"] = {k: v for k, v in result["baseline"].items() if k != "components"}
                records.append(
                    {
                        "sample_id": str(sample_id),
                        "split": split,
                        "bucket": bucket,
                        "width": int(size[0]),
                        "height": int(size[1]),
                        "input": str(input_path),
                        "gt": {"target": str(target_path)} if target_path else None,
                        "pred": pred,
                        "errors": [],
                    }
                )
        return records

    @override
    def export_predictions(
        self, records: Sequence[dict[str, Any]], out_dir: Path, keep_frames: bool = False
    ) -> dict[str, Path]:
        """The corrected JPEGs (``corrected/``, the input's file name and size), ``submission.zip``,
        ``scores.csv`` and ``buckets.csv`` where targets exist, ``coefficients.json`` and ``report.html``."""
        table = self.table.as_dict() if self.table is not None else None
        return export_lens(records, out_dir, self.hparams.jpeg_quality, self.hparams.report_worst, table, self.gates)
