"""Detection networks: every composed arch and the small torchvision builders train and detect on 64 px
images without downloads, bad configs are refused naming the key, and local weight files load."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from src.core.errors import ConfigError, DataError
from src.modules.detection.module import Detector
from src.modules.detection.networks import COMPOSED, TORCHVISION_BUILDERS, build_detector, load_state

NUM_CLASSES = 2
#: The detector's input resolution: the images' own size, no resize (``size`` is SSD's fixed 320).
SMALL = {"min_size": 64, "max_size": 64}
#: Per arch: keywords that keep the input small and let a fresh detector return boxes in eval mode
#: (its class prior sits below the default score thresholds).
ARCHS = {
    "fcos": {**SMALL, "score_thresh": 0.0, "detections_per_img": 20},
    "retinanet": {**SMALL, "score_thresh": 0.0, "detections_per_img": 20},
    "fasterrcnn": {**SMALL, "box_score_thresh": 0.0, "box_detections_per_img": 20},
    "fasterrcnn_mobilenet_v3_large_320_fpn": {**SMALL, "box_score_thresh": 0.0, "box_detections_per_img": 20},
    "fcos_resnet50_fpn": {**SMALL, "score_thresh": 0.0, "detections_per_img": 20},
    "retinanet_resnet50_fpn": {**SMALL, "score_thresh": 0.0, "detections_per_img": 20},
    "ssdlite320_mobilenet_v3_large": {"score_thresh": 0.0, "detections_per_img": 20},
}
#: Sigmoid heads score every class on its own, the background index 0 too (never a positive target, so
#: training pushes it down, but a fresh head at score_thresh 0 reports it); softmax heads drop it.
SIGMOID = ("fcos", "retinanet", "fcos_resnet50_fpn", "retinanet_resnet50_fpn")
#: A 0.4 M-parameter timm ResNet: weight files of a few MB.
TINY_BACKBONE = "test_resnet"


def batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images (64 x 64 and 48 wide x 64 high) with one and two boxes."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 48, generator=g)]
    targets = [
        {"boxes": torch.tensor([[4.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 10.0, 20.0, 30.0], [30.0, 2.0, 46.0, 20.0]]), "labels": torch.tensor([2, 1])},
    ]
    return images, targets


def detect(net: nn.Module, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    net.eval()
    with torch.no_grad():
        return net(images)


def test_the_archs_under_test_are_the_project_s() -> None:
    assert set(COMPOSED) <= set(ARCHS) and set(ARCHS) - set(COMPOSED) <= set(TORCHVISION_BUILDERS)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_arch_trains_on_its_losses_and_detects_inside_the_image(arch: str) -> None:
    torch.manual_seed(0)
    net = build_detector(arch, NUM_CLASSES, **ARCHS[arch])
    images, targets = batch()
    net.train()
    losses = net(images, targets)
    assert isinstance(losses, dict) and len(losses) >= 2
    for name, loss in losses.items():
        assert loss.ndim == 0 and torch.isfinite(loss) and loss >= 0, name
    assert sum(losses.values()).requires_grad
    detections = detect(net, images)
    assert len(detections) == 2
    for det, image in zip(detections, images, strict=True):
        height, width = image.shape[1:]
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
        assert 0 < len(boxes) <= 20 and boxes.shape == (len(boxes), 4) == (len(scores), 4) == (len(labels), 4)
        assert torch.isfinite(boxes).all() and ((scores >= 0) & (scores <= 1)).all()
        assert ((labels >= (0 if arch in SIGMOID else 1)) & (labels <= NUM_CLASSES)).all()
        x1, y1, x2, y2 = boxes.unbind(1)
        assert ((x1 >= 0) & (x1 <= x2) & (x2 <= width)).all() and ((y1 >= 0) & (y1 <= y2) & (y2 <= height)).all()


@pytest.mark.parametrize(
    ("arch", "kwargs", "what", "fix"),
    [
        ("yolo", {}, r"^model\.net\.arch='yolo' is not a detector$", "use one of fcos, retinanet, fasterrcnn, "),
        ("fcos", {"num_classes": 0}, r"^model\.net\.num_classes=0 is not a positive whole number", "data.num_classes"),
        ("fcos", {"num_classes": True}, r"^model\.net\.num_classes=True ", "data.num_classes"),
        ("fcos", {"fpn_channels": 4}, r"^model\.net\.fpn_channels=4 is not a whole number >= 8", "64 or 256"),
        ("fcos", {"backbone": "no_such_net"}, r"^model\.net\.backbone='no_such_net': ", "features_only support"),
        # SSD sets its input size itself (320): a min_size of its own clashes.
        ("ssdlite320_mobilenet_v3_large", {"min_size": 64},
         r"^model\.net \(ssdlite320_mobilenet_v3_large\): .*min_size", "drop or rename that key under model.net"),
    ],
)  # fmt: skip
def test_bad_configs_are_refused_naming_the_key_and_the_fix(arch: str, kwargs: dict, what: str, fix: str) -> None:
    kwargs = {"num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(ConfigError) as caught:
        build_detector(arch, **kwargs)
    assert re.search(what, caught.value.what) and fix in caught.value.fix


@pytest.mark.parametrize("arch", ["fcos", "fasterrcnn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"])
def test_an_unknown_keyword_is_refused_naming_it(arch: str) -> None:
    """A misspelt key (``score_tresh``) must not be dropped silently: the detector would run with its default."""
    with pytest.raises(ConfigError, match=r"score_tresh") as caught:
        build_detector(arch, NUM_CLASSES, backbone=TINY_BACKBONE, score_tresh=0.5)
    assert "model.net" in caught.value.what and "model.net" in caught.value.fix


# ---- local weight files ---------------------------------------------------------------------------


def tiny(arch: str = "fcos", num_classes: int = NUM_CLASSES, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return build_detector(arch, num_classes, backbone=TINY_BACKBONE, **ARCHS[arch], **kwargs)


def same_detections(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    ) and len(a) == len(b)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A tiny FCOS (seed 0) and its state dict on disk."""
    net = tiny()
    path = tmp_path_factory.mktemp("weights") / "fcos.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_a_saved_state_dict_round_trips(saved: tuple[nn.Module, Path]) -> None:
    net, path = saved
    images, _ = batch()
    expected = detect(net, images)
    assert not same_detections(detect(tiny(seed=1), images), expected)  # another init detects otherwise
    loaded = tiny(seed=1, weights_path=str(path))
    assert same_detections(detect(loaded, images), expected)


