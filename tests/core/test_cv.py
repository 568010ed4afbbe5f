"""The fold runner: child runs under one parent, merged OOF, skip finished folds, resume a killed one."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from src.core.mlflow_store import tracking_uri
from tests.conftest import TINY_MODEL, read_metrics
from tests.core.test_faults import assert_each_step_once, history, killed, run

CV_PY = str(Path(__file__).resolve().parents[2] / "cv.py")
ARGS = ["experiment=digits", *TINY_MODEL, "data.n_folds=3", "trainer.max_epochs=2",
        "+trainer.limit_train_batches=4", "run_name=cv"]  # fmt: skip


def run_cv(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PODIUM_ROOT": str(root)}
    proc = subprocess.run([sys.executable, CV_PY, *args], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_cv_kill_a_fold_then_rerun_skips_finished_and_resumes(root: Path) -> None:
    parent = root / "outputs" / "digits" / "cv"
    step = random.randrange(0, 8)  # fold 1 trains 2 epochs of 4 steps
    fault = ("--kill-at-step", str(step), "--in-fit", "2")
    out = killed(run(root, *ARGS, faults=fault, entry=CV_PY))
    assert f"SIGKILL at global step {step}" in out.stdout
    assert (parent / "fold_0" / "metrics.json").is_file() and not (parent / "fold_1" / "metrics.json").exists()
    fold0_stamp = (parent / "fold_0" / "metrics.json").stat().st_mtime_ns

    out = run_cv(root, *ARGS)

    assert "already finished" in out.stdout  # fold 0 is reported, not retrained
    assert (parent / "fold_0" / "metrics.json").stat().st_mtime_ns == fold0_stamp
    resumes = json.loads((parent / "fold_1" / "manifest.json").read_text()).get("resumes", [])
    assert len(resumes) == (1 if step >= 4 else 0), f"killed at step {step}"  # a checkpoint after epoch 0 only
    metrics = read_metrics(parent)
    assert metrics["oof/samples"] == 1797 and 0.0 <= metrics["oof/score"] <= 1.0
    assert {"cv/val/acc/mean", "cv/val/acc/std"} <= set(metrics)

    oof = pd.read_parquet(parent / "oof" / "oof.parquet")
    assert len(oof) == 1797 and oof.sample_id.is_unique and set(oof.fold) == {0, 1, 2}
    prob_cols = [f"prob_{c}" for c in range(10)]
    assert (oof[prob_cols].sum(axis=1) - 1).abs().max() < 1e-4
    assert (oof[prob_cols].to_numpy().argmax(axis=1) == oof.label).mean() == pytest.approx(metrics["oof/score"])
    assert json.loads((parent / "oof" / "classes.json").read_text())["classes"] == [str(i) for i in range(10)]

    client = mlflow.MlflowClient(tracking_uri(root / "mlruns"))
    exp = client.get_experiment_by_name("digits")
    parent_id = json.loads((parent / "manifest.json").read_text())["mlflow_run_id"]
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.info.run_name for r in children) == ["cv/fold_0", "cv/fold_1", "cv/fold_2"]
    assert all(r.info.status == "FINISHED" for r in children)
    # The killed fold's MLflow run has every metric at the same steps as an unbroken fold, once each.
    by_name = {r.info.run_name: r.info.run_id for r in children}
    killed_fold, unbroken = history(root, by_name["cv/fold_1"]), history(root, by_name["cv/fold_2"])
    assert_each_step_once(killed_fold)
    assert {k: [s for s, _ in v] for k, v in killed_fold.items()} == {
        k: [s for s, _ in v] for k, v in unbroken.items()
    }, f"killed at step {step}"
    parent_run = client.get_run(parent_id)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.metrics["oof/score"] == pytest.approx(metrics["oof/score"])

    again = run_cv(root, *ARGS)
    assert "already finished" in again.stdout


@pytest.mark.slow
def test_single_fold_jobs_close_the_parent_when_the_last_finishes(root: Path) -> None:
    parent = root / "outputs" / "digits" / "cv"
    args = [a for a in ARGS if not a.startswith("trainer.max_epochs")] + ["trainer.max_epochs=1"]
    for k in (2, 0):
        out = run_cv(root, *args, f"cv.folds=[{k}]")
        assert "not finished yet" in out.stdout
        assert not (parent / "metrics.json").exists()
    run_cv(root, *args, "cv.folds=[1]")
    assert read_metrics(parent)["oof/samples"] == 1797
