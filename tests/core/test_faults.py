"""Faults: SIGKILL at a random step or mid-write, NaN losses, and many runs on one MLflow store.

Faults are injected by ``tests/faults.py`` (patching, so each run's config is that of the plain
command). The random step of each kill is printed, so a failure names the step to replay.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from src.core import mlflow_client, training
from src.core.checkpoint_io import (
    CALLBACK_METRICS_KEY,
    AtomicCheckpointIO,
    CarryCallbackMetrics,
    load_checkpoint_file,
)
from src.core.errors import RunStateError
from src.core.io import atomic_path, sweep_temp_files, write_json_atomic, write_text_atomic
from src.core.mlflow_store import tracking_uri
from src.core.rundir import RunDir, RunState
from src.datamodules.ariel.cache import CalibrationCache
from tests.conftest import TINY_MODEL, TRAIN_PY, read_metrics

ROOT = Path(__file__).resolve().parents[2]
# 3 epochs of 8 steps: kills land before, on and between checkpoints.
SHORT = ["experiment=digits", *TINY_MODEL, "trainer.max_epochs=3", "+trainer.limit_train_batches=8"]
STEPS = 24


def run(root: Path, *args: str, faults: tuple[str, ...] = (), entry: str = TRAIN_PY) -> subprocess.CompletedProcess:
    """``python [-m tests.faults <faults>] <entry> <args>`` rooted at ``root``."""
    env = {**os.environ, "PODIUM_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    prefix = ["-m", "tests.faults", *faults] if faults else []
    return subprocess.run(
        [sys.executable, *prefix, entry, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def killed(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL, got {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def client(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri(root / "mlruns"))


def run_id(run_dir: Path) -> str:
    return json.loads((run_dir / "manifest.json").read_text())["mlflow_run_id"]


def history(root: Path, rid: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of an MLflow run as (step, value) pairs in step order."""
    c = client(root)
    keys = c.get_run(rid).data.metrics
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(rid, k)) for k in keys}


def assert_each_step_once(hist: dict[str, list[tuple[int, float]]]) -> None:
    for key, points in hist.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {steps}"


def torn_temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp") if p.is_file()]


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """One project root for the digits fault runs, with an uninterrupted reference run."""
    root = tmp_path_factory.mktemp("faults")
    (root / "data").mkdir()
    (root / "data" / "digits").symlink_to(data_dir / "digits", target_is_directory=True)
    ok(run(root, *SHORT, "run_name=straight"))
    return root


@pytest.mark.slow
def test_kill_at_a_random_step_resumes_exactly_with_each_metric_step_logged_once(digits_root: Path) -> None:
    root, step = digits_root, random.randrange(1, STEPS)
    run_dir = root / "outputs" / "digits" / "killed_at_step"
    out = killed(run(root, *SHORT, "run_name=killed_at_step", faults=("--kill-at-step", str(step))))
    assert f"SIGKILL at global step {step}" in out.stdout
    assert not (run_dir / "metrics.json").exists()

    ok(run(root, *SHORT, "run_name=killed_at_step"))

    straight = root / "outputs" / "digits" / "straight"
    assert read_metrics(run_dir) == read_metrics(straight), f"killed at step {step}"
    (mlflow_run,) = client(root).search_runs(
        [client(root).get_experiment_by_name("digits").experiment_id], "attributes.run_name = 'killed_at_step'"
    )
    assert mlflow_run.info.run_id == run_id(run_dir) and mlflow_run.info.status == "FINISHED"
    resumed, reference = history(root, run_id(run_dir)), history(root, run_id(straight))
    assert_each_step_once(resumed)
    assert resumed == reference, f"killed at step {step}: MLflow history differs from an uninterrupted run"
    assert len(reference["val/acc"]) == 3


@pytest.mark.slow
def test_kill_while_writing_the_first_checkpoint_starts_over_without_the_earlier_attempts_files(
    digits_root: Path,
) -> None:
    # The first last.ckpt is written at the end of epoch 0, just after best-epoch000.ckpt: the
    # rerun has no resume point and starts over, with that earlier best set aside, not beside its own.
    root = digits_root
    run_dir = root / "outputs" / "digits" / "killed_in_write"
    out = killed(run(root, *SHORT, "run_name=killed_in_write", faults=("--kill-on-write", "last.ckpt")))
    assert "SIGKILL while writing" in out.stdout
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()  # the torn file never took the name
    assert (run_dir / "checkpoints" / "best-epoch000.ckpt").is_file()
    assert torn_temps(run_dir)

    rerun = ok(run(root, *SHORT, "run_name=killed_in_write"))

    assert "earlier attempt's checkpoints (best-epoch000.ckpt)" in rerun.stdout
    assert [p.name for p in (run_dir / "checkpoints" / "previous").iterdir()] == ["best-epoch000.ckpt"]
    assert not list((run_dir / "checkpoints").glob("*-v*.ckpt"))
    assert not torn_temps(run_dir)
    straight = root / "outputs" / "digits" / "straight"
    assert read_metrics(run_dir) == read_metrics(straight)  # best/checkpoint included
    resumed = history(root, run_id(run_dir))
    assert_each_step_once(resumed)
    assert resumed == history(root, run_id(straight))


