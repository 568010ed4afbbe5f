"""The simulator's forward model: the calibration chain run backwards, one planet at a time.

spectrum (depth per wavelength) -> batman light curves (quadratic limb darkening) -> stellar
spectrum x point-spread function on the detector (AIRS-CH0 rows, FGS1 2-D spot) with pointing
jitter, slow multiplicative drift and a constant foreground -> electrons = flat * flux * dt +
dark * dt, Poisson (cumulative over a read pair) -> non-linearity -> read noise -> ADC -> uint16.

Two difficulties (:attr:`SimConfig.difficulty`). ``easy``: the transit lasts 2-3 h and sits
within 0.5 h of the window's middle, white pointing jitter, one set of instrument settings.
``hard`` adds, each a function below: transits of 1.2-6.5 h anywhere in the middle half of the
window (:func:`draw_system_hard`), wavelength-dependent limb darkening per star
(:func:`draw_limb_darkening`), a time-correlated pointing process shared by FGS1 and AIRS-CH0
(:func:`draw_pointing`), common-mode and per-wavelength 1/f noise (:func:`pink_noise`), slow
chromatic stellar variability (:func:`draw_variability`), spot and facula crossings
(:func:`draw_spot_crossings`, :func:`spot_crossing_flux`), a slow detector-gain drift
(:func:`draw_gain_drift`), a flat-field error the calibration maps do not know
(:func:`draw_flat_error`), and per-planet instrument settings (:func:`draw_instrument`): PSF
width, trace and spot position, dark level, foreground, read noise, non-linearity.

Units of the star table (the competition's ``star_info.csv``): Rs solar radii, Ms solar masses,
Ts K, Mp Earth masses, e, P days, sma stellar radii (a/Rs), i degrees.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import batman
import numpy as np
from scipy.signal import lfilter
from scipy.special import erf

from src.core.errors import ConfigError
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
#: Simulation difficulties: ``easy`` (the original toy simulation) and ``hard`` (module docstring).
DIFFICULTIES: tuple[str, ...] = ("easy", "hard")
#: Solar radii per astronomical unit: a/Rs = sma_AU * RSUN_PER_AU / Rs.
RSUN_PER_AU = 215.032
#: Earth masses per Jupiter mass.
MEARTH_PER_MJUP = 317.83
#: Hard transits last this long (hours), as far as the window allows.
HARD_DURATION_H = (1.2, 6.5)
#: Baseline kept before and after a hard transit (hours): wanted, and the least a long transit gets.
HARD_BASELINE_H = (0.75, 0.5)
#: Shortest window a hard simulation accepts (hours): the shortest transit plus the least baseline.
HARD_MIN_HOURS = 4.0


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
        difficulty: ``"easy"`` or ``"hard"`` (see the module docstring); the settings above are
            the means that a hard simulation randomises per planet.
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
    difficulty: str = "easy"


def check_difficulty(value: object, key: str = "difficulty") -> str:
    """``value`` if it is a known difficulty, else a ConfigError naming ``key``.

    Args:
        value: The difficulty asked for.
        key: The setting's name in the error (a config key or command-line option).

    Returns:
        The difficulty.

    Raises:
        ConfigError: ``value`` is not one of :data:`DIFFICULTIES`.
    """
    if value not in DIFFICULTIES:
        raise ConfigError(f"{key}={value!r} is not a simulation difficulty", f"use one of {list(DIFFICULTIES)}")
    return str(value)


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


def draw_spectrum(
    rng: np.random.Generator,
    wl_um: np.ndarray,
    base: tuple[float, float] = (3e-3, 2e-2),
    feature_ppm: tuple[float, float] = (10.0, 200.0),
) -> np.ndarray:
    """Transit depth (fraction) at ``wl_um``: base + Rayleigh slope + molecular bands.

    Args:
        rng: Random generator.
        wl_um: Wavelengths (microns).
        base: Range of the flat part of the depth (fraction); hard draws from (1e-3, 3e-2).
        feature_ppm: Range of the Rayleigh slope's and each molecule's amplitude (ppm).

    Returns:
        Depths, shape of ``wl_um``.
    """
    depth = np.full(wl_um.shape, rng.uniform(*base))
    depth += rng.uniform(*feature_ppm) * PPM * (wl_um / FGS1_WAVELENGTH_UM) ** -4
    for bands in MOLECULES.values():
        amp = rng.uniform(*feature_ppm) * PPM
        for centre, strength, width in bands:
            depth += amp * strength * np.exp(-0.5 * ((wl_um - centre) / width) ** 2)
    return depth


@dataclass(frozen=True)
class System:
    """A star and a planet's orbit plus the transit time.

    Attributes: Rs (solar radii), Ms (solar masses), Ts (K), Mp (Earth masses), e, P (days),
    sma (AU; the star table holds :attr:`a_rs`), i (degrees), t0_h (mid-transit, hours from the
    first read), brightness (relative stellar flux: 0.5-1 easy, 0.15-1.2 hard), drift (linear and
    quadratic drift amplitudes, wavelength slope).
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
        return self.sma * RSUN_PER_AU / self.Rs

    @property
    def impact(self) -> float:
        """Impact parameter b = a/Rs cos(i) (circular orbit)."""
        return self.a_rs * float(np.cos(np.radians(self.i)))

    def duration_h(self, k: float) -> float:
        """Total transit duration T14 (hours) of a planet of radius ratio ``k`` (circular orbit)."""
        chord = np.sqrt(max((1 + k) ** 2 - self.impact**2, 0.0))
        x = min(1.0, chord / (self.a_rs * np.sin(np.radians(self.i))))
        return float(self.P * 24 / np.pi * np.arcsin(x))

    def star_info(self) -> dict[str, float]:
        """The ``star_info.csv`` row in the competition's units (sma in stellar radii, Mp in Earth masses)."""
        row = {k: getattr(self, k) for k in ("Rs", "Ms", "Ts", "Mp", "e", "P")}
        return {**row, "sma": self.a_rs, "i": self.i}


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
    c = (ms / 365.25**2) ** (1 / 3) * RSUN_PER_AU / rs
    period = (np.pi * c * duration_d / chord) ** 3
    sma = (ms * (period / 365.25) ** 2) ** (1 / 3)
    inc = np.degrees(np.arccos(b / (c * period ** (2 / 3))))
    drift = (rng.uniform(-2e-3, 2e-3), rng.uniform(-2e-3, 2e-3), rng.uniform(-0.5, 0.5))
    return System(
        Rs=rs,
        Ms=ms,
        Ts=rng.uniform(3800, 6500),
        Mp=rng.uniform(0.05, 3.0) * MEARTH_PER_MJUP,
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


def transit_curves(
    system: System,
    times_h: np.ndarray,
    depths: np.ndarray,
    wl_um: np.ndarray,
    u: np.ndarray | None = None,
) -> np.ndarray:
    """Relative stellar flux (1 out of transit) per time and wavelength, shape (time, wavelength).

    Args:
        system: The star and orbit.
        times_h: Times (hours from the first read).
        depths: Transit depth per wavelength (fraction).
        wl_um: Wavelengths (microns).
        u: Quadratic limb-darkening coefficients per wavelength, shape (wavelength, 2); default
            :func:`limb_darkening` (the easy simulation's, the same for every star).
    """
    params = batman.TransitParams()
    params.t0, params.per, params.a, params.inc = system.t0_h / 24.0, system.P, system.a_rs, system.i
    params.ecc, params.w, params.limb_dark, params.rp, params.u = 0.0, 90.0, "quadratic", 0.1, [0.4, 0.2]
    model = batman.TransitModel(params, np.asarray(times_h, dtype=np.float64) / 24.0)
    out = np.empty((len(times_h), len(depths)))
    coefficients = limb_darkening(wl_um) if u is None else u
    for j, (depth, u) in enumerate(zip(depths, coefficients, strict=True)):
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
    gain: np.ndarray | None = None,
) -> np.ndarray:
    """Digitised read pairs from a photon rate (e-/s per pixel, flat applied), shape (2 pairs, rows, cols).

    The second read of a pair adds the charge collected between the reads to the first read's.

    Args:
        rng: Random generator (Poisson and read noise).
        rate: Photon rate per pair and pixel (e-/s), shape (pairs, rows, cols).
        det: Calibration maps of :func:`draw_detector`.
        dt: (reset to first read, first to second read) in seconds.
        adc: (gain ADU/e-, offset e-).
        gain: Relative detector gain per pair (:func:`gain_drift`), shape (pairs,); None: 1.
    """
    first, between = dt
    current = rate + det["dark"]
    n1 = rng.poisson(current * first).astype(np.float64)
    n2 = n1 + rng.poisson(current * between)
    reads = np.empty((2 * len(rate), *rate.shape[1:]))
    reads[0::2], reads[1::2] = n1, n2
    reads[:, det["dead"]] = 0.0
    measured = reads - det["alpha"] * reads**2
    if gain is not None:
        measured *= np.repeat(np.asarray(gain, dtype=np.float64), 2)[:, None, None]
    measured += rng.normal(0.0, 1.0, reads.shape) * det["read"]
    gain, offset = adc
    return np.clip(np.rint((measured - offset) * gain), 0, 65535).astype(np.uint16)


