"""The run lifecycle shared by every entry point, and config nodes built with a named error.

Each entry point's own lifecycle (train, the cv parent, ensemble) is tested beside it:
tests/core/test_training.py, tests/core/test_cv.py, tests/ensemble/test_ensemble_entry.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from src.core.errors import ConfigError, RunStateError
from src.core.lifecycle import RunLifecycle, build, build_group, log_to_files
from src.core.manifest import config_hash
from src.core.mlflow_client import RunSpec, tracking_uri
from tests.conftest import compose_cfg
from tests.entry_harness import run_entry_point


def job_cfg(root: Path, lr: float = 0.1, force: bool = False) -> DictConfig:
    """The smallest config a lifecycle reads: where the run lives, its names and one value."""
    return OmegaConf.create(
        {
            "paths": {"output_dir": str(root / "outputs" / "toy" / "r")},
            "experiment_name": "toy",
            "run_name": "r",
            "force": force,
            "model": {"lr": lr},
        }
    )


def finished_run(root: Path) -> RunLifecycle:
    lifecycle = RunLifecycle(job_cfg(root), job="toy job", redo="do it again")
    assert lifecycle.begin() is None
    lifecycle.start(fingerprint="abc")
    lifecycle.finish({"score": 0.5})
    return lifecycle


def test_a_finished_run_is_reported_and_force_starts_it_over(tmp_path: Path, capsys) -> None:
    run = finished_run(tmp_path).run
    manifest = json.loads(run.manifest_file.read_text())
    assert manifest["config_hash"] == config_hash(job_cfg(tmp_path)) and manifest["finished_at"]
    assert manifest["data_fingerprint"] == "abc"
    assert yaml.safe_load(run.config_file.read_text())["model"]["lr"] == 0.1
    capsys.readouterr()

    assert RunLifecycle(job_cfg(tmp_path), job="toy job").begin() == {"score": 0.5}
    out = capsys.readouterr().out
    assert "toy job toy/r is already finished" in out and str(run.path) in out and "score=0.5000" in out

    forced = RunLifecycle(job_cfg(tmp_path, lr=0.2, force=True))
    assert forced.begin() is None  # force: another config too, nothing refused
    assert run.metrics_file.is_file()  # nothing is reset before the job has built everything
    forced.start()
    assert not run.metrics_file.exists()
    assert json.loads(run.manifest_file.read_text())["config_hash"] == config_hash(job_cfg(tmp_path, lr=0.2))


@pytest.mark.parametrize("finished", [True, False])
def test_another_config_is_refused_naming_what_differs_and_the_fix(tmp_path: Path, finished: bool) -> None:
    run = finished_run(tmp_path).run
    if not finished:
        run.metrics_file.unlink()
    with pytest.raises(RunStateError) as err:
        RunLifecycle(job_cfg(tmp_path, lr=0.2), job="toy job").begin()
    state = "a finished" if finished else "an unfinished"
    assert f"holds {state} toy job of a different config" in err.value.what
    assert "model.lr: 0.1 -> 0.2" in err.value.what and err.value.exit_code == 2
    assert "force=true" in err.value.fix and "run_name=<new name>" in err.value.fix


def test_mlflow_run_is_created_at_start_finished_or_failed(tmp_path: Path) -> None:
    store = tmp_path / "mlruns"
    spec = RunSpec(store, "toy", "r", {"kind": "toy"})
    lifecycle = RunLifecycle(job_cfg(tmp_path))
    lifecycle.start(mlflow=spec)
    client = mlflow.MlflowClient(tracking_uri(store))
    run_id = json.loads(lifecycle.run.manifest_file.read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.params["model.lr"] == "0.1"
    assert run.data.tags["kind"] == "toy" and run.data.tags["podium.run_dir"] == str(lifecycle.run.path)
    lifecycle.finish({"score": 0.5}, mlflow_metrics={"score": 0.5})
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["score"] == 0.5
    assert {"config.yaml", "manifest.json", "metrics.json"} <= {a.path for a in client.list_artifacts(run_id)}

    other = RunLifecycle(job_cfg(tmp_path / "other"))
    other.start(mlflow=spec)
    other.abandon()
    assert not other.run.manifest_file.exists() and not other.run.config_file.exists()
    assert client.get_run(other.mlflow.run_id).info.status == "FAILED"


def test_a_node_that_does_not_import_names_its_key_and_target() -> None:
    cfg = OmegaConf.create({"outer": {"_target_": "builtins.dict", "inner": {"_target_": "src.nope.Thing"}}})
    with pytest.raises(ConfigError) as err:
        build(cfg, "outer")
    assert str(err.value).startswith("outer.inner: cannot import _target_ 'src.nope.Thing'")
    assert "No module named 'src.nope'" in str(err.value) and "_target_" in err.value.fix


def test_a_constructor_error_names_the_key_and_the_values() -> None:
    cfg = OmegaConf.create({"callbacks": {"late": {"_target_": "datetime.timedelta", "days": "soon"}, "monitor": {}}})
    with pytest.raises(ConfigError) as err:
        build_group(cfg, "callbacks")
    text = str(err.value)
    assert text.startswith("callbacks.late: TypeError:") and "callbacks.late.days='soon'" in text
    assert "callbacks.late" in err.value.fix


def test_a_podium_error_from_a_constructor_passes_through_as_is() -> None:
    cfg = OmegaConf.create({"select": {"_target_": "src.ensemble.pipeline.check_select_by", "select_by": "f1"}})
    with pytest.raises(ConfigError, match=r"^select_by='f1' is not a ranking metric"):
        build(cfg, "select")


def test_a_refused_value_names_the_command_line_override(root: Path) -> None:
    cfg = compose_cfg(["experiment=digits", "trainer.precision=banana"], root)
    with pytest.raises(ConfigError) as err:
        build(cfg, "trainer")
    assert str(err.value).startswith("trainer: ValueError: Precision 'banana' is invalid")
    assert "set by trainer.precision=banana" in str(err.value) and "trainer.precision=banana" in err.value.fix


def test_a_refused_trainer_leaves_no_run_directory_and_no_mlflow_run(root: Path, monkeypatch, capfd) -> None:
    # The trainer is built last, after the MLflow logger: still nothing is written or opened.
    result = run_entry_point("train", ["experiment=digits", "trainer.precision=banana"], root, monkeypatch, capfd)
    assert result.code == 2 and "podium: error: trainer: ValueError" in result.err
    assert "Traceback" not in result.err
    assert not (root / "outputs").exists() or not any((root / "outputs").rglob("*"))
    assert (root / "mlruns" / "mlflow.db").is_file()  # the MLflow logger was built before the trainer
    client = mlflow.MlflowClient(tracking_uri(root / "mlruns"))
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_log_to_files_writes_the_traceback_to_file_handlers_only(tmp_path: Path, capsys) -> None:
    root_logger = logging.getLogger()
    handler = logging.FileHandler(tmp_path / "job.log")
    root_logger.addHandler(handler)
    try:
        try:
            raise ValueError("deep down")
        except ValueError as exc:
            log_to_files("podium: error: deep down", exc)
    finally:
        root_logger.removeHandler(handler)
        handler.close()
    text = (tmp_path / "job.log").read_text()
    assert "podium: error: deep down" in text and "Traceback" in text and "ValueError: deep down" in text
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