@pytest.mark.slow
def test_kill_while_writing_metrics_json_after_the_fit_reports_the_uninterrupted_metrics(digits_root: Path) -> None:
    # Killed after training and testing: last.ckpt is the final epoch's, so the rerun's fit has
    # nothing left to train and its metrics come from what that checkpoint carries.
    root = digits_root
    run_dir = root / "outputs" / "digits" / "killed_in_metrics"
    killed(run(root, *SHORT, "run_name=killed_in_metrics", faults=("--kill-on-write", "metrics.json")))
    assert not (run_dir / "metrics.json").exists()
    last = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 3  # the fit was complete
    assert "val/acc" in last[CALLBACK_METRICS_KEY] and "train/loss_epoch" in last[CALLBACK_METRICS_KEY]

    ok(run(root, *SHORT, "run_name=killed_in_metrics"))

    straight = root / "outputs" / "digits" / "straight"
    metrics, reference = read_metrics(run_dir), read_metrics(straight)
    assert {k for k in metrics if k.startswith(("train/", "val/", "lr-"))} == {
        k for k in reference if k.startswith(("train/", "val/", "lr-"))
    }
    assert metrics == reference
    resumed = history(root, run_id(run_dir))
    assert_each_step_once(resumed)
    assert resumed == history(root, run_id(straight))


@pytest.mark.slow
def test_kill_before_the_run_id_is_recorded_leaves_no_run_marked_running(digits_root: Path) -> None:
    # Killed between creating the MLflow run and writing the first manifest.json: the rerun
    # starts a new MLflow run and marks the orphan KILLED instead of leaving it RUNNING.
    root = digits_root
    args = [*SHORT, "trainer.max_epochs=1", "run_name=no_manifest"]
    run_dir = root / "outputs" / "digits" / "no_manifest"
    killed(run(root, *args, faults=("--kill-on-write", "manifest.json")))
    assert not (run_dir / "manifest.json").exists()

    ok(run(root, *args))

    c = client(root)
    runs = c.search_runs([c.get_experiment_by_name("digits").experiment_id], "attributes.run_name = 'no_manifest'")
    status = {r.info.run_id: r.info.status for r in runs}
    assert len(runs) == 2 and status[run_id(run_dir)] == "FINISHED", status
    (orphan,) = [r for r in runs if r.info.run_id != run_id(run_dir)]
    assert orphan.info.status == "KILLED" and orphan.data.tags["podium.superseded_by"] == run_id(run_dir)


def test_a_new_run_of_a_run_directory_closes_the_one_a_kill_left_running(tmp_path: Path) -> None:
    # The path cv.py's parent run and ensemble.py take (train.py's logger is tested end to end above).
    c = mlflow_client.client(tmp_path / "mlruns")
    exp = mlflow_client.experiment_id(c, "orphans", tmp_path / "mlruns")
    orphan = mlflow_client.start_run(c, exp, "cv", tmp_path / "outputs" / "cv")
    other = mlflow_client.start_run(c, exp, "cv", tmp_path / "outputs" / "other")
    fresh = mlflow_client.start_run(c, exp, "cv", tmp_path / "outputs" / "cv", tags={"podium.cv": "parent"})
    assert c.get_run(orphan).info.status == "KILLED"
    assert c.get_run(orphan).data.tags["podium.superseded_by"] == fresh
    assert c.get_run(other).info.status == c.get_run(fresh).info.status == "RUNNING"
    assert c.get_run(fresh).data.tags["podium.cv"] == "parent"


