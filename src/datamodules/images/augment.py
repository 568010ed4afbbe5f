"""Augmentation profiles: named torchvision v2 pipelines chosen in config (``data.augment``).

Profiles:
    none: resize and normalise only (what validation, test and TTA views start from).
    light: small affine jitter (rotation, shift, scale); no flips, so digits and text stay valid.
    full: random resized crop, horizontal flip and colour jitter (hue, saturation, brightness).
    no_color: like ``full`` without any colour change, for classes told apart by colour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

from src.core.errors import ConfigError


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def _spatial(image_size: int, scale: tuple[float, float]) -> list[Callable]:
    return [v2.RandomResizedCrop(image_size, scale=scale, antialias=True), v2.RandomHorizontalFlip()]


PROFILES: dict[str, Callable[[int], list[Callable]]] = {
    "none": lambda size: [v2.Resize((size, size), antialias=True)],
    "light": lambda size: [
        v2.Resize((size, size), antialias=True),
        v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
    ],
    "full": lambda size: [
        *_spatial(size, (0.6, 1.0)),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05),
    ],
    "no_color": lambda size: _spatial(size, (0.6, 1.0)),
}


def check_profile(profile: str) -> None:
    """Raise a ConfigError naming ``data.augment`` unless ``profile`` is one of :data:`PROFILES`."""
    if profile not in PROFILES:
        raise ConfigError(
            f"data.augment={profile!r} is not an augmentation profile",
            f"use one of {sorted(PROFILES)}",
        )


def build_transform(profile: str, image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Build the named augmentation pipeline.

    Args:
        profile: One of :data:`PROFILES`.
        image_size: Output side length in pixels.
        mean: Per-channel normalisation mean (pixel values scaled to [0, 1]).
        std: Per-channel normalisation standard deviation.

    Returns:
        A transform from a PIL image to a normalised ``(channels, size, size)`` float tensor.
    """
    check_profile(profile)
    return v2.Compose([*PROFILES[profile](int(image_size)), *_finish(mean, std)])