# ---- hard simulation --------------------------------------------------------------------------


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def draw_system_hard(rng: np.random.Generator, hours: float, k: float) -> System:
    """A circular orbit whose transit time and duration a model cannot know in advance.

    Star radius 0.4-2 solar radii (mass following it with scatter), period log-uniform in
    0.7-40 days, impact parameter 0-0.9; draws are repeated until the transit duration implied by
    P, a/Rs, b and ``k`` lies in 1.2-6.5 h (about a third above 3.5 h) and fits the window with
    0.5 h of baseline on each side. Mid-transit lies anywhere in the middle half of the window
    where 0.75 h of baseline remains on both sides; a transit too long for that is centred.

    Args:
        rng: Random generator.
        hours: Observation length (hours, at least :data:`HARD_MIN_HOURS`).
        k: Planet-to-star radius ratio.

    Returns:
        The system, with t0_h set.
    """
    wanted, least = HARD_BASELINE_H
    longest = min(HARD_DURATION_H[1], hours - 2 * least)
    for _ in range(1000):
        rs = _log_uniform(rng, 0.4, 2.0)
        ms = float(np.clip(rs**1.1 * np.exp(rng.normal(0.0, 0.15)), 0.15, 2.5))
        b, period = rng.uniform(0.0, 0.9), _log_uniform(rng, 0.7, 40.0)
        a_rs = (ms * (period / 365.25) ** 2) ** (1 / 3) * RSUN_PER_AU / rs
        if a_rs < 2.0:
            continue
        inc = float(np.degrees(np.arccos(b / a_rs)))
        trial = System(rs, ms, 0.0, 0.0, 0.0, period, a_rs * rs / RSUN_PER_AU, inc, 0.0, 0.0, (0.0, 0.0, 0.0))
        duration = trial.duration_h(k)
        if HARD_DURATION_H[0] <= duration <= longest:
            break
    else:  # for windows of HARD_MIN_HOURS or more, over half the draws are kept: never in practice
        raise ConfigError(f"no transit of {HARD_DURATION_H} h fits a {hours} h window", "simulate a longer window")
    lo, hi = max(hours / 4, duration / 2 + wanted), min(3 * hours / 4, hours - duration / 2 - wanted)
    t0 = rng.uniform(lo, hi) if lo < hi else hours / 2
    drift = (rng.uniform(-3e-3, 3e-3), rng.uniform(-3e-3, 3e-3), rng.uniform(-1.0, 1.0))
    return System(
        Rs=rs,
        Ms=ms,
        Ts=rng.uniform(3000, 7500),
        Mp=_log_uniform(rng, 1.0, 5000.0),
        e=0.0,
        P=period,
        sma=trial.sma,
        i=inc,
        t0_h=float(t0),
        brightness=_log_uniform(rng, 0.15, 1.2),
        drift=drift,
    )


