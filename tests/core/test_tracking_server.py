"""podium on a shared MLflow tracking server (PostgreSQL behind it), with every guarantee of the
embedded store: a run killed mid-training resumes into the same MLflow run with each (metric, step)
once, four runs at once are all recorded, cross-validation folds are child runs of their parent, a
run a kill left RUNNING is marked KILLED, a server that is down at start stops the command before
anything is trained, and a server lost mid-run loses nothing (what it did not take is kept in the
run directory and sent by the next start). Also: which store a command uses, a run directory kept
to its store, and the promotion's optimistic check of the champion.

The server (``tests/tracking_server.py``) is started once for the module; the runs are tiny digits
runs. Without PostgreSQL the server tests skip, saying why (under ``CI=true`` they fail).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from src.core import mlflow_client
from src.core.errors import ConfigError, RunStateError
from src.core.lifecycle import RunLifecycle
from src.core.mlflow_client import PENDING_FILE, MlflowRun, PendingLog, RunSpec
from src.leaderboard import registry
from src.leaderboard.jobs import store_uri
from tests.conftest import TINY_MODEL, TRAIN_PY, compose_cfg, project_root, read_metrics
from tests.entry_harness import run_entry_point
from tests.tracking_server import TrackingServer, free_port, tracking_server  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[2]
# 3 epochs of 8 steps: kills land before, on and between checkpoints.
SHORT = ["experiment=digits", *TINY_MODEL, "trainer.max_epochs=3", "+trainer.limit_train_batches=8"]
STEPS = 24
#: The MLflow history of a SHORT run, by hand: Lightning logs every 10 steps (steps 9 and 19) and at
#: each epoch's last step (7, 15, 23), its "epoch" with both; the learning rate at each epoch's first step.
EXPECTED_STEPS = {
    "epoch": [7, 9, 15, 19, 23],
    "lr-AdamW": [0, 8, 16],
    "train/acc": [7, 15, 23],
    "train/loss_epoch": [7, 15, 23],
    "train/loss_step": [9, 19],
    "val/acc": [7, 15, 23],
    "val/loss": [7, 15, 23],
    "val/samples": [7, 15, 23],
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The project root of the module's runs (its outputs/ and an embedded mlruns/ that stays unused)."""
    return project_root(tmp_path_factory.mktemp("tracking"), data_dir)


