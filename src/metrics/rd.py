"""Rate–distortion comparison: the Bjøntegaard delta rate (BD-rate) of two RD curves.

BD-rate is the average bitrate difference, in percent, of a test curve against an anchor at
equal quality: log-rate is interpolated as a function of PSNR for both curves and integrated over
their common PSNR interval (Bjøntegaard, VCEG-M33, 2001). ``cubic`` is the original least-squares
cubic fit; ``pchip`` the piecewise cubic Hermite interpolation used by JVET's common test
conditions, which does not overshoot between points. Negative means the test needs fewer bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

from src.core.errors import ConfigError


def _integral(psnr: np.ndarray, log_rate: np.ndarray, lo: float, hi: float, method: str) -> float:
    order = np.argsort(psnr)
    x, y = psnr[order], log_rate[order]
    if method == "cubic":
        antiderivative = np.polyint(np.polyfit(x, y, 3))
        return float(np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo))
    return float(PchipInterpolator(x, y).integrate(lo, hi))


def bd_rate(
    anchor_rate: Sequence[float],
    anchor_psnr: Sequence[float],
    test_rate: Sequence[float],
    test_psnr: Sequence[float],
    method: str = "pchip",
) -> float:
    """BD-rate (%) of the test curve against the anchor.

    Args:
        anchor_rate: Rates (any unit, > 0) of the anchor points.
        anchor_psnr: PSNR (dB) of the anchor points.
        test_rate: Rates of the test points (same unit).
        test_psnr: PSNR (dB) of the test points.
        method: ``pchip`` or ``cubic``.

    Returns:
        The average rate difference in percent; NaN when the PSNR ranges do not overlap.

    Raises:
        ConfigError: Fewer than 4 points per curve, non-positive rates, or an unknown method.
    """
    if method not in {"pchip", "cubic"}:
        raise ConfigError(f"BD-rate method {method!r} is unknown", "use 'pchip' or 'cubic'")
    curves = [np.asarray(c, dtype=np.float64) for c in (anchor_rate, anchor_psnr, test_rate, test_psnr)]
    ra, pa, rt, pt = curves
    if min(len(ra), len(rt)) < 4 or len(ra) != len(pa) or len(rt) != len(pt):
        raise ConfigError(
            f"BD-rate needs at least 4 (rate, PSNR) points per curve, got {len(ra)} and {len(rt)}",
            "list at least 4 CRFs in callbacks.rd_report.crfs",
        )
    if (ra <= 0).any() or (rt <= 0).any():
        raise ConfigError("BD-rate got a non-positive rate", "rates must be positive byte counts or ratios")
    lo, hi = max(pa.min(), pt.min()), min(pa.max(), pt.max())
    if hi <= lo:
        return float("nan")
    ia = _integral(pa, np.log10(ra), lo, hi, method)
    it = _integral(pt, np.log10(rt), lo, hi, method)
    return float((10 ** ((it - ia) / (hi - lo)) - 1.0) * 100.0)
