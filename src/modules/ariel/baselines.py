"""Baselines of the Ariel task, run through the same LightningModule, data, folds and metrics.

* :class:`ResidualMLPNet`: a residual MLP from the normalised light curves to the 283 depths,
  mu only; its sigma is one constant, fitted on validation by the ``TemperatureScaling``
  callback in global mode (``configs/experiment/ariel_mlp.yaml``).
* :class:`PolyFitNet`: the classic competition fit, per bin: polynomial baseline times a transit
  window (:mod:`src.modules.ariel.transit_fit`), sigma from the residual scatter; optionally
  a per-bin affine correction of the depths fitted in closed form on the training split. No
  trainable weights.
* :class:`PriorOnlyNet`: the V50's own closed-form transit-fit prior alone (``mu`` = the
  :class:`~src.modules.ariel.parts.PerBinLinearPrior` on the white-light depths that the V50 head
  predicts around), sigma the prior's training residual rms. No trainable weights: it shows what
  the V50's learned parts add to its prior (``configs/experiment/ariel_prior.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.modules.ariel.parts import N_TARGETS, ArielOutput, PerBinLinearPrior, Standardizer, stack_batches
from src.modules.ariel.transit_fit import TransitFit, TransitWindowFit, relative_flux
from src.modules.ariel.v50 import PRIOR_FEATURES, check_meta, prior_features


def relative_curves(batch: dict[str, Tensor], airs_groups: int, n_time: int) -> Tensor:
    """Light curves over their medians minus one, AIRS averaged into groups of adjacent bins and
    every curve resampled to ``n_time`` steps, flattened: (batch, (1 + airs_groups) * n_time)."""
    fgs1 = (relative_flux(batch["fgs1"]) - 1).float()
    airs = (relative_flux(batch["airs"]) - 1).float()
    airs = F.adaptive_avg_pool1d(airs, airs_groups)  # (batch, time, groups): pool over bins
    curves = torch.cat([fgs1[..., None], airs], dim=-1).transpose(1, 2)  # (batch, 1 + groups, time)
    return F.adaptive_avg_pool1d(curves, n_time).flatten(1)


class ResidualBlock(nn.Module):
    """``x + W2 dropout(gelu(W1 norm(x)))``."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.ff(self.norm(x))


class ResidualMLPNet(nn.Module):
    """Residual MLP: normalised light curves + star metadata -> 283 depths (mu only).

    ``mu = label_mean + label_std * out`` (per-bin training mean, global training standard
    deviation). Sigma is the constant ``label_std`` until a calibration callback rescales it.

    Args:
        n_meta: Star metadata columns (``len(data.meta_columns)``).
        airs_groups: AIRS bins are averaged into this many groups of adjacent bins.
        n_time: Time steps each curve is resampled to.
        dim: Width of the residual stream.
        hidden: Hidden width of each block.
        n_blocks: Residual blocks.
        dropout: Dropout inside the blocks.
        feature_clip: Clip of the standardised inputs.
    """

    def __init__(
        self,
        n_meta: int = 8,
        airs_groups: int = 47,
        n_time: int = 30,
        dim: int = 128,
        hidden: int = 256,
        n_blocks: int = 3,
        dropout: float = 0.1,
        feature_clip: float = 5.0,
    ) -> None:
        super().__init__()
        self.n_meta, self.airs_groups, self.n_time, self.feature_clip = n_meta, airs_groups, n_time, feature_clip
        n_in = (1 + airs_groups) * n_time
        self.curve_scaler = Standardizer(n_in)
        self.meta_scaler = Standardizer(n_meta)
        self.inp = nn.Linear(n_in + n_meta, dim)
        self.blocks = nn.Sequential(*(ResidualBlock(dim, hidden, dropout) for _ in range(n_blocks)))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, N_TARGETS)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("label_mean", torch.zeros(N_TARGETS))
        self.register_buffer("label_std", torch.tensor(1e-3))

    @torch.no_grad()
    def fit_training_data(self, batches: Iterable[dict[str, Tensor]]) -> dict[str, Any]:
        """Fit input standardisation and the label scale on the training split."""
        data = stack_batches(batches)
        check_meta(data["meta"], self.n_meta)
        self.curve_scaler.fit(relative_curves(data, self.airs_groups, self.n_time))
        self.meta_scaler.fit(data["meta"])
        self.label_mean.copy_(data["target"].mean(0))
        self.label_std.fill_(float(data["target"].std().clamp(min=1e-7)))
        return {"label_std": float(self.label_std)}

    def forward(self, batch: dict[str, Tensor]) -> ArielOutput:
        check_meta(batch["meta"], self.n_meta)
        curves = self.curve_scaler(relative_curves(batch, self.airs_groups, self.n_time))
        meta = self.meta_scaler(batch["meta"])
        x = torch.cat([curves, meta], dim=-1).clamp(-self.feature_clip, self.feature_clip)
        h = self.norm(self.blocks(self.inp(x)))
        ref = self.label_mean.expand(x.shape[0], -1)
        unit = self.label_std.expand_as(ref)
        mu = ref + unit * self.out(h)
        return ArielOutput(mu=mu, sigma=unit.clone(), ref=ref, unit=unit, embedding=h)


