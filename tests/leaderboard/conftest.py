"""A real MLflow store with real short runs of two families, made once for the leaderboard tests.

digits (classification): runs ``a`` and ``b`` (other seed), ``a_again`` (the command of ``a``
under another name: byte-identical predictions), ``c`` (trained, never predicted), a two-fold
cross-validation ``cv`` and an ensemble of it; lens_global (lens correction): two runs with
different coefficient grids. Every predicted run is evaluated (``eval/`` with its checksum).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from src.core.cv import run_cv
from src.core.evaluating import evaluate
from src.core.predicting import predict
from src.core.training import train
from src.ensemble.pipeline import run_ensemble
from tests.conftest import TINY_MODEL, compose_cfg, project_root
from tests.test_experiments import overrides_for

DIGITS = ["experiment=digits", *TINY_MODEL, "trainer.max_epochs=1", "+trainer.limit_train_batches=3", "test=false"]
LENS_GRIDS = {"coarse": "model.search.k1=[-0.2,0.0,0.1]", "fine": "model.search.k1=[-0.3,0.1,0.2]"}


def train_predict_evaluate(root: Path, overrides: list[str], predicted: bool = True) -> Path:
    train(compose_cfg(overrides, root))
    if not predicted:
        return root
    cfg = compose_cfg([*overrides, "split=val"], root, "predict")
    predict(cfg)
    folder = Path(cfg.paths.output_dir) / "predictions" / "val"
    evaluate(compose_cfg([f"path={folder}"], None, "evaluate"))
    return folder


@pytest.fixture(scope="package")
def store(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The project root holding the store and the runs (see the module docstring)."""
    root = project_root(tmp_path_factory.mktemp("leaderboard"), data_dir)
    train_predict_evaluate(root, [*DIGITS, "run_name=a"])
    train_predict_evaluate(root, [*DIGITS, "run_name=b", "seed=1", "trainer.max_epochs=2"])
    train_predict_evaluate(root, [*DIGITS, "run_name=a_again"])
    train_predict_evaluate(root, [*DIGITS, "run_name=c", "seed=2"], predicted=False)
    run_cv(compose_cfg([*DIGITS, "data.n_folds=2", "run_name=cv"], root, "cv"))
    run_ensemble(
        compose_cfg(["members=[outputs/digits/cv]", "train_csv=data/digits/train.csv", "run_name=cv_stack",
                     "blend_defs.hgb.max_iter=10", "audit.n_boot=50", "audit.n_splits=2"], root, "ensemble")
    )  # fmt: skip
    lens = overrides_for("lens_global", root)
    for name, grid in LENS_GRIDS.items():
        train_predict_evaluate(
            root, [*[o for o in lens if not o.startswith("model.search.k1")], grid, f"run_name={name}"]
        )
    return root
