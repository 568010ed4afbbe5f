"""The learned correction: a timm backbone that predicts a camera, never pixels.

A UNet that synthesised the corrected photo scored 0 in the competition (over-smoothed texture is a
hard fail), so the network here only predicts the correction's parameters and the photo is warped
(:func:`src.datamodules.lens.geometry.torch_undistort` while training, OpenCV's remap at
inference): every output pixel is an input pixel, moved.

:class:`LensNet` reads a small square thumbnail of the distorted photo and the photo's shape (the
camera shows in it; a small path of its own reads the shape and the prior) and predicts residuals
``(dk1, dk2, dcx, dcy)`` over a prior camera, the heuristic's fit for the photo's size bucket. The
last layers start at zero, so an untrained network is exactly the heuristic, and training can only
move away from it where the data says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from src.core.errors import ConfigError

#: Residual outputs, in this order.
OUTPUTS = ("k1", "k2", "cx", "cy")
#: ImageNet statistics the timm backbones expect.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def shape_features(sizes: Tensor) -> Tensor:
    """``(B, 2)`` pixel sizes ``(width, height)`` -> ``(B, 3)``: log aspect, and log width and height
    relative to 1,000 pixels (scale-free enough for toy and real sizes alike)."""
    sizes = sizes.float()
    w, h = sizes[:, 0], sizes[:, 1]
    return torch.stack([torch.log(w / h), torch.log(w / 1000.0), torch.log(h / 1000.0)], dim=1)


class LensNet(nn.Module):
    """Thumbnail + shape + prior camera -> camera residuals.

    Args:
        backbone: timm model name (features pooled, classifier removed).
        pretrained_path: Optional local file of backbone weights (a timm state dict); nothing is downloaded.
        hidden: Width of the head's hidden layer.
        scale: Residuals are ``scale * tanh(raw)`` per output ``(k1, k2, cx, cy)``: the largest
            change the network can make to the prior.
        drop_rate: Dropout before the head.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained_path: str | None = None,
        hidden: int = 128,
        scale: tuple[float, float, float, float] = (0.15, 0.3, 0.25, 0.25),
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(scale) != len(OUTPUTS) or not all(math.isfinite(s) and s > 0 for s in scale):
            raise ConfigError(
                f"model.net.scale={list(scale)} is not 4 positive numbers", "pass e.g. [0.15,0.3,0.25,0.25]"
            )
        try:
            self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0)
        except RuntimeError as exc:
            raise ConfigError(f"model.net.backbone={backbone!r}: {exc}", "name a timm model, e.g. resnet18") from exc
        if pretrained_path is not None:
            path = Path(pretrained_path)
            if not path.is_file():
                raise ConfigError(
                    f"model.net.pretrained_path={path} does not exist", "point it at a local weights file"
                )
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, _ = self.backbone.load_state_dict(state, strict=False)
            if missing:
                raise ConfigError(
                    f"{path} lacks {len(missing)} backbone tensors ({', '.join(missing[:5])}) of {backbone}",
                    "use weights saved from the same timm model",
                )
        features = self.backbone.num_features
        self.head = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(features + 3 + len(OUTPUTS), hidden),
            nn.GELU(),
            nn.Linear(hidden, len(OUTPUTS)),
        )
        # The photo's shape and the prior alone, on a path of their own: the camera shows in the
        # shape (a crop's off-centre optical axis, a portrait's focal length), and this small path
        # learns that in a few hundred steps where the image path, from scratch, would take many.
        self.shape_head = nn.Sequential(nn.Linear(3 + len(OUTPUTS), 32), nn.GELU(), nn.Linear(32, len(OUTPUTS)))
        for last in (self.head[-1], self.shape_head[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, thumb: Tensor, sizes: Tensor, prior: Tensor) -> Tensor:
        """Camera residuals.

        Args:
            thumb: ``(B, 3, S, S)`` thumbnails in [0, 1].
            sizes: ``(B, 2)`` original ``(width, height)`` in pixels.
            prior: ``(B, 4)`` the prior camera's ``(k1, k2, cx, cy)``.

        Returns:
            ``(B, 4)`` residuals ``(dk1, dk2, dcx, dcy)`` to add to the prior.
        """
        pooled = self.backbone((thumb - self.mean) / self.std)
        shape = torch.cat([shape_features(sizes), prior.float()], dim=1)
        raw = self.head(torch.cat([pooled, shape], dim=1)) + self.shape_head(shape)
        return self.scale * torch.tanh(raw)
