"""Predict with a trained run's checkpoint: ``python predict.py experiment=<name> [ckpt=...] [split=...]``.

Writes ``<run dir>/predictions/<split>/`` (per-sample records, summary, resolved config and the
task's export); see ``configs/predict.yaml`` and ``src/core/predicting.py``.
"""

import hydra
from omegaconf import DictConfig

import src.core  # noqa: F401  (registers the config resolvers)
from src.core.cli import run_entry
from src.core.predicting import predict


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_entry(predict, cfg, config_name="predict")


if __name__ == "__main__":
    main()
