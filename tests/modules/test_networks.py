from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import timm
import torch

from src.core.errors import ConfigError
from src.modules.classification.module import ImageClassifier
from src.modules.classification.timm_backbone import create_timm_model
from src.modules.schedulers import warmup_cosine


def test_pretrained_path_loads_local_weights(tmp_path: Path) -> None:
    source = timm.create_model("test_resnet", num_classes=10, in_chans=3)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    same = create_timm_model("test_resnet", num_classes=10, pretrained_path=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(value, same.state_dict()[key]), key
    # Another head size keeps the backbone and re-initialises the classifier.
    new_head = create_timm_model("test_resnet", num_classes=3, pretrained_path=str(path))
    assert new_head.get_classifier().out_features == 3
    kept = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, new_head.state_dict()[k]) for k, v in kept.items())


def test_bad_model_settings_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pretrained_path"):
        create_timm_model("test_resnet", num_classes=2, pretrained_path=str(tmp_path / "none.pth"))
    with pytest.raises(ConfigError, match="model_name='not_a_model'"):
        create_timm_model("not_a_model", num_classes=2)


def test_classifier_learns_a_batch() -> None:
    torch.manual_seed(0)
    net = create_timm_model("test_resnet", num_classes=4, in_chans=1)
    module = ImageClassifier(net, optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3), num_classes=4)
    batch = {"image": torch.randn(16, 1, 16, 16), "label": torch.arange(16) % 4}
    opt = module.hparams.optimizer(module.parameters())
    losses = []
    for _ in range(30):
        loss, _ = module._loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_warmup_cosine_shape() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_fraction=0.1, min_factor=0.0)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[10] and abs(max(lrs) - 1.0) < 1e-6
    assert lrs[-1] < 0.01 and all(a >= b for a, b in itertools.pairwise(lrs[10:]))