@pytest.mark.slow
def test_kill_while_writing_oof_predictions_then_rerun_writes_them_whole(digits_root: Path) -> None:
    root = digits_root
    args = [*SHORT, "trainer.max_epochs=1", "callbacks=[default,oof_images]", "run_name=oof"]
    run_dir = root / "outputs" / "digits" / "oof"
    killed(run(root, *args, faults=("--kill-on-write", "val.parquet")))
    assert not (run_dir / "oof" / "val.parquet").exists() and not (run_dir / "metrics.json").exists()

    ok(run(root, *args))

    frame = pd.read_parquet(run_dir / "oof" / "val.parquet")
    assert len(frame) == 276 and frame.sample_id.is_unique  # fold 0: 2 of the 13 blocks
    assert not torn_temps(run_dir)


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_keeps_the_checkpoint_and_fails_the_mlflow_run(digits_root: Path) -> None:
    root = digits_root
    run_dir = root / "outputs" / "digits" / "nan"
    out = run(root, *SHORT, "run_name=nan", faults=("--nan-at-step", "10"))
    assert out.returncode == 3, out.stderr[-3000:]
    assert "non-finite training loss (nan) at global step 10 (epoch 1, batch 2)" in out.stderr
    assert "model.nonfinite_loss=skip" in out.stderr and "Traceback" not in out.stderr
    assert not (run_dir / "metrics.json").exists()
    assert load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 0  # the last good epoch
    assert client(root).get_run(run_id(run_dir)).info.status == "FAILED"

    skip = ["model.nonfinite_loss=skip", "run_name=nan_skipped"]
    ok(run(root, *SHORT, *skip, faults=("--nan-at-step", "10")))
    metrics = read_metrics(root / "outputs" / "digits" / "nan_skipped")
    assert metrics["train/skipped_batches"] == 1.0
    assert all(np.isfinite(v) for k, v in metrics.items() if isinstance(v, float))


