"""End-to-end runs of train.py: a short run that learns, its run lifecycle (finished, force, another
config), train.log, MLflow records, DDP, sweeps."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import mlflow
import pandas as pd
import pytest
import yaml

from src.core.errors import RunStateError
from src.core.manifest import config_hash
from src.core.mlflow_store import tracking_uri
from src.core.training import train
from tests.conftest import TINY_MODEL, compose_cfg, mlflow_runs, read_metrics
from tests.entry_harness import run_entry_point
from tests.faults import NaNAtStep

SHORT = ["experiment=digits", *TINY_MODEL, "trainer.max_epochs=3", "+trainer.limit_train_batches=8"]
# One epoch of 8 steps, CSV logs: the lifecycle tests' finished run (outputs/digits/<run_name>).
DONE = [*SHORT, "trainer.max_epochs=1", "+trainer.limit_val_batches=2", "logger=csv", "optimized_metric=val/acc"]


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


@pytest.fixture(scope="module")
def done_root(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A project root holding one finished toy run, ``outputs/digits/done`` (tests copy it)."""
    root = tmp_path_factory.mktemp("lifecycle")
    (root / "data").mkdir()
    (root / "data" / "digits").symlink_to(data_dir / "digits", target_is_directory=True)
    train(compose_cfg([*DONE, "run_name=done"], root))
    return root


def copy_run(root: Path, name: str, finished: bool = True) -> Path:
    """A copy of the finished run as ``outputs/digits/<name>`` (without metrics.json: unfinished)."""
    run_dir = root / "outputs" / "digits" / name
    shutil.copytree(root / "outputs" / "digits" / "done", run_dir)
    if not finished:
        (run_dir / "metrics.json").unlink()
    return run_dir


def stamps(run_dir: Path) -> dict[str, Any]:
    return {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def test_a_finished_run_is_reported_with_its_metrics(done_root: Path, capsys) -> None:
    run_dir = done_root / "outputs" / "digits" / "done"
    before = stamps(run_dir)
    capsys.readouterr()
    assert train(compose_cfg([*DONE, "run_name=done"], done_root)) == read_metrics(run_dir)["val/acc"]
    out = capsys.readouterr().out
    assert "run digits/done is already finished" in out and str(run_dir) in out and "val/acc=" in out
    assert stamps(run_dir) == before


@pytest.mark.parametrize("finished", [True, False])
def test_a_run_directory_of_another_config_is_refused(done_root: Path, finished: bool) -> None:
    # A sweep trial (or anyone) reusing a run name must not be handed another config's results,
    # nor continue another config's checkpoint.
    name = f"other_{finished}"
    run_dir = copy_run(done_root, name, finished)
    before = stamps(run_dir)
    other = compose_cfg([*DONE, "model.optimizer.lr=0.01", f"run_name={name}"], done_root)
    state = "a finished" if finished else "an unfinished"
    with pytest.raises(RunStateError, match=f"{state} run of a different config") as err:
        train(other)
    assert "model.optimizer.lr: 0.001 -> 0.01" in err.value.what
    assert "force=true" in err.value.fix and "run_name=<new name>" in err.value.fix
    assert stamps(run_dir) == before


def test_force_trains_another_config_again(done_root: Path) -> None:
    run_dir = copy_run(done_root, "forced")
    old = json.loads((run_dir / "manifest.json").read_text())
    cfg = compose_cfg([*DONE, "model.optimizer.lr=0.01", "run_name=forced", "force=true"], done_root)
    train(cfg)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config_hash"] == config_hash(cfg) != old["config_hash"]
    assert manifest["created_at"] >= old["finished_at"] and manifest["finished_at"]
    assert read_metrics(run_dir)["global_step"] == 8


def _with_nan_at_step(step: int, patch: pytest.MonkeyPatch) -> None:
    """Poison the batch of global ``step`` in every Trainer built (tests/faults.py's fault)."""
    original = pl.Trainer.__init__

    def init(self: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), NaNAtStep(step)]
        original(self, *args, **kwargs)

    patch.setattr(pl.Trainer, "__init__", init)


