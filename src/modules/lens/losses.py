"""The composite score's differentiable parts, for training through the warp.

The competition score (:mod:`src.metrics.lens`) counts edges, line and gradient orientations, SSIM
and pixel accuracy. Canny edges and line segments are not differentiable; their smooth stand-ins
here compare what they are made of:

* ``edge``: L1 between the Sobel gradient magnitudes of prediction and target, relative to the
  target's mean magnitude (edges in the right place);
* ``gradient``: 1 - the energy-weighted agreement of gradient orientations, compared as doubled
  angles so that a gradient and its opposite agree (what the orientation histograms measure, pixel
  by pixel);
* ``ssim``: 1 - SSIM of the grey images (11 x 11 Gaussian window, sigma 1.5);
* ``camera``: squared error of the predicted camera against the known one, when the data has it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from src.core.errors import ConfigError

#: Image terms and their default weights.
IMAGE_TERMS = {"edge": 1.0, "gradient": 1.0, "ssim": 1.0}
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def grey(image: Tensor) -> Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> ``(B, 1, H, W)`` luma."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image * weights).sum(dim=1, keepdim=True)


def sobel(image: Tensor) -> tuple[Tensor, Tensor]:
    """Horizontal and vertical Sobel gradients of a ``(B, 1, H, W)`` image (replicated border)."""
    kx = _SOBEL_X.to(image)[None, None]
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kx), F.conv2d(padded, kx.transpose(-1, -2))


def image_terms(pred: Tensor, target: Tensor, eps: float = 1e-6) -> dict[str, Tensor]:
    """``{"edge", "gradient", "ssim"}`` losses (each >= 0, 0 for identical images) per batch.

    Args:
        pred, target: ``(B, 3, H, W)`` in [0, 1].
    """
    gp, gt = grey(pred), grey(target)
    px, py = sobel(gp)
    tx, ty = sobel(gt)
    mag_p = torch.sqrt(px * px + py * py + eps)
    mag_t = torch.sqrt(tx * tx + ty * ty + eps)
    edge = (mag_p - mag_t).abs().mean(dim=(1, 2, 3)) / (mag_t.mean(dim=(1, 2, 3)) + eps)
    # doubled angles: cos(2a), sin(2a) of each gradient, as (gx^2 - gy^2, 2 gx gy) / |g|^2
    cos_p, sin_p = (px * px - py * py) / mag_p**2, 2 * px * py / mag_p**2
    cos_t, sin_t = (tx * tx - ty * ty) / mag_t**2, 2 * tx * ty / mag_t**2
    agree = cos_p * cos_t + sin_p * sin_t  # cos(2 (a_p - a_t))
    weight = tx * tx + ty * ty  # the target's gradient energy: flat pixels have no orientation to agree on
    gradient = 1.0 - (agree * weight).sum(dim=(1, 2, 3)) / (weight.sum(dim=(1, 2, 3)) + eps)
    ssim = 1.0 - structural_similarity_index_measure(gp, gt, data_range=1.0, reduction="none")
    return {"edge": edge, "gradient": 0.5 * gradient, "ssim": ssim}


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """The image terms' weights, checked: known names, finite and >= 0, not all zero."""
    unknown = sorted(set(weights) - set(IMAGE_TERMS))
    if unknown:
        raise ConfigError(f"model.loss_weights has unknown terms {unknown}", f"use {list(IMAGE_TERMS)}")
    out = {k: float(weights.get(k, 0.0)) for k in IMAGE_TERMS}
    if any(not (v >= 0) or v == float("inf") for v in out.values()) or not any(out.values()):
        raise ConfigError(f"model.loss_weights={out} must be finite, >= 0 and not all 0", "e.g. edge: 1.0")
    return out
