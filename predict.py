"""Predict with a trained run's checkpoint: ``python predict.py experiment=<name> [ckpt=...]``.

Writes the competition submission (``submission.csv`` in the run directory by default); see
``configs/predict.yaml``.
"""

import hydra
from omegaconf import DictConfig

import src.core  # noqa: F401  (registers the config resolvers)
from src.core.cli import run_entry
from src.modules.ariel.predict_legacy import predict


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_entry(predict, cfg, config_name="predict")


if __name__ == "__main__":
    main()
