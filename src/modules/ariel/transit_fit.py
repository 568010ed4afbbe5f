"""The classic transit fit: polynomial baseline minus a transit window, by linear least squares.

Each light curve is modelled as ``f(t) = c_0 + c_1 tau + ... + c_P tau^P - a w(t)`` where
``tau = (t - t0) / (half the observation)`` and ``w(t)`` is the share of each time bin inside
the transit window ``[t0 - D/2, t0 + D/2]`` (hours). The relative depth is ``a / c_0`` (the
baseline at mid-transit), its standard deviation comes from the residual scatter through the
least-squares covariance. The window (``t0``, ``D``) is found once per planet by a grid search on
the white-light curves (FGS1 and the AIRS-CH0 sum) and then shared by every spectral bin.

Nothing here is trained: it is the polynomial-fit baseline's whole model and the physics features
of the V50 network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from src.core.errors import ConfigError


@dataclass
class TransitFit:
    """What the fit returns for a batch of planets (depths as fractions of the stellar flux).

    Attributes:
        depth: Per-bin relative depth ``a / c_0``, shape (batch, 1 + bins): FGS1 then AIRS.
        depth_sigma: Its standard deviation from the residual scatter, shape (batch, 1 + bins).
        white_depth: Depth of the FGS1 and AIRS white-light curves, shape (batch, 2).
        white_sigma: Their standard deviations, shape (batch, 2).
        noise: Relative noise per time bin (residual rms / baseline), shape (batch, 1 + bins).
        fgs1_detrended: FGS1 divided by its fitted baseline, minus 1, shape (batch, time_fgs1).
        airs_detrended: AIRS per bin, same, shape (batch, time_airs, bins).
        fgs1_window: Transit window share per FGS1 time bin, shape (batch, time_fgs1).
        airs_window: Same on the AIRS time axis, shape (batch, time_airs).
        t0_h: Mid-transit time (hours), shape (batch,).
        duration_h: Transit duration (hours), shape (batch,).
    """

    depth: Tensor
    depth_sigma: Tensor
    white_depth: Tensor
    white_sigma: Tensor
    noise: Tensor
    fgs1_detrended: Tensor
    airs_detrended: Tensor
    fgs1_window: Tensor
    airs_window: Tensor
    t0_h: Tensor
    duration_h: Tensor


def window_share(times_h: Tensor, t0_h: Tensor, duration_h: Tensor) -> Tensor:
    """Share of each time bin inside the transit window (a box with partial-bin edges).

    Args:
        times_h: Bin mid-times (hours), shape (batch, time), evenly spaced.
        t0_h: Mid-transit times (hours), shape (..., batch).
        duration_h: Transit durations (hours), shape (..., batch).

    Returns:
        Shares in [0, 1], shape (..., batch, time).
    """
    step = (times_h[:, -1] - times_h[:, 0]) / max(times_h.shape[1] - 1, 1)
    lo, hi = times_h - step[:, None] / 2, times_h + step[:, None] / 2
    start, end = (t0_h - duration_h / 2)[..., None], (t0_h + duration_h / 2)[..., None]
    overlap = (torch.minimum(hi, end) - torch.maximum(lo, start)).clamp(min=0.0)
    return overlap / step.clamp(min=1e-9)[:, None]


def design_matrix(times_h: Tensor, t0_h: Tensor, window: Tensor, degree: int) -> Tensor:
    """Columns ``[1, tau, ..., tau^degree, -w]`` of the least-squares fit, shape (..., batch, time, degree + 2)."""
    span = ((times_h[:, -1] - times_h[:, 0]) / 2).clamp(min=1e-6)
    tau = (times_h - t0_h[..., None]) / span[:, None]
    powers = [tau**p for p in range(degree + 1)]
    return torch.stack([*powers, -window], dim=-1)


def least_squares(x: Tensor, y: Tensor, ridge: float) -> tuple[Tensor, Tensor, Tensor]:
    """Ridge-stabilised normal-equation solve of ``y ~ x beta`` for many right-hand sides.

    Args:
        x: Design, shape (..., time, k).
        y: Targets, shape (..., time, m).
        ridge: Relative ridge added to the diagonal of ``x^T x`` (keeps tiny series solvable).

    Returns:
        ``beta`` (..., k, m), the inverse normal matrix (..., k, k) and the residual mean square
        per column (..., m) with ``time - k`` degrees of freedom (at least 1).
    """
    xtx = x.transpose(-1, -2) @ x
    eye = torch.eye(xtx.shape[-1], dtype=x.dtype, device=x.device)
    xtx = xtx + ridge * xtx.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None] * eye
    inv = torch.linalg.inv(xtx)
    beta = inv @ (x.transpose(-1, -2) @ y)
    resid = y - x @ beta
    dof = max(x.shape[-2] - x.shape[-1], 1)
    return beta, inv, (resid**2).sum(-2) / dof


def _nearest_finite(x: Tensor, finite: Tensor) -> tuple[Tensor, Tensor]:
    """Value of the nearest finite entry at or before each position on the last axis (and whether one exists)."""
    pos = torch.arange(x.shape[-1], device=x.device).expand_as(x)
    idx = torch.where(finite, pos, torch.full_like(pos, -1)).cummax(dim=-1).values
    found = idx >= 0
    return x.gather(-1, idx.clamp(min=0)), found


def fill_nonfinite_bins(x: Tensor) -> Tensor:
    """Replace non-finite entries by the mean of the nearest finite entries on either side.

    Calibration can leave a whole spectral bin NaN (every pixel of a column masked). Filling it
    from its neighbours keeps the fits finite; its depth then comes from the neighbouring bins,
    with about their scatter. Entries with no finite value on either side become 0.

    Args:
        x: Values with bins on the last axis, e.g. relative flux (batch, time, bins).

    Returns:
        A copy of ``x`` without NaN or inf.
    """
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x
    left, has_left = _nearest_finite(x, finite)
    right, has_right = _nearest_finite(x.flip(-1), finite.flip(-1))
    right, has_right = right.flip(-1), has_right.flip(-1)
    both = (left + right) / 2
    filled = torch.where(has_left & has_right, both, torch.where(has_left, left, right))
    filled = torch.where(has_left | has_right, filled, torch.zeros_like(x))
    return torch.where(finite, x, filled)


def relative_flux(flux: Tensor) -> Tensor:
    """Each series over its median in time (NaN-aware), non-finite cells filled from neighbouring bins.

    Args:
        flux: Light curves, (batch, time) or (batch, time, bins), any unit. A 2-D series is
            filled along time instead.

    Returns:
        Relative flux (about 1 out of transit), same shape, float64.
    """
    x = flux.double()
    median = torch.nanmedian(x, dim=1, keepdim=True).values
    rel = x / torch.where(torch.isfinite(median) & (median.abs() > 1e-30), median, torch.ones_like(median))
    if rel.dim() == 2:
        return fill_nonfinite_bins(rel[..., None].transpose(1, 2)).transpose(1, 2)[..., 0]
    return fill_nonfinite_bins(rel)


def first_difference_noise(y: Tensor) -> Tensor:
    """Per-series white-noise variance from first differences, ``mean(diff^2) / 2``; y (..., time)."""
    if y.shape[-1] < 2:
        return torch.ones_like(y[..., 0])
    return (y.diff(dim=-1) ** 2).mean(-1) / 2


def expected_duration_h(period_d: Tensor, a_rs: Tensor, inc_deg: Tensor, k: float = 0.1) -> Tensor:
    """Total transit duration T14 (hours) of a circular orbit from the star table.

    ``T14 = P / pi * asin(sqrt((1 + k)^2 - b^2) / (a sin i))`` with the impact parameter
    ``b = a cos i``; ``k`` (radius ratio) is not known before the fit, 0.1 is typical. NaN where
    the values give no transit (``b >= 1 + k``) or are not finite.

    Args:
        period_d: Orbital period (days).
        a_rs: Semi-major axis in stellar radii (the competition's ``sma``).
        inc_deg: Inclination (degrees).
        k: Assumed planet-to-star radius ratio.
    """
    inc = torch.deg2rad(inc_deg.double())
    a = a_rs.double()
    b = a * torch.cos(inc)
    chord = ((1 + k) ** 2 - b**2).clamp(min=0.0).sqrt()
    arg = (chord / (a * torch.sin(inc)).clamp(min=1e-9)).clamp(max=1.0)
    t14 = period_d.double() * 24.0 / torch.pi * torch.asin(arg)
    ok = torch.isfinite(t14) & (b < 1 + k) & (a > 1.0) & (t14 > 0)
    return torch.where(ok, t14, torch.full_like(t14, float("nan")))


class TransitWindowFit(nn.Module):
    """Grid search of the transit window on the white-light curves, then per-bin linear fits.

    The durations searched come from the star table when it gives them: with ``meta_columns``
    naming the batch's ``meta`` columns (``data.meta_columns``) and ``P``, ``sma`` (stellar radii)
    and ``i`` among them, each planet's grid spans ``duration_factors`` around its expected
    duration (:func:`expected_duration_h`); planets whose table gives no transit, and every
    planet without those columns, search ``duration_range_h``.

    Args:
        poly_degree: Degree of the baseline polynomial in time (0 = flat).
        t0_range_h: Mid-transit search half-range around the observation's middle (hours).
        n_t0: Grid points of the mid-transit search.
        duration_range_h: Transit-duration search range (hours) without the star table.
        n_duration: Grid points of the duration search.
        ridge: Relative ridge of the normal equations.
        meta_columns: Names of the batch's ``meta`` columns (None: durations from
            ``duration_range_h`` only).
        duration_factors: Searched durations relative to the expected one, ``[low, high]``.
    """

    def __init__(
        self,
        poly_degree: int = 2,
        t0_range_h: float = 1.0,
        n_t0: int = 21,
        duration_range_h: Sequence[float] = (1.5, 3.5),
        n_duration: int = 9,
        ridge: float = 1e-9,
        meta_columns: Sequence[str] | None = None,
        duration_factors: Sequence[float] = (0.7, 1.3),
    ) -> None:
        super().__init__()
        lo, hi = (float(v) for v in duration_range_h)
        f_lo, f_hi = (float(v) for v in duration_factors)
        if poly_degree < 0 or n_t0 < 1 or n_duration < 1 or not 0 < lo <= hi or not 0 < f_lo <= f_hi:
            raise ConfigError(
                f"transit fit settings poly_degree={poly_degree}, n_t0={n_t0}, n_duration={n_duration}, "
                f"duration_range_h={list(duration_range_h)}, duration_factors={list(duration_factors)}",
                "use poly_degree >= 0, n_t0 >= 1, n_duration >= 1, 0 < duration_range_h[0] <= [1] (hours) "
                "and 0 < duration_factors[0] <= [1]",
            )
        self.poly_degree, self.ridge = int(poly_degree), float(ridge)
        self.t0_offsets = torch.linspace(-t0_range_h, t0_range_h, n_t0, dtype=torch.float64)
        self.durations = torch.linspace(lo, hi, n_duration, dtype=torch.float64)
        self.factors = torch.linspace(f_lo, f_hi, n_duration, dtype=torch.float64)
        names = list(meta_columns or [])
        self.orbit_columns = [names.index(c) for c in ("P", "sma", "i")] if {"P", "sma", "i"} <= set(names) else None

    def duration_grid(self, batch: dict[str, Tensor], like: Tensor) -> Tensor:
        """Durations to search per planet (hours), shape (n_duration, batch)."""
        fixed = self.durations.to(like)[:, None].expand(-1, like.shape[0])
        if self.orbit_columns is None or "meta" not in batch:
            return fixed
        meta = batch["meta"].to(like)
        p, a, i = (meta[:, j] for j in self.orbit_columns)
        expected = expected_duration_h(p, a, i).to(like)
        scaled = self.factors.to(like)[:, None] * expected[None, :]
        return torch.where(torch.isfinite(expected)[None, :], scaled, fixed)

    def _candidates(self, times_h: Tensor, durations: Tensor) -> tuple[Tensor, Tensor]:
        """Grid (t0, D) per planet, each shape (candidates, batch); ``durations`` (n_duration, batch)."""
        middle = (times_h[:, 0] + times_h[:, -1]) / 2
        t0 = middle[None, None, :] + self.t0_offsets.to(times_h)[:, None, None]
        dur = durations[None, :, :].expand(len(self.t0_offsets), -1, -1)
        t0 = t0.expand(-1, durations.shape[0], -1)
        return t0.reshape(-1, len(middle)), dur.reshape(-1, len(middle))

    def _white_chi2(self, white: Tensor, times_h: Tensor, t0: Tensor, dur: Tensor) -> Tensor:
        """Residual mean square of each candidate window over the white noise, shape (candidates, batch)."""
        x = design_matrix(times_h, t0, window_share(times_h, t0, dur), self.poly_degree)
        _, _, rms = least_squares(x, white[None, :, :, None], self.ridge)
        return rms[..., 0] / first_difference_noise(white).clamp(min=1e-30)[None]

    def search_window(
        self, fgs1: Tensor, fgs1_time: Tensor, airs_white: Tensor, airs_time: Tensor, durations: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The (t0, D) in hours, each shape (batch,), that best fit both white-light curves.

        Args:
            fgs1: FGS1 relative flux, (batch, time).
            fgs1_time: Its times (hours).
            airs_white: AIRS white-light relative flux, (batch, time).
            airs_time: Its times (hours).
            durations: Durations to search per planet, (n_duration, batch) (default: ``duration_range_h``).
        """
        if durations is None:
            durations = self.durations.to(fgs1_time)[:, None].expand(-1, fgs1_time.shape[0])
        t0, dur = self._candidates(fgs1_time, durations)
        chi2 = self._white_chi2(fgs1, fgs1_time, t0, dur) + self._white_chi2(airs_white, airs_time, t0, dur)
        best = chi2.argmin(dim=0)
        cols = torch.arange(best.shape[0], device=best.device)
        return t0[best, cols], dur[best, cols]

    def _fit(self, y: Tensor, times_h: Tensor, t0: Tensor, dur: Tensor) -> tuple[Tensor, ...]:
        """Fit (batch, time, m) series on one window; returns depth, sigma, noise (batch, m), detrended, window."""
        window = window_share(times_h, t0, dur)
        x = design_matrix(times_h, t0, window, self.poly_degree)
        beta, inv, rms = least_squares(x, y, self.ridge)
        c0, a = beta[:, 0, :], beta[:, -1, :]
        c0 = torch.where(c0.abs() > 1e-12, c0, torch.full_like(c0, 1e-12))
        depth = a / c0
        sigma = (rms * inv[:, -1, -1, None]).sqrt() / c0.abs()
        baseline = x[..., :-1] @ beta[:, :-1, :]
        detrended = y / torch.where(baseline.abs() > 1e-12, baseline, torch.full_like(baseline, 1e-12)) - 1
        return depth, sigma, rms.sqrt() / c0.abs(), detrended, window

    @torch.no_grad()
    def forward(self, batch: dict[str, Tensor]) -> TransitFit:
        """Fit a batch of planets (keys ``fgs1``, ``fgs1_time``, ``airs``, ``airs_time``; see datamodule).

        The light curves are scaled by their medians first (non-finite cells filled, see
        :func:`relative_flux`), so the fit runs on relative flux in float64 whatever the unit.
        """
        fgs1, airs = relative_flux(batch["fgs1"]), relative_flux(batch["airs"])
        tf, ta = batch["fgs1_time"].double(), batch["airs_time"].double()
        airs_white = airs.mean(-1)
        t0, dur = self.search_window(fgs1, tf, airs_white, ta, self.duration_grid(batch, tf))
        f_depth, f_sigma, f_noise, f_det, f_win = self._fit(fgs1[..., None], tf, t0, dur)
        a_depth, a_sigma, a_noise, a_det, a_win = self._fit(airs, ta, t0, dur)
        w_depth, w_sigma, _, _, _ = self._fit(airs_white[..., None], ta, t0, dur)
        dtype = batch["airs"].dtype
        return TransitFit(
            depth=torch.cat([f_depth, a_depth], dim=1).to(dtype),
            depth_sigma=torch.cat([f_sigma, a_sigma], dim=1).to(dtype),
            white_depth=torch.cat([f_depth, w_depth], dim=1).to(dtype),
            white_sigma=torch.cat([f_sigma, w_sigma], dim=1).to(dtype),
            noise=torch.cat([f_noise, a_noise], dim=1).to(dtype),
            fgs1_detrended=f_det[..., 0].to(dtype),
            airs_detrended=a_det.to(dtype),
            fgs1_window=f_win.to(dtype),
            airs_window=a_win.to(dtype),
            t0_h=t0.to(dtype),
            duration_h=dur.to(dtype),
        )
