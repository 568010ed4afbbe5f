"""Each recipe switch of ``ImageClassifier`` has the effect it is named for.

Tiny linear classifiers trained by Lightning's Trainer on one fixed batch (CPU, a second or two
each): label smoothing raises the loss floor of a memorised batch to the entropy of the smoothed
targets; mixup/cutmix targets are the convex combination that matches the mixed images; SAM runs
a second forward pass and lands where the SAM rule says, not where the base optimizer would; EMA
ends training on the exponential average of the raw weights.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from typing import Any

import hydra
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from src.core.resolvers import PROJECT_ROOT
from src.modules.classification.module import ImageClassifier

K = 4  # classes of the toy problem
LABELS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])


def classifier(lr: float = 0.1, adam: bool = False, seed: int = 0, **kwargs: Any) -> ImageClassifier:
    """A linear classifier of (1, 4, 4) images into ``K`` classes; the same weights for a seed."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, K))
    # A partial, not a lambda: hyperparameters must pickle, or Lightning drops the optimizer.
    optimizer = functools.partial(torch.optim.Adam if adam else torch.optim.SGD, lr=lr)
    return ImageClassifier(net, optimizer=optimizer, num_classes=K, **kwargs)


def toy_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Eight random images with two samples of each class: linearly separable (16 > 8 inputs)."""
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(len(LABELS), 1, 4, 4, generator=g), "label": LABELS.clone()}


def fit_on(module: ImageClassifier, batch: dict[str, torch.Tensor], steps: int, callbacks: Sequence = ()) -> None:
    """Train ``module`` for ``steps`` optimizer steps on ``batch`` with Lightning's Trainer (CPU)."""
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch] * steps, batch_size=None))


def params(module: nn.Module) -> torch.Tensor:
    """All parameters of ``module`` as one flat copy."""
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


# ---- label smoothing --------------------------------------------------------------------------------


def smoothed_entropy(eps: float, k: int) -> float:
    """The lowest cross-entropy reachable against smoothed targets: their entropy (nats)."""
    on, off = 1 - eps + eps / k, eps / k
    return -on * math.log(on) - (k - 1) * off * math.log(off)


def memorised_loss(**kwargs: Any) -> float:
    """The training loss of the toy batch after the classifier has memorised it."""
    module, batch = classifier(lr=0.1, adam=True, **kwargs), toy_batch()
    fit_on(module, batch, steps=100)
    with torch.no_grad():
        images, labels = batch["image"], batch["label"]
        targets = module.mixup(images.clone(), labels)[1] if module.mixup is not None else labels
        return float(module._train_loss(images, targets)[0])


def test_label_smoothing_raises_the_loss_floor_of_a_memorised_batch() -> None:
    eps = 0.2
    floor = smoothed_entropy(eps, K)  # 0.588 nats for eps=0.2, K=4
    plain = memorised_loss()
    smoothed = memorised_loss(label_smoothing=eps)
    # With mixup on but never applied (prob=0), the smoothing travels in mixup's soft targets.
    through_mixup = memorised_loss(label_smoothing=eps, mixup={"mixup_alpha": 0.4, "prob": 0.0})
    assert plain < 0.01, plain  # memorised: the unsmoothed loss goes to zero
    for loss in (smoothed, through_mixup):
        assert floor - 1e-4 <= loss < floor + 0.01, (loss, floor)


# ---- mixup / cutmix -----------------------------------------------------------------------------------

MIX_LABELS = torch.tensor([0, 1, 2, 3, 0, 1])  # every sample's partner (batch reversed) has another label


def constant_images(size: int = 16) -> torch.Tensor:
    """Image i is filled with the value i + 1, so each pixel tells which images it mixes."""
    return torch.arange(1.0, len(MIX_LABELS) + 1).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()


