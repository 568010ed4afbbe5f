"""The simulator writes the competition layout, deterministically, with a physical forward model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from src.core.errors import ConfigError
from src.datamodules.ariel import forward as fw
from src.datamodules.ariel.simulate import main, simulate_dataset


def test_layout_matches_the_competition_format(tiny_root):
    labels = pd.read_csv(tiny_root / "train.csv")
    assert list(labels.columns) == ["planet_id"] + [f"wl_{k}" for k in range(1, 284)] and len(labels) == 2
    pid = labels["planet_id"].iloc[0]
    folder = tiny_root / "train" / str(pid)
    for inst, cols in (("FGS1", 32 * 32), ("AIRS-CH0", 32 * 356)):
        meta = pq.read_metadata(folder / f"{inst}_signal_0.parquet")
        assert (meta.num_rows, meta.num_columns) == (2 * (48 if inst == "FGS1" else 8), cols)
        assert pq.read_schema(folder / f"{inst}_signal_0.parquet").field(0).type == "uint16"
        for name, rows in (("dark", 32), ("dead", 32), ("flat", 32), ("read", 32), ("linear_corr", 6 * 32)):
            table = pq.read_table(folder / f"{inst}_calibration_0" / f"{name}.parquet")
            assert (table.num_rows, table.num_columns) == (rows, cols // 32), (inst, name)
    star = pd.read_csv(tiny_root / "train_star_info.csv")
    assert list(star.columns) == ["planet_id", "Rs", "Ms", "Ts", "Mp", "e", "P", "sma", "i"]
    assert list(pd.read_csv(tiny_root / "adc_info.csv").columns) == [
        "FGS1_adc_offset",
        "FGS1_adc_gain",
        "AIRS-CH0_adc_offset",
        "AIRS-CH0_adc_gain",
    ]
    sub = pd.read_csv(tiny_root / "sample_submission.csv")
    assert sub.shape == (1, 1 + 2 * 283) and sub.columns[-1] == "sigma_283"
    axis = pq.read_table(tiny_root / "axis_info.parquet").to_pandas()
    np.testing.assert_allclose(axis["AIRS-CH0-integration_time"].dropna()[:4], [0.1, 4.5, 0.1, 4.5])
    wl = pd.read_csv(tiny_root / "wavelengths.csv").to_numpy()[0]
    assert wl.shape == (283,) and (np.diff(wl[1:]) > 0).all() and wl[0] < wl[1]


def test_truth_is_separate_and_consistent_with_labels(tiny_root):
    labels = pd.read_csv(tiny_root / "train.csv").set_index("planet_id")
    for pid in labels.index:
        with np.load(tiny_root / "truth" / "train" / f"{pid}_0.npz") as truth:
            np.testing.assert_allclose(truth["depths"], labels.loc[pid].to_numpy())
            assert truth["airs_flux"].shape == (8, 282) and truth["fgs1_flux"].shape == (48,)
            # The transit (2-3 h) lies inside the 7.5 h window.
            assert 7.5 / 2 - 0.5 <= float(truth["t0_h"]) <= 7.5 / 2 + 0.5


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, tiny_cfg):
    a = simulate_dataset(tmp_path / "a", planets=1, seed=4, test_planets=0, cfg=tiny_cfg)
    b = simulate_dataset(tmp_path / "b", planets=1, seed=4, test_planets=0, cfg=tiny_cfg)
    c = simulate_dataset(tmp_path / "c", planets=1, seed=5, test_planets=0, cfg=tiny_cfg)
    pa, pb = (pd.read_csv(r / "train.csv")["planet_id"].iloc[0] for r in (a, b))
    signal = lambda r, p: pq.read_table(r / "train" / str(p) / "AIRS-CH0_signal_0.parquet")  # noqa: E731
    assert pa == pb and signal(a, pa).equals(signal(b, pb))
    assert pd.read_csv(a / "train.csv").equals(pd.read_csv(b / "train.csv"))
    assert not pd.read_csv(a / "train.csv").equals(pd.read_csv(c / "train.csv"))


def test_spectrum_has_bands_of_tens_to_hundreds_of_ppm():
    rng = np.random.default_rng(0)
    wl = fw.label_wavelengths()
    for _ in range(20):
        depth = fw.draw_spectrum(rng, wl)
        airs = depth[1:]
        assert airs.min() >= 3e-3 and 10e-6 < np.ptp(airs) < 1000e-6
        assert depth[0] > airs.min()  # the Rayleigh slope lifts the optical depth


def test_system_gives_two_to_three_hour_transits():
    rng = np.random.default_rng(1)
    for _ in range(50):
        system = fw.draw_system(rng, hours=7.5, k=0.1)
        b = system.a_rs * np.cos(np.radians(system.i))
        t14_h = system.P * 24 / np.pi * np.arcsin(np.sqrt(1.1**2 - b**2) / system.a_rs / np.sin(np.radians(system.i)))
        assert 1.9 < t14_h < 3.1 and 0 <= b < 0.6


def test_nonlinearity_is_inverted_by_linear_corr(tiny_cfg):
    det = fw.draw_detector(np.random.default_rng(2), tiny_cfg, "AIRS-CH0")
    charge = np.linspace(0, 1e5, 50)[:, None, None]
    measured = charge - det["alpha"] * charge**2
    recovered = np.polynomial.polynomial.polyval(measured, det["linear_corr"][:, None], tensor=False)
    np.testing.assert_allclose(recovered, np.broadcast_to(charge, recovered.shape), atol=1e-3)


def test_cli_writes_a_dataset_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "cli"
    main(["--out", str(out), "--planets", "1", "--test-planets", "0", "--airs-pairs", "4", "--fgs1-pairs", "8"])
    assert "wrote 1 planets" in capsys.readouterr().out
    assert (out / "train.csv").is_file() and not list(tmp_path.glob(".cli.*"))
    with pytest.raises(ConfigError, match="already exists"):
        main(["--out", str(out), "--planets", "1"])


def test_output_folder_only_appears_when_complete(tmp_path, monkeypatch, tiny_cfg):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("src.datamodules.ariel.simulate._write_tables", boom)
    with pytest.raises(RuntimeError):
        simulate_dataset(tmp_path / "x", planets=1, seed=0, test_planets=0, cfg=tiny_cfg)
    assert list(Path(tmp_path).iterdir()) == []
