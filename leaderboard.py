"""Rank the finished runs of an experiment: ``python leaderboard.py experiment=<name> [filter=...]``.

Bootstrap intervals from each run's evaluation artifact, paired differences with the champion,
promotion gates; writes ``outputs/leaderboard/<name>/leaderboard.{csv,html}``. See
``configs/leaderboard.yaml`` and ``src/leaderboard/``.
"""

import hydra
from omegaconf import DictConfig

import src.core  # noqa: F401  (registers the config resolvers)
from src.core.cli import run_entry
from src.leaderboard.jobs import leaderboard


@hydra.main(version_base="1.3", config_path="configs", config_name="leaderboard")
def main(cfg: DictConfig) -> None:
    run_entry(leaderboard, cfg, config_name="leaderboard")


if __name__ == "__main__":
    main()
