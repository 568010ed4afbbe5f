"""Train one run: ``python train.py experiment=<name> [overrides]``.

The same command resumes a killed run and reports a finished one; see README.md.
"""

import hydra
from omegaconf import DictConfig

import src.core  # noqa: F401  (registers the config resolvers)
from src.core.cli import run_entry
from src.core.training import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_entry(train, cfg, config_name="train")


if __name__ == "__main__":
    main()