def test_train_log_holds_hash_epochs_warnings_the_traceback_and_the_resume(root: Path, monkeypatch, capfd) -> None:
    args = ["experiment=digits", *TINY_MODEL, "trainer.max_epochs=2", "+trainer.limit_train_batches=2", "logger=csv",
            "+trainer.limit_val_batches=2", "extras.ignore_warnings=false", "run_name=logged"]  # fmt: skip
    run_dir = root / "outputs" / "digits" / "logged"
    with monkeypatch.context() as patch:
        _with_nan_at_step(3, patch)  # epoch 1, after epoch 0's last.ckpt
        failed = run_entry_point("train", args, root, monkeypatch, capfd)
    assert failed.code == 3 and "podium: error: non-finite training loss" in failed.err
    assert "Traceback" not in failed.err
    log = (run_dir / "train.log").read_text()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert f"config hash {manifest['config_hash']}, fresh start" in log
    assert re.search(r"\[podium\]\[INFO\] - epoch 0: .*train/loss_epoch=\S+ .*val/acc=\S+", log), log
    assert "[py.warnings][WARNING]" in log
    assert "Traceback (most recent call last)" in log and "TrainingError: non-finite training loss" in log

    resumed = run_entry_point("train", args, root, monkeypatch, capfd)
    assert resumed.code == 0, resumed.err[-2000:]
    log = (run_dir / "train.log").read_text()
    assert "resume: checkpoints/last.ckpt at epoch 0, global step 2" in log
    assert f"config hash {manifest['config_hash']}, resuming from" in log
    assert "epoch 1: " in log and "podium: run finished" in log


def test_a_short_run_beats_the_best_constant_prediction(root: Path) -> None:
    # 60 steps of 16 images: enough for the toy network's batch-norm statistics to settle, so the
    # validation score says whether it learned (a few steps leave it at the majority-class rate).
    cfg = compose_cfg(["experiment=digits", *TINY_MODEL, "trainer.max_epochs=1", "data.batch_size=16",
                       "+trainer.limit_train_batches=60", "logger=csv", "run_name=learns"], root)  # fmt: skip
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    metrics = read_metrics(run_dir)
    oof = pd.read_parquet(run_dir / "oof" / "val.parquet")
    labels = oof["label"].to_numpy()
    predicted = oof.filter(like="prob_").to_numpy().argmax(axis=1)
    # The logged score is the accuracy of the written out-of-fold predictions, over the whole fold.
    assert metrics["val/samples"] == len(oof)
    assert metrics["val/acc"] == pytest.approx(float((predicted == labels).mean()), abs=1e-6)
    majority = oof["label"].value_counts(normalize=True).max()  # no constant guess does better
    assert metrics["val/acc"] >= majority + 0.2, (metrics["val/acc"], majority)


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
    # Each process validates half of fold 0 (276 images, 2 of the 13 blocks); the synced sum counts all.
    assert metrics["val/samples"] == 276
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
    trials = sorted((root / "outputs" / "digits").glob("trial-*"))
    assert len(trials) == 2, trials  # one run directory per proposed parameter set
    scores = {trial: read_metrics(trial)["val/acc"] for trial in trials}
    # Optuna maximises val/acc: its best value is the best trial's metrics.json score, and its best
    # parameters are those that trial was trained with (either trial's, if their scores tie).
    assert results["best_value"] == pytest.approx(max(scores.values()), abs=1e-6)
    best = [trial for trial, score in scores.items() if score == pytest.approx(max(scores.values()), abs=1e-6)]
    assert set(results["best_params"]) == {"model.optimizer.lr", "model.optimizer.weight_decay",
                                           "model.label_smoothing", "data.batch_size"}  # fmt: skip
    assert any(_trained_with(trial, results["best_params"]) for trial in best)
    assert not all(_trained_with(trial, results["best_params"]) for trial in trials)  # two parameter sets


def _trained_with(run_dir: Path, params: dict[str, Any]) -> bool:
    """Whether the run's saved config holds every ``dotted.key: value`` of ``params``."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key, value in params.items():
        node = config
        for part in key.split("."):
            node = node[part]
        if node != pytest.approx(value):
            return False
    return True
