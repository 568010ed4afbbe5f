"""Competition-scale visits are exposed and written in slices of read pairs: the files are the
same shape, calibration recovers the injected flux, and memory holds a slice, not the visit."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from src.datamodules.ariel import forward as fw
from src.datamodules.ariel.chain import CalibrationChain, calibrate_planet
from src.datamodules.ariel.forward import SimConfig
from src.datamodules.ariel.layout import AIRS, FGS1, ArielLayout
from src.datamodules.ariel.settings import instrument_settings
from src.datamodules.ariel.simulate import FULL_SCALE, main, simulate_visit
from src.datamodules.ariel.tables import read_adc, read_axis_info, read_labels, split_planet_ids
from tests.datamodules.ariel.conftest import STAT_BINS
from tests.datamodules.ariel.test_ariel_chain import binned_truth

#: ~9 AIRS or ~98 FGS1 read pairs per slice at toy scale: many slices per visit.
SLICE = 100_000


def visit(layout: ArielLayout, pid: int, seed: int, chunk_pixels: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cfg = SimConfig()
    depths = fw.draw_spectrum(rng, fw.label_wavelengths())
    system = fw.draw_system(rng, cfg.hours, float(np.sqrt(depths.mean())))
    return simulate_visit(layout, "train", pid, 0, rng, cfg, system, depths, chunk_pixels=chunk_pixels)


def test_a_visit_written_in_slices_calibrates_to_its_injected_flux(toy_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(toy_root, tmp_path / "toy"))
    layout = ArielLayout(root)
    pid = split_planet_ids(layout, "train", read_labels(layout))[0]
    truth = visit(layout, pid, 11, SLICE)
    cfg = SimConfig()
    for inst, pairs in ((AIRS, cfg.airs_pairs), (FGS1, cfg.fgs1_pairs)):
        meta = pq.ParquetFile(layout.signal("train", pid, inst, 0)).metadata
        assert meta.num_rows == 2 * pairs and meta.num_row_groups > 5
    chain, settings = CalibrationChain.from_config(None), instrument_settings(STAT_BINS)
    arrays = calibrate_planet(
        layout, "train", pid, 0, chain, settings, read_adc(layout, "train"), read_axis_info(layout)
    )
    for key in ("airs", "fgs1"):
        expected = binned_truth(truth[f"{key}_flux"], 2)
        z = ((arrays[f"{key}_flux"] - expected) / np.sqrt(arrays[f"{key}_var"])).ravel()
        assert abs(z.mean()) < 0.15 and abs(z.std() - 1.0) < 0.15, (key, z.mean(), z.std())


def test_slices_bound_the_memory_of_a_visit(toy_root: Path, tmp_path: Path) -> None:
    peaks = {}
    for name, chunk in (("whole", 10**12), ("slices", SLICE)):
        root = Path(shutil.copytree(toy_root, tmp_path / name))
        layout = ArielLayout(root)
        pid = split_planet_ids(layout, "train", read_labels(layout))[0]
        tracemalloc.start()
        visit(layout, pid, 11, chunk)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["slices"] < 0.35 * peaks["whole"], peaks


def test_full_scale_sets_the_competition_frame_counts(monkeypatch, tmp_path: Path) -> None:
    seen = {}
    monkeypatch.setattr(
        "src.datamodules.ariel.simulate.simulate_dataset", lambda out, n, s, t, cfg: seen.update(cfg=cfg)
    )
    main(["--out", str(tmp_path / "full"), "--planets", "1", "--test-planets", "0", "--scale", "full"])
    assert (seen["cfg"].airs_pairs, seen["cfg"].fgs1_pairs) == (FULL_SCALE["airs_pairs"], FULL_SCALE["fgs1_pairs"])
    assert 2 * seen["cfg"].fgs1_pairs == 135_000 and 2 * seen["cfg"].airs_pairs == 11_250
