"""Tiny simulated Ariel datasets, made once per test session in a temporary folder."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from src.datamodules.ariel.chain import CalibrationChain, calibrate_planet
from src.datamodules.ariel.forward import SimConfig
from src.datamodules.ariel.layout import ArielLayout
from src.datamodules.ariel.settings import instrument_settings
from src.datamodules.ariel.simulate import simulate_dataset
from src.datamodules.ariel.tables import read_adc, read_axis_info, read_labels, split_planet_ids

#: Few reads: enough for every code path, fast to write and read.
TINY = replace(SimConfig(), airs_pairs=8, fgs1_pairs=48)
#: Bin sizes of the statistical tests: many bins, so z-score moments are measured to ~3%.
STAT_BINS = {"FGS1": {"bin_size": 2}, "AIRS-CH0": {"bin_size": 2}}


@pytest.fixture(scope="session")
def tiny_cfg() -> SimConfig:
    """Simulator settings of the tiny datasets."""
    return TINY


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 training + 1 test planet at the default toy scale (60 AIRS, 720 FGS1 read pairs)."""
    return simulate_dataset(tmp_path_factory.mktemp("ariel") / "toy", planets=3, seed=7, test_planets=1)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 training + 1 test planet with 8 AIRS and 48 FGS1 read pairs (read-only: copy to modify)."""
    return simulate_dataset(tmp_path_factory.mktemp("ariel") / "tiny", planets=2, seed=3, test_planets=1, cfg=TINY)


@pytest.fixture
def tiny_copy(tiny_root: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may damage."""
    return Path(shutil.copytree(tiny_root, tmp_path / "tiny"))


@pytest.fixture(scope="session")
def toy_calibrated(toy_root: Path) -> dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Calibrated arrays (default chain, bins of 2) and truth arrays of each toy training planet."""
    layout = ArielLayout(toy_root)
    ids = split_planet_ids(layout, "train", read_labels(layout))
    adc, axis = read_adc(layout, "train"), read_axis_info(layout)
    settings, chain = instrument_settings(STAT_BINS), CalibrationChain.from_config(None)
    out = {}
    for pid in ids:
        arrays = calibrate_planet(layout, "train", pid, 0, chain, settings, adc, axis)
        with np.load(toy_root / "truth" / "train" / f"{pid}_0.npz") as truth:
            out[pid] = (arrays, dict(truth))
    return out
