"""Run directory state, atomic writes, run names and override type checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from src.core.config import check_override_types
from src.core.errors import ConfigError, RunStateError
from src.core.io import atomic_path, write_json_atomic
from src.core.resolvers import MAX_RUN_NAME, run_name_from_overrides
from src.core.rundir import RunDir, RunState
from tests.conftest import CONFIG_DIR


def test_run_names_are_stable_safe_and_bounded() -> None:
    assert run_name_from_overrides("") == "default"
    assert run_name_from_overrides("seed=1,model.lr=0.1") == "seed=1,model.lr=0.1"
    assert "/" not in run_name_from_overrides("data.root=/tmp/x y")
    long = ",".join(f"k{i}=v{i}" for i in range(60))
    name = run_name_from_overrides(long)
    assert len(name) <= MAX_RUN_NAME and name == run_name_from_overrides(long)
    assert name != run_name_from_overrides(long + ",z=1")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{") and list(tmp_path.iterdir()) == [target]


def test_run_dir_states(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.state() is RunState.FRESH
    run.last_ckpt.parent.mkdir(parents=True)
    run.last_ckpt.write_bytes(b"x")
    assert run.state() is RunState.RESUMABLE
    run.write_metrics({"val/acc": 1.0})
    assert run.state() is RunState.FINISHED
    run.manifest_file.write_text("{not json")
    with pytest.raises(RunStateError, match="manifest.json"):
        run.manifest()
    run.reset()
    assert run.state() is RunState.FRESH and not run.manifest_file.exists()


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize(
    ("override", "ok"),
    [("trainer.max_epochs=3", True), ("trainer.max_epochs=three", False), ("model.optimizer.lr=1", True),
     ("model.optimizer.lr=fast", False), ("trainer.deterministic=yes", False), ("data.mean=[0.1]", True),
     ("data.mean=0.1", False), ("data.root=123", True), ("trainer.max_epochs=null", True)],
)  # fmt: skip
def test_override_types(override: str, ok: bool) -> None:
    base = _compose(["experiment=digits"])
    cfg = _compose(["experiment=digits", override])
    if ok:
        check_override_types(cfg, base, [override])
    else:
        with pytest.raises(ConfigError, match=override.split("=")[0]):
            check_override_types(cfg, base, [override])
