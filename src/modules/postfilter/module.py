"""LightningModule of a video post-filter: decoded frame in, restored frame out.

Trains on (decoded, original) patches with a configurable restoration loss and scores whole
validation/test frames: ``val/psnr`` and ``val/ssim`` of the filtered frames, ``val/psnr_gain``
over the decoded input (mean per-frame PSNR difference, dB), and ``val/samples`` (frames scored,
summed over processes). Int8 QAT is switched on by the
``QuantizationAwareTraining`` callback through ``prepare_qat``; checkpoints record whether the conv
stack is prepared, so ``load_from_checkpoint`` rebuilds the prepared graph before loading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics import SumMetric
from typing_extensions import override

from src.core.artifacts import NONFINITE_PRED
from src.core.io import atomic_path
from src.datamodules.video.datamodule import FRAME_ID
from src.metrics.video import FrameDistortion, distortion
from src.modules.base import PodiumModule
from src.modules.postfilter.losses import RestorationLoss
from src.modules.postfilter.network import PostFilterCNN
from src.modules.postfilter.quant import PostFilterQuantizer, prepare_qat, quantization_state, set_quantization

QAT_KEY = "postfilter_qat"
#: Per-frame figures of a prediction record (``pred``).
FIGURES = ("psnr", "ssim", "psnr_decoded", "ssim_decoded")
#: Folder (inside a predictions folder) of the restored frames kept with ``keep_frames=true``.
FRAMES_DIR = "frames"


class PostFilterModule(PodiumModule):
    """Residual post-filter trained on frame pairs.

    Args:
        net: The filter, ``(batch, C, H, W)`` in [0, 1] → same.
        optimizer: Partial optimizer, called with the parameters.
        scheduler: Optional partial scheduler, called with ``optimizer`` and ``total_steps``.
        loss: ``RestorationLoss`` arguments (``l1``, ``mse``, ``ms_ssim`` weights, ...).
        nonfinite_loss: ``raise`` stops the run at a NaN/Inf training loss; ``skip`` drops that batch.
    """

    task = "postfilter"
    evaluator = "src.metrics.video.score_records"

    def __init__(
        self,
        net: PostFilterCNN,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        loss: dict[str, Any] | None = None,
        nonfinite_loss: str = "raise",
    ) -> None:
        super().__init__(nonfinite_loss=nonfinite_loss)
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net
        self.loss = RestorationLoss(**dict(loss or {}))
        self.quantizer_config: dict[str, float] | None = None
        self.metrics = torch.nn.ModuleDict(
            {f"{stage}_{kind}": FrameDistortion() for stage in ("val", "test") for kind in ("filtered", "decoded")}
        )
        # Frames scored, summed over processes: proves a DDP run scores every frame once.
        self.samples = torch.nn.ModuleDict({stage: SumMetric() for stage in ("val", "test")})

    @override
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)

    @property
    def qat_prepared(self) -> bool:
        """Whether the conv stack carries fake quantizers (``prepare_qat`` ran)."""
        return self.quantizer_config is not None

    def prepare_qat(self, quantizer: PostFilterQuantizer) -> None:
        """Export the conv stack and insert fake quantizers, switched off (float behaviour)."""
        if self.qat_prepared:
            return
        self.net.body = prepare_qat(self.net.body, self.net.body_channels, quantizer)
        set_quantization(self.net.body, fake_quant=False, observe=False)
        self.quantizer_config = quantizer.config()

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.qat_prepared:
            checkpoint[QAT_KEY] = dict(self.quantizer_config)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The prepared graph has other modules than the float stack: build it before the state
        # dict (weights and observer buffers) is loaded into it.
        if QAT_KEY in checkpoint and not self.qat_prepared:
            self.prepare_qat(PostFilterQuantizer(**checkpoint[QAT_KEY]))

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        saved = self.snapshot()
        loss = self.loss(self(batch["decoded"]), batch["original"])
        if self.guard(loss, batch_idx, saved) is None:
            return None
        n = batch["decoded"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        decoded, original = batch["decoded"], batch["original"]
        restored = self(decoded)
        n = decoded.shape[0]
        self.log(f"{stage}/loss", self.loss(restored, original), on_epoch=True, batch_size=n, sync_dist=True)
        self.metrics[f"{stage}_filtered"].update(restored.clamp(0, 1), original)
        self.metrics[f"{stage}_decoded"].update(decoded, original)
        self.samples[stage].update(torch.tensor(float(n), device=self.device))

    def _log_distortion(self, stage: str) -> None:
        filtered = self.metrics[f"{stage}_filtered"].compute()
        decoded = self.metrics[f"{stage}_decoded"].compute()
        values = {
            f"{stage}/psnr": filtered["psnr"],
            f"{stage}/ssim": filtered["ssim"],
            f"{stage}/psnr_gain": filtered["psnr"] - decoded["psnr"],
            f"{stage}/psnr_decoded": decoded["psnr"],
        }
        for key, value in values.items():
            self.log(key, value, prog_bar=key.endswith(("psnr", "gain")), sync_dist=True)
        self.log(f"{stage}/samples", self.samples[stage].compute(), sync_dist=True)
        self.metrics[f"{stage}_filtered"].reset()
        self.metrics[f"{stage}_decoded"].reset()
        self.samples[stage].reset()

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_distortion("val")

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_distortion("test")

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if self.qat_prepared:  # the checkpoint's fake quantization, with observers frozen as in validation
            set_quantization(self.net.body, quantization_state(self.net.body)[0], observe=False)
        decoded, original = batch["decoded"], batch["original"]
        restored = self(decoded).clamp(0, 1)
        filtered, before = distortion(restored, original), distortion(decoded, original)
        return {
            "frame": torch.as_tensor(batch["frame"]),
            "psnr": filtered["psnr"],
            "ssim": filtered["ssim"],
            "psnr_decoded": before["psnr"],
            "ssim_decoded": before["ssim"],
            "restored": (restored * 255.0).round().to(torch.uint8),
        }

    @override
    def predict_records(self, outputs: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """One record per frame: ``gt`` ``{"frame"}`` (the index of the original frame it is scored
        against), ``pred`` the restored frame's ``psnr`` (dB) and ``ssim`` against it and the same
        of the decoded input (``psnr_decoded``, ``ssim_decoded``). The restored frame (uint8,
        ``(3, H, W)``) rides along as the attachment ``_restored`` for :meth:`export_predictions`."""
        frames = torch.cat([o["frame"].cpu() for o in outputs]).tolist()
        figures = {k: torch.cat([o[k].detach().cpu() for o in outputs]).double().tolist() for k in FIGURES}
        restored = torch.cat([o["restored"].cpu() for o in outputs])
        records = []
        for i, t in enumerate(frames):
            pred = {k: figures[k][i] for k in FIGURES}
            errors = [] if all(math.isfinite(v) for v in pred.values()) else [NONFINITE_PRED]
            record = {"sample_id": FRAME_ID.format(t), "split": split, "gt": {"frame": t}, "pred": pred}
            records.append({**record, "errors": errors, "_restored": restored[i].numpy()})
        return records

    @override
    def export_predictions(
        self, records: Sequence[dict[str, Any]], out_dir: Path, keep_frames: bool = False
    ) -> dict[str, Path]:
        """With ``keep_frames``: each restored frame as ``frames/<sample_id>.npy`` (uint8,
        ``(3, H, W)``, the datamodule's colour space), its path added to the record as
        ``restored_path``. Nothing otherwise."""
        if not keep_frames:
            return {}
        folder = out_dir / FRAMES_DIR
        for record in records:
            name = f"{FRAMES_DIR}/{record['sample_id']}.npy"
            with atomic_path(out_dir / name) as tmp, open(tmp, "wb") as fh:
                np.save(fh, record["_restored"])
            record["restored_path"] = name
        return {"frames": folder}
