"""The ensemble job: in-process on composed configs, and `python ensemble.py` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from src.core.artifacts import RECORDS_FILE, RESOLVED_CONFIG_FILE, build_resolved_config, write_json, write_records
from src.core.errors import ConfigError, DataError, RunStateError
from src.core.manifest import config_hash
from src.core.resolvers import PROJECT_ROOT
from src.ensemble.pipeline import run_ensemble
from src.metrics.ariel import score_records
from tests.ensemble.synthetic import write_member

ENSEMBLE_PY = str(PROJECT_ROOT / "ensemble.py")
N, N_TEST, CLASSES = 300, 40, ["c0", "c1", "c2", "c3"]
FAST = ["blend_defs.hgb.max_iter=20", "audit.n_boot=200", "audit.n_splits=5", "extras.print_config=false"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root with two members (rows in different orders) and the dataset's train.csv."""
    for name, seed in (("cv_a", 1), ("cv_b", 2)):
        write_member(tmp_path / "outputs" / "digits", name, seed=seed, n=N, n_test=N_TEST)
    ids = [f"img_{i:04d}" for i in range(N)]
    groups = [f"writer{i % 25}" for i in range(N)]
    (tmp_path / "data" / "toy").mkdir(parents=True)
    pd.DataFrame({"image_id": ids, "label": 0, "group": groups}).to_csv(tmp_path / "data/toy/train.csv", index=False)
    return tmp_path


MEMBERS = "members=[outputs/digits/cv_a,outputs/digits/cv_b]"


