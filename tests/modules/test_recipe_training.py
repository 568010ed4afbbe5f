"""The recipe switches train together through the real stack."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from src.core.training import train
from tests.conftest import TINY_MODEL, compose_cfg, read_metrics

SHORT = ["experiment=digits", *TINY_MODEL, "+trainer.limit_train_batches=6", "+trainer.limit_val_batches=3",
         "logger=csv"]  # fmt: skip


def test_all_switches_together(root: Path) -> None:
    cfg = compose_cfg(
        [*SHORT, "trainer.max_epochs=2", "run_name=recipe", "model.label_smoothing=0.1",
         "model.class_weights=balanced", "model.mixup={mixup_alpha: 0.2, cutmix_alpha: 1.0}",
         "model.mixup_off_epoch=1", "data.sampler=weighted", "model.channels_last=true",
         "callbacks=[default,oof_images,ema]", "callbacks.oof.tta=geo8", "callbacks.monitor.metric=val/loss",
         "callbacks.monitor.mode=min", "trainer.gradient_clip_val=1.0"],
        root,
    )  # fmt: skip
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    metrics = read_metrics(run_dir)
    assert math.isfinite(metrics["train/loss"]) and metrics["epoch"] == 2
    oof = pd.read_parquet(run_dir / "oof" / "val.parquet")
    assert len(oof) > 300 and set(oof.fold) == {0}


def test_sam_and_selective_swa(root: Path) -> None:
    cfg = compose_cfg(
        [*SHORT, "trainer.max_epochs=2", "run_name=sam", "model.sam_rho=0.05", "model.grad_clip=1.0"], root
    )
    train(cfg)
    assert math.isfinite(read_metrics(Path(cfg.paths.output_dir))["train/loss"])
    cfg = compose_cfg([*SHORT, "trainer.max_epochs=3", "run_name=swa", "callbacks=[default,oof_images,swa]"], root)
    train(cfg)
    metrics = read_metrics(Path(cfg.paths.output_dir))
    assert metrics["swa/selected"] in (0.0, 1.0)
    kept = metrics["swa/loss"] if metrics["swa/selected"] else metrics["raw/loss"]
    assert kept == min(metrics["swa/loss"], metrics["raw/loss"])
