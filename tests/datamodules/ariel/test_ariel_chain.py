"""The calibration chain on simulated planets: accuracy against the truth, ablations, chunking."""

from __future__ import annotations

from pathlib import Path

import batman
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from src.core.errors import ConfigError
from src.datamodules.ariel.chain import DEFAULT_STEPS, CalibrationChain, calibrate_planet, chain_hash
from src.datamodules.ariel.layout import AIRS, FGS1, ArielLayout
from src.datamodules.ariel.reader import RawExposure, read_raw
from src.datamodules.ariel.settings import instrument_settings
from src.datamodules.ariel.tables import read_adc, read_axis_info


def binned_truth(flux: np.ndarray, size: int) -> np.ndarray:
    keep = len(flux) // size * size
    return flux[:keep].reshape(keep // size, size, *flux.shape[1:]).mean(axis=1)


@pytest.mark.parametrize("key", ["airs", "fgs1"])
def test_calibrated_flux_matches_injected_flux_within_sigma(toy_calibrated, key):
    z = []
    for arrays, truth in toy_calibrated.values():
        expected = binned_truth(truth[f"{key}_flux"], 2)
        z.append(((arrays[f"{key}_flux"] - expected) / np.sqrt(arrays[f"{key}_var"])).ravel())
    z = np.concatenate(z)
    assert z.size >= 1000
    assert abs(z.mean()) < 0.1, f"{key}: mean z = {z.mean():.3f}"
    assert abs(z.std() - 1.0) < 0.1, f"{key}: std z = {z.std():.3f}"


def fit_depth(time_h: np.ndarray, flux: np.ndarray, var: np.ndarray, truth: dict, degree: int = 2):
    """Transit depth and its 1-sigma error from a batman model times a polynomial baseline.

    The orbit and limb darkening are the injected ones; the depth is fitted by minimising chi^2,
    with the baseline's coefficients solved linearly at each trial depth.
    """
    params = batman.TransitParams()
    params.t0, params.per = float(truth["t0_h"]) / 24, float(truth["per_d"])
    params.a, params.inc, params.ecc, params.w = float(truth["a_rs"]), float(truth["inc_deg"]), 0.0, 90.0
    params.limb_dark, params.u, params.rp = "quadratic", [float(u) for u in truth["u_fgs1"]], 0.1
    model = batman.TransitModel(params, time_h / 24)
    tau = (time_h - time_h.mean()) / np.ptp(time_h)
    basis, weight = np.vander(tau, degree + 1), 1 / np.sqrt(var)

    def chi2(depth: float) -> float:
        params.rp = np.sqrt(depth)
        design = basis * model.light_curve(params)[:, None]
        coef, *_ = np.linalg.lstsq(design * weight[:, None], flux * weight, rcond=None)
        resid = (flux - design @ coef) * weight
        return float(resid @ resid)

    best = minimize_scalar(chi2, bounds=(1e-4, 0.05), method="bounded", options={"xatol": 1e-9}).x
    h = 1e-3 * best
    curvature = (chi2(best + h) - 2 * chi2(best) + chi2(best - h)) / h**2
    return best, np.sqrt(2 / curvature)


def test_white_light_transit_fit_recovers_injected_depth(toy_calibrated):
    for pid, (arrays, truth) in toy_calibrated.items():
        f64 = {k: arrays[f"fgs1_{k}"].astype(np.float64) for k in ("time", "flux", "var")}
        depth, sigma = fit_depth(f64["time"], f64["flux"], f64["var"], truth)
        injected = float(truth["depths"][0])
        assert 0 < sigma < 0.1 * injected, f"planet {pid}: sigma {sigma:.2e} is implausible"
        assert abs(depth - injected) < 3 * sigma, f"planet {pid}: {depth:.6f} vs {injected:.6f} +- {sigma:.6f}"


@pytest.fixture(scope="module")
def tiny_raw(tiny_root: Path) -> dict[str, RawExposure]:
    layout = ArielLayout(tiny_root)
    adc, axis = read_adc(layout, "train"), read_axis_info(layout)
    pid = int(sorted((tiny_root / "train").iterdir())[0].name)
    settings = instrument_settings({FGS1: {"bin_size": 4}, AIRS: {"bin_size": 2}})
    return {name: read_raw(layout, "train", pid, 0, s, adc, axis) for name, s in settings.items()}


def run(raw: dict[str, RawExposure], steps, chunk_frames=None) -> dict[str, np.ndarray]:
    chain = CalibrationChain.from_config(list(steps))
    return {name: chain.run(r, chunk_frames).signal for name, r in raw.items()}


def largest_change(raw: dict[str, RawExposure], steps) -> float:
    """Largest change of any light-curve bin against the default chain, in sigma (inf: new shape)."""
    full = {name: CalibrationChain.from_config(None).run(r) for name, r in raw.items()}
    other = run(raw, steps)
    worst = 0.0
    for name, exp in full.items():
        if other[name].shape != exp.signal.shape:
            return np.inf
        worst = max(worst, float(np.nanmax(np.abs(other[name] - exp.signal) / np.sqrt(exp.variance))))
    return worst


@pytest.mark.parametrize("removed", ["mask", "linearity", "dark", "cds", "bin", "flat", "background"])
def test_removing_a_step_changes_the_output(tiny_raw, removed):
    # The smallest effect is the dark current's (AIRS: ~0.3 sigma), as the background step
    # removes most of it anyway.
    assert largest_change(tiny_raw, [s for s in DEFAULT_STEPS if s != removed]) > 0.1


def test_removing_adc_needs_its_dependants_removed_too(tiny_raw):
    with pytest.raises(ConfigError, match="put 'adc' before 'linearity'"):
        run(tiny_raw, [s for s in DEFAULT_STEPS if s != "adc"])
    full = run(tiny_raw, DEFAULT_STEPS)
    in_adu = run(tiny_raw, [s for s in DEFAULT_STEPS if s not in ("adc", "linearity", "dark")])
    assert not np.allclose(full[AIRS], in_adu[AIRS], rtol=1e-3)


def test_chain_without_extract_is_refused_for_light_curves(tiny_root):
    layout = ArielLayout(tiny_root)
    pid = int(sorted((tiny_root / "train").iterdir())[0].name)
    chain = CalibrationChain.from_config(list(DEFAULT_STEPS[:-1]))
    with pytest.raises(ConfigError, match="'extract' is missing"):
        calibrate_planet(
            layout, "train", pid, 0, chain, instrument_settings(None), read_adc(layout, "train"), read_axis_info(layout)
        )


def test_reordering_commuting_steps_keeps_the_output(tiny_raw):
    reordered = ["adc", "mask", "linearity", "dark", "cds", "flat", "bin", "background", "extract"]
    a, b = run(tiny_raw, DEFAULT_STEPS), run(tiny_raw, reordered)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5)


