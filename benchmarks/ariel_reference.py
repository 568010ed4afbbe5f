"""A plain reference implementation of the Ariel calibration chain, as a starter notebook writes it.

Same chain and the same numbers as ``src/datamodules/ariel`` (adc, mask, linearity, dark, cds,
bin, flat, background, extract, with variance), written the straightforward way: ``pd.read_parquet``
for every file, float64 everywhere, ``np.ma`` masked arrays, ``np.tile`` for per-pixel maps, a
``np.poly1d`` per pixel for the non-linearity (as in the competition's calibration notebook), Python
loops over time bins and spectral columns. It exists to be timed against the vectorised chain and
to check that both agree; nothing in ``src/`` imports it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from src.datamodules.ariel.detector import fill_masked, sigma_clip_outliers

SHAPES = {"FGS1": (32, 32), "AIRS-CH0": (32, 356)}


def load_planet(root: Path, split: str, planet_id: int, instrument: str, visit: int = 0) -> dict:
    """Read one instrument's signal and calibration maps with pandas."""
    rows, cols = SHAPES[instrument]
    folder = root / split / str(planet_id)
    df = pd.read_parquet(folder / f"{instrument}_signal_{visit}.parquet")
    signal = df.values.astype(np.float64).reshape((df.shape[0], rows, cols))
    cal = folder / f"{instrument}_calibration_{visit}"
    maps = {name: pd.read_parquet(cal / f"{name}.parquet").values for name in ("dark", "dead", "flat", "read")}
    linear_corr = pd.read_parquet(cal / "linear_corr.parquet").values.astype(np.float64).reshape(6, rows, cols)
    adc = pd.read_csv(root / "adc_info.csv")
    axis = pd.read_parquet(root / "axis_info.parquet")
    return {
        "signal": signal,
        "dark": maps["dark"].astype(np.float64),
        "dead": maps["dead"].astype(bool),
        "flat": maps["flat"].astype(np.float64),
        "read": maps["read"].astype(np.float64),
        "linear_corr": linear_corr,
        "gain": adc[f"{instrument}_adc_gain"].values[0],
        "offset": adc[f"{instrument}_adc_offset"].values[0],
        "times": axis[f"{instrument}-axis0-h"].dropna().values,
        "integration": axis["AIRS-CH0-integration_time"].dropna().values,
    }


