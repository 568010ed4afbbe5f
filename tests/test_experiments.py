"""Every experiment config composes, instantiates, and runs one fast_dev_run step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra.utils import instantiate

from src.core.config import available
from src.core.training import instantiate_group, train
from tests.conftest import compose_cfg, read_metrics

EXPERIMENTS = available("experiment")


def test_there_are_experiments() -> None:
    assert "digits" in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name: str, root: Path) -> None:
    cfg = compose_cfg([f"experiment={name}"], root)
    assert cfg.experiment_name == name
    assert cfg.paths.output_dir == str(root / "outputs" / name / "default")
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callbacks = instantiate_group(cfg.callbacks)
    loggers = instantiate_group(cfg.logger)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert datamodule is not None and sum(p.numel() for p in model.parameters()) > 0
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert {type(c).__name__ for c in callbacks} >= {"ModelCheckpoint", "OnExceptionCheckpoint", "EpochSeed"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_fast_dev_run(name: str, root: Path) -> None:
    cfg = compose_cfg([f"experiment={name}", "debug=fdr"], root)
    train(cfg)
    metrics = read_metrics(Path(cfg.paths.output_dir))
    losses = [v for k, v in metrics.items() if k.startswith("train/loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert metrics["global_step"] == 1
