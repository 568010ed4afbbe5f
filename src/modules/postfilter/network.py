"""A residual post-filter CNN for decoded video frames.

``frame + shuffle(body(unshuffle(frame)))``: the optional PixelUnshuffle folds ``s × s`` pixel
blocks into channels, so the conv stack runs at 1/s² of the positions (4× cheaper at s = 2) with a
receptive field s× wider; PixelShuffle unfolds the predicted correction. The last conv starts at
zero, so an untrained filter is the identity and training starts from the decoded frame's quality.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from src.core.errors import ConfigError


def conv_stack(in_channels: int, features: int, depth: int, kernel_size: int) -> nn.Sequential:
    """``depth`` convs (ReLU between them), ``in_channels`` → ``features`` → … → ``in_channels``."""
    pad = kernel_size // 2
    widths = [in_channels] + [features] * (depth - 1) + [in_channels]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Conv2d(c_in, c_out, kernel_size, padding=pad))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class PostFilterCNN(nn.Module):
    """Residual conv stack run on decoded frames.

    Args:
        channels: Colour channels of the frames (3 for RGB or YUV 4:4:4).
        features: Width of the hidden convs.
        depth: Number of convs (at least 2).
        kernel_size: Conv kernel side (odd).
        unshuffle: PixelUnshuffle factor (1: off). Frames whose sides are not multiples of it are
            reflect-padded and cropped back.

    Shape:
        ``(batch, channels, H, W)`` in [0, 1] → same shape (not clamped).
    """

    def __init__(self, channels: int = 3, features: int = 32, depth: int = 5, kernel_size: int = 3, unshuffle: int = 2):
        super().__init__()
        if depth < 2 or features < 1 or kernel_size % 2 == 0 or unshuffle < 1:
            raise ConfigError(
                f"model.net: depth={depth}, features={features}, kernel_size={kernel_size}, unshuffle={unshuffle}",
                "use depth >= 2, features >= 1, an odd kernel_size and unshuffle >= 1",
            )
        self.channels, self.features, self.depth = channels, features, depth
        self.kernel_size, self.factor = kernel_size, unshuffle
        # The conv stack alone is what QAT exports and quantizes; (un)shuffle and the residual add
        # are exact in any precision and stay outside it.
        self.body: nn.Module = conv_stack(channels * unshuffle**2, features, depth, kernel_size)
        last = self.body[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    @property
    def body_channels(self) -> int:
        """Channels entering the conv stack (``channels × unshuffle²``)."""
        return self.channels * self.factor**2

    def arch(self) -> dict[str, int]:
        """The constructor arguments (stored in the int8 artifact to rebuild the filter)."""
        return {
            "channels": self.channels,
            "features": self.features,
            "depth": self.depth,
            "kernel_size": self.kernel_size,
            "unshuffle": self.factor,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_filter(x, self.body, self.factor)


def residual_filter(x: torch.Tensor, body: nn.Module, factor: int) -> torch.Tensor:
    """``x + shuffle(body(unshuffle(x)))`` with reflect padding to a multiple of ``factor``.

    Args:
        x: ``(batch, channels, H, W)`` frames.
        body: Maps ``(batch, channels·factor², H/factor, W/factor)`` to the same shape.
        factor: Pixel (un)shuffle factor.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % factor, (-width) % factor
    padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x
    folded = F.pixel_unshuffle(padded, factor) if factor > 1 else padded
    residual = body(folded)
    residual = F.pixel_shuffle(residual, factor) if factor > 1 else residual
    return x + residual[..., :height, :width]
