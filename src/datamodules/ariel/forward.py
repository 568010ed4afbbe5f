"""The simulator's forward model: the calibration chain run backwards, one planet at a time.

spectrum (depth per wavelength) -> batman light curves (quadratic limb darkening) -> stellar
spectrum x point-spread function on the detector (AIRS-CH0 rows, FGS1 2-D spot) with pointing
jitter, slow multiplicative drift and a constant foreground -> electrons = flat * flux * dt +
dark * dt, Poisson (cumulative over a read pair) -> non-linearity -> read noise -> ADC -> uint16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import batman
import numpy as np
from scipy.special import erf

from src.datamodules.ariel.layout import AIRS, FGS1, FRAME_SHAPES, LINEAR_CORR_TERMS

#: Molecular bands: centre (microns), relative strength, Gaussian width (microns).
MOLECULES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "H2O": ((1.4, 1.0, 0.06), (1.9, 1.0, 0.08), (2.7, 1.2, 0.12)),
    "CH4": ((2.3, 0.8, 0.06), (3.3, 1.0, 0.10)),
    "CO": ((2.35, 1.0, 0.05),),
    "CO2": ((2.0, 0.6, 0.05), (2.7, 1.0, 0.08)),
}
FGS1_WAVELENGTH_UM = 0.705
AIRS_BAND_UM = (1.95, 3.90)
AIRS_COLUMNS = (39, 321)
PPM = 1e-6
# Catalan numbers: the series inverse of s = n - a n^2 is n = sum_k C_k a^k s^(k+1).
_CATALAN = (1.0, 1.0, 2.0, 5.0, 14.0, 42.0)


@dataclass(frozen=True)
class SimConfig:
    """Settings of the toy simulator (defaults give the toy scale of ``data/ariel_toy``).

    Attributes:
        airs_pairs: AIRS-CH0 read pairs per visit.
        fgs1_pairs: FGS1 read pairs per visit.
        hours: Observation length (hours).
        visits: Visits per planet.
        edition: File naming (``"2025"`` or ``"2024"``).
        jitter_px: Pointing jitter, standard deviation per read pair (pixels).
        dead_fraction: Fraction of dead pixels.
        hot_fraction: Fraction of hot pixels.
        read_noise_e: Read noise per read (electrons).
        airs_rate: AIRS-CH0 stellar rate per column at the band's peak for the brightest star (e-/s).
        fgs1_rate: FGS1 stellar rate of the whole spot for the brightest star (e-/s).
        foreground: Constant foreground per pixel (e-/s), per instrument.
        dark: Mean dark current (e-/s), per instrument.
        nonlinearity: Mean coefficient ``a`` of the measured charge ``s = n - a n^2`` (1/e-).
        adc: (gain ADU/e-, offset e-) per instrument; electrons = raw / gain + offset.
        integration_s: (reset to first read, first to second read) in seconds, per instrument.
        psf_sigma_px: Point-spread-function width (pixels): AIRS rows at the band's blue and red
            ends, FGS1 spot.
    """

    airs_pairs: int = 60
    fgs1_pairs: int = 720
    hours: float = 7.5
    visits: int = 1
    edition: str = "2025"
    jitter_px: float = 0.01
    dead_fraction: float = 0.002
    hot_fraction: float = 0.002
    read_noise_e: float = 12.0
    airs_rate: float = 4.0e4
    fgs1_rate: float = 4.0e6
    foreground: dict[str, float] = field(default_factory=lambda: {AIRS: 20.0, FGS1: 100.0})
    dark: dict[str, float] = field(default_factory=lambda: {AIRS: 5.0, FGS1: 2.0})
    nonlinearity: float = 1.0e-7
    adc: dict[str, tuple[float, float]] = field(default_factory=lambda: {AIRS: (0.45, -1000.0), FGS1: (0.43, -1000.0)})
    integration_s: dict[str, tuple[float, float]] = field(default_factory=lambda: {AIRS: (0.1, 4.5), FGS1: (0.1, 0.1)})
    psf_sigma_px: dict[str, tuple[float, float]] = field(default_factory=lambda: {AIRS: (1.0, 1.4), FGS1: (2.0, 2.0)})


def airs_wavelengths() -> np.ndarray:
    """Wavelength of each AIRS-CH0 column (microns), falling with column: 39 -> 3.90, 320 -> 1.95."""
    lo, hi = AIRS_BAND_UM
    c0, c1 = AIRS_COLUMNS[0], AIRS_COLUMNS[1] - 1
    cols = np.arange(FRAME_SHAPES[AIRS][1])
    return hi - (cols - c0) * (hi - lo) / (c1 - c0)


def label_wavelengths() -> np.ndarray:
    """The 283 label wavelengths (microns): FGS1, then AIRS columns 320 down to 39."""
    wl = airs_wavelengths()[AIRS_COLUMNS[0] : AIRS_COLUMNS[1]][::-1]
    return np.concatenate([[FGS1_WAVELENGTH_UM], wl])


def draw_spectrum(rng: np.random.Generator, wl_um: np.ndarray) -> np.ndarray:
    """Transit depth (fraction) at ``wl_um``: base + Rayleigh slope + molecular bands (10-200 ppm)."""
    depth = np.full(wl_um.shape, rng.uniform(3e-3, 2e-2))
    depth += rng.uniform(10, 200) * PPM * (wl_um / FGS1_WAVELENGTH_UM) ** -4
    for bands in MOLECULES.values():
        amp = rng.uniform(10, 200) * PPM
        for centre, strength, width in bands:
            depth += amp * strength * np.exp(-0.5 * ((wl_um - centre) / width) ** 2)
    return depth


@dataclass(frozen=True)
class System:
    """A star and a planet's orbit, in competition units (star_info) plus the transit time.

    Attributes: Rs (solar radii), Ms (solar masses), Ts (K), Mp (Jupiter masses), e, P (days),
    sma (AU), i (degrees), t0_h (mid-transit, hours from the first read), brightness (0.5-1,
    relative stellar flux), drift (linear and quadratic drift amplitudes, wavelength slope).
    """

    Rs: float
    Ms: float
    Ts: float
    Mp: float
    e: float
    P: float
    sma: float
    i: float
    t0_h: float
    brightness: float
    drift: tuple[float, float, float]

    @property
    def a_rs(self) -> float:
        """Semi-major axis in stellar radii."""
        return self.sma * 215.032 / self.Rs

    def star_info(self) -> dict[str, float]:
        """The ``star_info.csv`` columns."""
        return {k: getattr(self, k) for k in ("Rs", "Ms", "Ts", "Mp", "e", "P", "sma", "i")}


def draw_system(rng: np.random.Generator, hours: float, k: float) -> System:
    """A circular orbit whose transit lasts 2-3 h, centred within 0.5 h of the window's middle.

    Args:
        rng: Random generator.
        hours: Observation length (hours).
        k: Planet-to-star radius ratio (sets the transit chord).
    """
    rs, ms = rng.uniform(0.6, 1.3), rng.uniform(0.6, 1.3)
    duration_d, b = rng.uniform(2.0, 3.0) / 24.0, rng.uniform(0.0, 0.6)
    chord = np.sqrt((1 + k) ** 2 - b**2)
    # Small-angle T14 = P chord / (pi a/Rs), with a/Rs = c P^(2/3) (Kepler, P in days).
    c = (ms / 365.25**2) ** (1 / 3) * 215.032 / rs
    period = (np.pi * c * duration_d / chord) ** 3
    sma = (ms * (period / 365.25) ** 2) ** (1 / 3)
    inc = np.degrees(np.arccos(b / (c * period ** (2 / 3))))
    drift = (rng.uniform(-2e-3, 2e-3), rng.uniform(-2e-3, 2e-3), rng.uniform(-0.5, 0.5))
    return System(
        Rs=rs,
        Ms=ms,
        Ts=rng.uniform(3800, 6500),
        Mp=rng.uniform(0.05, 3.0),
        e=0.0,
        P=period,
        sma=sma,
        i=inc,
        t0_h=hours / 2 + rng.uniform(-0.5, 0.5),
        brightness=rng.uniform(0.5, 1.0),
        drift=drift,
    )


def limb_darkening(wl_um: np.ndarray) -> np.ndarray:
    """Quadratic limb-darkening coefficients (u1, u2) per wavelength, shape (n, 2)."""
    scale = (FGS1_WAVELENGTH_UM / np.asarray(wl_um)) ** 0.7
    return np.stack([0.4 * scale, 0.2 * scale], axis=-1)


def transit_curves(system: System, times_h: np.ndarray, depths: np.ndarray, wl_um: np.ndarray) -> np.ndarray:
    """Relative stellar flux (1 out of transit) per time and wavelength, shape (time, wavelength)."""
    params = batman.TransitParams()
    params.t0, params.per, params.a, params.inc = system.t0_h / 24.0, system.P, system.a_rs, system.i
    params.ecc, params.w, params.limb_dark, params.rp, params.u = 0.0, 90.0, "quadratic", 0.1, [0.4, 0.2]
    model = batman.TransitModel(params, np.asarray(times_h, dtype=np.float64) / 24.0)
    out = np.empty((len(times_h), len(depths)))
    for j, (depth, u) in enumerate(zip(depths, limb_darkening(wl_um), strict=True)):
        params.rp, params.u = float(np.sqrt(depth)), [float(u[0]), float(u[1])]
        out[:, j] = model.light_curve(params)
    return out


def drift_factor(system: System, times_h: np.ndarray, hours: float, wl_um: np.ndarray) -> np.ndarray:
    """Slow multiplicative drift 1 + f(t) g(wavelength), shape (time, wavelength)."""
    tau = (np.asarray(times_h) - hours / 2) / (hours / 2)
    d1, d2, slope = system.drift
    f = d1 * tau + d2 * tau**2
    g = 1 + slope * (np.asarray(wl_um) - FGS1_WAVELENGTH_UM) / 3.0
    return 1 + f[:, None] * g[None, :]


def pixel_profile(centres: np.ndarray, sigma: np.ndarray | float, n: int) -> np.ndarray:
    """Share of a Gaussian falling in each of ``n`` pixels (pixel k spans k-0.5..k+0.5).

    Args:
        centres: Gaussian centres (pixels), shape (time,).
        sigma: Widths (pixels), scalar or shape (cols,) (then the output has a columns axis).
        n: Number of pixels.

    Returns:
        Shares, shape (time, n) or (time, n, cols).
    """
    edges = np.arange(n + 1) - 0.5
    sig = np.asarray(sigma, dtype=np.float64)
    z = (edges[None, :, None] - centres[:, None, None]) / (np.sqrt(2) * sig.reshape(1, 1, -1))
    cdf = 0.5 * erf(z)
    shares = np.diff(cdf, axis=1)
    return shares[..., 0] if sig.ndim == 0 else shares


def planck_photons(wl_um: np.ndarray, temp_k: float) -> np.ndarray:
    """Photon spectral radiance of a blackbody, up to a constant (per micron)."""
    x = 14387.77 / (np.asarray(wl_um) * temp_k)
    return wl_um**-4 / np.expm1(x)


def airs_star_rate(system: System, cfg: SimConfig, lc: np.ndarray, jitter: np.ndarray, centre: float) -> np.ndarray:
    """Noiseless AIRS-CH0 stellar rate per pixel (e-/s, before the flat), shape (pairs, 32, 356).

    Args:
        system: The star and orbit.
        cfg: Simulator settings.
        lc: Transit x drift per pair and column, shape (pairs, 356).
        jitter: Pointing offsets (rows, cols) per pair (pixels), shape (pairs, 2).
        centre: Spectral trace row (pixels).
    """
    wl = airs_wavelengths()
    throughput = 0.6 + 0.4 * np.exp(-(((wl - 2.9) / 1.2) ** 2))
    sed = planck_photons(wl, system.Ts) * throughput
    sed *= cfg.airs_rate * system.brightness / sed[AIRS_COLUMNS[0] : AIRS_COLUMNS[1]].max()
    cols = np.arange(len(wl), dtype=np.float64)
    shifted = np.stack([np.interp(cols - dx, cols, sed) for dx in jitter[:, 1]])
    lo, hi = cfg.psf_sigma_px[AIRS]
    sigma = lo + (hi - lo) * (AIRS_BAND_UM[1] - wl) / (AIRS_BAND_UM[1] - AIRS_BAND_UM[0])
    rows = pixel_profile(centre + jitter[:, 0], np.clip(sigma, 0.5 * lo, None), FRAME_SHAPES[AIRS][0])
    return rows * (shifted * lc)[:, None, :]


def fgs1_star_rate(
    system: System, cfg: SimConfig, lc: np.ndarray, jitter: np.ndarray, centre: tuple[float, float]
) -> np.ndarray:
    """Noiseless FGS1 stellar rate per pixel (e-/s, before the flat), shape (pairs, 32, 32).

    Args:
        system: The star and orbit.
        cfg: Simulator settings.
        lc: Transit x drift per pair, shape (pairs,).
        jitter: Pointing offsets (rows, cols) per pair (pixels), shape (pairs, 2).
        centre: Spot centre (row, col) in pixels.
    """
    n_rows, n_cols = FRAME_SHAPES[FGS1]
    sigma = cfg.psf_sigma_px[FGS1][0]
    py = pixel_profile(centre[0] + jitter[:, 0], sigma, n_rows)
    px = pixel_profile(centre[1] + jitter[:, 1], sigma, n_cols)
    total = cfg.fgs1_rate * system.brightness * lc
    return total[:, None, None] * py[:, :, None] * px[:, None, :]


def draw_detector(rng: np.random.Generator, cfg: SimConfig, instrument: str) -> dict[str, np.ndarray]:
    """Calibration maps of one instrument: dark (e-/s), dead, flat, read (e-), alpha, linear_corr."""
    shape = FRAME_SHAPES[instrument]
    mean_dark = cfg.dark[instrument]
    dark = np.clip(rng.normal(mean_dark, 0.1 * mean_dark, shape), 0.0, None)
    hot = rng.random(shape) < cfg.hot_fraction
    dark[hot] = mean_dark * rng.uniform(50, 500, hot.sum())
    alpha = cfg.nonlinearity * rng.uniform(0.9, 1.1, shape)
    powers = np.arange(LINEAR_CORR_TERMS - 1)
    terms = np.asarray(_CATALAN[: LINEAR_CORR_TERMS - 1])[:, None, None] * alpha[None] ** powers[:, None, None]
    linear_corr = np.concatenate([np.zeros((1, *shape)), terms])
    return {
        "dark": dark,
        "dead": rng.random(shape) < cfg.dead_fraction,
        "flat": rng.normal(1.0, 0.02, shape),
        "read": rng.normal(cfg.read_noise_e, 0.05 * cfg.read_noise_e, shape),
        "alpha": alpha,
        "linear_corr": linear_corr,
    }


def expose(
    rng: np.random.Generator,
    rate: np.ndarray,
    det: dict[str, np.ndarray],
    dt: tuple[float, float],
    adc: tuple[float, float],
) -> np.ndarray:
    """Digitised read pairs from a photon rate (e-/s per pixel, flat applied), shape (2 pairs, rows, cols).

    The second read of a pair adds the charge collected between the reads to the first read's.
    """
    first, between = dt
    current = rate + det["dark"]
    n1 = rng.poisson(current * first).astype(np.float64)
    n2 = n1 + rng.poisson(current * between)
    reads = np.empty((2 * len(rate), *rate.shape[1:]))
    reads[0::2], reads[1::2] = n1, n2
    reads[:, det["dead"]] = 0.0
    measured = reads - det["alpha"] * reads**2
    measured += rng.normal(0.0, 1.0, reads.shape) * det["read"]
    gain, offset = adc
    return np.clip(np.rint((measured - offset) * gain), 0, 65535).astype(np.uint16)
