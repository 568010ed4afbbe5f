"""The V50 network: Mamba over FGS1, a GNN over the AIRS-CH0 bins, a Gaussian head.

Data flow for a batch of planets::

    light curves --TransitWindowFit--> window, detrended curves, per-bin and white-light depths
    white-light + per-bin depths --PerBinLinearPrior--> ref (283)        (closed form, train split)
    FGS1 (detrended, window, time) --MambaEncoder--> pooled FGS1 vector
        (fgs1_encoder=None: the same inputs pooled directly, no Mamba)
    star metadata --Standardizer + MLP--> global vector (with the FGS1 vector and white depths)
    each AIRS bin's (detrended, window) --TemporalConvEncoder--> node features (+ fit features)
    nodes + global --SpectralGNNEncoder--> 282 node vectors;  FGS1 node = MLP(global)
        (graph.n_layers=0: node vectors passed through, no message passing between bins)
    283 node vectors --GaussianHead--> mu = ref + unit * ..., sigma = unit * softplus(...) + floor

Depths are fractions of the stellar flux; ``unit`` is the training residual scale of the prior
(so the head predicts order-one corrections).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from src.core.errors import ConfigError
from src.modules.ariel.parts import (
    N_TARGETS,
    ArielOutput,
    GaussianHead,
    PerBinLinearPrior,
    Standardizer,
    stack_batches,
)
from src.modules.ariel.spectral_gnn import SpectralGNNEncoder, TemporalConvEncoder
from src.modules.ariel.ssm import MambaEncoder
from src.modules.ariel.transit_fit import TransitFit, TransitWindowFit

#: Features of each FGS1 time step: depth-scaled detrended flux, transit window, time from mid-transit.
FGS1_STEP_FEATURES = 3
#: Features of the linear prior per bin: FGS1 and AIRS white-light depths (the bin's own noisy depth
#: reaches the head through the graph nodes instead, which keeps the prior smooth).
PRIOR_FEATURES = 2


def prior_features(fit: TransitFit) -> Tensor:
    """Linear-prior inputs per bin, shape (batch, 283, 2): FGS1 and AIRS white-light depths."""
    return fit.white_depth[:, None, :].expand(-1, fit.depth.shape[1], -1)


def scaled_curves(detrended: Tensor, fit: TransitFit, clip: float) -> Tensor:
    """Detrended flux in units of the planet's AIRS white-light depth, clipped to ``±clip``."""
    depth = fit.white_depth[:, 1].clamp(min=1e-3)
    shape = (-1,) + (1,) * (detrended.dim() - 1)
    return (detrended / depth.reshape(shape)).clamp(-clip, clip)


def check_meta(meta: Tensor, n_meta: int) -> None:
    if meta.shape[-1] != n_meta:
        raise ConfigError(
            f"model.net.n_meta={n_meta} but the batch has {meta.shape[-1]} metadata columns",
            "set model.net.n_meta to len(data.meta_columns)",
        )