def compose_ensemble(root: Path, *overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(PROJECT_ROOT / "configs")):
        cfg = compose("ensemble", overrides=[*overrides, f"paths.root_dir={root}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def test_job_ranks_members_blends_and_final_stages(project: Path, capsys) -> None:
    cfg = compose_ensemble(project, MEMBERS, "train_csv=data/toy/train.csv", "run_name=t", "log_mlflow=false", *FAST)
    acc = run_ensemble(cfg)
    run = project / "outputs" / "ensemble" / "t"
    ranking = pd.read_csv(run / "ranking.csv")
    pool = {"member:cv_a", "member:cv_b", *(f"blend:{b}" for b in ("mean", "nnls", "ridge", "logreg", "hgb"))}
    stages = {"selected", "selected+calibrated", "selected+calibrated+experts"}
    assert set(ranking["name"]) == pool | stages and len(ranking) == 10
    assert ranking["acc"].is_monotonic_decreasing
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final"] == "selected+calibrated+experts" and acc == metrics["oof/acc"]
    # The candidate of each held-out fold was chosen on the other four folds.
    assert set(metrics["selected_per_fold"]) == {str(k) for k in range(5)}
    assert set(metrics["selected_per_fold"].values()) <= pool and metrics["best"] in pool
    table = ranking.set_index("name")
    members = ranking[ranking.kind == "member"]
    # Two members with independent errors: a blend wins, even paying for its choice out of sample.
    assert table.loc[metrics["best"], "acc"] > members["acc"].max()
    assert table.loc["selected", "acc"] > members["acc"].max()
    assert metrics["experts_oof"] and all(1 <= r["folds_chosen"] <= 5 for r in metrics["experts_oof"])
    assert "Pair experts chosen per held-out fold" in (run / "report.html").read_text()
    assert 0 <= metrics["oof/acc_group_min"] <= metrics["oof/acc_group_median"] <= 1
    assert metrics["calib/ece_after"] < metrics["calib/ece_before"]
    # The run's own oof/ makes it a valid member of a later ensemble.
    from src.ensemble.oof import load_member

    assert load_member(run).classes == CLASSES
    # Same command again: reported, not recomputed.
    stamp = (run / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert run_ensemble(cfg) == acc
    assert "already finished" in capsys.readouterr().out
    assert (run / "metrics.json").stat().st_mtime_ns == stamp


def test_job_errors_name_the_member_and_the_config_key(project: Path) -> None:
    cfg = compose_ensemble(project, "members=[outputs/digits/cv_a,outputs/digits/nope]", "log_mlflow=false", *FAST)
    with pytest.raises(DataError, match=r"outputs/digits/nope does not exist"):
        run_ensemble(cfg)
    cfg = compose_ensemble(project, MEMBERS, "blends=[mean,magic]", "log_mlflow=false", *FAST)
    with pytest.raises(ConfigError, match=r"unknown blend\(s\) \['magic'\]"):
        run_ensemble(cfg)
    cfg = compose_ensemble(project, MEMBERS, "select_from=[member,stacker]", "log_mlflow=false", *FAST)
    with pytest.raises(ConfigError, match=r"select_from=\['member', 'stacker'\]"):
        run_ensemble(cfg)
    cfg = compose_ensemble(project, MEMBERS, "select_from=[blend]", "blends=[]", "log_mlflow=false", *FAST)
    with pytest.raises(ConfigError, match=r"select_from=\['blend'\] leaves no candidate \(blends=\[\]\)"):
        run_ensemble(cfg)
    cfg = compose_ensemble(project, "log_mlflow=false", *FAST)
    with pytest.raises(ConfigError, match="members is empty"):
        run_ensemble(cfg)


def test_another_config_is_refused_and_force_blends_again(project: Path) -> None:
    cheap = [MEMBERS, "run_name=lc", "blends=[mean]", "calibration.steps=[]", "pair_experts.top_k=0",
             "audit.n_boot=50", "audit.n_splits=2", "log_mlflow=false", *FAST]  # fmt: skip
    run = project / "outputs" / "ensemble" / "lc"
    run_ensemble(compose_ensemble(project, *cheap))
    stamp = (run / "metrics.json").stat().st_mtime_ns
    other = compose_ensemble(project, *cheap, "select_by=log_loss")
    with pytest.raises(RunStateError, match="a finished ensemble of a different config") as err:
        run_ensemble(other)
    assert "select_by: 'acc' -> 'log_loss'" in err.value.what and "force=true" in err.value.fix
    assert (run / "metrics.json").stat().st_mtime_ns == stamp

    (run / "metrics.json").unlink()  # killed after its manifest was written: unfinished
    with pytest.raises(RunStateError, match="an unfinished ensemble of a different config"):
        run_ensemble(other)

    forced = compose_ensemble(project, *cheap, "select_by=log_loss", "force=true")
    value = run_ensemble(forced)
    metrics = json.loads((run / "metrics.json").read_text())
    assert value == metrics["oof/log_loss"] and metrics["final"] == "selected"
    assert metrics["best"] in {"member:cv_a", "member:cv_b", "blend:mean"} and "calib/ece_after" not in metrics
    assert json.loads((run / "manifest.json").read_text())["config_hash"] == config_hash(forced)


@pytest.mark.slow
def test_ensemble_py_end_to_end(project: Path) -> None:
    env = {**os.environ, "PODIUM_ROOT": str(project), "PYTHONUNBUFFERED": "1"}
    args = [MEMBERS, "train_csv=data/toy/train.csv", "run_name=e2e", *FAST]
    proc = subprocess.run([sys.executable, ENSEMBLE_PY, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = project / "outputs" / "ensemble" / "e2e"
    ranking = pd.read_csv(run / "ranking.csv")
    assert len(ranking) == 10
    assert {"acc", "log_loss", "ece", "acc_boot_p5", "acc_holdout_min", "acc_group_median"} <= set(ranking.columns)
    submission = pd.read_csv(run / "submission.csv", dtype=str)
    assert list(submission.columns) == ["image_id", "label"] and len(submission) == N_TEST
    assert set(submission["label"]) <= set(CLASSES)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.5 < metrics["oof/acc"] <= 1 and metrics["has_test"] is True
    html = (run / "report.html").read_text()
    assert "<table>" in html and "http" not in html.replace('lang="en"', "")
    manifest = json.loads((run / "manifest.json").read_text())

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    mlrun = client.get_run(manifest["mlflow_run_id"])
    assert mlrun.info.run_name == "e2e" and mlrun.info.status == "FINISHED"
    assert client.get_experiment(mlrun.info.experiment_id).name == "ensemble"
    assert mlrun.data.metrics["oof/acc"] == pytest.approx(metrics["oof/acc"])
    assert {"ranking.csv", "submission.csv", "report.html", "metrics.json"} <= {
        a.path for a in client.list_artifacts(mlrun.info.run_id)
    }
    assert f"config hash {manifest['config_hash']}" in (run / "ensemble.log").read_text()


def write_gaussian_member(root: Path, name: str, noise: float, sigma: float, seed: int = 0) -> Path:
    """A cross-validation's merged Ariel-like records: 24 planets x 6 bins over 3 folds, each fold
    with its own naive prediction (the training labels' mean and deviation)."""
    rng = np.random.default_rng(seed)
    truth = np.random.default_rng(99).normal(0.01, 0.001, size=(24, 6))  # the same planets for every member
    mu = truth + rng.normal(scale=noise, size=truth.shape)
    records = [
        {
            "sample_id": f"{i:04d}", "split": "val", "fold": i % 3, "errors": [], "gt": {"mu": truth[i].tolist()},
            "pred": {"mu": mu[i].tolist(), "sigma": [sigma] * 6},
            "naive": {"mean": 0.01 + 1e-4 * (i % 3), "sigma": 0.001},
        }
        for i in range(24)
    ]  # fmt: skip
    oof = root / "outputs" / "ariel_v50" / name / "oof"
    write_records(oof / RECORDS_FILE, records)
    resolved = build_resolved_config("ariel", ["predict", "cv:merge"], {}, "src.metrics.ariel.score_records", None, {})
    write_json(oof / RESOLVED_CONFIG_FILE, resolved)
    return oof.parent


def test_gaussian_members_are_blended_as_a_mixture_scored_out_of_fold(tmp_path: Path) -> None:
    write_gaussian_member(tmp_path, "good", noise=1e-4, sigma=1e-4, seed=1)
    write_gaussian_member(tmp_path, "poor", noise=5e-4, sigma=5e-4, seed=2)
    members = "members=[outputs/ariel_v50/good,outputs/ariel_v50/poor]"
    score = run_ensemble(compose_ensemble(tmp_path, members, "run_name=g", "log_mlflow=false"))
    run = tmp_path / "outputs" / "ensemble" / "g"
    metrics = json.loads((run / "metrics.json").read_text())
    assert score == metrics["oof/score2024"] and metrics["weights"]["good"] > 0.8
    ranking = pd.read_csv(run / "ranking.csv").set_index("name")
    assert set(ranking.index) == {"member:good", "member:poor", "blend:gaussian_mixture"}
    assert ranking.loc["blend:gaussian_mixture", "score2024"] > ranking.loc["member:poor", "score2024"]
    # The blend's nested out-of-fold records are an artifact: evaluate.py's scorer gives the same.
    records = [json.loads(line) for line in (run / "oof" / RECORDS_FILE).read_text().splitlines()]
    assert score_records(records)[0]["score2024"] == pytest.approx(score)


def test_members_of_different_tasks_are_refused(project: Path, tmp_path: Path) -> None:
    write_gaussian_member(project, "ariel", noise=1e-4, sigma=1e-4)
    cfg = compose_ensemble(project, "members=[outputs/digits/cv_a,outputs/ariel_v50/ariel]", "log_mlflow=false")
    with pytest.raises(ConfigError, match=r"different tasks: .*cv_a \(classification\).*ariel \(ariel\)"):
        run_ensemble(cfg)
