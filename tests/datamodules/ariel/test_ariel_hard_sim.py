"""The hard simulation (time-correlated systematics, unknown transit time and duration, per-planet
instruments), the easy one left byte-identical, and the star table's competition units."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.core.errors import ConfigError, DataError
from src.datamodules.ariel import forward as fw
from src.datamodules.ariel.chain import CalibrationChain, calibrate_planet
from src.datamodules.ariel.datamodule import ArielDataModule
from src.datamodules.ariel.forward import SimConfig
from src.datamodules.ariel.layout import AIRS, FGS1, ArielLayout
from src.datamodules.ariel.settings import instrument_settings
from src.datamodules.ariel.simulate import _times, main, simulate_dataset, simulate_visit
from src.datamodules.ariel.tables import read_adc, read_axis_info, read_labels, read_star_info, split_planet_ids
from tests.conftest import compose_cfg
from tests.datamodules.ariel.conftest import TINY

#: sha256 over (path, dtype, shape, values) of every signal and calibration file of planet
#: 780369210 (seed 4, one planet, TINY), written by the simulator before the hard simulation existed.
EASY_VALUES_SHA256 = "0c256c4b075fc1004d2109a84df6fb5edfefc37229aab199580dbf12b864f55a"
#: sha256 of that planet's AIRS-CH0 signal file as pyarrow 25 writes it (the writer's version is in the file).
EASY_AIRS_FILE_SHA256 = "58b816e57eecbf0a461697c58339b122e89224bce0500244bd242a036d59a0f8"
#: Pixels per slice in the sliced visit: 1 AIRS-CH0 or 19 FGS1 read pairs of TINY.
SLICE = 20_000


def values_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.parquet")):
        values = np.ascontiguousarray(pq.read_table(path).to_pandas().to_numpy())
        for part in (path.relative_to(folder).as_posix(), str(values.dtype), str(values.shape)):
            digest.update(part.encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def test_easy_writes_the_same_files_as_before(tmp_path: Path) -> None:
    root = simulate_dataset(tmp_path / "easy", planets=1, seed=4, test_planets=0, cfg=TINY)
    folder = root / "train" / "780369210"
    assert values_digest(folder) == EASY_VALUES_SHA256
    if pa.__version__.split(".")[0] == "25":
        assert hashlib.sha256((folder / "AIRS-CH0_signal_0.parquet").read_bytes()).hexdigest() == EASY_AIRS_FILE_SHA256
    with np.load(root / "truth" / "train" / "780369210_0.npz") as truth:
        assert str(truth["difficulty"]) == "easy" and 2.0 <= float(truth["duration_h"]) <= 3.0


def test_star_table_is_in_competition_units(tiny_root: Path) -> None:
    info = read_star_info(ArielLayout(tiny_root), "train")
    for pid, row in info.iterrows():
        with np.load(tiny_root / "truth" / "train" / f"{pid}_0.npz") as truth:
            assert row["sma"] == pytest.approx(float(truth["a_rs"]), rel=1e-12)
        assert row["sma"] > 2.0  # stellar radii, not AU
        assert 0.05 * fw.MEARTH_PER_MJUP <= row["Mp"] <= 3.0 * fw.MEARTH_PER_MJUP  # Earth masses


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("sma", 0.0435, r"sma=0\.0435.*looks like AU(.|\n)*sma_rs = sma_au \* 215\.03 / Rs"),
        ("Ts", float("nan"), r"has Ts=nan, not a finite number"),
        ("i", 270.0, r"i=270\.0, outside the plausible range 0 <= i <= 180 \(degrees\)"),
        ("P", 1e6, r"P=1000000\.0, outside the plausible range 0\.05 <= P <= 10000 \(days\)"),
        ("e", 1.0, r"e=1\.0, outside the plausible range 0 <= e < 1"),
    ],
)
def test_star_table_refuses_implausible_values(tiny_copy: Path, column: str, value: float, message: str) -> None:
    path = tiny_copy / "train_star_info.csv"
    table = pd.read_csv(path)
    table.loc[1, column] = value
    table.to_csv(path, index=False)
    pid = table["planet_id"].iloc[1]
    with pytest.raises(DataError, match=rf"train_star_info\.csv: planet {pid} \(line 3\) ") as err:
        read_star_info(ArielLayout(tiny_copy), "train")
    assert err.match(message)


@pytest.fixture(scope="module")
def hard_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two hard training planets at TINY size, written through the command line."""
    out = tmp_path_factory.mktemp("hard") / "hard"
    main(["--out", str(out), "--planets", "2", "--test-planets", "0", "--seed", "3", "--difficulty", "hard",
          "--airs-pairs", str(TINY.airs_pairs), "--fgs1-pairs", str(TINY.fgs1_pairs)])  # fmt: skip
    return out


