"""Test-time augmentation views: geometric only, so every view shows the same class.

Views:
    none: the image itself.
    flip: identity and horizontal flip.
    geo4: identity, horizontal flip, vertical flip, both flips (rotation by 180°).
    geo8: the dihedral group of the square: 4 rotations by 90°, each with and without a flip.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from src.core.errors import ConfigError

View = Callable[[torch.Tensor], torch.Tensor]


def _rot(k: int, flip: bool) -> View:
    def view(x: torch.Tensor) -> torch.Tensor:
        x = torch.flip(x, dims=(-1,)) if flip else x
        return torch.rot90(x, k, dims=(-2, -1)) if k else x

    return view


TTA_VIEWS: dict[str, list[View]] = {
    "none": [_rot(0, False)],
    "flip": [_rot(0, False), _rot(0, True)],
    "geo4": [_rot(0, False), _rot(0, True), lambda x: torch.flip(x, dims=(-2,)), _rot(2, False)],
    "geo8": [_rot(k, f) for k in range(4) for f in (False, True)],
}


def tta_views(name: str) -> list[View]:
    """The views of a TTA setting; each maps ``(batch, C, H, W)`` to the same shape."""
    if name not in TTA_VIEWS:
        raise ConfigError(f"tta={name!r} is not a TTA setting", f"use one of {sorted(TTA_VIEWS)}")
    return TTA_VIEWS[name]


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, views: list[View]) -> torch.Tensor:
    """Mean of the model's log-probabilities over the views, as logits ``(batch, classes)``.

    Averaging log-probabilities (not raw logits) keeps views with larger logit scales from
    dominating; the result is a valid logit vector whose softmax is the geometric-mean vote.
    """
    logps = torch.stack([model(view(images)).float().log_softmax(dim=-1) for view in views])
    return logps.mean(dim=0)
