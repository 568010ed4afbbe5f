"""One unit test per calibration step (and the detector helpers), on small hand-made exposures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from src.core.errors import ConfigError
from src.datamodules.ariel.chain import CalibrationChain, build_step
from src.datamodules.ariel.detector import fill_masked, polyval_and_slope, raw_variance, sigma_clip_outliers
from src.datamodules.ariel.exposure import Detector, Exposure, Geometry
from src.datamodules.ariel.forward import pixel_profile
from src.datamodules.ariel.steps import STEPS

ROWS, COLS = 8, 5


def make_exposure(signal: np.ndarray, **overrides) -> Exposure:
    """An exposure of (frames, 8, 5) images: background rows 0-1 and 6-7, aperture rows 2-5."""
    frames = signal.shape[0]
    aperture = np.zeros((ROWS, COLS), bool)
    aperture[2:6] = True
    background = np.zeros((ROWS, COLS), bool)
    background[[0, 1, 6, 7]] = True
    linear = np.zeros((6, ROWS, COLS))
    linear[1] = 1.0
    det = Detector(
        dark=np.full((ROWS, COLS), 2.0, np.float32),
        dead=np.zeros((ROWS, COLS), bool),
        flat=np.ones((ROWS, COLS), np.float32),
        linear_corr=linear,
        read_noise=np.full((ROWS, COLS), 3.0, np.float32),
        gain=0.5,
        offset=-100.0,
    )
    exp = Exposure(
        instrument="AIRS-CH0",
        planet_id=1,
        signal=signal.astype(np.float32),
        variance=np.full(signal.shape, 4.0, np.float32),
        read_variance=np.full((ROWS, COLS), 1.0, np.float32),
        mask=np.zeros((ROWS, COLS), bool),
        times=np.arange(frames, dtype=np.float64),
        dt=np.tile([0.1, 4.6], frames // 2 + 1)[:frames],
        detector=det,
        geometry=Geometry(aperture, background, "spectrum", slice(None), False, 2),
        units="electrons",
    )
    return dataclasses.replace(exp, **overrides)


def test_registry_holds_the_default_chain():
    assert set(STEPS) >= {"adc", "mask", "linearity", "dark", "cds", "bin", "flat", "background", "extract"}


def test_adc_converts_adu_to_electrons_and_scales_variance():
    exp = make_exposure(np.full((2, ROWS, COLS), 1000.0), units="adu")
    out = STEPS["adc"]()(exp)
    assert out.units == "electrons"
    np.testing.assert_allclose(out.signal, 1000.0 / 0.5 - 100.0)  # 1900 e-
    np.testing.assert_allclose(out.variance, 4.0 / 0.25)  # 16 e-^2
    np.testing.assert_allclose(out.read_variance, 4.0)
    assert exp.signal[0, 0, 0] == 1000.0, "a step must not modify its input"


def test_mask_flags_dead_and_hot_pixels_only():
    exp = make_exposure(np.zeros((2, ROWS, COLS)))
    dark = np.random.default_rng(0).normal(2.0, 0.1, (ROWS, COLS)).astype(np.float32)
    dark[3, 2] = 50.0  # hot: hundreds of sigma above the others
    dead = np.zeros((ROWS, COLS), bool)
    dead[5, 4] = True
    exp = dataclasses.replace(exp, detector=dataclasses.replace(exp.detector, dark=dark, dead=dead))
    out = STEPS["mask"](hot_sigma=5.0)(exp)
    assert set(map(tuple, np.argwhere(out.mask))) == {(3, 2), (5, 4)}


def test_linearity_applies_the_polynomial_and_its_slope_to_the_variance():
    a = 1e-5
    linear = np.zeros((6, ROWS, COLS))
    linear[1], linear[2] = 1.0, a  # n = s + a s^2
    exp = make_exposure(np.full((2, ROWS, COLS), 1000.0))
    exp = dataclasses.replace(exp, detector=dataclasses.replace(exp.detector, linear_corr=linear))
    out = STEPS["linearity"]()(exp)
    np.testing.assert_allclose(out.signal, 1000.0 + a * 1e6, rtol=1e-6)  # 1010 e-
    np.testing.assert_allclose(out.variance, 4.0 * (1 + 2 * a * 1000.0) ** 2, rtol=1e-6)


def test_dark_subtracts_current_times_exposure():
    exp = make_exposure(np.full((2, ROWS, COLS), 100.0))
    out = STEPS["dark"]()(exp)
    np.testing.assert_allclose(out.signal[0], 100.0 - 2.0 * 0.1, rtol=1e-6)
    np.testing.assert_allclose(out.signal[1], 100.0 - 2.0 * 4.6, rtol=1e-6)
    np.testing.assert_array_equal(out.variance, exp.variance)


def test_cds_differences_read_pairs_and_undoes_shared_shot_noise():
    signal = np.stack([np.full((ROWS, COLS), 100.0), np.full((ROWS, COLS), 600.0)] * 2)
    read_var = 9.0
    variance = signal + read_var  # shot noise of the cumulative charge + read noise
    exp = make_exposure(
        signal, variance=variance.astype(np.float32), read_variance=np.full((ROWS, COLS), read_var, np.float32)
    )
    out = STEPS["cds"]()(exp)
    assert out.cds and out.n_frames == 2
    np.testing.assert_allclose(out.signal, 500.0)
    np.testing.assert_allclose(out.variance, 500.0 + 2 * read_var)  # not 700 + 2 * 9
    np.testing.assert_allclose(out.times, [0.5, 2.5])
    np.testing.assert_allclose(out.dt, 4.5)


def test_bin_averages_frames_and_divides_variance_by_n_squared():
    signal = np.arange(1, 6, dtype=float)[:, None, None] * np.ones((5, ROWS, COLS))
    out = STEPS["bin"](size=2)(make_exposure(signal))
    assert out.n_frames == 2  # the fifth frame does not fill a bin
    np.testing.assert_allclose(out.signal[:, 0, 0], [1.5, 3.5])
    np.testing.assert_allclose(out.variance, (4.0 + 4.0) / 4)
    np.testing.assert_allclose(out.times, [0.5, 2.5])


def test_bin_takes_the_instrument_bin_size_by_default():
    out = STEPS["bin"]()(make_exposure(np.ones((6, ROWS, COLS))))
    assert out.n_frames == 3  # geometry.bin_size = 2


def test_flat_divides_and_masks_non_positive_pixels():
    flat = np.full((ROWS, COLS), 2.0, np.float32)
    flat[4, 1] = 0.0
    exp = make_exposure(np.full((2, ROWS, COLS), 10.0))
    exp = dataclasses.replace(exp, detector=dataclasses.replace(exp.detector, flat=flat))
    out = STEPS["flat"]()(exp)
    np.testing.assert_allclose(out.signal[0, 0, 0], 5.0)
    np.testing.assert_allclose(out.variance[0, 0, 0], 1.0)
    assert out.mask[4, 1] and out.mask.sum() == 1


def test_background_subtracts_off_source_mean_per_column():
    signal = np.full((2, ROWS, COLS), 10.0) + np.arange(COLS)  # background 10 + column index
    signal[:, 2:6] += 100.0
    exp = make_exposure(signal)
    out = STEPS["background"]()(exp)
    np.testing.assert_allclose(out.signal[:, 2:6], 100.0, atol=1e-5)
    np.testing.assert_allclose(out.signal[:, [0, 1, 6, 7]], 0.0, atol=1e-5)
    np.testing.assert_allclose(out.shared_variance, 4.0 / 4)  # mean of 4 rows of variance 4


def test_extract_sums_the_aperture_and_restores_masked_pixels():
    profile = pixel_profile(np.array([3.5]), np.array([0.8] * COLS), ROWS)[0]  # (rows, cols)
    flux = np.array([1000.0, 2000.0])[:, None] * np.linspace(1, 2, COLS)[None, :]  # (frames, cols)
    signal = flux[:, None, :] * profile[None]
    mask = np.zeros((ROWS, COLS), bool)
    mask[3, 2] = True  # the trace's peak row in the middle column
    signal[:, 3, 2] = -999.0  # whatever a masked pixel holds must not matter
    exp = make_exposure(signal, mask=mask, shared_variance=np.full((2, 1, COLS), 0.5, np.float32))
    out = STEPS["extract"]()(exp)
    inside = profile[2:6].sum(axis=0)  # the aperture's share of each column's flux
    assert out.extracted and out.signal.shape == (2, COLS)
    np.testing.assert_allclose(out.signal, flux * inside, rtol=2e-3)
    share = profile[2:6, 2].sum() - profile[3, 2]
    expected_var = 3 * 4.0 / (share / inside[2]) ** 2 + (3 / (share / inside[2])) ** 2 * 0.5
    np.testing.assert_allclose(out.variance[:, 2], expected_var, rtol=2e-3)
    np.testing.assert_allclose(out.variance[:, 0], 4 * 4.0 + 16 * 0.5, rtol=1e-5)


def test_extract_white_mode_gives_one_light_curve():
    exp = make_exposure(np.ones((3, ROWS, COLS)))
    exp = dataclasses.replace(exp, geometry=dataclasses.replace(exp.geometry, mode="white"))
    out = STEPS["extract"]()(exp)
    assert out.signal.shape == (3, 1)
    np.testing.assert_allclose(out.signal, 20.0)  # 4 rows x 5 columns of 1


def test_raw_variance_is_shot_plus_read_plus_quantisation():
    exp = make_exposure(np.zeros((1, ROWS, COLS)))
    det = dataclasses.replace(exp.detector, gain=1.0, offset=0.0)
    raw = np.full((1, ROWS, COLS), 400.0, np.float32)
    var, read_var = raw_variance(raw, det)
    np.testing.assert_allclose(var, 400.0 + 9.0 + 1 / 12, rtol=1e-6)
    np.testing.assert_allclose(read_var, 9.0 + 1 / 12, rtol=1e-6)


def test_polyval_and_slope_matches_numpy():
    rng = np.random.default_rng(1)
    coeffs = rng.normal(size=(6, 2, 3))
    x = rng.normal(size=(4, 2, 3))
    value, slope = polyval_and_slope(coeffs, x)
    for i, j in np.ndindex(2, 3):
        poly = np.polynomial.Polynomial(coeffs[:, i, j])
        np.testing.assert_allclose(value[:, i, j], poly(x[:, i, j]), rtol=1e-10)
        np.testing.assert_allclose(slope[:, i, j], poly.deriv()(x[:, i, j]), rtol=1e-10)


def test_sigma_clip_flags_outliers():
    values = np.random.default_rng(2).normal(0, 1, 1000)
    values[[5, 50]] = [40.0, -30.0]
    assert set(np.flatnonzero(sigma_clip_outliers(values, 5.0, 5))) == {5, 50}


def test_fill_masked_recovers_a_gaussian_spot_to_1e_4():
    py = pixel_profile(np.array([15.3]), 2.0, 32)[0]
    px = pixel_profile(np.array([15.7]), 2.0, 32)[0]
    image = 1e6 * np.outer(py, px)
    mask = np.zeros_like(image, bool)
    mask[[15, 13, 19], [15, 17, 15]] = True
    filled = fill_masked(image, mask, (0, 1), noise=np.ones_like(image))
    np.testing.assert_allclose(filled[mask], image[mask], rtol=1e-4)


def test_build_step_rejects_unknown_names_and_parameters():
    with pytest.raises(ConfigError, match=r"steps\[3\].*unknown calibration step 'flatt'"):
        build_step("flatt", 3)
    with pytest.raises(ConfigError, match="no parameter"):
        build_step({"name": "mask", "sigma": 3}, 1)
    assert build_step({"name": "mask", "hot_sigma": 3.0}, 1).hot_sigma == 3.0


def test_impossible_order_names_the_step_and_the_fix():
    chain = CalibrationChain.from_config(["cds", "linearity"])
    exp = make_exposure(np.ones((2, ROWS, COLS)))
    with pytest.raises(ConfigError, match="put 'linearity' before 'cds'"):
        chain(exp)
    with pytest.raises(ConfigError, match="put 'adc' before 'dark'"):
        CalibrationChain.from_config(["dark"])(make_exposure(np.ones((2, ROWS, COLS)), units="adu"))