@dataclass(frozen=True)
class LimbDarkening:
    """Quadratic limb darkening of one star: ``u_k(wl) = a_k (0.705 um / wl)^p_k``, clipped physical.

    Attributes:
        a1: Linear coefficient at the FGS1 wavelength.
        a2: Quadratic coefficient at the FGS1 wavelength.
        p1: Wavelength power of the linear coefficient.
        p2: Wavelength power of the quadratic coefficient.
    """

    a1: float
    a2: float
    p1: float
    p2: float

    def __call__(self, wl_um: np.ndarray) -> np.ndarray:
        """Coefficients (u1, u2) per wavelength, shape (n, 2): u1 > 0, u1 + u2 < 1, u1 + 2 u2 > 0."""
        ratio = FGS1_WAVELENGTH_UM / np.asarray(wl_um, dtype=np.float64)
        u1 = np.clip(self.a1 * ratio**self.p1, 0.02, 0.95)
        u2 = np.clip(self.a2 * ratio**self.p2, -0.4 * u1, 0.98 - u1)
        return np.stack([u1, u2], axis=-1)


def draw_limb_darkening(rng: np.random.Generator, ts: float) -> LimbDarkening:
    """Limb darkening of a star of temperature ``ts`` (K): stronger for cooler stars, with scatter.

    Args:
        rng: Random generator.
        ts: Stellar effective temperature (K).
    """
    a1 = 0.45 + 0.12 * (5500.0 - ts) / 2000.0 + rng.normal(0.0, 0.05)
    a2 = 0.22 + rng.normal(0.0, 0.04)
    return LimbDarkening(float(a1), float(a2), rng.uniform(0.5, 1.1), rng.uniform(0.3, 1.0))