def test_chunked_run_matches_whole_run(tiny_raw):
    whole = {n: CalibrationChain.from_config(None).run(r) for n, r in tiny_raw.items()}
    chunked = {n: CalibrationChain.from_config(None).run(r, chunk_frames=16) for n, r in tiny_raw.items()}
    for name in whole:
        assert whole[name].signal.shape == chunked[name].signal.shape
        z = (whole[name].signal - chunked[name].signal) / np.sqrt(whole[name].variance)
        assert np.nanmax(np.abs(z)) < 0.05, name  # only the masked-pixel profile differs


def test_chain_hash_changes_with_any_setting():
    base = chain_hash(CalibrationChain.from_config(None), instrument_settings(None), visit=0)
    assert base == chain_hash(CalibrationChain.from_config(None), instrument_settings(None), visit=0)
    others = [
        chain_hash(
            CalibrationChain.from_config([s for s in DEFAULT_STEPS if s != "flat"]), instrument_settings(None), visit=0
        ),
        chain_hash(CalibrationChain.from_config(None), instrument_settings({FGS1: {"bin_size": 2}}), visit=0),
        chain_hash(
            CalibrationChain.from_config(
                [{"name": "mask", "hot_sigma": 4.0} if s == "mask" else s for s in DEFAULT_STEPS]
            ),
            instrument_settings(None),
            visit=0,
        ),
        chain_hash(CalibrationChain.from_config(None), instrument_settings(None), visit=1),
    ]
    assert len({base, *others}) == 5
