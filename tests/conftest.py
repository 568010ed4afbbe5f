"""Shared fixtures: tiny real data made once per session, config composition, train.py runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import src.core  # noqa: F401  (resolvers)

# A developer's shared tracking server must not receive the suite's runs (which read <root>/mlruns);
# the tracking-server tests point their runs at their own server explicitly.
os.environ.pop("MLFLOW_TRACKING_URI", None)
from src.core.resolvers import PROJECT_ROOT

CONFIG_DIR = str(PROJECT_ROOT / "configs")
TRAIN_PY = str(PROJECT_ROOT / "train.py")
# A 0.4 M-parameter timm ResNet: the whole stack in seconds on a laptop CPU.
TINY_MODEL = ["model.net.model_name=test_resnet", "extras.print_config=false"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding the digits dataset in the generic layout (written once)."""
    from src.datamodules.images.digits import write_digits

    root = tmp_path_factory.mktemp("data")
    write_digits(root / "digits")
    return root


def project_root(folder: Path, data_dir: Path) -> Path:
    """Make ``folder`` a project root: its own outputs/ and mlruns/ to come, the shared digits data."""
    (folder / "data").mkdir()
    (folder / "data" / "digits").symlink_to(data_dir / "digits", target_is_directory=True)
    return folder


@pytest.fixture
def root(tmp_path: Path, data_dir: Path) -> Path:
    """A project root for one test: its own outputs/ and mlruns/, the shared data/."""
    return project_root(tmp_path, data_dir)


def compose_cfg(overrides: list[str], root: Path | None, config_name: str = "train") -> DictConfig:
    """Compose configs/<config_name>.yaml like `python <config_name>.py` would, rooted at ``root``
    (None for a config without project paths, such as ``evaluate``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        overrides = [*overrides, f"paths.root_dir={root}"] if root is not None else list(overrides)
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # a task function sees the config without it, as under @hydra.main
    return cfg


def train_runner(root: Path) -> Callable[..., subprocess.CompletedProcess]:
    """A function running ``python train.py <args>`` in a subprocess rooted at ``root``."""

    def _run(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "PODIUM_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(
            [sys.executable, TRAIN_PY, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"train.py {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        return proc

    return _run


@pytest.fixture
def run_train(root: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python train.py <args>`` in a subprocess rooted at the test's root."""
    return train_runner(root)


def mlflow_runs(root: Path, run_name: str, experiment: str = "digits") -> list:
    """The MLflow runs named ``run_name`` of ``experiment`` in ``root``'s store."""
    import mlflow

    from src.core.mlflow_store import tracking_uri

    client = mlflow.MlflowClient(tracking_uri(root / "mlruns"))
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], f"attributes.run_name = '{run_name}'")


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())
