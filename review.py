"""Review suspect labels in the browser: ``python review.py data=<dataset> source=<cv or ensemble run>``.

Serves the suspects (out-of-fold predictions that disagree with the label) on 127.0.0.1 behind a
random token; keep / relabel / trash / skip / undo are journalled at once. ``python review.py
data=<dataset> source=<run> export`` writes the decisions into the dataset's cleaning manifest.
See ``configs/review.yaml`` and ``src/review/``.
"""

import sys

import hydra
from omegaconf import DictConfig

import src.core  # noqa: F401  (registers the config resolvers)
from src.core.cli import run_entry
from src.review.jobs import review


@hydra.main(version_base="1.3", config_path="configs", config_name="review")
def main(cfg: DictConfig) -> None:
    run_entry(review, cfg, config_name="review", needs_experiment=False)


if __name__ == "__main__":
    sys.argv[1:] = ["action=export" if a == "export" else a for a in sys.argv[1:]]
    main()
