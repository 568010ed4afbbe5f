"""What the fast reader skips or shares changes nothing: column subsets, blocks, the shared polynomial."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from src.datamodules.ariel.detector import linearize, polyval_and_slope
from src.datamodules.ariel.layout import AIRS, FGS1, FRAME_SHAPES, ArielLayout
from src.datamodules.ariel.reader import read_columns, read_frames, read_matrix, read_raw
from src.datamodules.ariel.settings import instrument_settings
from src.datamodules.ariel.steps import STEPS
from src.datamodules.ariel.tables import read_adc, read_axis_info


@pytest.fixture(scope="module")
def raws(tiny_root: Path) -> dict:
    layout = ArielLayout(tiny_root)
    pid = int(next(p.name for p in (tiny_root / "train").iterdir()))
    settings = instrument_settings(None)
    adc, axis = read_adc(layout, "train"), read_axis_info(layout)
    return {name: read_raw(layout, "train", pid, 0, s, adc, axis) for name, s in settings.items()} | {
        "layout": layout,
        "pid": pid,
    }


def test_airs_reads_only_the_kept_columns_plus_margin(raws):
    layout, pid, raw = raws["layout"], raws["pid"], raws[AIRS]
    path = layout.signal("train", pid, AIRS, 0)
    full = read_frames(path, pid, AIRS)
    lo, hi = read_columns(instrument_settings(None)[AIRS])
    assert (lo, hi) == (37, 323)
    assert raw.frames.shape == (len(full), FRAME_SHAPES[AIRS][0], hi - lo)
    np.testing.assert_array_equal(raw.frames, full[:, :, lo:hi])
    # maps cut alike, and the kept columns still point at detector columns 39..320
    assert raw.detector.dark.shape == raw.frames.shape[1:]
    assert raw.geometry.columns == slice(2, 284)
    assert raw.geometry.aperture.shape == raw.frames.shape[1:]
    assert raws[FGS1].frames.shape[1:] == FRAME_SHAPES[FGS1]  # white mode: whole frames


def test_row_group_decode_equals_a_whole_table_read(raws):
    import pyarrow.parquet as pq

    layout, pid = raws["layout"], raws["pid"]
    path = layout.signal("train", pid, FGS1, 0)
    table = pq.read_table(path)
    expected = np.column_stack([c.to_numpy() for c in table.columns])
    got = read_matrix(path, pid, "FGS1 signal", (-1, expected.shape[1]))
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    cols = [5, 1, 700]
    np.testing.assert_array_equal(read_matrix(path, pid, "FGS1 signal", (-1, expected.shape[1]), cols),
                                  expected[:, cols])  # fmt: skip


@pytest.mark.parametrize("block", [1, 37, 1 << 18])
def test_linearize_matches_adc_then_polynomial_for_any_block(raws, block):
    raw = raws[AIRS]
    det = raw.detector
    frames = raw.frames[:6]
    variance, read_var, lin = linearize(frames, det, block_elements=block)
    adu = frames.astype(np.float32)
    electrons = adu * np.float32(1.0 / det.gain) + np.float32(det.offset)
    value, slope = polyval_and_slope(det.linear_corr, electrons)
    np.testing.assert_array_equal(lin.adu, adu)
    np.testing.assert_array_equal(lin.electrons, electrons)
    np.testing.assert_array_equal(lin.charge, value)
    np.testing.assert_array_equal(lin.slope2, slope * slope)
    expected = np.maximum(value, 0) / (slope * slope) * np.float32(det.gain) ** 2 + read_var
    np.testing.assert_allclose(variance, expected, rtol=1e-6)


def test_adc_and_linearity_reuse_the_readers_results_bit_for_bit(raws):
    exp = raws[AIRS].exposure(0, 8)
    assert exp.linearized is not None and exp.linearized.adu is exp.signal
    shared = STEPS["linearity"]()(STEPS["adc"]()(exp))
    fresh = STEPS["linearity"]()(STEPS["adc"]()(dataclasses.replace(exp, linearized=None)))
    np.testing.assert_array_equal(shared.signal, fresh.signal)
    np.testing.assert_array_equal(shared.variance, fresh.variance)
    assert shared.linearized is None  # released once used


def test_a_changed_signal_is_not_mistaken_for_the_cached_one(raws):
    exp = raws[AIRS].exposure(0, 8)
    electrons = STEPS["adc"]()(exp)
    shifted = dataclasses.replace(electrons, signal=electrons.signal + np.float32(100.0))
    out = STEPS["linearity"]()(shifted)
    value, _ = polyval_and_slope(exp.detector.linear_corr, shifted.signal)
    np.testing.assert_array_equal(out.signal, value)