@dataclass(frozen=True)
class PointingJitter:
    """A 2-D pointing offset (row, column pixels) as a function of time, one per visit.

    An AR(1) process on a fine grid of knots (linearly interpolated) plus sinusoidal reaction-wheel
    terms: every instrument samples the same process at its own read-pair mid-times, so FGS1 and
    AIRS-CH0 see the same pointing.

    Attributes:
        knots_h: Grid times (hours), shape (knots,).
        knots: Process values on the grid (pixels), shape (knots, 2).
        amplitudes: Sinusoid amplitudes (pixels), shape (terms, 2).
        periods_h: Sinusoid periods (hours), shape (terms,).
        phases: Sinusoid phases (radians), shape (terms, 2).
    """

    knots_h: np.ndarray
    knots: np.ndarray
    amplitudes: np.ndarray
    periods_h: np.ndarray
    phases: np.ndarray

    def __call__(self, times_h: np.ndarray) -> np.ndarray:
        """Offsets at ``times_h``, shape (time, 2)."""
        t = np.asarray(times_h, dtype=np.float64)
        walk = np.stack([np.interp(t, self.knots_h, self.knots[:, j]) for j in range(2)], axis=-1)
        arg = 2 * np.pi * t[:, None, None] / self.periods_h[None, :, None] + self.phases[None]
        return walk + (self.amplitudes[None] * np.sin(arg)).sum(axis=1)


def draw_pointing(
    rng: np.random.Generator, hours: float, amplitude_px: float, knots: int = 4096, terms: int = 3
) -> PointingJitter:
    """A time-correlated pointing process of about ``amplitude_px`` standard deviation per axis.

    The AR(1) part (correlation time 3-30 min) carries ~80 % of the variance; ``terms`` sinusoids of
    2-20 min periods (reaction wheels) the rest.

    Args:
        rng: Random generator.
        hours: Observation length (hours); the grid spans it.
        amplitude_px: Standard deviation per axis (pixels).
        knots: Grid points of the AR(1) part.
        terms: Number of sinusoidal terms.
    """
    grid = np.linspace(0.0, hours, knots)
    tau_h = rng.uniform(3.0, 30.0) / 60.0
    phi = float(np.exp(-(grid[1] - grid[0]) / tau_h))
    innovations = rng.normal(0.0, 1.0, (knots, 2))
    innovations[0] /= np.sqrt(1 - phi**2)  # start in the stationary distribution
    walk = lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], innovations, axis=0)
    shares = rng.uniform(0.3, 1.0, (terms, 2))
    shares *= np.sqrt(0.2 * 2 / (shares**2).sum(axis=0, keepdims=True))  # sum of a^2/2 = 20 % of the variance
    return PointingJitter(
        knots_h=grid,
        knots=amplitude_px * np.sqrt(0.8) * walk,
        amplitudes=amplitude_px * shares,
        periods_h=rng.uniform(2.0, 20.0, terms) / 60.0,
        phases=rng.uniform(0.0, 2 * np.pi, (terms, 2)),
    )