class PolyFitNet(nn.Module):
    """The classic per-bin fit: polynomial baseline x transit window, sigma from residual scatter.

    Args:
        fit: The transit fit.
        correction: Fit ``depth_true ~ a_b depth_fit + c_b`` per bin on the training split (the
            fit's depth is biased by limb darkening); sigma is scaled by ``|a_b|``.
        ridge: Relative ridge of that correction.
        sigma_floor: Smallest sigma (depth fraction).
    """

    def __init__(
        self, fit: TransitWindowFit, correction: bool = True, ridge: float = 1e-2, sigma_floor: float = 1e-6
    ) -> None:
        super().__init__()
        self.fit, self.correction, self.sigma_floor = fit, correction, float(sigma_floor)
        self.prior = PerBinLinearPrior(N_TARGETS, 1, ridge, init_weight=[1.0])
        self.register_buffer("label_std", torch.tensor(1e-3))

    @torch.no_grad()
    def fit_training_data(self, batches: Iterable[dict[str, Tensor]]) -> dict[str, Any]:
        """Fit the per-bin depth correction (when enabled) and the label scale."""
        data = stack_batches(batches)
        fit = self.fit(data)
        if self.correction:
            self.prior.fit(fit.depth[..., None], data["target"])
        self.label_std.fill_(float(data["target"].std().clamp(min=1e-7)))
        return {"correction_slope_mean": float(self.prior.weight.mean())}

    def forward(self, batch: dict[str, Tensor]) -> ArielOutput:
        fit = self.fit(batch)
        if self.correction:
            mu = self.prior(fit.depth[..., None])
            sigma = fit.depth_sigma * self.prior.weight[:, 0].abs() + self.sigma_floor
        else:
            mu, sigma = fit.depth, fit.depth_sigma + self.sigma_floor
        unit = self.label_std.expand_as(mu)
        return ArielOutput(mu=mu, sigma=sigma, ref=mu.detach(), unit=unit, embedding=fit_embedding(fit))


def fit_embedding(fit: TransitFit) -> Tensor:
    """A transit fit's per-planet summary for diagnostics, shape (batch, 7): white-light depths and
    sigmas (FGS1, AIRS), mid-transit time and duration (hours), mean relative noise."""
    return torch.cat(
        [fit.white_depth, fit.white_sigma, fit.t0_h[:, None], fit.duration_h[:, None], fit.noise.mean(-1, True)],
        dim=-1,
    )


class PriorOnlyNet(nn.Module):
    """The V50's closed-form prior alone: per-bin ridge regression on the white-light depths.

    ``mu`` is exactly the ``ref`` that :class:`~src.modules.ariel.v50.ArielV50Net` predicts around
    (same transit fit, same features, same ridge); ``sigma`` is the prior's residual rms on the
    training split, per bin or one global value, plus a floor. No trainable weights.

    Args:
        fit: The transit fit (window search and white-light depths).
        prior_ridge: Relative ridge of the per-bin linear prior (the V50's ``prior_ridge``).
        per_bin_sigma: Residual rms per bin (else one rms over all bins, the V50's ``unit``).
        sigma_floor: Smallest sigma (depth fraction).
    """

    def __init__(
        self, fit: TransitWindowFit, prior_ridge: float = 1e-2, per_bin_sigma: bool = True, sigma_floor: float = 1e-6
    ) -> None:
        super().__init__()
        self.fit, self.per_bin_sigma, self.sigma_floor = fit, per_bin_sigma, float(sigma_floor)
        self.prior = PerBinLinearPrior(N_TARGETS, PRIOR_FEATURES, prior_ridge, init_weight=[0.0, 1.0])
        self.register_buffer("residual_rms", torch.full((N_TARGETS,), 1e-3))
        self.register_buffer("unit", torch.tensor(1e-3))

    @torch.no_grad()
    def fit_training_data(self, batches: Iterable[dict[str, Tensor]]) -> dict[str, Any]:
        """Fit the prior and its residual rms (depth fraction) on the training split."""
        data = stack_batches(batches)
        features = prior_features(self.fit(data))
        self.prior.fit(features, data["target"])
        residual = (data["target"] - self.prior(features)).double()
        self.unit.fill_(float(residual.pow(2).mean().sqrt().clamp(min=1e-7)))
        if self.per_bin_sigma:
            self.residual_rms.copy_(residual.pow(2).mean(0).sqrt().clamp(min=1e-7).float())
        else:
            self.residual_rms.fill_(float(self.unit))
        return {"prior_rms": float(self.unit)}

    def forward(self, batch: dict[str, Tensor]) -> ArielOutput:
        fit = self.fit(batch)
        mu = self.prior(prior_features(fit))
        sigma = (self.residual_rms + self.sigma_floor).expand_as(mu).clone()
        unit = self.unit.expand_as(mu)
        return ArielOutput(mu=mu, sigma=sigma, ref=mu.detach(), unit=unit, embedding=fit_embedding(fit))
