"""Shared pieces of the Ariel networks: the output record, scalers fitted on the training split,
the per-bin linear prior and the Gaussian head.

Every Ariel network maps a batch (see ``src/datamodules/ariel/datamodule.py``) to an
:class:`ArielOutput` and may implement ``fit_training_data(batches)``: the LightningModule calls it
once, before training, with the whole training split, so statistics (label scale, metadata
standardisation, the linear prior) are fitted in closed form and kept in buffers, which the
checkpoint carries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Depth columns: FGS1 then 282 AIRS-CH0 bins.
N_TARGETS = 283


@dataclass
class ArielOutput:
    """A network's prediction for a batch of planets.

    Depths and sigmas are fractions of the stellar flux. The loss works in the network's own
    units: ``(y - ref) / unit``, so that targets are of order one.

    Attributes:
        mu: Predicted depths, shape (batch, 283).
        sigma: Predicted standard deviations (> 0), shape (batch, 283).
        ref: Reference depths the network predicts around, shape (batch, 283).
        unit: Depth unit of the loss, shape (batch, 283) or broadcastable.
        embedding: A per-planet feature vector for diagnostics, shape (batch, features).
    """

    mu: Tensor
    sigma: Tensor
    ref: Tensor
    unit: Tensor
    embedding: Tensor


class Standardizer(nn.Module):
    """Per-feature ``(x - mean) / std`` with statistics fitted on the training split.

    Args:
        n_features: Features on the last axis.
        log: Take ``log(|x| + eps)`` first (for positive, skewed quantities such as periods).
    """

    def __init__(self, n_features: int, log: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.log, self.eps = log, eps
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def _pre(self, x: Tensor) -> Tensor:
        return torch.log(x.abs() + self.eps) if self.log else x

    def fit(self, x: Tensor) -> None:
        """Fit on ``x`` of shape (samples, n_features)."""
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"Standardizer expects {self.mean.shape[0]} features, got {x.shape[-1]}")
        v = self._pre(x.float()).reshape(-1, x.shape[-1])
        self.mean.copy_(v.mean(0))
        self.std.copy_(v.std(0, unbiased=False).clamp(min=1e-6) if len(v) > 1 else torch.ones_like(self.std))

    def forward(self, x: Tensor) -> Tensor:
        return (self._pre(x) - self.mean) / self.std


class PerBinLinearPrior(nn.Module):
    """One ridge regression per output bin, fitted in closed form on the training split.

    ``prior_b = beta_b . (x_b - xbar_b) + ybar_b`` for features ``x`` of shape (batch, bins,
    features). The ridge is relative to the mean feature variance of the bin, so it is unitless.

    Args:
        n_bins: Output bins.
        n_features: Features per bin.
        ridge: Relative ridge strength (0: plain least squares).
        init_weight: Weights before fitting (and where the data say nothing), one per feature.
    """

    def __init__(self, n_bins: int, n_features: int, ridge: float = 1e-2, init_weight: Sequence[float] | None = None):
        super().__init__()
        self.ridge = float(ridge)
        w0 = torch.tensor(list(init_weight) if init_weight is not None else [0.0] * n_features, dtype=torch.float32)
        self.register_buffer("weight0", w0)
        # Parameters fitted in closed form, not by gradient: frozen, but counted as the model's own.
        self.weight = nn.Parameter(w0.repeat(n_bins, 1), requires_grad=False)
        self.x_mean = nn.Parameter(torch.zeros(n_bins, n_features), requires_grad=False)
        self.y_mean = nn.Parameter(torch.zeros(n_bins), requires_grad=False)

    @torch.no_grad()
    def fit(self, x: Tensor, y: Tensor) -> None:
        """Fit on features ``x`` (samples, bins, features) and targets ``y`` (samples, bins)."""
        x, y = x.double(), y.double()
        x_mean, y_mean = x.mean(0), y.mean(0)
        xc = (x - x_mean).transpose(0, 1)  # (bins, samples, features)
        w0 = self.weight0.double()
        yc = (y - y_mean).transpose(0, 1)[..., None] - xc @ w0[:, None]  # residual after the prior weights
        xtx = xc.transpose(1, 2) @ xc
        scale = xtx.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=1e-30)
        eye = torch.eye(x.shape[-1], dtype=x.dtype)
        delta = torch.linalg.solve(xtx + self.ridge * scale[:, None, None] * eye, xc.transpose(1, 2) @ yc)
        self.weight.copy_((w0 + delta[..., 0]).float())
        self.x_mean.copy_(x_mean.float())
        self.y_mean.copy_(y_mean.float())

    def forward(self, x: Tensor) -> Tensor:
        """Prior depths, shape (batch, bins), from features (batch, bins, features)."""
        return ((x - self.x_mean) * self.weight).sum(-1) + self.y_mean


class GaussianHead(nn.Module):
    """Fused features -> (mu, sigma) per output bin, one MLP shared by all bins.

    A learned embedding of each bin's identity joins the features, so the shared MLP can still
    learn per-bin behaviour. ``mu = ref + unit * out_0``; ``sigma = unit * softplus(out_1 +
    sigma_bias) + sigma_floor``.

    Args:
        in_features: Features per bin.
        hidden: MLP width.
        n_bins: Output bins.
        bin_embedding: Size of the per-bin identity embedding (0: none).
        sigma_floor: Smallest sigma (depth fraction), keeps the likelihood finite.
        sigma_init: Sigma before training, in units of ``unit``.
        dropout: Dropout inside the MLP.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int = 64,
        n_bins: int = N_TARGETS,
        bin_embedding: int = 8,
        sigma_floor: float = 1e-6,
        sigma_init: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.bin_embedding = nn.Embedding(n_bins, bin_embedding) if bin_embedding > 0 else None
        width = in_features + max(bin_embedding, 0)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.out = nn.Linear(hidden, 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.sigma_floor = float(sigma_floor)
        # softplus(sigma_bias) = sigma_init at the start
        self.sigma_bias = float(torch.log(torch.expm1(torch.tensor(float(sigma_init)))))

    def forward(self, features: Tensor, ref: Tensor, unit: Tensor) -> tuple[Tensor, Tensor]:
        """``features`` (batch, bins, in_features), ``ref`` (batch, bins), ``unit`` broadcastable -> mu, sigma."""
        if self.bin_embedding is not None:
            ids = self.bin_embedding.weight[None].expand(features.shape[0], -1, -1)
            features = torch.cat([features, ids], dim=-1)
        out = self.out(self.mlp(features))
        mu = ref + unit * out[..., 0]
        sigma = unit * F.softplus(out[..., 1] + self.sigma_bias) + self.sigma_floor
        return mu, sigma


def stack_batches(batches: Iterable[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate a loader's batches key by key (tensors only)."""
    parts: dict[str, list[Tensor]] = {}
    for batch in batches:
        for key, value in batch.items():
            if isinstance(value, Tensor):
                parts.setdefault(key, []).append(value)
    return {k: torch.cat(v) for k, v in parts.items()}
