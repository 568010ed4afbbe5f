"""timm models built from config, with local weight files instead of hub downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn

from src.core.errors import ConfigError


def create_timm_model(
    model_name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    pretrained_path: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create any timm model; optionally load pretrained weights from a local file.

    Args:
        model_name: A timm model name (``timm.list_models()``), e.g. ``resnet18``.
        num_classes: Output classes; a pretrained classifier of another size is re-initialised.
        in_chans: Input channels; timm adapts the stem of pretrained weights.
        pretrained: Load weights from the hub. podium runs offline, so prefer ``pretrained_path``.
        pretrained_path: A local ``.pth``/``.bin``/``.safetensors`` state dict for ``model_name``.
        **kwargs: Passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ...).

    Returns:
        The model, mapping ``(batch, in_chans, H, W)`` images to ``(batch, num_classes)`` logits.
    """
    if model_name not in timm.list_models() and not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:8]
        raise ConfigError(
            f"model.net.model_name={model_name!r} is not a timm model",
            f"pick a name from timm.list_models(), e.g. {close or ['resnet18', 'efficientnet_b0']}",
        )
    if pretrained_path:
        path = Path(pretrained_path).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"model.net.pretrained_path={path} does not exist",
                "point it at a local state-dict file of this timm model",
            )
        overlay = {"file": str(path), "num_classes": _file_num_classes(model_name, path)}
        return timm.create_model(
            model_name,
            pretrained=True,
            pretrained_cfg_overlay=overlay,
            num_classes=num_classes,
            in_chans=in_chans,
            **kwargs,
        )
    return timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _file_num_classes(model_name: str, path: Path) -> int | None:
    """Head size stored in a weight file, so timm keeps the head when it matches ``num_classes``.

    timm compares ``num_classes`` with the pretrained config's (ImageNet's 1000) to decide whether
    to drop the classifier weights; a local file fine-tuned on another task has its own size.
    """
    cfg = timm.models.get_pretrained_cfg(model_name)
    classifiers = cfg.classifier if cfg is not None else None
    if classifiers is None:
        return None
    first = classifiers if isinstance(classifiers, str) else classifiers[0]
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as exc:
        raise ConfigError(
            f"model.net.pretrained_path={path} is not a readable weight file ({exc})",
            "save it with torch.save(model.state_dict(), path) or as .safetensors",
        ) from exc
    weight = state.get(f"{first}.weight")
    return int(weight.shape[0]) if weight is not None else cfg.num_classes
