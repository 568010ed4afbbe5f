"""The recipe switches train together through the real stack, each with its effect in place.

A probe callback, added to the Trainer that ``train`` builds from the config, records what the
training steps did: the targets the loss saw, the network's inputs and forward passes, the
gradient norms before and after clipping. The tiny-model effects of each switch are measured in
``test_recipe_effects.py``; here the question is whether the config wires every switch into a
real digits run and they still work together.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from src.core.training import train
from src.datamodules.seeding import SeededWeightedSampler
from tests.conftest import TINY_MODEL, compose_cfg, read_metrics

SHORT = ["experiment=digits", *TINY_MODEL, "+trainer.limit_train_batches=6", "+trainer.limit_val_batches=3",
         "logger=csv"]  # fmt: skip
STEPS_PER_EPOCH = 6
NUM_CLASSES = 10


def grad_norm(module: torch.nn.Module) -> float:
    """The global L2 norm of the module's gradients."""
    grads = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm())


class RecipeProbe(Callback):
    """Records what every training step of a run did, without changing it."""

    def __init__(self) -> None:
        self.targets: list[tuple[int, torch.Tensor]] = []  # (epoch, targets given to the loss)
        self.forwards: list[int] = []  # training-mode forward passes of the network per step
        self.channels_last: list[bool] = []  # whether each training input reached the net channels-last
        self.norm_before_clip: list[float] = []  # automatic optimization: before Lightning clips
        self.norm_stepped: list[float] = []  # the gradient the optimizer stepped with
        self.initial: dict[str, torch.Tensor] = {}
        self.info: dict[str, Any] = {}
        self._calls = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        loss_fn = pl_module._train_loss

        def recorded(images: torch.Tensor, targets: torch.Tensor) -> Any:
            self.targets.append((trainer.current_epoch, targets.detach().clone()))
            return loss_fn(images, targets)

        pl_module._train_loss = recorded
        pl_module.net.register_forward_pre_hook(self._forward)

    def _forward(self, net: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if net.training:
            self._calls += 1
            self.channels_last.append(args[0].is_contiguous(memory_format=torch.channels_last))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        self.info = {
            "sampler": trainer.train_dataloader.sampler,
            "class_weight": pl_module.class_weight,
            "class_counts": dm.class_counts(),
            "val_ids": list(dm.val_set.sample_ids),
        }
        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(lambda *_: self.norm_stepped.append(grad_norm(pl_module)))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.norm_before_clip.append(grad_norm(pl_module))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.forwards.append(self._calls)
        self._calls = 0


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[RecipeProbe]]:
    """A fresh probe in every Trainer built during the test, in order."""
    built: list[RecipeProbe] = []
    original = pl.Trainer.__init__

    def init(self: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        built.append(RecipeProbe())
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), built[-1]]
        original(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", init)
    yield built


def assert_mixup_then_clean(probe: RecipeProbe, smoothing: float, off_epoch: int) -> None:
    """Soft, smoothed, mixed targets before ``off_epoch``; the plain labels from it on."""
    mixed = [t for epoch, t in probe.targets if epoch < off_epoch]
    clean = [t for epoch, t in probe.targets if epoch >= off_epoch]
    assert len(mixed) == len(clean) == STEPS_PER_EPOCH
    for t in mixed:
        assert t.dtype.is_floating_point and t.shape[1] == NUM_CLASSES
        assert torch.allclose(t.sum(dim=1), torch.ones(len(t)))
        # label smoothing travels inside the soft targets: no class below eps / K
        assert float(t.min()) >= smoothing / NUM_CLASSES - 1e-6
    # mixing took place: some rows put less than the smoothed one-hot weight on their top class
    assert any(float(t.max(dim=1).values.min()) < 1 - smoothing + smoothing / NUM_CLASSES - 0.01 for t in mixed)
    assert all(not t.dtype.is_floating_point and t.dim() == 1 for t in clean)


def assert_ema_in_checkpoint(run_dir: Path, initial: dict[str, torch.Tensor]) -> None:
    """last.ckpt holds averaged weights that moved from the start and differ from the raw ones."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    average, raw = ckpt["state_dict"], ckpt["current_model_state"]
    weights = [k for k in raw if k.startswith("net.") and raw[k].is_floating_point() and "running" not in k]
    assert weights
    assert max(float((average[k] - raw[k]).abs().max()) for k in weights) > 1e-4  # EMA != raw
    assert max(float((average[k] - initial[k]).abs().max()) for k in weights) > 1e-4  # EMA was updated


def test_all_switches_together(root: Path, probes: list[RecipeProbe]) -> None:
    smoothing, clip = 0.1, 1.0
    cfg = compose_cfg(
        [*SHORT, "trainer.max_epochs=2", "run_name=recipe", f"model.label_smoothing={smoothing}",
         "model.class_weights=balanced", "model.mixup={mixup_alpha: 0.2, cutmix_alpha: 1.0}",
         "model.mixup_off_epoch=1", "data.sampler=weighted", "model.channels_last=true",
         "callbacks=[default,oof_images,ema]", "callbacks.oof.tta=geo8", "callbacks.monitor.metric=val/loss",
         # EMA from the first step (its default, step 50, is past the end of this 12-step run)
         "callbacks.ema.update_starting_at_step=0", "callbacks.ema.decay=0.9",
         "callbacks.monitor.mode=min", f"trainer.gradient_clip_val={clip}"],
        root,
    )  # fmt: skip
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    metrics = read_metrics(run_dir)
    assert metrics["epoch"] == 2 and metrics["global_step"] == 2 * STEPS_PER_EPOCH
    (probe,) = probes
    assert_mixup_then_clean(probe, smoothing, off_epoch=1)
    assert probe.channels_last and all(probe.channels_last)
    assert isinstance(probe.info["sampler"], SeededWeightedSampler)
    counts = torch.tensor(probe.info["class_counts"], dtype=torch.float32)
    assert torch.allclose(probe.info["class_weight"] * counts, torch.full_like(counts, counts.mean()))
    # gradient clipping: every step's gradient at most the clip norm, and some were cut down to it
    assert len(probe.norm_stepped) == len(probe.norm_before_clip) == 2 * STEPS_PER_EPOCH
    assert max(probe.norm_stepped) <= clip * (1 + 1e-4)
    cut = [(b, a) for b, a in zip(probe.norm_before_clip, probe.norm_stepped, strict=True) if b > clip]
    assert cut and all(a == pytest.approx(clip, rel=1e-3) for _, a in cut)
    assert_ema_in_checkpoint(run_dir, probe.initial)
    oof = pd.read_parquet(run_dir / "oof" / "val.parquet")
    assert sorted(oof.sample_id) == sorted(probe.info["val_ids"]) and set(oof.fold) == {0}


def test_sam_runs_two_passes_per_step_with_its_own_clip(root: Path, probes: list[RecipeProbe]) -> None:
    clip = 0.5
    cfg = compose_cfg([*SHORT, "trainer.max_epochs=1", "run_name=sam", "model.sam_rho=0.05", f"model.grad_clip={clip}"],
                      root)  # fmt: skip
    train(cfg)
    (probe,) = probes
    assert probe.forwards == [2] * STEPS_PER_EPOCH  # the second pass at the perturbed weights
    assert [t.dtype for _, t in probe.targets] == [torch.int64] * 2 * STEPS_PER_EPOCH  # both passes, same labels
    # model.grad_clip acts on the SAM path (the Trainer's clipping does not run there)
    assert len(probe.norm_stepped) == STEPS_PER_EPOCH
    assert max(probe.norm_stepped) <= clip * (1 + 1e-4)
    assert any(n == pytest.approx(clip, rel=1e-3) for n in probe.norm_stepped)
    assert read_metrics(Path(cfg.paths.output_dir))["global_step"] == STEPS_PER_EPOCH


def test_selective_swa_keeps_the_better_weights(root: Path) -> None:
    cfg = compose_cfg([*SHORT, "trainer.max_epochs=3", "run_name=swa", "callbacks=[default,oof_images,swa]"], root)
    train(cfg)
    metrics = read_metrics(Path(cfg.paths.output_dir))
    assert metrics["swa/selected"] in (0.0, 1.0)
    kept = metrics["swa/loss"] if metrics["swa/selected"] else metrics["raw/loss"]
    assert kept == min(metrics["swa/loss"], metrics["raw/loss"])
