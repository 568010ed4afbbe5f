"""Calibration steps: small classes with one interface, ``Exposure -> Exposure``.

Each step transforms the signal and propagates its variance. Steps are registered by name, so a
chain is a list of names (or ``{name: ..., <param>: ...}`` dicts) in ``data.calibration.steps``
and any step can be dropped or moved for an ablation. A step checks the stage it needs
(``Exposure.require``) and says where to move it when the order is impossible.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from src.core.errors import ConfigError, DataError
from src.datamodules.ariel.detector import fill_masked, polyval_and_slope, sigma_clip_outliers
from src.datamodules.ariel.exposure import Exposure

STEPS: dict[str, type[Step]] = {}


def register(name: str) -> Callable[[type[Step]], type[Step]]:
    """Class decorator adding a step class to ``STEPS`` under ``name``."""

    def deco(cls: type[Step]) -> type[Step]:
        cls.name = name
        STEPS[name] = cls
        return cls

    return deco


class Step(abc.ABC):
    """One calibration step. Subclasses are frozen dataclasses whose fields are its parameters."""

    name: ClassVar[str]

    @abc.abstractmethod
    def __call__(self, exp: Exposure) -> Exposure:
        """Return the calibrated exposure; never modify ``exp``'s arrays."""

    def config(self) -> dict[str, Any]:
        """The step as a config dict (``name`` plus its parameters)."""
        return {"name": self.name, **dataclasses.asdict(self)}  # type: ignore[call-overload]


@register("adc")
@dataclasses.dataclass(frozen=True)
class AdcStep(Step):
    """Convert ADU to electrons: ``e = raw / gain + offset``; variance scales by ``1 / gain^2``."""

    def __call__(self, exp: Exposure) -> Exposure:
        exp.require(self.name, units="adu", image=True)
        inv = np.float32(1.0 / exp.detector.gain)
        lin = exp.linearized
        if lin is not None and lin.adu is exp.signal:
            signal = lin.electrons  # the reader computed exactly this with the variance
        else:
            signal = exp.signal * inv
            signal += np.float32(exp.detector.offset)
        scale = inv * inv
        return dataclasses.replace(
            exp,
            signal=signal,
            variance=exp.variance * scale,
            read_variance=exp.read_variance * scale,
            units="electrons",
        )


@register("mask")
@dataclasses.dataclass(frozen=True)
class MaskStep(Step):
    """Mask dead pixels and hot pixels (dark current ``hot_sigma`` deviations from the median).

    Args:
        hot_sigma: Sigma-clipping threshold on the dark map (standard deviations).
        max_iters: Maximum sigma-clipping passes.
    """

    hot_sigma: float = 5.0
    max_iters: int = 5

    def __call__(self, exp: Exposure) -> Exposure:
        exp.require(self.name, image=True)
        hot = sigma_clip_outliers(exp.detector.dark, self.hot_sigma, self.max_iters)
        return dataclasses.replace(exp, mask=exp.mask | exp.detector.dead | hot)


@register("linearity")
@dataclasses.dataclass(frozen=True)
class LinearityStep(Step):
    """Map measured charge to linear charge with the per-pixel ``linear_corr`` polynomial.

    The variance scales by the polynomial's slope squared (first-order propagation). The read
    variance is left as is: the slope differs from 1 by under a few percent.
    """

    def __call__(self, exp: Exposure) -> Exposure:
        exp.require(self.name, units="electrons", image=True, raw=True)
        lin = exp.linearized
        if lin is not None and lin.electrons is exp.signal:
            # Computed by the reader with the raw variance: the polynomial runs once per frame.
            return dataclasses.replace(exp, signal=lin.charge, variance=lin.slope2 * exp.variance, linearized=None)
        signal, slope = polyval_and_slope(exp.detector.linear_corr, exp.signal)
        slope *= slope
        slope *= exp.variance
        return dataclasses.replace(exp, signal=signal, variance=slope, linearized=None)


@register("dark")
@dataclasses.dataclass(frozen=True)
class DarkStep(Step):
    """Subtract dark current times each frame's exposure (``dark * dt``, electrons).

    The dark map is taken as exact; the dark charge's shot noise is already in the variance.
    """

    def __call__(self, exp: Exposure) -> Exposure:
        exp.require(self.name, units="electrons", image=True)
        dark = exp.detector.dark.astype(np.float32)
        signal = exp.signal - dark * exp.dt.astype(np.float32)[:, None, None]
        return dataclasses.replace(exp, signal=signal)