def test_hard_planet_calibrates_to_finite_arrays(hard_root: Path) -> None:
    layout = ArielLayout(hard_root)
    ids = split_planet_ids(layout, "train", read_labels(layout))
    settings, chain = instrument_settings(None), CalibrationChain.from_config(None)
    adc, axis = read_adc(layout, "train"), read_axis_info(layout)
    info = read_star_info(layout, "train")  # the hard star table passes the unit checks
    assert len(info) == 2
    for pid in ids:
        arrays = calibrate_planet(layout, "train", pid, 0, chain, settings, adc, axis)
        assert arrays["airs_flux"].shape == (TINY.airs_pairs // 2, 282) and arrays["fgs1_flux"].shape == (2,)
        assert all(np.isfinite(v).all() for v in arrays.values())
        with np.load(hard_root / "truth" / "train" / f"{pid}_0.npz") as truth:
            assert str(truth["difficulty"]) == "hard"
            assert 1.2 <= float(truth["duration_h"]) <= 6.5
            assert truth["fgs1_pointing"].shape == (TINY.fgs1_pairs, 2) and len(truth["spots"]) >= 1


def test_hard_transits_have_unknown_times_and_wide_durations() -> None:
    rng = np.random.default_rng(0)
    durations, hours = [], 7.5
    for _ in range(40):
        k = float(np.sqrt(rng.uniform(1e-3, 3e-2)))
        system = fw.draw_system_hard(rng, hours, k)
        duration = system.duration_h(k)
        durations.append(duration)
        assert 1.2 <= duration <= 6.5 and system.a_rs >= 2.0 and 0.0 <= system.impact <= 0.9
        start, end = system.t0_h - duration / 2, system.t0_h + duration / 2
        assert start >= 0.5 - 1e-9 and end <= hours - 0.5 + 1e-9
        if duration <= hours - 1.5:  # room for 0.75 h of baseline: t0 anywhere in the middle half
            assert hours / 4 <= system.t0_h <= 3 * hours / 4 and start >= 0.75 - 1e-9 and end <= hours - 0.75 + 1e-9
    durations = np.array(durations)
    assert (durations > 3.5).any() and (durations < 2.0).any()  # beyond easy's 2-3 h on both sides


@pytest.fixture(scope="module")
def hard_visits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One hard visit at TINY size written whole and in slices, and the visit's effects drawn again."""
    cfg = replace(TINY, difficulty="hard")
    out = {}
    for name, chunk in (("whole", 10**12), ("sliced", SLICE)):
        rng = np.random.default_rng([21, 0])
        depths = fw.draw_spectrum(rng, fw.label_wavelengths())
        k = float(np.sqrt(depths.mean()))
        system = fw.draw_system_hard(rng, cfg.hours, k)
        hard = fw.draw_hard_planet(rng, cfg, system)
        out["visit"] = fw.draw_hard_visit(copy.deepcopy(rng), hard, system, k, cfg)
        layout = ArielLayout(tmp_path_factory.mktemp(name))
        out[name] = simulate_visit(layout, "train", 1, 0, rng, cfg, system, depths, chunk_pixels=chunk, hard=hard)
        out[f"{name}_layout"] = layout
    out["cfg"] = cfg
    return out


def test_fgs1_and_airs_see_the_same_pointing(hard_visits: dict) -> None:
    truth, visit, cfg = hard_visits["whole"], hard_visits["visit"], hard_visits["cfg"]
    for inst, key in ((FGS1, "fgs1"), (AIRS, "airs")):
        mid = _times(cfg, inst)[1]
        np.testing.assert_array_equal(truth[f"{key}_pointing"], visit.pointing(mid))
    # One process: sampled densely at FGS1 times, it predicts AIRS-CH0's pointing.
    fine = np.linspace(0.0, cfg.hours, 20_000)
    airs_mid = _times(cfg, AIRS)[1]
    for axis in range(2):
        predicted = np.interp(airs_mid, fine, visit.pointing(fine)[:, axis])
        np.testing.assert_allclose(predicted, truth["airs_pointing"][:, axis], atol=0.02 * visit.planet.jitter_px)


def test_pointing_jitter_is_time_correlated() -> None:
    for seed in range(5):
        amplitude = 0.1
        jitter = fw.draw_pointing(np.random.default_rng(seed), 7.5, amplitude)
        offsets = jitter(_times(SimConfig(), FGS1)[1])  # 37.5 s apart
        for axis in range(2):
            x = offsets[:, axis] - offsets[:, axis].mean()
            assert np.corrcoef(x[:-1], x[1:])[0, 1] > 0.5
        assert 0.2 * amplitude < offsets.std(axis=0).mean() < 3 * amplitude


def test_pink_noise_has_more_power_at_low_frequencies() -> None:
    noise = fw.pink_noise(np.random.default_rng(0), 4096, channels=8)
    assert noise.shape == (4096, 8)
    np.testing.assert_allclose(noise.std(axis=0), 1.0)
    power = (np.abs(np.fft.rfft(noise, axis=0)) ** 2).mean(axis=1)[1:]
    low, high = power[: len(power) // 20].mean(), power[len(power) // 2 :].mean()
    assert low > 20 * high
    white = np.random.default_rng(0).normal(size=(4096, 8))
    white_power = (np.abs(np.fft.rfft(white, axis=0)) ** 2).mean(axis=1)[1:]
    assert white_power[: len(power) // 20].mean() < 2 * white_power[len(power) // 2 :].mean()


def test_a_hard_visit_in_slices_equals_the_whole(hard_visits: dict) -> None:
    whole, sliced = hard_visits["whole"], hard_visits["sliced"]
    assert set(whole) == set(sliced)
    for key in whole:
        np.testing.assert_array_equal(whole[key], sliced[key], err_msg=key)
    layouts = hard_visits["whole_layout"], hard_visits["sliced_layout"]
    for inst in (FGS1, AIRS):
        files = [pq.ParquetFile(layout.signal("train", 1, inst)) for layout in layouts]
        assert files[0].metadata.num_rows == files[1].metadata.num_rows
        assert files[0].metadata.num_row_groups == 1 < files[1].metadata.num_row_groups
        for name in ("dark", "dead", "flat", "read", "linear_corr"):
            tables = [pq.read_table(layout.calibration("train", 1, inst, name)) for layout in layouts]
            assert tables[0].equals(tables[1]), (inst, name)


def test_spot_crossings_raise_and_faculae_lower_the_flux_more_in_the_blue() -> None:
    wl, depths, times = np.array([0.705, 2.0, 3.8]), np.full(3, 0.01), np.linspace(0.0, 2.0, 201)
    spot = fw.SpotCrossing(time_h=1.0, width_h=0.05, coverage=0.5, temp_k=4800.0)
    facula = fw.SpotCrossing(time_h=1.0, width_h=0.05, coverage=0.5, temp_k=6000.0)
    up = fw.spot_crossing_flux((spot,), 5800.0, times, wl, depths)
    down = fw.spot_crossing_flux((facula,), 5800.0, times, wl, depths)
    peak = 100  # t = 1.0 h
    assert (up[peak] > 0).all() and (down[peak] < 0).all()
    assert up[peak, 0] > up[peak, 1] > up[peak, 2] and abs(down[peak, 0]) > abs(down[peak, 2])
    assert up[peak, 0] < 0.01 * 0.5 and abs(up[0]).max() < 1e-6 * up[peak, 0]


def test_limb_darkening_depends_on_wavelength_and_star() -> None:
    wl = fw.label_wavelengths()
    cool = np.mean([fw.draw_limb_darkening(np.random.default_rng(s), 3500.0)(wl) for s in range(20)], axis=0)
    hot = np.mean([fw.draw_limb_darkening(np.random.default_rng(s), 7000.0)(wl) for s in range(20)], axis=0)
    assert (np.diff(cool[1:, 0]) < 0).all()  # weaker towards the red
    assert (cool[:, 0] > hot[:, 0]).all()
    u = fw.draw_limb_darkening(np.random.default_rng(0), 5000.0)(wl)
    assert (u[:, 0] > 0).all() and (u.sum(axis=1) < 1).all() and (u[:, 0] + 2 * u[:, 1] > 0).all()


def test_hard_instruments_are_drawn_per_planet() -> None:
    cfg = SimConfig()
    drawn = [fw.draw_instrument(np.random.default_rng(s), cfg) for s in range(30)]
    psf = np.array([d.psf_sigma_px[FGS1][0] / cfg.psf_sigma_px[FGS1][0] for d in drawn])
    dark = np.array([d.dark[AIRS] / cfg.dark[AIRS] for d in drawn])
    foreground = np.array([d.foreground[FGS1] / cfg.foreground[FGS1] for d in drawn])
    assert 0.7 <= psf.min() < 0.85 and 1.15 < psf.max() <= 1.3
    assert 0.5 <= dark.min() < 1.0 and 2.0 < dark.max() <= 3.0
    assert 0.3 <= foreground.min() < 0.6 and 2.5 < foreground.max() <= 5.0
    assert all((d.adc, d.integration_s, d.hours) == (cfg.adc, cfg.integration_s, cfg.hours) for d in drawn)


def test_datamodule_refuses_an_unknown_difficulty(tmp_path: Path) -> None:
    dm = ArielDataModule(str(tmp_path / "missing"), simulate={"if_missing": True, "difficulty": "medium"})
    with pytest.raises(ConfigError, match=r"data\.simulate\.difficulty='medium'(.|\n)*\['easy', 'hard'\]"):
        dm.prepare_data()
    assert not (tmp_path / "missing").exists()


def test_hard_data_config_sets_difficulty_and_its_own_folder(tmp_path: Path) -> None:
    cfg = compose_cfg(["data=ariel_hard"], tmp_path)
    assert cfg.data.simulate.difficulty == "hard" and cfg.data.simulate.if_missing
    assert Path(cfg.data.root).name == "ariel_hard"
    assert compose_cfg(["data=ariel_toy"], tmp_path).data.simulate.difficulty == "easy"
