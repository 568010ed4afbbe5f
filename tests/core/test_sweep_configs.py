"""Sweep and cluster configs: every hparams_search config composes with its experiment, sweeps keys
that exist (its lowest and highest values pass the override type check and build the model) and
optimizes a metric its family really logs; hydra/launcher=slurm composes with train.py's and
cv.py's configs and makes submitit ask SLURM for the signal Lightning's requeue handler waits on."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import submitit
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Transformer
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from src.callbacks.ariel.calibration import TemperatureScaling
from src.core.config import check_override_types
from src.modules.ariel.module import ArielMetrics
from tests.conftest import CONFIG_DIR, TINY_MODEL, compose_cfg

Names = Callable[[DictConfig], set[str]]


def _capture_log(names: set[str]) -> Callable[..., None]:
    return lambda name, value, *args, **kwargs: names.add(name)


def image_metrics(cfg: DictConfig) -> set[str]:
    """What the classifier logs in a validation step and at the validation epoch's end."""
    names: set[str] = set()
    model = instantiate(cfg.model)
    model.log = _capture_log(names)
    size = int(cfg.data.image_size)
    channels = int(cfg.model.net.in_chans)
    batch = {"image": torch.rand(4, channels, size, size), "label": torch.tensor([0, 1, 2, 3])}
    model.validation_step(batch, 0)
    model.on_validation_epoch_end()
    return names


def ariel_metrics(cfg: DictConfig) -> set[str]:
    """The module's validation metrics (ArielMetrics) and TemperatureScaling's calibrated ones."""
    names: set[str] = set()
    module = SimpleNamespace(log=_capture_log(names), naive_mean=1e-3, naive_sigma=1e-4)
    ArielMetrics().log_to(module, "val", batch_size=4)
    ts: TemperatureScaling = instantiate(cfg.callbacks.temperature_scaling)
    y = 1e-3 + 1e-4 * torch.randn(4, 283)
    ts.fit_and_log(module, y + 1e-5, torch.full_like(y, 1e-4), y)
    return names


def postfilter_metrics(cfg: DictConfig) -> set[str]:
    """What the post-filter logs in a validation step and at the validation epoch's end."""
    names: set[str] = set()
    model = instantiate(cfg.model)
    model.log = _capture_log(names)
    original = torch.rand(2, 3, 48, 48)
    model.validation_step({"decoded": (original + 0.02).clamp(0, 1), "original": original}, 0)
    model.on_validation_epoch_end()
    return names


#: hparams_search config → (experiment it sweeps, overrides that keep the model small, what the family logs).
SWEEPS: dict[str, tuple[str, list[str], Names]] = {
    "digits_optuna": ("digits", TINY_MODEL, image_metrics),
    "ariel_optuna": ("ariel_v50", [], ariel_metrics),
    "video_optuna": ("video_postfilter", [], postfilter_metrics),
}


def test_every_sweep_config_is_checked() -> None:
    found = {p.stem for p in (Path(CONFIG_DIR) / "hparams_search").glob("*.yaml")}
    assert found == set(SWEEPS), "add new hparams_search configs to SWEEPS"


def bounds(params: dict[str, str]) -> tuple[list[str], list[str]]:
    """Overrides setting every swept key to its first / last choice, or its interval's ends."""
    low, high = [], []
    for ov in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()]):
        if ov.is_choice_sweep():
            values = list(ov.sweep_iterator(transformer=Transformer.encode))
        else:
            assert ov.is_interval_sweep(), f"{ov.input_line}: neither choice(...) nor interval(...)"
            values = [str(ov.value().start), str(ov.value().end)]
        low.append(f"{ov.key_or_group}={values[0]}")
        high.append(f"{ov.key_or_group}={values[-1]}")
    return low, high


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_sweep_keys_exist_and_metric_is_logged(sweep: str, tmp_path: Path) -> None:
    experiment, small, logged = SWEEPS[sweep]
    base_overrides = [f"experiment={experiment}", f"hparams_search={sweep}", *small]
    base = compose_cfg(base_overrides, tmp_path)
    sweeper = HydraConfig.get().sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    params = dict(sweeper.params)
    assert params, f"{sweep} sweeps nothing"
    missing = [k for k in params if OmegaConf.select(base, k, default=KeyError) is KeyError]
    assert not missing, f"{sweep} sweeps keys that {experiment} does not have: {missing}"

    for overrides in bounds(params):
        cfg = compose_cfg([*base_overrides, *overrides], tmp_path)
        check_override_types(cfg, base, overrides)  # what train.py does before it runs
        for ov in OverridesParser.create().parse_overrides(overrides):
            assert OmegaConf.select(cfg, ov.key_or_group) == ov.value()
        instantiate(cfg.model)

    metric = base.optimized_metric
    names = logged(base)
    assert metric in names, f"{sweep} optimizes {metric}, which {experiment} does not log: {sorted(names)}"


def compose_with_hydra(config_name: str, overrides: list[str], root: Path) -> DictConfig:
    """The composed config with its ``hydra`` node, as the launcher is instantiated from it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(config_name, overrides=[*overrides, f"paths.root_dir={root}"], return_hydra_config=True)


def sbatch_script(cfg: DictConfig, bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sbatch file the Hydra submitit launcher would submit for ``cfg`` (nothing is submitted)."""
    (bin_dir / "srun").write_text("#!/bin/sh\n")  # submitit's SLURM executor looks for srun
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    executors: list[submitit.AutoExecutor] = []
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", lambda self, fn, *args: executors.append(self) or [])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    launcher.launch([["seed=1"]], initial_job_idx=0)
    (executor,) = executors
    return executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")


@pytest.mark.parametrize("entry", ["train", "cv"])
def test_slurm_launcher_asks_for_the_requeue_signal(entry: str, tmp_path: Path, monkeypatch) -> None:
    cfg = compose_with_hydra(entry, ["experiment=digits", "trainer=slurm", "hydra/launcher=slurm"], tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.additional_parameters.signal == f"USR1@{launcher.signal_delay_s}"
    assert launcher.signal_delay_s > 0 and launcher.additional_parameters.requeue is True
    if entry == "cv":
        assert "folds" in cfg.cv

    (plugin,) = [instantiate(p) for p in cfg.trainer.plugins]
    assert isinstance(plugin, SLURMEnvironment) and plugin.auto_requeue
    assert plugin.requeue_signal is signal.SIGUSR1  # the signal the launcher asks SLURM for

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = sbatch_script(cfg, bin_dir, monkeypatch).splitlines()
    assert f"#SBATCH --signal=USR1@{launcher.signal_delay_s}" in script
    assert "#SBATCH --requeue" in script
    assert f"#SBATCH --ntasks-per-node={launcher.tasks_per_node}" in script
