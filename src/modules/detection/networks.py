"""torchvision's detection models, built from config without downloads.

Two kinds of ``arch``:

* a torchvision builder by name (:data:`TORCHVISION_BUILDERS`: ``fasterrcnn_mobilenet_v3_large_320_fpn``,
  ``fcos_resnet50_fpn``, ``retinanet_resnet50_fpn``, ``ssdlite320_mobilenet_v3_large``, ...), called
  with ``weights=None`` and ``weights_backbone=None`` unless named (a named torchvision weight
  downloads unless it is already in ``$TORCH_HOME``);
* ``fcos``, ``retinanet`` or ``fasterrcnn`` (:data:`COMPOSED`): torchvision's detector of that name
  over a timm backbone (``features_only``) and a torchvision feature pyramid of ``fpn_channels``
  channels. A narrow pyramid is what makes a detector trainable from scratch on a CPU: the
  heads' convolutions run at every pyramid level, and their cost grows with the square of its
  width (256 in torchvision's builders).

Local weight files: ``weights_path`` (a state dict of the whole detector, e.g. a checkpoint's
``state_dict`` with the ``net.`` prefix stripped, or torchvision's released file) and
``backbone_weights_path`` (a state dict of the timm backbone, for the composed archs). Keys that
do not fit (another number of classes) are refused naming them unless ``strict_weights=false``,
which loads the rest (a new head on pretrained features).
"""

from __future__ import annotations

import inspect
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.ssd import SSD
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from src.core.checkpoint_io import UNREADABLE
from src.core.errors import ConfigError, DataError

#: torchvision builders selectable by name (each takes weights, weights_backbone, num_classes).
TORCHVISION_BUILDERS = (
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "ssdlite320_mobilenet_v3_large",
    "ssd300_vgg16",
)
#: torchvision detectors over a timm backbone and a narrow feature pyramid.
COMPOSED = ("fcos", "retinanet", "fasterrcnn")
#: The timm feature stages the pyramid reads (strides 8, 16, 32).
FEATURE_STAGES = (2, 3, 4)


class TimmFPN(nn.Module):
    """A timm backbone's stride-8/16/32 features through a torchvision feature pyramid.

    Args:
        name: timm model name (``features_only`` is used; no pretrained download).
        channels: Width of every pyramid level.
        extra: ``p6p7`` adds two coarser levels (FCOS, RetinaNet), ``pool`` one max-pooled level
            (Faster R-CNN's RPN), ``none`` nothing.
        weights_path: Optional local state dict of the timm backbone.
    """

    def __init__(self, name: str, channels: int, extra: str, weights_path: str | None = None) -> None:
        super().__init__()
        import timm

        try:
            self.body = timm.create_model(name, features_only=True, pretrained=False, out_indices=FEATURE_STAGES)
        except (RuntimeError, ValueError) as exc:  # timm: unknown model / no features_only support
            raise ConfigError(
                f"model.net.backbone={name!r}: {exc}",
                "pick a timm model with features_only support, e.g. resnet18, resnet34, efficientnet_b0",
            ) from exc
        if weights_path:
            load_state(self.body, weights_path, "model.net.backbone_weights_path", strict=False)
        blocks = {"p6p7": LastLevelP6P7(channels, channels), "pool": LastLevelMaxPool(), "none": None}
        self.fpn = FeaturePyramidNetwork(list(self.body.feature_info.channels()), channels, extra_blocks=blocks[extra])
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def _read_weights(file: Path, key: str) -> Any:
    """The object in a weights file: tensors only first; a checkpoint of a podium run (it holds
    the config's optimizer partials, which ``weights_only`` refuses) is then unpickled in full, so
    point these keys only at files you trust.

    Raises:
        DataError: The file is not a torch file (empty, text, another format, damaged).
    """
    fix = "save it with torch.save(model.state_dict()), or point at a checkpoints/*.ckpt of a run"
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc).replace(" ", "_").lower():
            raise DataError(f"{key}={file} is not a torch state dict ({str(exc)[:160]})", fix) from exc
    except (*UNREADABLE, KeyError) as exc:
        raise DataError(
            f"{key}={file} is not a torch state dict ({type(exc).__name__}: {str(exc)[:160]})", fix
        ) from exc
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except (*UNREADABLE, KeyError, AttributeError, ImportError) as exc:
        raise DataError(
            f"{key}={file} is not a torch state dict ({type(exc).__name__}: {str(exc)[:160]})", fix
        ) from exc


