"""Restoration losses for post-filters: a weighted sum of L1, MSE and MS-SSIM terms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from src.core.errors import ConfigError

TERMS = ("l1", "mse", "ms_ssim")


class RestorationLoss(nn.Module):
    """``l1·L1 + mse·MSE + ms_ssim·(1 − MS-SSIM)`` between a restored and an original frame.

    Args:
        l1: Weight of the mean absolute error.
        mse: Weight of the mean squared error.
        ms_ssim: Weight of ``1 − MS-SSIM`` (torchmetrics; frames in [0, 1]).
        ms_ssim_kernel: Gaussian window of MS-SSIM (pixels).
        ms_ssim_betas: Scale weights of MS-SSIM; fewer scales allow smaller patches: a side must
            exceed ``(kernel − 1) · 2^(scales − 1)`` pixels.

    Raises:
        ConfigError: A negative weight, or all weights zero.
    """

    def __init__(
        self,
        l1: float = 1.0,
        mse: float = 0.0,
        ms_ssim: float = 0.0,
        ms_ssim_kernel: int = 11,
        ms_ssim_betas: Sequence[float] = (0.0448, 0.2856, 0.3001),
    ) -> None:
        super().__init__()
        self.weights = {"l1": float(l1), "mse": float(mse), "ms_ssim": float(ms_ssim)}
        if any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
            raise ConfigError(
                f"model.loss={self.weights} has a negative weight or no positive one",
                "give non-negative weights to l1, mse and ms_ssim, at least one of them positive",
            )
        self.kernel, self.betas = int(ms_ssim_kernel), tuple(float(b) for b in ms_ssim_betas)

    def min_size(self) -> int:
        """Smallest frame or patch side (pixels) MS-SSIM accepts; 1 without the MS-SSIM term."""
        if not self.weights["ms_ssim"]:
            return 1
        return (self.kernel - 1) * 2 ** (len(self.betas) - 1) + 1

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(batch, C, H, W)`` frames."""
        total = pred.new_zeros(())
        if self.weights["l1"]:
            total = total + self.weights["l1"] * F.l1_loss(pred, target)
        if self.weights["mse"]:
            total = total + self.weights["mse"] * F.mse_loss(pred, target)
        if self.weights["ms_ssim"]:
            if min(pred.shape[-2:]) < self.min_size():
                raise ConfigError(
                    f"MS-SSIM with {len(self.betas)} scales and kernel {self.kernel} needs sides of at least "
                    f"{self.min_size()} pixels, got {tuple(pred.shape[-2:])}",
                    f"use data.patch_size >= {self.min_size()}, or fewer model.loss.ms_ssim_betas",
                )
            score = multiscale_structural_similarity_index_measure(
                pred, target, data_range=1.0, kernel_size=self.kernel, betas=self.betas
            )
            total = total + self.weights["ms_ssim"] * (1.0 - score)
        return total
