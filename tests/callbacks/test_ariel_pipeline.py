"""The Ariel experiments end to end on a tiny simulated dataset: train, artifacts, predict.py, report.

One V50 run (2 epochs) is shared by the tests of this module; the report it writes is rendered in
headless Chromium. Chromium is Debian's ``chromium`` package (``make setup`` installs it); where it
is absent the rendering test skips, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from src.core.predicting import predict
from src.core.training import train
from src.datamodules.ariel.forward import SimConfig
from src.datamodules.ariel.simulate import simulate_dataset
from tests.browser import render
from tests.conftest import compose_cfg, read_metrics

#: 6 labelled + 1 test planet, 24 time bins per instrument: every code path in seconds.
TINY_DATA = [
    "data=ariel_toy",
    "data.n_folds=2",
    "data.batch_size=2",
    "data.calibration.instruments.FGS1.bin_size=4",
    "data.calibration.instruments.AIRS-CH0.bin_size=1",
    "logger=csv",
    "extras.print_config=false",
]


@pytest.fixture(scope="module")
def tiny_ariel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = replace(SimConfig(), airs_pairs=24, fgs1_pairs=96)
    return simulate_dataset(tmp_path_factory.mktemp("ariel") / "tiny", planets=6, seed=11, test_planets=1, cfg=cfg)


def _cfg(root: Path, data: Path, experiment: str, *extra: str, config_name: str = "train"):
    overrides = [f"experiment={experiment}", *TINY_DATA, f"data.root={data}", *extra]
    return compose_cfg(overrides, root, config_name=config_name)


@pytest.fixture(scope="module")
def v50_run(tiny_ariel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(project root, run directory) of a 2-epoch V50 run on the tiny dataset."""
    root = tmp_path_factory.mktemp("root")
    cfg = _cfg(root, tiny_ariel, "ariel_v50", "trainer.max_epochs=2")
    train(cfg)
    return root, Path(cfg.paths.output_dir)


def naive_val_mae_ppm(data: Path, val: pd.DataFrame) -> float:
    """MAE (ppm) on the validation planets of the naive prediction: the training labels' mean."""
    labels = pd.read_csv(data / "train.csv").set_index("planet_id")
    naive = labels.drop(index=val["planet_id"]).to_numpy(np.float64).mean()
    return float(1e6 * np.abs(val.filter(regex="^true_").to_numpy() - naive).mean())


@pytest.mark.slow
def test_v50_run_beats_the_naive_prediction_once_calibrated(v50_run: tuple[Path, Path], tiny_ariel: Path) -> None:
    _, run_dir = v50_run
    metrics = read_metrics(run_dir)
    assert metrics["global_step"] == 2 * 2
    val = pd.read_csv(run_dir / "predictions" / "val.csv")
    # mu: the transit-fit prior already puts each planet's depths far closer than the naive mean.
    assert metrics["val/mae_ppm"] < 0.5 * naive_val_mae_ppm(tiny_ariel, val)
    # sigma: on 3 training planets the raw sigma is far too small; the cross-fitted temperature
    # (scored on planets it was not fitted on) makes the likelihood beat the naive prediction
    # (score > 0) and moves coverage and the spread of z towards nominal.
    assert metrics["val/cal/score2024"] > 0.1 and metrics["val/cal/gll"] > metrics["val/gll"]
    assert abs(metrics["val/cal/cov68"] - 0.68) < abs(metrics["val/cov68"] - 0.68)
    assert abs(np.log(metrics["val/cal/z_std"])) < abs(np.log(metrics["val/z_std"]))
    assert metrics["val/cal/mae_ppm"] == pytest.approx(metrics["val/mae_ppm"], rel=1e-5)  # sigma only
    # Cross-fitted and in-sample scores are different numbers (the checkpoint keeps the latter's scale).
    assert metrics["val/cal/score2024"] != pytest.approx(metrics["val/cal_insample/score2024"], abs=1e-4)
    assert metrics["val/ts_scale"] > 1 and metrics["val/physics/planet_rate"] == 0.0
    sub = pd.read_csv(run_dir / "submission.csv")
    test_ids = sorted(int(p.name) for p in (tiny_ariel / "test").iterdir())
    assert sub.shape == (1, 567) and sorted(sub["planet_id"]) == test_ids
    assert (sub.filter(like="sigma_") > 0).all().all() and sub.filter(like="wl_").abs().max().max() < 0.1
    assert len(val) == 3 and set(val["fold"]) == {0}
    conformal = json.loads((run_dir / "conformal.json").read_text())
    assert set(conformal["quantiles"]) == {"68", "95"} and len(conformal["quantiles"]["68"]) == 283
    assert (run_dir / "physics_planets.csv").is_file() and (run_dir / "physics_bins.csv").is_file()
    page = (run_dir / "report.html").read_text()
    assert page.count("<img") == 7 and "Coverage against nominal" in page and "<script" not in page


