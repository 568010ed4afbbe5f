"""The fold runner: child runs under one parent, merged OOF, skip finished folds, resume a killed
one, and the parent's run lifecycle (finished, force, another config)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from src.core import cv
from src.core.artifacts import RECORDS_FILE
from src.core.errors import ConfigError, RunStateError
from src.core.lifecycle import RunLifecycle
from src.core.manifest import config_hash
from src.core.mlflow_store import tracking_uri
from tests.conftest import CONFIG_DIR, TINY_MODEL, project_root, read_metrics
from tests.core.test_faults import assert_each_step_once, history, killed, run
from tests.entry_harness import run_entry_point
from tests.test_experiments import overrides_for

CV_PY = str(Path(__file__).resolve().parents[2] / "cv.py")
ARGS = ["experiment=digits", *TINY_MODEL, "data.n_folds=3", "trainer.max_epochs=2",
        "+trainer.limit_train_batches=4", "run_name=cv"]  # fmt: skip
# Two folds of one epoch of 2 steps, CSV logs: the parent lifecycle tests' cross-validation.
TOY = ["experiment=digits", *TINY_MODEL, "data.n_folds=2", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
       "+trainer.limit_val_batches=2", "logger=csv"]  # fmt: skip


def compose_cv(overrides: list[str], root: Path) -> DictConfig:
    """Compose configs/cv.yaml like `python cv.py` would, rooted at ``root``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="cv", overrides=[*overrides, f"paths.root_dir={root}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="module")
def cv_root(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A project root holding one finished toy cross-validation, ``outputs/digits/toy``."""
    root = project_root(tmp_path_factory.mktemp("cv_lifecycle"), data_dir)
    cv.run_cv(compose_cv([*TOY, "run_name=toy"], root))
    return root


def stamps(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_finished_cross_validation_is_reported(cv_root: Path, capsys) -> None:
    parent = cv_root / "outputs" / "digits" / "toy"
    before = stamps(parent)
    capsys.readouterr()
    assert cv.run_cv(compose_cv([*TOY, "run_name=toy"], cv_root)) == read_metrics(parent)["oof/score"]
    out = capsys.readouterr().out
    assert "cross-validation digits/toy is already finished" in out and "oof/score=" in out
    assert stamps(parent) == before


@pytest.mark.parametrize("finished", [True, False])
def test_a_parent_of_another_config_is_refused_before_any_fold(cv_root: Path, finished: bool) -> None:
    name = "toy" if finished else "half"
    parent = cv_root / "outputs" / "digits" / name
    if not finished:  # a parent another job opened, its folds not run yet
        first = compose_cv([*TOY, f"run_name={name}"], cv_root)
        cv.open_parent(first, RunLifecycle(first))
    before = stamps(parent)
    other = compose_cv([*TOY, "trainer.max_epochs=2", "cv.folds=[1]", f"run_name={name}"], cv_root)
    state = "a finished" if finished else "an unfinished"
    with pytest.raises(RunStateError, match=f"{state} cross-validation of a different config") as err:
        cv.run_cv(other)
    assert "trainer.max_epochs: 1 -> 2" in err.value.what and "force=true" in err.value.fix
    assert stamps(parent) == before  # cv.folds does not count: the folds one job runs are its own choice


def test_a_refused_value_stops_before_the_parent_run_exists(cv_root: Path) -> None:
    cfg = compose_cv([*TOY, "logger=mlflow", "data.batch_size=-1", "run_name=refused"], cv_root)
    with pytest.raises(ConfigError, match=r"data\.batch_size=-1"):
        cv.run_cv(cfg)
    assert not (cv_root / "outputs" / "digits" / "refused" / "manifest.json").exists()
    client = mlflow.MlflowClient(tracking_uri(cv_root / "mlruns"))
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_force_runs_every_fold_again(cv_root: Path) -> None:
    parent = cv_root / "outputs" / "digits" / "forced"
    shutil.copytree(cv_root / "outputs" / "digits" / "toy", parent)
    old = {k: json.loads((parent / k / "manifest.json").read_text()) for k in ("", "fold_0", "fold_1")}
    cfg = compose_cv([*TOY, "model.optimizer.lr=0.01", "run_name=forced", "force=true"], cv_root)
    cv.run_cv(cfg)
    assert json.loads((parent / "manifest.json").read_text())["config_hash"] == config_hash(cfg)
    for k in ("", "fold_0", "fold_1"):
        manifest = json.loads((parent / k / "manifest.json").read_text())
        assert manifest["config_hash"] != old[k]["config_hash"] and manifest["created_at"] >= old[k]["finished_at"]
    assert read_metrics(parent)["oof/samples"] == 1797  # the OOF writer predicts every validation sample


def run_cv(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PODIUM_ROOT": str(root)}
    proc = subprocess.run([sys.executable, CV_PY, *args], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_cv_kill_a_fold_then_rerun_skips_finished_and_resumes(root: Path) -> None:
    parent = root / "outputs" / "digits" / "cv"
    step = random.randrange(0, 8)  # fold 1 trains 2 epochs of 4 steps
    # Fold 1's Trainer is the fourth the process builds: cv.py builds fold 0's once up front
    # (check_folds), then fold 0 trains and predicts its validation fold (its out-of-fold records).
    fault = ("--kill-at-step", str(step), "--in-fit", "4")
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


def test_every_fold_predicts_its_validation_fold_and_the_parent_scores_the_records(
    cv_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    parent = cv_root / "outputs" / "digits" / "toy"
    for k in (0, 1):
        summary = json.loads((parent / f"fold_{k}" / "predictions" / "val" / "summary.json").read_text())
        assert summary["checkpoint"]["path"] == "checkpoints/last.ckpt" and summary["split"] == "val"
    records = [json.loads(line) for line in (parent / "oof" / RECORDS_FILE).read_text().splitlines()]
    assert len(records) == 1797 and len({r["sample_id"] for r in records}) == 1797
    assert {r["fold"] for r in records} == {0, 1}
    metrics = read_metrics(parent)
    accuracy = float(np.mean([r["pred"]["label"] == r["gt"]["label"] for r in records]))
    assert metrics["oof/acc"] == pytest.approx(accuracy) and metrics["oof/score"] == metrics["oof/acc"]
    assert {"oof/log_loss", "oof/ece"} <= set(metrics)
    # The merged records are an artifact like predict.py's: evaluate.py scores a moved copy the same.
    moved = Path(shutil.copytree(parent / "oof", tmp_path / "moved"))
    result = run_entry_point("evaluate", [f"path={moved}"], tmp_path, monkeypatch, capfd)
    assert result.code == 0, result.output[-3000:]
    written = json.loads((moved / "eval" / "metrics.json").read_text())["metrics"]
    assert written["acc"] == pytest.approx(metrics["oof/acc"]) and written["ece"] == pytest.approx(metrics["oof/ece"])


def test_an_experiment_without_folds_is_refused_before_anything_runs(cv_root: Path) -> None:
    cfg = compose_cv(["experiment=video_postfilter", "run_name=nofolds"], cv_root)
    with pytest.raises(ConfigError, match=r"has no folds \(data\.n_folds\)"):
        cv.run_cv(cfg)
    assert not (cv_root / "outputs" / "video_postfilter" / "nofolds" / "manifest.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("experiment", "metric"),
    [("ariel_v50", "score2024"), ("image_folder", "acc")],
)
def test_experiments_cross_validate_as_shipped(experiment: str, metric: str, tmp_path: Path) -> None:
    """A μ/σ experiment and an image folder without an OOF writer: every fold predicts its
    validation fold and the parent scores the merged records with the task's evaluator."""
    overrides = [*overrides_for(experiment, tmp_path), "trainer.max_epochs=1", "logger=csv", "run_name=cv"]
    if experiment == "image_folder":
        overrides += [*TINY_MODEL, "data.n_folds=2", "+trainer.limit_train_batches=2"]
    else:
        overrides += ["callbacks.report=null"]
    assert cv.run_cv(compose_cv(overrides, tmp_path)) is not None
    parent = tmp_path / "outputs" / experiment / "cv"
    metrics = read_metrics(parent)
    assert metrics["oof/score"] == metrics[f"oof/{metric}"]
    records = [json.loads(line) for line in (parent / "oof" / RECORDS_FILE).read_text().splitlines()]
    assert len(records) == metrics["oof/samples"] and {r["fold"] for r in records} == {0, 1}
    if experiment == "ariel_v50":
        assert {"oof/score2025", "oof/cov68", "oof/cov95", "oof/gll"} <= set(metrics)
        assert len(records[0]["pred"]["mu"]) == len(records[0]["pred"]["sigma"]) == 283


@pytest.mark.slow
def test_cross_validation_under_ddp_predicts_every_fold_in_step(root: Path) -> None:
    """Two processes per fold: both predict each fold's validation records (Lightning's predict
    loop synchronises them), rank zero writes them and merges the parent alone (its scorers do not
    wait for the other process)."""
    args = ["experiment=digits", *TINY_MODEL, "data.n_folds=2", "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2", "trainer=ddp_sim", "logger=csv", "run_name=ddp"]  # fmt: skip
    env = {**os.environ, "PODIUM_ROOT": str(root)}
    proc = subprocess.run([sys.executable, CV_PY, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    parent = root / "outputs" / "digits" / "ddp"
    metrics = read_metrics(parent)
    assert metrics["oof/samples"] == 1797 and metrics["oof/score"] == metrics["oof/acc"]
    assert sorted(p.name for p in parent.glob("fold_*/predictions/val")) == ["val", "val"]