class ArielV50Net(nn.Module):
    """Mamba (FGS1) + GNN (AIRS) + Gaussian head around a closed-form transit-fit prior.

    Args:
        fit: The transit fit (window search and per-bin depths).
        fgs1_encoder: Mamba encoder over FGS1 steps of (detrended, window, time) -> d_model; None
            pools those steps directly (time mean and transit-window mean, no parameters): the
            ablation without Mamba.
        airs_encoder: Shared temporal encoder of each AIRS bin's (detrended, window).
        graph: GNN over the 282 AIRS bins; its ``dim`` is the node width (``n_layers=0``: no
            message passing, the ablation without the GNN).
        head: Gaussian head over the 283 node vectors (``in_features`` = node width).
        n_meta: Star metadata columns (``len(data.meta_columns)``).
        global_dim: Width of the global (per-planet) vector.
        prior_ridge: Relative ridge of the per-bin linear prior.
        curve_clip: Clip of the depth-scaled detrended curves.
        feature_clip: Clip of the standardised scalar features.
    """

    def __init__(
        self,
        fit: TransitWindowFit,
        fgs1_encoder: MambaEncoder | None,
        airs_encoder: TemporalConvEncoder,
        graph: SpectralGNNEncoder,
        head: GaussianHead,
        n_meta: int = 8,
        global_dim: int = 32,
        prior_ridge: float = 1e-2,
        curve_clip: float = 5.0,
        feature_clip: float = 5.0,
    ) -> None:
        super().__init__()
        self.fit, self.fgs1_encoder, self.airs_encoder, self.graph, self.head = (
            fit,
            fgs1_encoder,
            airs_encoder,
            graph,
            head,
        )
        self.n_meta, self.curve_clip, self.feature_clip = n_meta, curve_clip, feature_clip
        self.meta_scaler = Standardizer(n_meta)
        self.prior = PerBinLinearPrior(N_TARGETS, PRIOR_FEATURES, prior_ridge, init_weight=[0.0, 1.0])
        self.register_buffer("unit", torch.tensor(1e-3))
        self.register_buffer("depth_scale", torch.tensor(1e-2))
        dim = graph.dim
        fgs1_dim = 2 * (FGS1_STEP_FEATURES if fgs1_encoder is None else fgs1_encoder.out_features)
        self.global_mlp = nn.Sequential(
            nn.Linear(n_meta + fgs1_dim + 4, global_dim), nn.GELU(), nn.Linear(global_dim, global_dim)
        )
        # node inputs: temporal vector, (depth - ref)/unit, log sigma/unit, log noise, wavelength
        self.node_in = nn.Linear(airs_encoder.out_features + 4, dim)
        self.global_to_node = nn.Linear(global_dim, dim)
        self.fgs1_node = nn.Sequential(nn.Linear(global_dim + 3, dim), nn.GELU(), nn.Linear(dim, dim))
        self.embedding_features = global_dim + dim

    # ---- statistics fitted on the training split -------------------------------------------------

    @torch.no_grad()
    def fit_training_data(self, batches: Iterable[dict[str, Tensor]]) -> dict[str, Any]:
        """Fit the metadata scaler, the linear prior and the loss unit on the training split.

        Returns:
            Diagnostics: the prior's training residual rms (``unit``, depth fraction).
        """
        data = stack_batches(batches)
        check_meta(data["meta"], self.n_meta)
        fit = self.fit(data)
        self.meta_scaler.fit(data["meta"])
        self.prior.fit(prior_features(fit), data["target"])
        residual = data["target"] - self.prior(prior_features(fit))
        self.unit.fill_(float(residual.pow(2).mean().sqrt().clamp(min=1e-7)))
        self.depth_scale.fill_(float(data["target"].std().clamp(min=1e-7)))
        return {"prior_rms": float(self.unit)}

    # ---- forward ---------------------------------------------------------------------------------

    def _clip(self, x: Tensor) -> Tensor:
        return x.clamp(-self.feature_clip, self.feature_clip)

    def _fgs1_vector(self, batch: dict[str, Tensor], fit: TransitFit) -> Tensor:
        time = batch["fgs1_time"]
        tau = (time - fit.t0_h[:, None]) / (fit.duration_h[:, None]).clamp(min=1e-3)
        steps = torch.stack([scaled_curves(fit.fgs1_detrended, fit, self.curve_clip), fit.fgs1_window, tau], -1)
        h = steps if self.fgs1_encoder is None else self.fgs1_encoder(steps)
        w = fit.fgs1_window / fit.fgs1_window.sum(-1, keepdim=True).clamp(min=1e-6)
        return torch.cat([h.mean(1), (h * w[..., None]).sum(1)], dim=-1)

    def _global(self, batch: dict[str, Tensor], fit: TransitFit, fgs1: Tensor) -> Tensor:
        white = (fit.white_depth - self.prior.y_mean.mean()) / self.depth_scale
        white_sigma = torch.log(fit.white_sigma / self.unit + 1e-6)
        meta = self._clip(self.meta_scaler(batch["meta"]))
        return self.global_mlp(torch.cat([meta, fgs1, self._clip(white), self._clip(white_sigma)], dim=-1))

    def _node_scalars(self, fit: TransitFit, ref: Tensor) -> Tensor:
        """(batch, 283, 3): (depth - ref)/unit, log(sigma/unit), log relative noise (centred)."""
        offset = self._clip((fit.depth - ref) / self.unit)
        log_sigma = self._clip(torch.log(fit.depth_sigma / self.unit + 1e-6))
        log_noise = torch.log(fit.noise + 1e-9)
        log_noise = self._clip(log_noise - log_noise.mean(-1, keepdim=True))
        return torch.stack([offset, log_sigma, log_noise], dim=-1)

    def _airs_nodes(self, fit: TransitFit, scalars: Tensor, glob: Tensor) -> Tensor:
        b, t, n = fit.airs_detrended.shape
        curves = scaled_curves(fit.airs_detrended, fit, self.curve_clip).permute(0, 2, 1).reshape(b * n, 1, t)
        window = fit.airs_window[:, None, :].expand(-1, n, -1).reshape(b * n, t)
        series = torch.cat([curves, window[:, None, :]], dim=1)
        temporal = self.airs_encoder(series, window).reshape(b, n, -1)
        wl = self.graph.wavelengths_um
        wl = (2 * (wl - wl[0]) / (wl[-1] - wl[0]) - 1)[None, :, None].expand(b, -1, -1)
        nodes = self.node_in(torch.cat([temporal, scalars[:, 1:], wl], dim=-1))
        return self.graph(nodes + self.global_to_node(glob)[:, None, :])

    def forward(self, batch: dict[str, Tensor]) -> ArielOutput:
        """Predict depths and sigmas for a batch (keys as in the Ariel datamodule)."""
        check_meta(batch["meta"], self.n_meta)
        fit = self.fit(batch)
        ref = self.prior(prior_features(fit))
        glob = self._global(batch, fit, self._fgs1_vector(batch, fit))
        scalars = self._node_scalars(fit, ref)
        airs = self._airs_nodes(fit, scalars, glob)
        fgs1 = self.fgs1_node(torch.cat([glob, scalars[:, 0]], dim=-1))[:, None, :]
        nodes = torch.cat([fgs1, airs], dim=1)
        unit = self.unit.expand_as(ref)
        mu, sigma = self.head(nodes, ref, unit)
        embedding = torch.cat([glob, airs.mean(1)], dim=-1)
        return ArielOutput(mu=mu, sigma=sigma, ref=ref, unit=unit, embedding=embedding)