def poly_per_pixel(linear_corr: np.ndarray, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value and derivative of each pixel's polynomial, one ``np.poly1d`` per pixel."""
    coeffs = np.flip(linear_corr, axis=0)
    value, slope = np.zeros_like(signal), np.zeros_like(signal)
    for x, y in itertools.product(range(signal.shape[1]), range(signal.shape[2])):
        poli = np.poly1d(coeffs[:, x, y])
        value[:, x, y] = poli(signal[:, x, y])
        slope[:, x, y] = np.polyder(poli)(signal[:, x, y])
    return value, slope


def poly_vectorised(linear_corr: np.ndarray, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same as ``poly_per_pixel`` with numpy's polynomial routines over all pixels at once.

    Not what the starter notebook does; the benchmark swaps it in to show how much of the
    reference's time the per-pixel loop alone accounts for.
    """
    value = np.polynomial.polynomial.polyval(signal, linear_corr[:, None], tensor=False)
    deriv = np.polynomial.polynomial.polyder(linear_corr, axis=0)
    return value, np.polynomial.polynomial.polyval(signal, deriv[:, None], tensor=False)


#: The polynomial routine the reference uses (the benchmark may swap in ``poly_vectorised``).
POLY = {"routine": poly_per_pixel}


def noise_model(d: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-read variance of the raw signal (ADU^2) and its read-noise part."""
    measured = d["signal"] / d["gain"] + d["offset"]
    charge, slope = POLY["routine"](d["linear_corr"], measured)
    charge = np.clip(charge, 0, None)
    read_var = d["read"] ** 2 * d["gain"] ** 2 + 1 / 12
    variance = charge / slope**2 * d["gain"] ** 2 + np.tile(read_var, (d["signal"].shape[0], 1, 1))
    return variance, read_var


def calibrate(d: dict, instrument: str, bin_size: int, integration: tuple | None) -> tuple[np.ndarray, np.ndarray]:
    """The whole chain for one instrument; returns (flux, variance) per time bin."""
    variance, read_var = noise_model(d)
    # adc
    signal = d["signal"] / d["gain"] + d["offset"]
    variance = variance / d["gain"] ** 2
    read_var = read_var / d["gain"] ** 2
    # mask
    hot = sigma_clip_outliers(d["dark"], 5.0, 5)
    mask = d["dead"] | hot
    signal = np.ma.masked_where(np.tile(mask, (signal.shape[0], 1, 1)), signal)
    # linearity
    linear, slope = POLY["routine"](d["linear_corr"], signal.data)
    signal = np.ma.masked_array(linear, mask=signal.mask)
    variance = variance * slope**2
    # dark
    dt = d["integration"].copy() if integration is None else np.tile(np.array(integration), signal.shape[0] // 2)
    dt[1::2] += dt[0::2]
    dark = np.tile(d["dark"], (signal.shape[0], 1, 1))
    signal = signal - dark * dt[:, np.newaxis, np.newaxis]
    # cds
    cds = signal[1::2] - signal[::2]
    cds_var = np.clip(variance[1::2] - variance[::2], 0, None) + 2 * read_var
    # bin
    n_bins = cds.shape[0] // bin_size
    binned = np.ma.zeros((n_bins, *cds.shape[1:]))
    binned_var = np.zeros((n_bins, *cds.shape[1:]))
    for i in range(n_bins):
        binned[i] = np.ma.mean(cds[i * bin_size : (i + 1) * bin_size], axis=0)
        binned_var[i] = np.sum(cds_var[i * bin_size : (i + 1) * bin_size], axis=0) / bin_size**2
    binned = np.ma.masked_array(binned.data, mask=np.tile(mask, (n_bins, 1, 1)))
    # flat
    flat = np.tile(d["flat"], (n_bins, 1, 1))
    binned = binned / flat
    binned_var = binned_var / flat**2
    if instrument == "AIRS-CH0":
        return _spectrum(binned, binned_var, mask)
    return _white(binned, binned_var, mask)


def _spectrum(frames: np.ma.MaskedArray, var: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background rows 0-5 and 26-31, aperture rows 8-23, columns 39..320 reversed."""
    bg_rows = list(range(0, 6)) + list(range(26, 32))
    background = np.ma.mean(frames[:, bg_rows, :], axis=1)
    n_bg = (~mask[bg_rows]).sum(axis=0)
    bg_var = np.sum(np.where(mask[bg_rows][None], 0, var[:, bg_rows, :]), axis=1) / n_bg**2
    frames = frames - background[:, np.newaxis, :]
    mean_frame = np.ma.mean(frames, axis=0).data
    noise = np.sqrt(var.sum(axis=0)) / len(var)
    filled = fill_masked(mean_frame, mask, (1,), noise)
    flux = np.zeros((frames.shape[0], 282))
    flux_var = np.zeros((frames.shape[0], 282))
    for k, col in enumerate(range(320, 38, -1)):
        profile = np.clip(filled[8:24, col], 0, None)
        profile = profile / profile.sum()
        good = ~mask[8:24, col]
        share = profile[good].sum()
        for t in range(frames.shape[0]):
            flux[t, k] = frames.data[t, 8:24, col][good].sum() / share
            flux_var[t, k] = var[t, 8:24, col][good].sum() / share**2 + (good.sum() / share) ** 2 * bg_var[t, col]
    return flux, flux_var


def _white(frames: np.ma.MaskedArray, var: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background beyond 12 px of the centre, aperture within 10 px."""
    rr, cc = np.mgrid[:32, :32]
    dist = np.hypot(rr - 15.5, cc - 15.5)
    bg, ap = (dist > 12) & ~mask, (dist <= 10)
    background = np.array([frames.data[t][bg].mean() for t in range(frames.shape[0])])
    bg_var = np.array([var[t][bg].sum() for t in range(frames.shape[0])]) / bg.sum() ** 2
    frames = frames - background[:, np.newaxis, np.newaxis]
    mean_frame = np.ma.mean(frames, axis=0).data
    noise = np.sqrt(var.sum(axis=0)) / len(var)
    filled = fill_masked(mean_frame, mask, (0, 1), noise)
    profile = np.where(ap, np.clip(filled, 0, None), 0)
    profile = profile / profile.sum()
    good = ap & ~mask
    share = profile[good].sum()
    flux = np.array([frames.data[t][good].sum() for t in range(frames.shape[0])]) / share
    flux_var = np.array([var[t][good].sum() for t in range(frames.shape[0])]) / share**2
    return flux, flux_var + (good.sum() / share) ** 2 * bg_var


def calibrate_planet(root: Path, split: str, planet_id: int, bins: dict[str, int]) -> dict[str, np.ndarray]:
    """Both instruments of one planet (default toy geometry), as ``{fgs1,airs}_{flux,var}``."""
    out = {}
    for instrument, key, integration in (("FGS1", "fgs1", (0.1, 0.1)), ("AIRS-CH0", "airs", None)):
        d = load_planet(root, split, planet_id, instrument)
        flux, var = calibrate(d, instrument, bins[instrument], integration)
        out[f"{key}_flux"], out[f"{key}_var"] = flux, var
    return out