def pink_noise(rng: np.random.Generator, n: int, channels: int | None = None) -> np.ndarray:
    """Unit-variance 1/f (pink) noise: power spectral density proportional to 1/frequency.

    White Gaussian noise shaped in the Fourier domain (amplitude / sqrt(f), no constant term),
    each channel independent and scaled to unit standard deviation over the ``n`` samples.

    Args:
        rng: Random generator.
        n: Samples (evenly spaced in time).
        channels: Independent series (columns); None: one series of shape (n,).

    Returns:
        Noise, shape (n,) or (n, channels).
    """
    white = rng.normal(0.0, 1.0, (n, 1 if channels is None else channels))
    spectrum = np.fft.rfft(white, axis=0)
    freq = np.fft.rfftfreq(n)
    spectrum[0] = 0.0
    spectrum[1:] /= np.sqrt(freq[1:, None])
    series = np.fft.irfft(spectrum, n, axis=0)
    series /= np.maximum(series.std(axis=0, keepdims=True), 1e-300)
    return series[:, 0] if channels is None else series


def spot_contrast(wl_um: np.ndarray, ts: float, temp_k: float) -> np.ndarray:
    """Surface brightness of a region at ``temp_k`` relative to the photosphere at ``ts`` (blackbody ratio)."""
    return planck_photons(np.asarray(wl_um, dtype=np.float64), temp_k) / planck_photons(
        np.asarray(wl_um, dtype=np.float64), ts
    )


@dataclass(frozen=True)
class StellarVariability:
    """Slow, smooth, chromatic stellar variability: ``1 + A s(t) chi(wl)``.

    ``s`` is a sum of sinusoids of hours-to-days periods; ``chi`` follows rotating cool spots,
    ``(1 - c(wl)) / (1 - c(0.705 um))`` with ``c`` the spot's blackbody contrast, so the blue varies
    more than the red.

    Attributes:
        amplitude: Fractional amplitude ``A`` at the FGS1 wavelength.
        ts: Photosphere temperature (K).
        spot_temp_k: Temperature of the rotating spots (K).
        weights: Sinusoid weights, shape (terms,).
        periods_h: Sinusoid periods (hours), shape (terms,).
        phases: Sinusoid phases (radians), shape (terms,).
    """

    amplitude: float
    ts: float
    spot_temp_k: float
    weights: np.ndarray
    periods_h: np.ndarray
    phases: np.ndarray

    def __call__(self, times_h: np.ndarray, wl_um: np.ndarray) -> np.ndarray:
        """Multiplicative factor, shape (time, wavelength)."""
        t = np.asarray(times_h, dtype=np.float64)
        s = (self.weights * np.sin(2 * np.pi * t[:, None] / self.periods_h + self.phases)).sum(axis=1)
        dim = 1 - spot_contrast(wl_um, self.ts, self.spot_temp_k)
        ref = 1 - spot_contrast(np.array([FGS1_WAVELENGTH_UM]), self.ts, self.spot_temp_k)
        return 1 + self.amplitude * s[:, None] * (dim / ref)[None, :]


def draw_variability(rng: np.random.Generator, ts: float, amplitude: float, terms: int = 3) -> StellarVariability:
    """A variability realisation: periods log-uniform in 4-40 h, spots 500-1500 K cooler.

    Args:
        rng: Random generator.
        ts: Photosphere temperature (K).
        amplitude: Fractional amplitude at the FGS1 wavelength.
        terms: Number of sinusoids.
    """
    weights = rng.uniform(0.2, 1.0, terms)
    weights /= np.sqrt((weights**2).sum() / 2)  # unit variance over long times
    return StellarVariability(
        amplitude=float(amplitude),
        ts=float(ts),
        spot_temp_k=float(ts - rng.uniform(500.0, 1500.0)),
        weights=weights,
        periods_h=np.exp(rng.uniform(np.log(4.0), np.log(40.0), terms)),
        phases=rng.uniform(0.0, 2 * np.pi, terms),
    )


@dataclass(frozen=True)
class SpotCrossing:
    """The planet crossing a spot (cooler) or a facula (hotter) during transit.

    Attributes:
        time_h: Time of the crossing's peak (hours).
        width_h: Gaussian width of the crossing in time (hours).
        coverage: Share of the planet's disc over the feature at the peak (0-1).
        temp_k: Temperature of the feature (K).
    """

    time_h: float
    width_h: float
    coverage: float
    temp_k: float