def test_a_checkpoint_dict_with_net_prefixes_loads(saved: tuple[nn.Module, Path], tmp_path: Path) -> None:
    net, _ = saved
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 12, "pytorch-lightning_version": "2.6.0", "state_dict": state}, path)
    images, _ = batch()
    assert same_detections(detect(tiny(seed=1, weights_path=str(path)), images), detect(net, images))


def test_a_lightning_checkpoint_of_the_detector_loads(saved: tuple[nn.Module, Path], tmp_path: Path) -> None:
    """What ``Trainer.save_checkpoint`` writes for a :class:`Detector`: its hyper-parameters hold the
    optimizer partial beside the ``net.`` weights."""
    import lightning.pytorch as pl

    net, _ = saved
    module = Detector(net, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), num_classes=NUM_CLASSES)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    trainer.strategy.connect(module)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    images, _ = batch()
    assert same_detections(detect(tiny(seed=1, weights_path=str(path)), images), detect(net, images))


def test_weights_of_another_class_count_are_refused_unless_not_strict(saved: tuple[nn.Module, Path]) -> None:
    net, path = saved
    with pytest.raises(DataError) as caught:
        tiny(num_classes=NUM_CLASSES + 1, weights_path=str(path))
    what = caught.value.what
    assert what.startswith(f"model.net.weights_path={path} does not fit the model: 2 tensors of another shape")
    assert "head.classification_head.cls_logits.weight" in what and "strict_weights=false" in caught.value.fix

    fresh = tiny(num_classes=NUM_CLASSES + 1, seed=1)
    loaded = tiny(num_classes=NUM_CLASSES + 1, seed=1, weights_path=str(path), strict_weights=False)
    own, new, before = net.state_dict(), loaded.state_dict(), fresh.state_dict()
    kept = [k for k in new if new[k].shape != own[k].shape]
    assert sorted(kept) == ["head.classification_head.cls_logits.bias", "head.classification_head.cls_logits.weight"]
    assert all(torch.equal(new[k], before[k]) for k in kept)  # the new head keeps its own init
    assert all(torch.equal(new[k], own[k]) for k in new if k not in kept)  # the rest is the file's


def test_weights_of_another_arch_are_refused_naming_the_missing_keys(
    saved: tuple[nn.Module, Path], tmp_path: Path
) -> None:
    _, path = saved
    with pytest.raises(DataError, match=r"does not fit the model: \d+ tensors of another shape, [1-9]\d* missing"):
        tiny("retinanet", weights_path=str(path))


def test_a_missing_weights_file_is_refused(tmp_path: Path) -> None:
    gone = tmp_path / "gone.pt"
    with pytest.raises(DataError, match=rf"model.net.weights_path={gone}: no such file") as caught:
        tiny(weights_path=str(gone))
    assert "local state-dict file" in caught.value.fix


def _garbage(kind: str, path: Path) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "numpy":
        with open(path, "wb") as fh:
            np.save(fh, np.zeros(3))
    elif kind == "truncated":
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "list":
        torch.save([torch.zeros(2)], path)


@pytest.mark.parametrize("kind", ["empty", "text", "numpy", "truncated", "list"])
def test_a_file_that_is_no_state_dict_is_a_data_error(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.pt"
    _garbage(kind, path)
    with pytest.raises(DataError, match=rf"^model\.net\.weights_path={path} (is not a torch state dict|holds a list)"):
        load_state(nn.Linear(2, 2), str(path), "model.net.weights_path")
