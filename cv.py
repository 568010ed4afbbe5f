"""Cross-validate one model: ``python cv.py experiment=<name> [cv.folds=[...]] [overrides]``.

Each fold is a resumable run and an MLflow child run of one parent; see src/core/cv.py.
"""

import hydra
from omegaconf import DictConfig

import src.core  # noqa: F401  (registers the config resolvers)
from src.core.cli import run_entry
from src.core.cv import run_cv


@hydra.main(version_base="1.3", config_path="configs", config_name="cv")
def main(cfg: DictConfig) -> float | None:
    return run_entry(run_cv, cfg, config_name="cv")


if __name__ == "__main__":
    main()
