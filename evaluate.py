"""Score a prediction artifact offline: ``python evaluate.py path=<predictions folder or gt_vs_pred.jsonl>``.

Needs neither the model nor the training data: writes ``<folder>/eval/metrics.json`` and
``eval/per_sample.jsonl``; see ``configs/evaluate.yaml`` and ``src/core/evaluating.py``.
"""

import hydra
from omegaconf import DictConfig

import src.core  # noqa: F401  (registers the config resolvers)
from src.core.cli import run_entry
from src.core.evaluating import evaluate


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_entry(evaluate, cfg, config_name="evaluate", needs_experiment=False)


if __name__ == "__main__":
    main()
