"""Promote a run to ``champion``: ``python promote.py experiment=<name> run=<id|run dir> [--dry-run]``.

Applies the experiment's gates (``configs/gates/<name>.yaml``); on pass registers the run's model
in the MLflow Model Registry and moves the ``champion`` alias to it (the old one becomes
``previous``); on fail prints every failed gate and changes nothing (exit 1).
``python promote.py rollback experiment=<name>`` moves ``champion`` back. See ``configs/promote.yaml``.
"""

import hydra
from omegaconf import DictConfig

import src.core  # noqa: F401  (registers the config resolvers)
from src.core.cli import run_entry
from src.leaderboard.jobs import patch_argv, promote


@hydra.main(version_base="1.3", config_path="configs", config_name="promote")
def main(cfg: DictConfig) -> None:
    run_entry(promote, cfg, config_name="promote")


if __name__ == "__main__":
    patch_argv()
    main()