def train(root: Path, *args: str, env: dict[str, str] | None = None, faults: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start ``python [-m tests.faults <faults>] train.py <args>`` rooted at ``root``."""
    full_env = {**os.environ, "PODIUM_ROOT": str(root), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    prefix = ["-m", "tests.faults", *faults] if faults else []
    return subprocess.Popen(
        [sys.executable, *prefix, TRAIN_PY, *args], env=full_env, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def job_cfg(root: Path) -> DictConfig:
    """The smallest config a lifecycle reads (as tests/core/test_lifecycle.py's)."""
    return OmegaConf.create(
        {"paths": {"output_dir": str(root / "outputs" / "toy" / "r")}, "experiment_name": "toy", "run_name": "r",
         "force": False, "model": {"lr": 0.1}}
    )  # fmt: skip


def manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


def runs_named(client: Any, name: str, experiment: str = "digits") -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")


def steps(client: Any, run_id: str) -> dict[str, list[int]]:
    """Every metric of a run with its steps in order, repeats kept (each must appear once)."""
    keys = client.get_run(run_id).data.metrics
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


class StopServerAt(pl.Callback):
    """Stop the tracking server as the batch of global step ``step`` starts (once)."""

    def __init__(self, server: TrackingServer, step: int) -> None:
        self.server, self.step, self.done = server, step, False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step and not self.done:
            self.done = True
            self.server.stop()


def with_callback(monkeypatch: pytest.MonkeyPatch, callback: pl.Callback) -> None:
    """Add ``callback`` to every Trainer built while the test runs."""
    original = pl.Trainer.__init__

    def init(self: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), callback]
        original(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", init)


# ---- the store a command uses (no server needed) ------------------------------------------------


def test_the_config_wins_over_the_environment_which_wins_over_the_embedded_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    embedded = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert mlflow_client.resolve_tracking_uri(tmp_path) == embedded
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    assert mlflow_client.resolve_tracking_uri(tmp_path) == "http://team:5000"
    assert mlflow_client.resolve_tracking_uri(tmp_path, "postgresql://me@db/mlflow") == "postgresql://me@db/mlflow"
    assert mlflow_client.resolve_tracking_uri(tmp_path, "") == "http://team:5000"  # empty: not set

    cfg = compose_cfg(["experiment=digits", "logger.mlflow.tracking_uri=https://mlflow.example.org"], tmp_path)
    assert mlflow_client.configured_tracking_uri(cfg) == "https://mlflow.example.org"
    board = compose_cfg(["experiment=digits", "tracking_uri=http://board:1"], tmp_path, "leaderboard")
    assert mlflow_client.configured_tracking_uri(board) == "http://board:1"
    assert store_uri(compose_cfg(["experiment=digits"], tmp_path, "leaderboard")) == "http://team:5000"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "/shared/mlruns")
    with pytest.raises(ConfigError) as err:
        mlflow_client.resolve_tracking_uri(tmp_path)
    assert "'/shared/mlruns' (from $MLFLOW_TRACKING_URI) is not a tracking server" in str(err.value)
    assert "unset it" in err.value.fix and err.value.exit_code == 2
    assert mlflow_client.redact("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"


def test_a_server_that_is_down_at_start_stops_the_command_before_anything_is_written(
    root: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    result = run_entry_point("train", [*SHORT, "run_name=down", f"logger.mlflow.tracking_uri={down}"], root,
                             monkeypatch, capfd)  # fmt: skip
    assert result.code == 2, result.output[-3000:]
    assert f"podium: error: the MLflow tracking server {down} (set in the config) cannot be reached" in result.err
    assert "mlflow server --backend-store-uri postgresql://" in result.err and "Traceback" not in result.err
    assert "Epoch 0" not in result.output and not (root / "outputs" / "digits" / "down").exists()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    result = run_entry_point("train", [*SHORT, "run_name=down"], root, monkeypatch, capfd)
    assert result.code == 2 and f"{down} (from $MLFLOW_TRACKING_URI) cannot be reached" in result.err
    assert not (root / "outputs" / "digits" / "down").exists()


# ---- against the server -------------------------------------------------------------------------


class FlakyClient:
    """An MlflowClient whose writes fail (as an absent server's do) while ``down`` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.down, self.batches = inner, False, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def log_batch(self, *args: Any, **kwargs: Any) -> None:
        if self.down:
            raise MlflowException("API request failed: Connection refused")  # INTERNAL_ERROR: transient
        self.batches += 1
        self.inner.log_batch(*args, **kwargs)


@pytest.mark.slow
def test_records_the_store_does_not_take_are_kept_then_sent_once_each(
    tracking_server: TrackingServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    inner = tracking_server.client()
    exp = mlflow_client.experiment_id(inner, "toy", tmp_path / "mlruns")
    run_id = mlflow_client.start_run(inner, exp, "r", run_dir)
    flaky = FlakyClient(inner)
    run = MlflowRun(flaky, run_id, (), PendingLog(run_dir), "toy-store", retry_s=0.0)
    run.log_points([("loss", 1.0, 1, 0)])
    flaky.down = True
    run.log_points([("loss", 0.5, 2, 1), ("acc", 0.25, 2, 1)])  # refused: kept
    run.log_points([("loss", 0.5, 2, 1)])  # the same (key, step) again: dropped
    kept = [json.loads(line) for line in (run_dir / PENDING_FILE).read_text().splitlines()]
    assert [(e["op"], e["store"], e["run_id"]) for e in kept] == [("metrics", "toy-store", run_id)]
    assert sorted(p[0] for p in kept[0]["points"]) == ["acc", "loss"] and run.kept == 1

    flaky.down = False
    run.log_points([("loss", 0.25, 3, 2)])  # the store answers again: the kept points go first
    assert not (run_dir / PENDING_FILE).exists() and run.kept == 0
    assert steps(inner, run_id) == {"acc": [1], "loss": [0, 1, 2]}

    # A point the store has already (sent before a request failed) is not sent twice on delivery.
    again = {"store": "toy-store", "run_id": run_id, "op": "metrics", "points": [["loss", 0.5, 2, 1]]}
    PendingLog(run_dir).append([again])
    PendingLog(run_dir).append([{"store": "elsewhere", "run_id": run_id, "op": "terminate", "status": "FINISHED"}])
    with (run_dir / PENDING_FILE).open("a") as fh:
        fh.write('{"store": "toy-store", "run_')  # a line torn by a kill
    assert mlflow_client.deliver(inner, "toy-store", PendingLog(run_dir)) == 1
    assert steps(inner, run_id) == {"acc": [1], "loss": [0, 1, 2]}
    assert [e["store"] for e in PendingLog(run_dir).read()] == ["elsewhere"]  # another store's: kept


@pytest.mark.slow
def test_kill_mid_training_resumes_into_the_same_server_run_with_each_step_once(
    tracking_server: TrackingServer,  # noqa: F811
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    step = random.randrange(1, STEPS)
    env = {"MLFLOW_TRACKING_URI": tracking_server.uri}
    proc = train(root, *SHORT, "run_name=killed", env=env, faults=("--kill-at-step", str(step)))
    out, err = proc.communicate(timeout=300)
    assert f"SIGKILL at global step {step}" in out
    assert proc.returncode == -signal.SIGKILL, f"killed at step {step}? exited {proc.returncode}:\n{err[-3000:]}"
    run_dir = root / "outputs" / "digits" / "killed"
    first = manifest(run_dir)
    assert first["mlflow_tracking_uri"] == tracking_server.uri and not (run_dir / "metrics.json").exists()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    result = run_entry_point("train", [*SHORT, "run_name=killed"], root, monkeypatch, capfd)

    assert result.code == 0, f"killed at step {step}:\n{result.output[-3000:]}"
    client = tracking_server.client()
    (run,) = runs_named(client, "killed")
    assert run.info.run_id == first["mlflow_run_id"] == manifest(run_dir)["mlflow_run_id"]
    assert run.info.status == "FINISHED", f"killed at step {step}"
    assert steps(client, run.info.run_id) == EXPECTED_STEPS, f"killed at step {step}"
    assert run.data.metrics["val/acc"] == pytest.approx(read_metrics(run_dir)["val/acc"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # the server's artifact root, not podium's
    assert {"config.yaml", "manifest.json", "metrics.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not (root / "mlruns" / "mlflow.db").exists()


@pytest.mark.slow
def test_four_runs_started_at_once_on_the_server_are_all_recorded(
    tracking_server: TrackingServer,  # noqa: F811
    root: Path,
) -> None:
    args = [
        "experiment=digits", *TINY_MODEL, "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=2", "test=false",
    ]  # fmt: skip
    # Two find the server in the environment, two in the config (over an environment naming none).
    procs = [
        train(root, *args, f"run_name=parallel_{i}", env={"MLFLOW_TRACKING_URI": tracking_server.uri})
        if i % 2
        else train(root, *args, f"run_name=parallel_{i}", f"logger.mlflow.tracking_uri={tracking_server.uri}")
        for i in range(4)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-2000:] for e in errors)
    client = tracking_server.client()
    runs = [r for i in range(4) for r in runs_named(client, f"parallel_{i}")]
    assert sorted(r.info.run_name for r in runs) == [f"parallel_{i}" for i in range(4)]
    assert all(r.info.status == "FINISHED" and "val/acc" in r.data.metrics for r in runs)
    for r in runs:
        assert manifest(root / "outputs" / "digits" / r.info.run_name)["mlflow_run_id"] == r.info.run_id


@pytest.mark.slow
def test_a_cross_validation_on_the_server_nests_its_folds_under_its_parent(
    tracking_server: TrackingServer,  # noqa: F811
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    args = [
        "experiment=digits", *TINY_MODEL, "data.n_folds=2", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2", "test=false", "run_name=cv",
        f"logger.mlflow.tracking_uri={tracking_server.uri}",
    ]  # fmt: skip
    result = run_entry_point("cv", args, root, monkeypatch, capfd)
    assert result.code == 0, result.output[-3000:]
    client = tracking_server.client()
    (parent,) = runs_named(client, "cv")
    folds = {r.info.run_name: r for k in range(2) for r in runs_named(client, f"cv/fold_{k}")}
    assert parent.info.status == "FINISHED" and parent.data.tags["podium.cv"] == "parent"
    assert parent.info.run_id == manifest(root / "outputs" / "digits" / "cv")["mlflow_run_id"]
    assert sorted(folds) == ["cv/fold_0", "cv/fold_1"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in folds.values())
    assert all(r.info.status == "FINISHED" for r in folds.values())
    uploaded = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "oof" in uploaded and not any(p.startswith("fold_") for p in uploaded)


def test_a_new_run_of_a_run_directory_on_the_server_closes_the_one_a_kill_left_running(
    tracking_server: TrackingServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    client = tracking_server.client()
    exp = mlflow_client.experiment_id(client, "orphans", tmp_path)
    orphan = mlflow_client.start_run(client, exp, "r", tmp_path / "r")
    fresh = mlflow_client.start_run(client, exp, "r", tmp_path / "r")
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(orphan).data.tags["podium.superseded_by"] == fresh
    assert client.get_run(fresh).info.status == "RUNNING"


@pytest.mark.slow
def test_a_server_lost_mid_run_loses_nothing_and_the_next_start_sends_what_it_kept(
    tracking_server: TrackingServer,  # noqa: F811
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    command = [*SHORT, "run_name=lost", f"logger.mlflow.tracking_uri={tracking_server.uri}"]
    run_dir = root / "outputs" / "digits" / "lost"
    with monkeypatch.context() as patch:
        with_callback(patch, StopServerAt(tracking_server, 12))
        result = run_entry_point("train", command, root, monkeypatch, capfd)
    try:
        assert result.code == 0, result.output[-3000:]
        assert "does not answer" in result.output and f"kept in {run_dir / PENDING_FILE}" in result.output
        assert "sent when this command runs again" in result.output
        assert (run_dir / "metrics.json").is_file()  # the run itself finished
        kept = PendingLog(run_dir).read()
        assert {e["op"] for e in kept} == {"metrics", "upload", "terminate"}
        assert {e["store"] for e in kept} == {tracking_server.uri}
        assert {e["run_id"] for e in kept} == {manifest(run_dir)["mlflow_run_id"]}
        kept_steps = {p[3] for e in kept if e["op"] == "metrics" for p in e["points"]}
        assert min(kept_steps) >= 12 and 23 in kept_steps  # only what came after the server went
    finally:
        tracking_server.start()

    again = run_entry_point("train", command, root, monkeypatch, capfd)

    assert again.code == 0 and "is already finished" in again.output
    assert not (run_dir / PENDING_FILE).exists()
    client = tracking_server.client()
    (run,) = runs_named(client, "lost")
    assert run.info.run_id == manifest(run_dir)["mlflow_run_id"] and run.info.status == "FINISHED"
    assert steps(client, run.info.run_id) == EXPECTED_STEPS
    assert run.data.metrics["val/acc"] == pytest.approx(read_metrics(run_dir)["val/acc"])
    uploaded = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "manifest.json", "metrics.json"} <= uploaded and PENDING_FILE not in uploaded


@pytest.mark.slow
def test_a_run_directory_is_not_continued_in_another_store(
    tracking_server: TrackingServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lifecycle = RunLifecycle(job_cfg(tmp_path))
    lifecycle.start(mlflow=RunSpec(tmp_path / "mlruns", "toy", "r", tracking_uri=tracking_server.uri))
    assert manifest(lifecycle.run.path)["mlflow_tracking_uri"] == tracking_server.uri
    with pytest.raises(RunStateError) as err:  # the same run directory, the embedded store
        RunLifecycle(job_cfg(tmp_path)).start(mlflow=RunSpec(tmp_path / "mlruns", "toy", "r"))
    assert f"of the store {tracking_server.uri} (manifest.json)" in str(err.value)
    assert f"logger.mlflow.tracking_uri={tracking_server.uri}" in err.value.fix


@pytest.mark.slow
def test_promotion_through_the_server_checks_the_champion_before_and_after_moving_it(
    tracking_server: TrackingServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    client = tracking_server.client()
    exp = mlflow_client.experiment_id(client, "promotions", tmp_path)
    a, b, c = (mlflow_client.start_run(client, exp, name, tmp_path / name) for name in "abc")
    model = [(tmp_path / "config.yaml", "")]
    model[0][0].write_text("model: tiny\n")
    assert registry.register(client, "m", "promotions", a, model, [], None, tmp_path) == "1"
    assert {f.path for f in client.list_artifacts(a, "model")} == {"model/config.yaml"}
    # Another machine's promotion moved the champion after this one's gates read it: refused.
    with pytest.raises(RunStateError, match="changed while the gates were applied"):
        registry.register(client, "m", "promotions", b, model, [], None, tmp_path)
    assert registry.champion_run(client, "m") == a

    class Racing:
        """The client of a promotion that another machine overtakes right after it sets the alias."""

        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def set_registered_model_alias(self, model: str, alias: str, version: str) -> None:
            client.set_registered_model_alias(model, alias, version)
            if alias == registry.CHAMPION:
                client.set_registered_model_alias(model, alias, "1")

    with pytest.raises(RunStateError, match="another promotion moved 'champion' of model 'm' to version 1"):
        registry.register(Racing(), "m", "promotions", c, model, [], a, tmp_path)
    assert registry.champion_run(client, "m") == a
