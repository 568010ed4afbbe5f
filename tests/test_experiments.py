"""Every experiment config composes, instantiates, and runs one fast_dev_run step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra.utils import instantiate

from src.core.config import available
from src.core.lifecycle import build_group
from src.core.training import train
from tests.conftest import compose_cfg, read_metrics
from tests.datamodules.images.test_layout import make_fruit_set

EXPERIMENTS = available("experiment")


def _fruits(root: Path) -> list[str]:
    make_fruit_set(root / "data" / "fruits")
    return ["data.name=fruits", "data.num_classes=15", "data.group_column=plu", "data.image_size=32"]


def _ariel(root: Path) -> list[str]:
    """A six-planet simulated Ariel set with few frames: the whole pipeline in seconds."""
    return ["data=ariel_toy", "data.simulate.planets=6", "data.simulate.test_planets=1",
            "data.simulate.airs_pairs=24", "data.simulate.fgs1_pairs=96",
            "data.calibration.instruments.FGS1.bin_size=4", "data.calibration.instruments.AIRS-CH0.bin_size=1",
            "data.n_folds=2", "data.batch_size=2"]  # fmt: skip


def _shapes(root: Path) -> list[str]:
    """A tiny shapes set: 24 + 6 images of 64 px, at the detector's input size."""
    return ["data.prepare.n_train=24", "data.prepare.n_test=6", "data.prepare.image_size=64",
            "data.prepare.max_size=24", "data.n_folds=3", "data.batch_size=4",
            "model.net.min_size=64", "model.net.max_size=64"]  # fmt: skip


def _lens(root: Path) -> list[str]:
    """A tiny simulated lens set (16 + 4 pairs), small working images and a 3 x 2 coefficient grid."""
    return ["data=lens_toy", "data.prepare.n_train=16", "data.prepare.n_test=4", "data.n_folds=2",
            "data.batch_size=2", "data.work_long_side=64", "data.thumb_size=32", "model.fit_long_side=64",
            "model.fit_per_bucket=2", "model.min_support=2", "model.search.k1=[-0.2,0.0,0.1]",
            "model.search.k2=[0.0,0.2,0.2]", "model.search.micro_steps=0"]  # fmt: skip


# Experiments over a user's own data get a small dataset of that shape; big ones a toy version.
USER_DATA = {
    "shapes_det": _shapes,
    "image_folder": _fruits,
    "ariel_v50": _ariel,
    "ariel_mlp": _ariel,
    "ariel_polyfit": _ariel,
    "ariel_prior": _ariel,
    "lens_identity": _lens,
    "lens_global": _lens,
    "lens_bucket": _lens,
    "lens_learned": _lens,
}


def overrides_for(name: str, root: Path) -> list[str]:
    return [f"experiment={name}", *USER_DATA.get(name, lambda r: [])(root)]


def test_there_are_experiments() -> None:
    assert "digits" in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name: str, root: Path) -> None:
    cfg = compose_cfg(overrides_for(name, root), root)
    assert cfg.experiment_name == name
    assert cfg.paths.output_dir.startswith(str(root / "outputs" / name))
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callbacks = list(build_group(cfg, "callbacks").values())
    loggers = list(build_group(cfg, "logger").values())
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    # The lens heuristics (model.net: null) search coefficients and have no weights.
    weights = sum(p.numel() for p in model.parameters())
    assert datamodule is not None and (weights > 0 or cfg.model.get("net", False) is None)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert {type(c).__name__ for c in callbacks} >= {"ModelCheckpoint", "OnExceptionCheckpoint", "EpochSeed"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_fast_dev_run(name: str, root: Path) -> None:
    cfg = compose_cfg([*overrides_for(name, root), "debug=fdr"], root)
    train(cfg)
    metrics = read_metrics(Path(cfg.paths.output_dir))
    losses = [v for k, v in metrics.items() if k.startswith("train/loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert metrics["global_step"] == 1
