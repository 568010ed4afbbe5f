"""Blend K-fold runs: ``python ensemble.py 'members=[outputs/<exp>/<cv run>,...]' [overrides]``.

Scores every member and blend on nested out-of-fold predictions, calibrates the best, adds pair
experts and writes ranking.csv, submission.csv, report.html and metrics.json under
``outputs/ensemble/<run_name>/``; see ``configs/ensemble.yaml``.
"""

import hydra
from omegaconf import DictConfig

import src.core  # noqa: F401  (registers the config resolvers)
from src.core.cli import run_entry
from src.ensemble.pipeline import run_ensemble


@hydra.main(version_base="1.3", config_path="configs", config_name="ensemble")
def main(cfg: DictConfig) -> float | None:
    return run_entry(run_ensemble, cfg, config_name="ensemble", needs_experiment=False)


if __name__ == "__main__":
    main()