@pytest.mark.slow
def test_four_runs_started_at_once_on_one_store_all_finish_and_are_recorded(tmp_path: Path, data_dir: Path) -> None:
    root = tmp_path  # a store that does not exist yet: all four race to create it
    (root / "data").mkdir()
    (root / "data" / "digits").symlink_to(data_dir / "digits", target_is_directory=True)
    env = {**os.environ, "PODIUM_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    args = ["experiment=digits", *TINY_MODEL, "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=2", "test=false"]  # fmt: skip
    cmds = [[sys.executable, TRAIN_PY, *args, f"run_name=parallel_{i}"] for i in range(4)]
    procs = [
        subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for cmd in cmds
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-2000:] for e in errors)
    c = client(root)
    runs = c.search_runs([c.get_experiment_by_name("digits").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"parallel_{i}" for i in range(4)]
    assert all(r.info.status == "FINISHED" and "val/acc" in r.data.metrics for r in runs)


# ---- what a rerun finds in the run directory (in-process, seconds) -----------------------------


class _Logged(BoringModel):
    """Lightning's BoringModel with a training aggregate and a validation metric, as a task logs them."""

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        out = super().training_step(batch, batch_idx)
        self.log("train/loss", out["loss"], on_step=False, on_epoch=True)
        return out

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        out = super().validation_step(batch, batch_idx)
        self.log("val/loss", out["x"])
        return out


def _boring_trainer(folder: Path) -> pl.Trainer:
    """A trainer with the default callbacks' checkpoints (by val/loss, every epoch's kept; last) and the carrier."""
    best = ModelCheckpoint(
        dirpath=folder,
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor="val/loss",
        save_top_k=-1,
    )
    last = ModelCheckpoint(dirpath=folder, filename="last", enable_version_counter=False)
    return pl.Trainer(
        max_epochs=2, limit_train_batches=3, limit_val_batches=2, callbacks=[best, last, CarryCallbackMetrics()],
        logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder,
    )  # fmt: skip


def test_a_fit_resumed_with_nothing_left_to_train_reports_the_metrics_its_checkpoint_carries(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = _boring_trainer(tmp_path / "checkpoints")
    first.fit(_Logged())
    reference = training._collect(first, RunDir(tmp_path))
    assert {"train/loss", "val/loss"} <= set(reference)

    again = _boring_trainer(tmp_path / "checkpoints")
    again.fit(_Logged(), ckpt_path=tmp_path / "checkpoints" / "last.ckpt", weights_only=False)

    assert not again.callback_metrics  # the fit loop was complete: Lightning logged nothing
    assert training._collect(again, RunDir(tmp_path)) == reference
    # A test of an earlier epoch's checkpoint restores the callbacks from it too: not the fit's metrics.
    again.test(_Logged(), ckpt_path=tmp_path / "checkpoints" / "best-epoch000.ckpt", weights_only=False)
    (carrier,) = [cb for cb in again.callbacks if isinstance(cb, CarryCallbackMetrics)]
    assert carrier.carried == {k: reference[k] for k in ("train/loss", "val/loss")}


def test_a_fresh_start_sets_aside_the_earlier_attempts_checkpoints_one_attempt_back(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    for name in ("best-epoch000.ckpt", "on_exception.ckpt"):
        (run.checkpoints / name).write_bytes(b"first attempt")

    moved = run.set_aside_checkpoints()

    assert sorted(p.name for p in moved) == ["best-epoch000.ckpt", "on_exception.ckpt"]
    assert all(p.parent == run.previous_checkpoints and p.read_bytes() == b"first attempt" for p in moved)
    assert not list(run.checkpoints.glob("*.ckpt")) and run.state() is RunState.FRESH
    (run.checkpoints / "best-epoch001.ckpt").write_bytes(b"second attempt")
    run.set_aside_checkpoints()
    assert [p.name for p in run.previous_checkpoints.iterdir()] == ["best-epoch001.ckpt"]
    assert run.set_aside_checkpoints() == []  # nothing to set aside: previous/ stays as it is
    assert [p.name for p in run.previous_checkpoints.iterdir()] == ["best-epoch001.ckpt"]


# ---- torn writes, one writer at a time (a forked child is killed inside the write) --------------


def _write_killed(write: Callable[[], object]) -> None:
    """Run ``write`` in a forked child that is SIGKILLed with its temporary half written."""
    pid = os.fork()
    if pid == 0:  # the child: cut the temporary, then die before the rename
        import src.core.io as podium_io

        def torn(tmp: Path, final: Path) -> None:
            os.truncate(tmp, tmp.stat().st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)

        podium_io._commit = torn
        try:
            write()
        finally:
            os._exit(1)  # only reached if the write never committed
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _parquet(path: Path, rows: int) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame({"sample_id": [str(i) for i in range(rows)], "prob_0": np.linspace(0, 1, rows)}).to_parquet(tmp)


def _checkpoint(path: Path, epoch: int) -> None:
    AtomicCheckpointIO().save_checkpoint(
        {"state_dict": {"w": torch.full((256, 256), float(epoch))}, "epoch": epoch}, path
    )


WRITERS: dict[str, tuple[str, Callable[[Path, int], object], Callable[[Path], object]]] = {
    "checkpoint": ("last.ckpt", _checkpoint, lambda p: load_checkpoint_file(p)["epoch"]),
    "metrics.json": ("metrics.json", lambda p, v: write_json_atomic(p, {"v": v}), lambda p: json.loads(p.read_text())),
    "oof parquet": ("val.parquet", lambda p, v: _parquet(p, 100 + v), lambda p: len(pd.read_parquet(p))),
    "report": ("report.html", lambda p, v: write_text_atomic(p, f"<html>{v}</html>" * 999), lambda p: p.read_text()),
    "submission": (
        "submission.csv",
        lambda p, v: write_text_atomic(p, "planet_id\n" + f"{v}\n" * 5000),
        lambda p: p.read_text(),
    ),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_write_killed_midway_leaves_the_previous_file_whole(kind: str, tmp_path: Path) -> None:
    name, write, read = WRITERS[kind]
    path = tmp_path / "run" / name
    write(path, 1)
    before = read(path)

    _write_killed(lambda: write(path, 2))

    assert read(path) == before  # the old complete file, never the torn new one
    assert len(torn_temps(tmp_path)) >= 1
    assert sweep_temp_files(tmp_path) and not torn_temps(tmp_path)


def test_a_calibration_cache_write_killed_midway_is_a_miss_not_a_hit(tmp_path: Path) -> None:
    cache = CalibrationCache(tmp_path / "cache", chain_hash="chain")
    arrays = {"flux": np.arange(12.0).reshape(3, 4), "var": np.ones((3, 4))}

    _write_killed(lambda: cache.store("train", 7, 0, "fp", arrays))

    assert cache.load("train", 7, 0, "fp") is None and cache.reasons[-1][1] == "absent"
    cache.store("train", 7, 0, "fp", arrays)
    np.testing.assert_array_equal(cache.load("train", 7, 0, "fp")["flux"], arrays["flux"])
    # A file damaged after the fact fails its checksum and is recomputed, not trusted.
    path = cache.path("train", 7, 0)
    os.truncate(path, path.stat().st_size - 40)
    assert cache.load("train", 7, 0, "fp") is None and cache.reasons[-1][1].startswith(("unreadable", "checksum"))


def test_a_damaged_checkpoint_is_named_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    _checkpoint(path, 3)
    os.truncate(path, path.stat().st_size // 3)
    with pytest.raises(RunStateError) as err:
        load_checkpoint_file(path)
    assert str(path) in str(err.value) and "force=true" in str(err.value)