def load_state(module: nn.Module, path: str, key: str, strict: bool = True) -> None:
    """Load a local state dict file into ``module``.

    Accepts a plain state dict, a ``{"state_dict": ...}`` checkpoint (a ``net.`` prefix is
    stripped) or a ``{"model": ...}`` file. Tensors whose shape differs are refused (``strict``)
    or skipped.

    Raises:
        DataError: The file is missing or unreadable, or (``strict``) keys or shapes do not fit.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{key}={path}: no such file", f"point {key} at a local state-dict file, or null")
    state = _read_weights(file, key)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise DataError(f"{key}={path} holds a {type(state).__name__}, not a state dict", "save a state_dict()")
    state = {k.removeprefix("net."): v for k, v in state.items()}
    own = module.state_dict()
    misfit = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in state]
    if strict and (misfit or missing):
        shown = ", ".join((misfit + missing)[:5])
        raise DataError(
            f"{key}={path} does not fit the model: {len(misfit)} tensors of another shape, {len(missing)} missing "
            f"(first: {shown})",
            "use weights of the same arch and num_classes, or pass model.net.strict_weights=false to load the rest",
        )
    module.load_state_dict({k: v for k, v in state.items() if k in own and k not in misfit}, strict=False)


def _composed(
    arch: str, num_classes: int, backbone: str, fpn_channels: int, backbone_weights_path: str | None, **kwargs: Any
) -> nn.Module:
    if arch == "fasterrcnn":
        body = TimmFPN(backbone, fpn_channels, "pool", backbone_weights_path)
        anchors = detection.rpn.AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4)
        pool = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
        return detection.FasterRCNN(
            body, num_classes=num_classes, rpn_anchor_generator=anchors, box_roi_pool=pool, **kwargs
        )
    body = TimmFPN(backbone, fpn_channels, "p6p7", backbone_weights_path)
    model = detection.FCOS if arch == "fcos" else detection.RetinaNet
    return model(body, num_classes=num_classes, **kwargs)


#: The detector class behind each arch (its keywords are the ones a config may pass).
_CLASSES = {"fasterrcnn": detection.FasterRCNN, "fcos": detection.FCOS, "retinanet": detection.RetinaNet,
            "ssd": SSD}  # fmt: skip
#: Keywords every detector hands to its ``GeneralizedRCNNTransform``.
_TRANSFORM_KEYWORDS = ("size_divisible", "fixed_size")


def _check_keywords(arch: str, kwargs: dict[str, Any]) -> None:
    """Refuse keywords the detector would silently drop (torchvision passes unknown ones to its
    transform, which ignores them: a misspelt ``score_thresh`` would change nothing)."""
    family = next((name for name in _CLASSES if arch.startswith(name)), None)
    if family is None or not kwargs:
        return
    params = inspect.signature(_CLASSES[family].__init__).parameters
    known = {k for k in params if k not in ("self", "backbone", "num_classes", "kwargs")} | set(_TRANSFORM_KEYWORDS)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(
            f"model.net ({arch}): {', '.join(unknown)} is not a keyword of torchvision's {_CLASSES[family].__name__}",
            f"drop or rename that key under model.net (it takes: {', '.join(sorted(known))})",
        )


def build_detector(
    arch: str,
    num_classes: int,
    backbone: str = "resnet18",
    fpn_channels: int = 64,
    weights: str | None = None,
    weights_backbone: str | None = None,
    weights_path: str | None = None,
    backbone_weights_path: str | None = None,
    strict_weights: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision detector for ``num_classes`` object classes (plus the background, index 0).

    Args:
        arch: A name in :data:`TORCHVISION_BUILDERS` or :data:`COMPOSED`.
        num_classes: Object classes, without the background (labels are 1..num_classes).
        backbone: timm model of the composed archs.
        fpn_channels: Pyramid width of the composed archs.
        weights: torchvision weight name of a builder (None: random init, no download).
        weights_backbone: torchvision backbone weight name of a builder (None: no download).
        weights_path: Local state dict of the whole detector.
        backbone_weights_path: Local state dict of the timm backbone (composed archs).
        strict_weights: Refuse a ``weights_path`` whose tensors do not all fit.
        **kwargs: Passed to the detector (``min_size``, ``max_size``, ``detections_per_img``, and
            ``score_thresh`` for FCOS / RetinaNet, ``box_score_thresh`` for Faster R-CNN, ...); a
            keyword the detector class does not take is refused.

    Raises:
        ConfigError: An unknown arch, a bad class count or a keyword the detector refuses.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(
            f"model.net.num_classes={num_classes!r} is not a positive whole number", "set data.num_classes"
        )
    if isinstance(fpn_channels, bool) or not isinstance(fpn_channels, int) or fpn_channels < 8:
        raise ConfigError(f"model.net.fpn_channels={fpn_channels!r} is not a whole number >= 8", "e.g. 64 or 256")
    _check_keywords(arch, kwargs)
    try:
        if arch in COMPOSED:
            net = _composed(arch, num_classes + 1, backbone, fpn_channels, backbone_weights_path, **kwargs)
        elif arch in TORCHVISION_BUILDERS:
            builder = getattr(detection, arch)
            net = builder(weights=weights, weights_backbone=weights_backbone, num_classes=num_classes + 1, **kwargs)
        else:
            raise ConfigError(
                f"model.net.arch={arch!r} is not a detector",
                f"use one of {', '.join(COMPOSED + TORCHVISION_BUILDERS)}",
            )
    except TypeError as exc:
        raise ConfigError(f"model.net ({arch}): {exc}", "drop or rename that key under model.net") from exc
    if weights_path:
        load_state(net, weights_path, "model.net.weights_path", strict=strict_weights)
    return net