def draw_spot_crossings(rng: np.random.Generator, system: System, k: float) -> tuple[SpotCrossing, ...]:
    """One to three crossings inside the transit: spots (65 %, 300-1500 K cooler) or faculae (100-400 K hotter).

    Each is a Gaussian in time of 2-8 min width (at most a tenth of the transit) whose peak lies
    at least 2.5 widths inside the transit's start and end.

    Args:
        rng: Random generator.
        system: The star and orbit (t0, duration).
        k: Planet-to-star radius ratio.
    """
    duration = system.duration_h(k)
    out = []
    for _ in range(int(rng.integers(1, 4))):
        spot = rng.random() < 0.65
        temp = system.Ts - rng.uniform(300.0, 1500.0) if spot else system.Ts + rng.uniform(100.0, 400.0)
        width = min(rng.uniform(2.0, 8.0) / 60.0, duration / 10)
        half = duration / 2 - 2.5 * width
        time = system.t0_h + rng.uniform(-half, half)
        out.append(SpotCrossing(float(time), float(width), float(rng.uniform(0.1, 0.6)), float(temp)))
    return tuple(out)


def spot_crossing_flux(
    crossings: tuple[SpotCrossing, ...], ts: float, times_h: np.ndarray, wl_um: np.ndarray, depths: np.ndarray
) -> np.ndarray:
    """Additive change of the relative flux from occulted spots and faculae, shape (time, wavelength).

    The planet hides ``coverage`` of its disc's worth of feature instead of photosphere, so the
    flux changes by ``depth(wl) coverage (1 - c(wl))`` at the peak: a rise over a spot (c < 1), a
    dip over a facula (c > 1), larger in the blue.

    Args:
        crossings: The crossings.
        ts: Photosphere temperature (K).
        times_h: Times (hours).
        wl_um: Wavelengths (microns).
        depths: Transit depth per wavelength (fraction).
    """
    t = np.asarray(times_h, dtype=np.float64)
    out = np.zeros((len(t), len(wl_um)))
    for c in crossings:
        profile = np.exp(-0.5 * ((t - c.time_h) / c.width_h) ** 2)
        amplitude = np.asarray(depths) * c.coverage * (1 - spot_contrast(wl_um, ts, c.temp_k))
        out += profile[:, None] * amplitude[None, :]
    return out


@dataclass(frozen=True)
class GainDrift:
    """Slow relative drift of a detector's gain over a visit: ``1 + c1 tau + c2 tau^2 + c3 sin(...)``.

    Attributes:
        hours: Observation length (hours); ``tau`` runs from -1 to 1 over it.
        coefficients: (c1, c2, c3).
        period_h: Period of the oscillating term (hours).
        phase: Its phase (radians).
    """

    hours: float
    coefficients: tuple[float, float, float]
    period_h: float
    phase: float

    def __call__(self, times_h: np.ndarray) -> np.ndarray:
        """Relative gain at ``times_h``, shape (time,)."""
        tau = (np.asarray(times_h, dtype=np.float64) - self.hours / 2) / (self.hours / 2)
        c1, c2, c3 = self.coefficients
        return 1 + c1 * tau + c2 * tau**2 + c3 * np.sin(2 * np.pi * np.asarray(times_h) / self.period_h + self.phase)


def draw_gain_drift(rng: np.random.Generator, hours: float, amplitude: float) -> GainDrift:
    """A gain drift of about ``amplitude`` (fraction) over the visit, oscillation period 1-6 h.

    Args:
        rng: Random generator.
        hours: Observation length (hours).
        amplitude: Scale of each coefficient (fraction).
    """
    c = rng.uniform(-1.0, 1.0, 3) * amplitude * np.array([1.0, 1.0, 0.3])
    return GainDrift(float(hours), (float(c[0]), float(c[1]), float(c[2])), rng.uniform(1.0, 6.0), rng.uniform(0, 6.3))