@register("cds")
@dataclasses.dataclass(frozen=True)
class CdsStep(Step):
    """Correlated double sampling: second read minus first read of each pair.

    The reads share the first read's shot noise, so ``var = var_2 - var_1 + 2 * read_var``
    (clipped at the read-noise floor) rather than ``var_1 + var_2``.
    """

    def __call__(self, exp: Exposure) -> Exposure:
        exp.require(self.name, image=True, raw=True)
        if exp.n_frames % 2:
            raise DataError(
                f"planet {exp.planet_id}: {exp.instrument} has {exp.n_frames} reads; cds needs read pairs",
                "restore the signal file (reads come in pairs after each reset)",
            )
        first, second = exp.signal[0::2], exp.signal[1::2]
        shared = exp.shared_variance
        variance = exp.variance[1::2] - exp.variance[0::2]
        np.maximum(variance, 0.0, out=variance)
        variance += 2.0 * exp.read_variance
        return dataclasses.replace(
            exp,
            signal=second - first,
            variance=variance,
            times=0.5 * (exp.times[0::2] + exp.times[1::2]),
            dt=exp.dt[1::2] - exp.dt[0::2],
            cds=True,
            shared_variance=None if shared is None else shared[0::2] + shared[1::2],
            linearized=None,
        )


@register("bin")
@dataclasses.dataclass(frozen=True)
class BinStep(Step):
    """Average consecutive frames in time; variance of a mean of ``n`` is ``sum(var) / n^2``.

    Args:
        size: Frames per bin; None uses the instrument's ``bin_size`` setting. Trailing frames
            that do not fill a bin are dropped.
    """

    size: int | None = None

    def __call__(self, exp: Exposure) -> Exposure:
        n = int(self.size or exp.geometry.bin_size)
        if n == 1:
            return exp
        keep = exp.n_frames // n * n
        if keep == 0:
            raise ConfigError(
                f"bin size {n} exceeds the {exp.n_frames} frames of {exp.instrument} (planet {exp.planet_id})",
                f"lower data.calibration.instruments.{exp.instrument}.bin_size",
            )

        def mean(a: np.ndarray, scale: float) -> np.ndarray:
            return a[:keep].reshape(keep // n, n, *a.shape[1:]).sum(axis=1, dtype=a.dtype) * a.dtype.type(scale)

        shared = exp.shared_variance
        return dataclasses.replace(
            exp,
            signal=mean(exp.signal, 1.0 / n),
            variance=mean(exp.variance, 1.0 / n**2),
            times=mean(exp.times, 1.0 / n),
            dt=mean(exp.dt, 1.0 / n),
            shared_variance=None if shared is None else mean(shared, 1.0 / n**2),
        )


@register("flat")
@dataclasses.dataclass(frozen=True)
class FlatStep(Step):
    """Divide by the flat field; pixels with a non-positive or non-finite flat are masked."""

    def __call__(self, exp: Exposure) -> Exposure:
        exp.require(self.name, image=True)
        flat = exp.detector.flat
        bad = ~np.isfinite(flat) | (flat <= 0)
        inv = np.where(bad, 1.0, 1.0 / np.where(bad, 1.0, flat)).astype(np.float32)
        inv2 = inv * inv
        shared = exp.shared_variance
        return dataclasses.replace(
            exp,
            signal=exp.signal * inv,
            variance=exp.variance * inv2,
            read_variance=exp.read_variance * inv2,
            mask=exp.mask | bad,
            # A background subtracted before the flat is no longer common to the pixels; its mean
            # scaling is the first-order answer.
            shared_variance=None if shared is None else shared * np.float32(inv2.mean()),
        )


def _region_pixels(exp: Exposure, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ``region`` that are not masked, as a float weight map, plus its pixel counts."""
    weight = (region & ~exp.mask).astype(np.float32)
    counts = weight.sum(axis=0) if exp.geometry.mode == "spectrum" else np.atleast_1d(weight.sum())
    return weight, counts


@register("background")
@dataclasses.dataclass(frozen=True)
class BackgroundStep(Step):
    """Subtract the mean of the unmasked background pixels, per column (spectrum) or per frame (white).

    The estimate's variance is common to every pixel of a column, so it is recorded in
    ``shared_variance`` and added coherently by the extraction.
    """

    def __call__(self, exp: Exposure) -> Exposure:
        exp.require(self.name, image=True)
        weight, counts = _region_pixels(exp, exp.geometry.background)
        rows = np.flatnonzero(weight.any(axis=1))
        if exp.geometry.mode == "spectrum":
            w = weight[rows]
            inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0).astype(np.float32)
            level = np.einsum("trc,rc->tc", exp.signal[:, rows], w) * inv
            level_var = np.einsum("trc,rc->tc", exp.variance[:, rows], w) * (inv * inv)
            level, level_var = level[:, None, :], level_var[:, None, :]
        else:
            idx = np.flatnonzero(weight)
            n = exp.n_frames
            level = exp.signal.reshape(n, -1)[:, idx].mean(axis=1)[:, None, None]
            level_var = exp.variance.reshape(n, -1)[:, idx].sum(axis=1)[:, None, None] / np.float32(idx.size**2)
        shared = level_var if exp.shared_variance is None else exp.shared_variance + level_var
        return dataclasses.replace(exp, signal=exp.signal - level, shared_variance=shared.astype(np.float32))


@register("extract")
@dataclasses.dataclass(frozen=True)
class ExtractStep(Step):
    """Sum the aperture into light curves, restoring masked pixels' share from the mean profile.

    The time-averaged frame, with masked pixels interpolated from their neighbours (along the
    spectral axis for a spectrum, along both axes for a spot), gives each aperture pixel's share
    ``P`` of the flux; then ``flux = sum(unmasked x) / sum(unmasked P)`` and
    ``var = sum(unmasked var) / sum(unmasked P)^2 + (n_unmasked / sum(unmasked P))^2 * shared``.
    Output: (frames, kept columns) in ``spectrum`` mode, (frames, 1) in ``white`` mode.

    Args:
        min_share: Smallest unmasked profile share a light curve may rest on; bins below it get a
            NaN flux and infinite variance (so a model can drop them) instead of a wild estimate.
        min_snr: Signal-to-noise a neighbour of a masked pixel needs to enter the logarithmic
            interpolation of the profile (see ``detector.fill_masked``).
    """

    min_share: float = 0.5
    min_snr: float = 20.0

    def __call__(self, exp: Exposure) -> Exposure:
        exp.require(self.name, image=True)
        geo = exp.geometry
        spectrum = geo.mode == "spectrum"
        cols = geo.columns if spectrum else slice(None)
        rows = np.flatnonzero(geo.aperture[:, cols].any(axis=1))
        r = slice(rows[0], rows[-1] + 1)
        signal, variance = exp.signal[:, r, cols], exp.variance[:, r, cols]
        mask, aperture = exp.mask[r, cols], geo.aperture[r, cols]
        noise = np.sqrt(variance.sum(axis=0)) / len(variance)
        profile = self._profile(signal.mean(axis=0), noise, mask, aperture, spectrum, self.min_snr)
        weight = (aperture & ~mask).astype(np.float32)
        if spectrum:
            share = (profile * weight).sum(axis=0)
            flux = np.einsum("trc,rc->tc", signal, weight)
            var = np.einsum("trc,rc->tc", variance, weight)
            n_good = weight.sum(axis=0)
        else:
            idx = np.flatnonzero(weight)
            share = np.atleast_1d((profile.ravel()[idx]).sum())
            flux = signal.reshape(len(signal), -1)[:, idx].sum(axis=1, keepdims=True)
            var = variance.reshape(len(variance), -1)[:, idx].sum(axis=1, keepdims=True)
            n_good = np.atleast_1d(np.float32(idx.size))
        flux, var = self._scale(exp, flux, var, share, n_good, spectrum)
        if spectrum and geo.reverse:
            flux, var = flux[:, ::-1], var[:, ::-1]
        return dataclasses.replace(
            exp,
            signal=np.ascontiguousarray(flux),
            variance=np.ascontiguousarray(var),
            extracted=True,
            shared_variance=None,
        )

    @staticmethod
    def _profile(
        mean_frame: np.ndarray,
        noise: np.ndarray,
        mask: np.ndarray,
        aperture: np.ndarray,
        spectrum: bool,
        min_snr: float,
    ) -> np.ndarray:
        """Each aperture pixel's share of its light curve's flux, masked pixels interpolated."""
        filled = fill_masked(mean_frame, mask, axes=(1,) if spectrum else (0, 1), noise=noise, min_snr=min_snr)
        filled = np.where(aperture, np.maximum(filled, 0.0), 0.0)
        total = filled.sum(axis=0) if spectrum else filled.sum()
        return (filled / np.where(total > 0, total, 1.0)).astype(np.float32)

    def _scale(
        self, exp: Exposure, flux: np.ndarray, var: np.ndarray, share: np.ndarray, n_good: np.ndarray, spectrum: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        ok = share >= self.min_share
        inv = np.where(ok, 1.0 / np.where(ok, share, 1.0), np.nan).astype(np.float32)
        flux = flux * inv
        var = var * (inv * inv)
        if exp.shared_variance is not None:
            shared = exp.shared_variance[:, 0, exp.geometry.columns] if spectrum else exp.shared_variance[:, 0, :1]
            var += shared * (n_good * inv) ** 2
        var[:, ~ok] = np.inf
        return flux, var
