"""End-to-end runs of train.py: resume after SIGKILL, finished runs, MLflow records, DDP, sweeps."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from src.core.errors import RunStateError
from src.core.mlflow_store import tracking_uri
from src.core.training import train
from tests.conftest import TINY_MODEL, compose_cfg, mlflow_runs, read_metrics

SHORT = ["experiment=digits", *TINY_MODEL, "trainer.max_epochs=3", "+trainer.limit_train_batches=8"]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before writing {path}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


@pytest.mark.slow
def test_finished_run_reports_and_force_retrains(root: Path, run_train) -> None:
    args = ["experiment=digits", *TINY_MODEL, "debug=limit", "force=false", "trainer.max_epochs=1"]
    run_train(*args)
    run_dir = next((root / "outputs" / "digits").iterdir())
    first = json.loads((run_dir / "manifest.json").read_text())["mlflow_run_id"]
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns

    again = run_train(*args)
    assert "already finished" in again.stdout and str(run_dir / "metrics.json") in again.stdout
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp

    run_train(*args[:-2], "force=true", "trainer.max_epochs=1")
    second = json.loads((run_dir / "manifest.json").read_text())["mlflow_run_id"]
    assert second != first
    assert (run_dir / "metrics.json").stat().st_mtime_ns != stamp


def test_finished_run_of_another_config_is_refused(root: Path) -> None:
    # A sweep trial (or anyone) reusing a run name must not be handed another config's results.
    first = compose_cfg([*SHORT, "trainer.max_epochs=1", "run_name=same"], root)
    train(first)
    metrics = root / "outputs" / "digits" / "same" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    other = compose_cfg([*SHORT, "trainer.max_epochs=1", "model.optimizer.lr=0.01", "run_name=same"], root)
    with pytest.raises(RunStateError, match="finished run of a different config") as err:
        train(other)
    assert "force=true" in err.value.fix and metrics.stat().st_mtime_ns == stamp


def test_mlflow_run_has_params_metrics_and_artifacts(root: Path) -> None:
    cfg = compose_cfg([*SHORT, "trainer.max_epochs=2", "run_name=logged"], root)
    train(cfg)
    assert (root / "mlruns" / "mlflow.db").is_file()
    (run,) = mlflow_runs(root, "logged")
    params = run.data.params
    assert params["model.optimizer.lr"] == "0.001"
    assert params["data.batch_size"] == "64"
    assert params["model.net.model_name"] == "test_resnet"
    for key in ("train/loss_epoch", "train/acc", "val/acc", "val/loss"):
        assert key in run.data.metrics
    client = mlflow.MlflowClient(tracking_uri(root / "mlruns"))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "manifest.json", "metrics.json"} <= artifacts
    assert run.info.artifact_uri.startswith((root / "mlruns" / "artifacts").as_uri())
    assert run.data.tags["podium.run_dir"] == cfg.paths.output_dir
    manifest = json.loads((Path(cfg.paths.output_dir) / "manifest.json").read_text())
    assert manifest["git"]["sha"] and manifest["packages"]["torch"] and manifest["data_fingerprint"]
    saved = yaml.safe_load((Path(cfg.paths.output_dir) / "config.yaml").read_text())
    assert saved["model"]["net"]["model_name"] == "test_resnet"


def test_same_seed_same_metrics_on_cpu(root: Path) -> None:
    results = []
    for name in ("first", "second"):
        cfg = compose_cfg([*SHORT, "trainer.max_epochs=2", f"run_name={name}", "logger=csv"], root)
        train(cfg)
        results.append(read_metrics(Path(cfg.paths.output_dir)))
    assert results[0] == results[1]
    cfg = compose_cfg([*SHORT, "trainer.max_epochs=2", "run_name=other_seed", "seed=7", "logger=csv"], root)
    train(cfg)
    assert read_metrics(Path(cfg.paths.output_dir))["train/loss"] != results[0]["train/loss"]


@pytest.mark.slow
def test_ddp_sim_two_processes_sync_metrics(root: Path, run_train) -> None:
    run_train(*SHORT, "trainer=ddp_sim", "trainer.max_epochs=1", "run_name=ddp")
    run_dir = root / "outputs" / "digits" / "ddp"
    metrics = read_metrics(run_dir)
    # Each process validates half of fold 0 (360 images); the synced sum counts all of them.
    assert metrics["val/samples"] == 360
    assert json.loads((run_dir / "manifest.json").read_text())["world_size"] == 2
    assert (run_dir / "train_ddp_process_1.log").exists()
    assert len(mlflow_runs(root, "ddp")) == 1  # rank zero alone talks to MLflow


@pytest.mark.slow
def test_optuna_sweep_runs_trials(root: Path, run_train) -> None:
    run_train(
        "experiment=digits", "hparams_search=digits_optuna", "hydra.sweeper.n_trials=2", *TINY_MODEL,
        "trainer.max_epochs=1", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2",
    )  # fmt: skip
    results = yaml.safe_load((root / "outputs" / "optimization_results.yaml").read_text())
    assert 0.0 <= results["best_value"] <= 1.0
    assert set(results["best_params"]) >= {"model.optimizer.lr", "data.batch_size"}
    trials = sorted((root / "outputs" / "digits").glob("trial-*"))
    assert len(trials) == 2, trials  # one run directory per proposed parameter set
    for trial in trials:
        assert read_metrics(trial)["val/acc"] >= 0.0
