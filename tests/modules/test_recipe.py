"""SAM, batch-norm guarding, mixup off-epoch, class weights and TTA views (the effects of the recipe
switches in training: test_recipe_effects.py; the weighted sampler: tests/datamodules/images/test_sampler.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from src.core.errors import ConfigError
from src.datamodules.images.tta import TTA_VIEWS, predict_logits
from src.modules.classification.module import ImageClassifier
from src.modules.classification.sam import frozen_bn_stats, sam_ascend, sam_descend


def test_sam_update_matches_the_closed_form_on_a_quadratic() -> None:
    # loss(w) = 0.5 * w^T A w: gradient A w. SAM with SGD(lr) moves w to
    # w - lr * A (w + rho * A w / ||A w||).
    a = torch.diag(torch.tensor([1.0, 4.0, 9.0]))
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    w0, rho, lr = w.detach().clone(), 0.1, 0.05
    opt = torch.optim.SGD([w], lr=lr)

    def loss() -> torch.Tensor:
        return 0.5 * w @ a @ w

    loss().backward()
    moves = sam_ascend([w], rho)
    g0 = a @ w0
    assert torch.allclose(w.detach(), w0 + rho * g0 / g0.norm(), atol=1e-6)
    opt.zero_grad()
    loss().backward()
    sam_descend(moves)
    opt.step()
    expected = w0 - lr * (a @ (w0 + rho * g0 / g0.norm()))
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    assert not torch.allclose(expected, w0 - lr * g0)  # and it differs from plain SGD


def test_second_sam_pass_leaves_batchnorm_statistics_alone() -> None:
    bn = nn.BatchNorm1d(3)
    net = nn.Sequential(nn.Linear(4, 3), bn)
    net(torch.randn(8, 4))
    mean, var, tracked = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    with frozen_bn_stats(net):
        out = net(torch.randn(8, 4) * 5 + 3)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert torch.equal(bn.num_batches_tracked, tracked) and bn.momentum == 0.1
    assert out.shape == (8, 3)


def _classifier(**kwargs) -> ImageClassifier:
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    return ImageClassifier(net, optimizer=lambda params: torch.optim.SGD(params, lr=0.1), num_classes=4, **kwargs)


def test_mixup_switches_off_at_the_configured_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _classifier(mixup={"mixup_alpha": 0.4, "cutmix_alpha": 0.0}, mixup_off_epoch=3)
    for epoch, expected in ((0, True), (2, True), (3, False), (7, False)):
        monkeypatch.setattr(ImageClassifier, "current_epoch", property(lambda self, e=epoch: e))
        assert module._mixing() is expected
    _, targets = module.mixup(torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert targets.shape == (6, 4) and torch.allclose(targets.sum(dim=1), torch.ones(6))


def test_class_weights_are_validated_and_used() -> None:
    module = _classifier(class_weights=[1.0, 1.0, 1.0, 10.0])
    batch = {"image": torch.randn(8, 1, 4, 4), "label": torch.tensor([3, 3, 0, 1, 2, 0, 1, 2])}
    weighted, _ = module._loss(batch)
    module._class_weight = None
    unweighted, _ = module._loss(batch)
    assert not torch.isclose(weighted, unweighted)
    with pytest.raises(ConfigError, match="class_weights"):
        _classifier(class_weights=[1.0, 2.0])


def test_tta_views_keep_shape_and_geo8_is_the_dihedral_group() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    for name, views in TTA_VIEWS.items():
        outs = [v(x) for v in views]
        assert all(o.shape == x.shape for o in outs), name
        assert len({tuple(o.flatten().tolist()) for o in outs}) == len(views), name
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    assert predict_logits(model, x, TTA_VIEWS["geo8"]).shape == (1, 3)
    assert torch.allclose(predict_logits(model, x, TTA_VIEWS["none"]), model(x).log_softmax(-1))
    # a view-invariant input gets the same prediction from every view
    flat = torch.ones(1, 1, 4, 4)
    assert torch.allclose(predict_logits(model, flat, TTA_VIEWS["geo8"]), model(flat).log_softmax(-1), atol=1e-6)
