"""Detector physics shared by the reader, the calibration steps and the simulator.

The noise model: a read holds ``n`` collected electrons (Poisson, cumulative since reset, so the
two reads of a pair share the first read's shot noise), passed through a non-linearity, plus read
noise drawn independently per read, then digitised (``raw = (s - offset) * gain``, rounded).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from src.datamodules.ariel.exposure import BoolArray, Detector, FloatArray, Linearized


def polyval_and_slope(
    coeffs: np.ndarray, x: FloatArray, block_elements: int = 1 << 20
) -> tuple[FloatArray, FloatArray]:
    """Evaluate per-pixel polynomials and their derivatives by Horner's rule, in x's dtype.

    Frames are processed in blocks of about ``block_elements`` values so that the ten passes per
    degree stay in the CPU cache instead of streaming the whole stack through memory each time.

    Args:
        coeffs: Coefficients, constant term first, shape (terms, rows, cols).
        x: Values, shape (frames, rows, cols).
        block_elements: Values per block (performance only).

    Returns:
        ``(p(x), p'(x))``, each of x's shape.
    """
    c = coeffs.astype(x.dtype, copy=False)
    value, slope = np.empty_like(x), np.empty_like(x)
    step = max(1, block_elements // max(1, x[0].size))
    for start in range(0, len(x), step):
        b = slice(start, start + step)
        _horner(c, x[b], value[b], slope[b])
    return value, slope


def raw_variance(raw: FloatArray, det: Detector) -> tuple[FloatArray, FloatArray]:
    """Variance of raw reads (ADU^2) from the detector model, estimated from the reads themselves.

    The shot noise is evaluated on the linearised charge ``n = P(s)`` and mapped back through the
    non-linearity (``var(s) = n / P'(s)^2``); read noise and the ADC's rounding (1/12 ADU^2) add
    independently per read.

    Args:
        raw: Raw reads (ADU), shape (frames, rows, cols).
        det: The instrument's calibration maps and ADC settings.

    Returns:
        ``(variance, read_variance)``: per-read variance (ADU^2) of raw's shape, and the part of
        it that is independent between reads (ADU^2), shape (rows, cols).
    """
    variance, read_var, _ = linearize(raw, det)
    return variance, read_var


def linearize(
    raw: np.ndarray, det: Detector, block_elements: int = 1 << 18
) -> tuple[FloatArray, FloatArray, Linearized]:
    """:func:`raw_variance`, keeping the electrons and linear charge it computes on the way.

    One pass of the per-pixel polynomial serves the variance model, the ``adc`` step and the
    ``linearity`` step (see :class:`~src.datamodules.ariel.exposure.Linearized`). The work runs
    in blocks of about ``block_elements`` values, each block finished (float32 conversion, ADC,
    polynomial and slope, variance) while it is in the CPU cache: every output is written once.

    Args:
        raw: Raw reads (ADU, any numeric dtype: the competition's uint16 or float32), shape
            (frames, rows, cols).
        det: The instrument's calibration maps and ADC settings.
        block_elements: Values per block (performance only; the results do not depend on it).

    Returns:
        ``(variance, read_variance, linearized)``; ``linearized.adu`` is ``raw`` as float32
        (``raw`` itself when it is float32 already).
    """
    adu = raw if raw.dtype == np.float32 else np.empty(raw.shape, dtype=np.float32)
    electrons, value, slope2, variance = (np.empty(raw.shape, dtype=np.float32) for _ in range(4))
    inv, offset, gain2 = np.float32(1.0 / det.gain), np.float32(det.offset), np.float32(det.gain) ** 2
    coeffs = det.linear_corr.astype(np.float32)
    read_var = (np.square(det.read_noise) * det.gain**2 + 1.0 / 12.0).astype(np.float32)
    step = max(1, block_elements // max(1, raw[0].size))
    for start in range(0, len(raw), step):
        b = slice(start, start + step)
        if adu is not raw:
            adu[b] = raw[b]
        np.multiply(adu[b], inv, out=electrons[b])
        electrons[b] += offset
        v, d = value[b], slope2[b]
        _horner(coeffs, electrons[b], v, d)
        np.square(d, out=d)
        var = variance[b]
        np.maximum(v, 0.0, out=var)
        var /= d
        var *= gain2
        var += read_var
    return variance, read_var, Linearized(adu=adu, electrons=electrons, charge=value, slope2=slope2)


def _horner(c: np.ndarray, x: np.ndarray, value: np.ndarray, slope: np.ndarray) -> None:
    """Per-pixel polynomial ``c`` (constant term first) and its derivative at ``x``, into the outputs."""
    value[...] = c[-1]
    slope[...] = 0.0
    for k in range(len(c) - 2, -1, -1):
        slope *= x
        slope += value
        value *= x
        value += c[k]


def sigma_clip_outliers(values: npt.NDArray[np.floating], sigma: float, max_iters: int) -> BoolArray:
    """Iteratively flag values more than ``sigma`` standard deviations from the median.

    Args:
        values: Any array (for example a dark map in electrons per second).
        sigma: Clipping threshold in standard deviations.
        max_iters: Maximum number of clipping passes.

    Returns:
        Boolean array of values's shape, True where clipped.
    """
    flat = np.asarray(values, dtype=np.float64)
    clipped = ~np.isfinite(flat)
    for _ in range(max_iters):
        kept = flat[~clipped]
        if kept.size < 2:
            break
        centre, spread = np.median(kept), kept.std()
        new = clipped | (np.abs(flat - centre) > sigma * spread)
        if (new == clipped).all():
            break
        clipped = new
    return clipped


# Lagrange weights that interpolate a cubic through samples at -2, -1, +1, +2 to 0.
_CUBIC = np.array([-1.0, 4.0, 4.0, -1.0]) / 6.0


def fill_masked(
    image: npt.NDArray[np.floating],
    mask: BoolArray,
    axes: tuple[int, ...],
    noise: npt.NDArray[np.floating] | None = None,
    min_snr: float = 20.0,
) -> np.ndarray:
    """Estimate masked pixels of a positive, smooth image from their unmasked neighbours.

    Along each axis in ``axes``, in order of preference: a cubic through the logarithms of the
    four neighbours at -2..+2 (exact for a Gaussian point-spread function); the geometric mean of
    the +-1 neighbours (exact for an exponential wing); their arithmetic mean. A neighbour enters
    a logarithm only if it exceeds ``min_snr`` times its noise. Per pixel, the best kind of
    estimate available is averaged over the axes. Used on time-averaged frames to weight the
    extraction.

    Args:
        image: 2-D image (for example electrons per frame), shape (rows, cols).
        mask: Pixels to fill (True = masked), same shape.
        axes: Axes to interpolate along (0 = rows, 1 = columns).
        noise: Standard error of each pixel, same shape (None: 1% of the image maximum).
        min_snr: Signal-to-noise a neighbour needs to enter a logarithm.

    Returns:
        A float64 copy of ``image`` with masked pixels replaced (0 where no neighbour is usable).
    """
    out = np.asarray(image, dtype=np.float64).copy()
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return out
    if noise is None:
        noise = np.full(out.shape, 0.01 / min_snr * max(float(np.max(np.where(mask, -np.inf, out))), 0.0))
    positive = (out > min_snr * np.asarray(noise)) & ~mask
    est = [_fill_along(out, mask, positive, rows, cols, axis) for axis in axes]
    values, quality = np.array([e[0] for e in est]), np.array([e[1] for e in est])
    best = quality.max(axis=0)
    pick = (quality == best) & (best > 0)
    total = np.where(pick, values, 0.0).sum(axis=0)
    out[rows, cols] = np.where(best > 0, total / np.maximum(pick.sum(axis=0), 1), 0.0)
    return out


def _fill_along(
    image: np.ndarray, mask: BoolArray, positive: BoolArray, rows: np.ndarray, cols: np.ndarray, axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """Estimates of masked pixels along one axis, and their quality (3 cubic .. 1 mean, 0 none)."""
    vals, good, pos = [], [], []
    for off in (-2, -1, 1, 2):
        r, c = (rows + off, cols) if axis == 0 else (rows, cols + off)
        idx = r if axis == 0 else c
        inside = (idx >= 0) & (idx < image.shape[axis])
        r, c = np.clip(r, 0, image.shape[0] - 1), np.clip(c, 0, image.shape[1] - 1)
        vals.append(image[r, c])
        good.append(inside & ~mask[r, c])
        pos.append(inside & positive[r, c])
    vals, good, pos = np.array(vals), np.array(good), np.array(pos)
    logs = np.log(np.where(pos, vals, 1.0))
    cubic = np.exp(_CUBIC @ logs)
    geometric = np.exp(0.5 * (logs[1] + logs[2]))
    n_near = good[1].astype(float) + good[2]
    mean = (np.where(good[1], vals[1], 0.0) + np.where(good[2], vals[2], 0.0)) / np.maximum(n_near, 1)
    quality = np.select([pos.all(axis=0), pos[1] & pos[2], n_near > 0], [3, 2, 1], 0)
    value = np.select([quality == 3, quality == 2], [cubic, geometric], mean)
    return value, quality