@pytest.mark.slow
def test_checkpoint_carries_the_temperature_and_predict_reproduces_fit(v50_run: tuple[Path, Path], tiny_ariel) -> None:
    root, run_dir = v50_run
    for name in ("last.ckpt", Path(read_metrics(run_dir)["best/checkpoint"]).name):
        state = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=False)["callbacks"]
        assert len(state["TemperatureScaling"]["scale"]) == 283, name
    # last.ckpt (the default): the final weights, which the run's own predictions used (weights: final)
    overrides = ["trainer.max_epochs=2", f"run_name='{run_dir.name}'", "split=val"]
    folder = predict(_cfg(root, tiny_ariel, "ariel_v50", *overrides, config_name="predict"))
    assert folder == run_dir / "predictions" / "val"
    records = [json.loads(line) for line in (folder / "gt_vs_pred.jsonl").read_text().splitlines()]
    after_fit = pd.read_csv(run_dir / "predictions" / "val.csv")
    assert [int(r["sample_id"]) for r in records] == after_fit["planet_id"].tolist()
    # Same weights and calibration; only the batch layout differs (float32 sums): within 0.1 ppm.
    for field, prefix in (("mu", "wl_"), ("sigma", "sigma_")):
        predicted = np.array([r["pred"][field] for r in records])
        np.testing.assert_allclose(predicted, after_fit.filter(regex=f"^{prefix}").to_numpy(), rtol=0, atol=1e-7)
    truth = np.array([r["gt"]["mu"] for r in records])
    np.testing.assert_allclose(truth, after_fit.filter(regex="^true_").to_numpy(), rtol=0, atol=1e-9)
    # The export is derived from the records: the competition's columns, the records' values.
    exported = pd.read_csv(folder / "submission.csv")
    assert list(exported.columns) == list(after_fit.columns.drop("fold"))[: 1 + 2 * 283]
    np.testing.assert_allclose(exported.filter(regex="^wl_").to_numpy(), np.array([r["pred"]["mu"] for r in records]))


@pytest.mark.slow
def test_polyfit_baseline_runs_through_the_pipeline_without_an_optimizer(tiny_ariel: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tiny_ariel, "ariel_polyfit")
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    metrics = read_metrics(run_dir)
    assert metrics["epoch"] == 1
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # Lightning's stand-in optimizer (configure_optimizers returned None) has an empty state.
    assert all(state == {} for state in last["optimizer_states"])
    assert len(last["callbacks"]["TemperatureScaling"]["scale"]) == 283
    # Calibration rescales sigma only: the depths score the same before and after it.
    assert metrics["val/cal/mae_ppm"] == pytest.approx(metrics["val/mae_ppm"], rel=1e-5)
    assert (run_dir / "submission.csv").is_file() and (run_dir / "report.html").is_file()


@pytest.mark.slow
def test_report_renders_in_headless_chromium_without_console_errors(v50_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run_dir = v50_run
    dom, pixels = render(run_dir / "report.html", tmp_path)
    assert dom.count("<img") == 7 and "Ariel report" in dom
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01  # not blank: text and figures drawn