def soft(labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Smoothed one-hot targets."""
    return F.one_hot(labels, K).float() * (1 - eps) + eps / K


def mix(module: ImageClassifier, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(original, mixed images, targets) of one call of the module's mixup under ``seed``."""
    np.random.seed(seed)
    images = constant_images()
    mixed, targets = module.mixup(images.clone(), MIX_LABELS)
    return images, mixed, targets


def image_lambda(images: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """(batch, H, W): the weight of each image's own pixel in its mixed pixel."""
    partner = images.flip(0)
    return ((mixed - partner) / (images - partner))[:, 0]


def test_mixup_targets_are_the_convex_combination_of_the_mixed_images() -> None:
    eps = 0.1
    module = classifier(label_smoothing=eps, mixup={"mixup_alpha": 0.4, "cutmix_alpha": 0.0})
    lams = []
    for seed in range(10):
        images, mixed, targets = mix(module, seed)
        lam = image_lambda(images, mixed)
        assert torch.allclose(lam, lam[0, 0, 0].expand_as(lam), atol=1e-5)  # one blend weight per batch
        lam = float(lam[0, 0, 0])
        expected = lam * soft(MIX_LABELS, eps) + (1 - lam) * soft(MIX_LABELS.flip(0), eps)
        assert torch.allclose(targets, expected, atol=1e-5)
        lams.append(lam)
    # prob=1: every batch mixes, with a weight drawn anew (Beta(0.4, 0.4) puts many near 0 and 1).
    assert all(0 <= lam <= 1 for lam in lams) and np.std(lams) > 0.2


def test_cutmix_lambda_is_the_pasted_area() -> None:
    module = classifier(mixup={"mixup_alpha": 0.0, "cutmix_alpha": 1.0})
    pasted_areas = []
    for seed in range(10):
        images, mixed, targets = mix(module, seed)
        partner = images.flip(0)
        pasted = mixed == partner  # (batch, 1, H, W): the pixels cut from the partner
        assert torch.equal(pasted | (mixed == images), torch.ones_like(pasted))  # pixels move, never blend
        assert torch.equal(pasted, pasted[:1].expand_as(pasted))  # one box for the whole batch
        area = float(pasted[0].float().mean())
        own = targets[torch.arange(len(MIX_LABELS)), MIX_LABELS]
        theirs = targets[torch.arange(len(MIX_LABELS)), MIX_LABELS.flip(0)]
        assert torch.allclose(own, torch.full_like(own, 1 - area), atol=1e-6)
        assert torch.allclose(theirs, torch.full_like(theirs, area), atol=1e-6)
        pasted_areas.append(area)
    assert max(pasted_areas) > 0.1 and len(set(pasted_areas)) > 5


def drawn_lambdas(module: ImageClassifier, n: int) -> np.ndarray:
    """The blend weight of ``n`` mixup calls, read off the targets (1 where nothing was mixed)."""
    return np.array([float(mix(module, seed)[2][0, MIX_LABELS[0]]) for seed in range(n)])


@pytest.mark.parametrize("alpha", [0.2, 4.0])
def test_mixup_alpha_sets_the_spread_of_lambda(alpha: float) -> None:
    # lambda ~ Beta(alpha, alpha): mean 1/2, variance 1 / (4 (2 alpha + 1)); 0.179 for 0.2, 0.028 for 4.
    lams = drawn_lambdas(classifier(mixup={"mixup_alpha": alpha, "cutmix_alpha": 0.0}), 600)
    assert abs(lams.mean() - 0.5) < 0.05
    assert lams.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.2)


def test_mixup_prob_is_the_share_of_mixed_batches_and_zero_leaves_targets_alone() -> None:
    lams = drawn_lambdas(classifier(mixup={"mixup_alpha": 1.0, "prob": 0.3}), 600)
    assert (lams < 1).mean() == pytest.approx(0.3, abs=0.07)  # binomial std 0.019
    eps = 0.1
    module = classifier(label_smoothing=eps, mixup={"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "prob": 0.0})
    for seed in range(20):
        images, mixed, targets = mix(module, seed)
        assert torch.equal(mixed, images)
        assert torch.allclose(targets, soft(MIX_LABELS, eps))
    # The soft-target loss of unmixed targets is the plain smoothed loss.
    small = constant_images(size=4)
    soft_loss = module._train_loss(small, module.mixup(small.clone(), MIX_LABELS)[1])[0]
    hard_loss = module._train_loss(small, MIX_LABELS)[0]
    assert torch.isclose(soft_loss, hard_loss, atol=1e-6)


# ---- SAM ---------------------------------------------------------------------------------------------


class ForwardCounter(Callback):
    """Counts the network's training-mode forward passes of every optimizer step."""

    def __init__(self) -> None:
        self.per_step: list[int] = []
        self._calls = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.net.register_forward_pre_hook(self._count)

    def _count(self, module: nn.Module, args: Any) -> None:
        self._calls += int(module.training)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.per_step.append(self._calls)
        self._calls = 0


def closed_form_step(module: ImageClassifier, batch: dict[str, torch.Tensor], lr: float, rho: float) -> torch.Tensor:
    """Plain SGD's step from the gradient at the SAM point ``w + rho g / ||g||`` (on a copy)."""
    net = copy.deepcopy(module.net)
    w = list(net.parameters())

    def grads() -> list[torch.Tensor]:
        return torch.autograd.grad(F.cross_entropy(net(batch["image"]), batch["label"]), w)

    g = grads()
    norm = torch.sqrt(sum((x**2).sum() for x in g))
    with torch.no_grad():
        start = [p.clone() for p in w]
        for p, x in zip(w, g, strict=True):
            p.add_(rho * x / norm)
    g_sam = grads()
    return torch.cat([(p0 - lr * x).flatten() for p0, x in zip(start, g_sam, strict=True)])


def test_sam_takes_two_forward_passes_and_the_sam_step() -> None:
    lr, rho, batch = 0.5, 0.5, toy_batch()
    plain, sam = classifier(lr=lr), classifier(lr=lr, sam_rho=rho)
    w0 = params(plain)
    assert torch.equal(w0, params(sam))  # the same starting state
    expected_sam = closed_form_step(sam, batch, lr, rho)
    plain_grad = torch.autograd.grad(F.cross_entropy(plain(batch["image"]), batch["label"]), list(plain.parameters()))
    expected_plain = w0 - lr * torch.cat([g.flatten() for g in plain_grad])
    counts = {}
    for name, module in (("plain", plain), ("sam", sam)):
        counter = ForwardCounter()
        fit_on(module, batch, steps=1, callbacks=[counter])
        counts[name] = counter.per_step
    assert counts == {"plain": [1], "sam": [2]}
    assert torch.allclose(params(plain), expected_plain, atol=1e-6)
    assert torch.allclose(params(sam), expected_sam, atol=1e-6)
    assert (params(sam) - params(plain)).abs().max() > 1e-3  # SAM's step is not the base optimizer's


# ---- EMA ---------------------------------------------------------------------------------------------


class RawWeights(Callback):
    """The raw (trained, not averaged) weights after every optimizer step."""

    def __init__(self) -> None:
        self.after_step: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.after_step.append(params(pl_module))


def ema_callback(**overrides: Any) -> Callback:
    """The EMA callback of ``configs/callbacks/ema.yaml``, with ``overrides``."""
    cfg = OmegaConf.load(PROJECT_ROOT / "configs" / "callbacks" / "ema.yaml").ema
    return hydra.utils.instantiate(OmegaConf.merge(cfg, overrides))


def ema_of(values: Sequence[torch.Tensor], decay: float) -> torch.Tensor:
    """EMA_1 = w_1, EMA_t = decay EMA_{t-1} + (1 - decay) w_t (torch's ``get_ema_avg_fn``)."""
    ema = values[0]
    for w in values[1:]:
        ema = decay * ema + (1 - decay) * w
    return ema


def test_ema_weights_are_the_exponential_average_of_the_raw_weights() -> None:
    decay, steps = 0.6, 6
    module, raw = classifier(lr=0.5), RawWeights()
    fit_on(module, toy_batch(), steps, callbacks=[ema_callback(decay=decay, update_starting_at_step=0), raw])
    assert len(raw.after_step) == steps
    final = params(module)  # the module ends training on the averaged weights
    assert torch.allclose(final, ema_of(raw.after_step, decay), atol=1e-6)
    assert (final - raw.after_step[-1]).abs().max() > 1e-3  # and they are not the raw ones


def test_ema_does_not_average_before_its_start_step() -> None:
    # Before update_starting_at_step nothing is averaged: EMA starts from the weights of that step.
    decay, start, steps = 0.6, 3, 6
    module, raw = classifier(lr=0.5), RawWeights()
    fit_on(module, toy_batch(), steps, callbacks=[ema_callback(decay=decay, update_starting_at_step=start), raw])
    assert torch.allclose(params(module), ema_of(raw.after_step[start:], decay), atol=1e-6)


def test_a_run_shorter_than_the_ema_start_ends_on_its_trained_weights_not_the_initial_ones() -> None:
    # The average is never updated in 4 steps with update_starting_at_step=50: validation, the
    # checkpoints and the final model then use the current weights, not the copy taken at setup.
    module, raw = classifier(lr=0.5), RawWeights()
    initial = params(module)
    fit_on(module, toy_batch(), 4, callbacks=[ema_callback(decay=0.999, update_starting_at_step=50), raw])
    assert torch.allclose(params(module), raw.after_step[-1])
    assert (params(module) - initial).abs().max() > 1e-3


def test_ema_warmup_lowers_the_decay_of_the_first_updates() -> None:
    decay, steps = 0.99, 6
    callback = ema_callback(decay=decay, warmup=True, update_starting_at_step=0)
    assert [callback.effective_decay(n) for n in (1, 10, 10_000)] == [2 / 11, 11 / 20, decay]
    module, raw = classifier(lr=0.5), RawWeights()
    fit_on(module, toy_batch(), steps, callbacks=[callback, raw])
    expected = raw.after_step[0]
    for n, w in enumerate(raw.after_step[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * w
    assert torch.allclose(params(module), expected, atol=1e-6)