def draw_flat_error(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Relative pixel-response error that the calibration flat does not hold, shape ``shape``.

    With it, pointing jitter moves the image over pixels whose response the calibration gets
    slightly wrong: the flux it recovers varies with the pointing.

    Args:
        rng: Random generator.
        shape: Detector shape (rows, cols).
        sigma: Standard deviation (fraction).
    """
    return rng.normal(0.0, sigma, shape)


def draw_instrument(rng: np.random.Generator, cfg: SimConfig) -> SimConfig:
    """Per-planet instrument settings around ``cfg``'s: PSF width x0.7-1.3, dark x0.5-3,
    foreground x0.3-5 (log-uniform), read noise x0.8-1.5, non-linearity x0.5-2.

    Args:
        rng: Random generator.
        cfg: The mean settings (shared timing, ADC and frame counts are kept).

    Returns:
        The planet's settings.
    """
    psf = {}
    for inst in (AIRS, FGS1):
        scale = rng.uniform(0.7, 1.3)
        psf[inst] = (cfg.psf_sigma_px[inst][0] * scale, cfg.psf_sigma_px[inst][1] * scale)
    dark = {inst: cfg.dark[inst] * rng.uniform(0.5, 3.0) for inst in (AIRS, FGS1)}
    foreground = {inst: cfg.foreground[inst] * _log_uniform(rng, 0.3, 5.0) for inst in (AIRS, FGS1)}
    return replace(
        cfg,
        psf_sigma_px=psf,
        dark=dark,
        foreground=foreground,
        read_noise_e=cfg.read_noise_e * rng.uniform(0.8, 1.5),
        nonlinearity=cfg.nonlinearity * rng.uniform(0.5, 2.0),
    )


@dataclass(frozen=True)
class HardPlanet:
    """What a hard simulation draws once per planet: instrument settings, limb darkening, and the
    amplitudes of every time-correlated effect (their realisations are drawn per visit).

    Attributes:
        cfg: The planet's instrument settings (:func:`draw_instrument`).
        limb: Limb darkening of the star.
        jitter_px: Pointing process standard deviation per axis (pixels), 0.02-0.3.
        pink_common_ppm: Common-mode 1/f noise standard deviation (ppm), 20-300.
        pink_channel_ppm: Per-wavelength 1/f noise standard deviation (ppm), 10-150.
        variability: Stellar variability amplitude (fraction), 2e-5-1e-3.
        gain_drift: Gain drift scale (fraction), 1e-4-3e-3.
        flat_error: Unknown flat-field error (fraction), 1e-3-5e-3.
    """

    cfg: SimConfig
    limb: LimbDarkening
    jitter_px: float
    pink_common_ppm: float
    pink_channel_ppm: float
    variability: float
    gain_drift: float
    flat_error: float


def draw_hard_planet(rng: np.random.Generator, cfg: SimConfig, system: System) -> HardPlanet:
    """The per-planet draws of a hard simulation (amplitudes log-uniform in the ranges of :class:`HardPlanet`).

    Args:
        rng: Random generator.
        cfg: The mean instrument settings.
        system: The star and orbit (its temperature sets the limb darkening).
    """
    return HardPlanet(
        cfg=draw_instrument(rng, cfg),
        limb=draw_limb_darkening(rng, system.Ts),
        jitter_px=_log_uniform(rng, 0.02, 0.3),
        pink_common_ppm=_log_uniform(rng, 20.0, 300.0),
        pink_channel_ppm=_log_uniform(rng, 10.0, 150.0),
        variability=_log_uniform(rng, 2e-5, 1e-3),
        gain_drift=_log_uniform(rng, 1e-4, 3e-3),
        flat_error=_log_uniform(rng, 1e-3, 5e-3),
    )


@dataclass(frozen=True)
class InstrumentSystematics:
    """A hard visit's effects on one instrument, for every read pair (sliceable along the first axis).

    Attributes:
        pointing: Shared pointing process at the pair mid-times (pixels), shape (pairs, 2).
        factor: Multiplicative flux factor (variability x 1/f noise), shape (pairs, wavelengths).
        bump: Additive relative flux of spot and facula crossings, shape (pairs, wavelengths).
        gain: Relative detector gain, shape (pairs,).
        flat_error: Pixel-response error unknown to the calibration flat, shape (rows, cols).
        limb: Limb-darkening coefficients, shape (wavelengths, 2).
        centre: Trace row (AIRS-CH0) or spot (row, col) (FGS1), pixels.
    """

    pointing: np.ndarray
    factor: np.ndarray
    bump: np.ndarray
    gain: np.ndarray
    flat_error: np.ndarray
    limb: np.ndarray
    centre: float | tuple[float, float]


@dataclass(frozen=True)
class HardVisit:
    """One visit's realisation of the hard effects, drawn for the whole visit before any frame.

    Attributes:
        planet: The per-planet draws.
        pointing: The pointing process shared by both instruments.
        pink_grid_h: Times of the common-mode 1/f noise grid (hours).
        pink_common: Common-mode 1/f noise on that grid (fraction).
        pink_channel: Per instrument, per-wavelength 1/f noise at the pair mid-times (fraction),
            shape (pairs, wavelengths).
        variability: Stellar variability.
        spots: Spot and facula crossings.
        gain: Per instrument, the gain drift.
        flat_error: Per instrument, the pixel-response error.
        airs_row: AIRS-CH0 trace row (13.5-17.5).
        fgs1_centre: FGS1 spot centre (row, col), 15.5 +- 2 pixels.
    """

    planet: HardPlanet
    pointing: PointingJitter
    pink_grid_h: np.ndarray
    pink_common: np.ndarray
    pink_channel: dict[str, np.ndarray]
    variability: StellarVariability
    spots: tuple[SpotCrossing, ...]
    gain: dict[str, GainDrift]
    flat_error: dict[str, np.ndarray]
    airs_row: float
    fgs1_centre: tuple[float, float]

    def systematics(
        self, instrument: str, system: System, mid_h: np.ndarray, wl_um: np.ndarray, depths: np.ndarray
    ) -> InstrumentSystematics:
        """Every effect on ``instrument`` at its pair mid-times, computed once for the whole visit.

        Args:
            instrument: ``FGS1`` or ``AIRS-CH0``.
            system: The star and orbit.
            mid_h: Pair mid-times (hours), shape (pairs,).
            wl_um: The instrument's wavelengths (AIRS-CH0 columns, or the FGS1 wavelength).
            depths: Transit depth per wavelength (fraction).
        """
        common = np.interp(mid_h, self.pink_grid_h, self.pink_common)
        pink = 1 + common[:, None] + self.pink_channel[instrument]
        return InstrumentSystematics(
            pointing=self.pointing(mid_h),
            factor=self.variability(mid_h, wl_um) * pink,
            bump=spot_crossing_flux(self.spots, system.Ts, mid_h, wl_um, depths),
            gain=self.gain[instrument](mid_h),
            flat_error=self.flat_error[instrument],
            limb=self.planet.limb(wl_um),
            centre=self.airs_row if instrument == AIRS else self.fgs1_centre,
        )


def draw_hard_visit(
    rng: np.random.Generator, planet: HardPlanet, system: System, k: float, cfg: SimConfig, knots: int = 4096
) -> HardVisit:
    """Draw a visit's hard effects, all of them before any frame (so slices of a visit agree).

    Args:
        rng: Random generator.
        planet: The per-planet draws.
        system: The star and orbit.
        k: Planet-to-star radius ratio (spot crossings stay inside the transit).
        cfg: Simulator settings (hours and pair counts).
        knots: Grid points of the pointing and common-mode noise processes.
    """
    pointing = draw_pointing(rng, cfg.hours, planet.jitter_px, knots=knots)
    grid = np.linspace(0.0, cfg.hours, knots)
    common = planet.pink_common_ppm * PPM * pink_noise(rng, knots)
    channels = {FGS1: (cfg.fgs1_pairs, 1), AIRS: (cfg.airs_pairs, FRAME_SHAPES[AIRS][1])}
    pink_channel = {
        inst: planet.pink_channel_ppm * PPM * pink_noise(rng, n, channels=c) for inst, (n, c) in channels.items()
    }
    variability = draw_variability(rng, system.Ts, planet.variability)
    spots = draw_spot_crossings(rng, system, k)
    gain = {inst: draw_gain_drift(rng, cfg.hours, planet.gain_drift) for inst in (FGS1, AIRS)}
    flat_error = {inst: draw_flat_error(rng, FRAME_SHAPES[inst], planet.flat_error) for inst in (FGS1, AIRS)}
    airs_row = rng.uniform(13.5, 17.5)
    fgs1_centre = (15.5 + rng.uniform(-2.0, 2.0), 15.5 + rng.uniform(-2.0, 2.0))
    return HardVisit(
        planet, pointing, grid, common, pink_channel, variability, spots, gain, flat_error, airs_row, fgs1_centre
    )
