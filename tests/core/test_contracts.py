"""The import rule (import-linter contracts) and the start-up check of callback/module hooks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from src.core.contracts import (
    GaussianPredictor,
    LossTermHost,
    TaskModule,
    check_compatibility,
    protocol_members,
)
from src.core.errors import ConfigError
from src.core.resolvers import PROJECT_ROOT
from tests.conftest import TINY_MODEL, compose_cfg


def test_import_rule_holds() -> None:
    """`lint-imports` (the contracts in pyproject.toml) passes on the tree."""
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_protocol_members_lists_methods_and_attributes() -> None:
    assert protocol_members(LossTermHost) == ["add_loss_term"]
    assert protocol_members(GaussianPredictor) == ["naive_mean", "naive_sigma"]


def test_every_task_module_satisfies_the_module_contract(root: Path) -> None:
    for experiment in ("digits", "ariel_v50", "video_postfilter"):
        cfg = compose_cfg([f"experiment={experiment}", *([] if experiment != "digits" else TINY_MODEL)], root)
        model = instantiate(cfg.model)
        assert isinstance(model, TaskModule), experiment
        model.check_optimizers()


def test_sigma_calibration_on_a_classifier_is_refused_naming_both(root: Path) -> None:
    cfg = compose_cfg(["experiment=digits", *TINY_MODEL, "callbacks=[default,ariel]"], root)
    model = instantiate(cfg.model)
    callbacks = [(f"callbacks.{k}", instantiate(v)) for k, v in cfg.callbacks.items() if "_target_" in v]
    with pytest.raises(ConfigError) as err:
        check_compatibility(model, object(), callbacks)
    text = str(err.value)
    assert "GaussianPredictor" in text and "ImageClassifier" in text and "callbacks." in text


def test_a_nan_learning_rate_is_refused_at_start_up(root: Path) -> None:
    cfg = compose_cfg(["experiment=digits", *TINY_MODEL, "model.optimizer.lr=nan"], root)
    model = instantiate(cfg.model)
    with pytest.raises(ConfigError, match=r"model\.optimizer: .*nan"):
        model.check_optimizers()
    assert torch.isfinite(next(model.parameters())).all()
