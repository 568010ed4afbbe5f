"""Graph encoder over the AIRS-CH0 spectral bins (torch-geometric).

Nodes are the 282 spectral bins in ascending wavelength. Edges link each bin to its ``k``
neighbours on either side and every pair of bins inside the same molecular band (a band is a
centre and a half-width in microns, from config), so a layer mixes information along the
spectrum and across the wings of one absorption feature. The layer type is a config choice:
``gat`` (``GATv2Conv``), ``gcn`` (``GCNConv``) or ``nnconv`` (``NNConv``, an edge-conditioned
convolution on the edge features).

Node features come from each bin's light curve through :class:`TemporalConvEncoder`, one small
1-D CNN shared by every bin.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv, GCNConv, NNConv

from src.core.errors import ConfigError

LAYER_TYPES = ("gat", "gcn", "nnconv")
#: Edge features: (wavelength gap in neighbour steps / k, same-band flag).
EDGE_FEATURES = 2


def bin_wavelengths(n_bins: int, range_um: Sequence[float]) -> Tensor:
    """Evenly spaced bin wavelengths (microns, ascending), shape (n_bins,)."""
    lo, hi = (float(v) for v in range_um)
    if not 0 < lo < hi:
        raise ConfigError(f"wavelength_range_um={list(range_um)}", "give [shortest, longest] in microns, 0 < lo < hi")
    return torch.linspace(lo, hi, n_bins, dtype=torch.float64)


def spectral_edges(wavelengths_um: Tensor, k: int, bands_um: Sequence[Sequence[float]]) -> tuple[Tensor, Tensor]:
    """Undirected edges of the spectral graph and their features.

    Args:
        wavelengths_um: Bin wavelengths (microns), shape (nodes,), ascending.
        k: Neighbours linked on each side (0: none).
        bands_um: Molecular bands as ``[centre, half_width]`` in microns; bins within a band are
            all linked to each other.

    Returns:
        ``edge_index`` (2, edges) int64, both directions, no self loops, no duplicates; and
        ``edge_attr`` (edges, 2) float32: ``|i - j| / max(k, 1)`` and 1 when inside one band.
    """
    n = len(wavelengths_um)
    if k < 0:
        raise ConfigError(f"graph k={k}", "use k >= 0 neighbours on each side")
    idx = torch.arange(n)
    gap = (idx[:, None] - idx[None, :]).abs()
    near = (gap <= k) & (gap > 0)
    same_band = torch.zeros(n, n, dtype=torch.bool)
    for band in bands_um:
        if len(band) != 2 or float(band[1]) <= 0:
            raise ConfigError(f"molecular band {list(band)}", "write each band as [centre_um, half_width_um > 0]")
        inside = (wavelengths_um - float(band[0])).abs() <= float(band[1])
        same_band |= inside[:, None] & inside[None, :]
    same_band.fill_diagonal_(False)
    adjacency = near | same_band
    src, dst = adjacency.nonzero(as_tuple=True)
    attr = torch.stack([gap[src, dst].float() / max(k, 1), same_band[src, dst].float()], dim=1)
    return torch.stack([src, dst]), attr


def batch_graph(edge_index: Tensor, edge_attr: Tensor, n_nodes: int, batch: int) -> tuple[Tensor, Tensor]:
    """Repeat one graph ``batch`` times as a disjoint union (node ids offset by ``n_nodes``)."""
    offsets = (torch.arange(batch, device=edge_index.device) * n_nodes).repeat_interleave(edge_index.shape[1])
    return edge_index.repeat(1, batch) + offsets, edge_attr.repeat(batch, 1)


class TemporalConvEncoder(nn.Module):
    """A 1-D CNN over time shared by every spectral bin, pooled to one vector per bin.

    Pooling keeps the mean over all times and the window-weighted mean over the transit, so the
    vector carries both the baseline and the dip.

    Args:
        in_channels: Channels per time step (e.g. detrended flux and transit window).
        hidden: CNN width.
        out_features: Size of each bin's vector.
        kernel_size: Convolution width (time bins, odd).
        n_layers: Convolution layers.
    """

    def __init__(
        self, in_channels: int, hidden: int = 16, out_features: int = 16, kernel_size: int = 5, n_layers: int = 2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(n_layers):
            layers += [nn.Conv1d(width, hidden, kernel_size, padding=kernel_size // 2), nn.GELU()]
            width = hidden
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(2 * hidden, out_features)
        self.out_features = out_features

    def forward(self, x: Tensor, window: Tensor) -> Tensor:
        """Encode ``x`` (series, channels, time) with window (series, time) into (series, out_features)."""
        h = self.conv(x)
        w = window / window.sum(-1, keepdim=True).clamp(min=1e-6)
        pooled = torch.cat([h.mean(-1), (h * w[:, None, :]).sum(-1)], dim=-1)
        return self.out(pooled)


def _make_layer(layer_type: str, dim: int, heads: int, edge_hidden: int) -> nn.Module:
    if layer_type == "gat":
        return GATv2Conv(dim, dim // heads, heads=heads, edge_dim=EDGE_FEATURES, add_self_loops=True)
    if layer_type == "gcn":
        return GCNConv(dim, dim, add_self_loops=True, normalize=True)
    if layer_type == "nnconv":
        edge_net = nn.Sequential(nn.Linear(EDGE_FEATURES, edge_hidden), nn.GELU(), nn.Linear(edge_hidden, dim * dim))
        return NNConv(dim, dim, edge_net, aggr="mean")
    raise ConfigError(f"graph layer_type={layer_type!r} is unknown", f"use one of {list(LAYER_TYPES)}")


class SpectralGNNEncoder(nn.Module):
    """Residual message passing over the spectral-bin graph.

    Args:
        dim: Node feature width (in and out).
        n_layers: Message-passing layers, each ``x + dropout(act(conv(norm(x))))``; 0 passes the
            node features through unchanged (no message passing: the ablation without the GNN).
        layer_type: ``gat``, ``gcn`` or ``nnconv``.
        k: Neighbours linked on each side.
        bands_um: Molecular bands ``[centre_um, half_width_um]`` whose bins are all linked.
        wavelength_range_um: ``[shortest, longest]`` bin wavelength (microns); bins evenly spaced.
        n_bins: Number of spectral bins (nodes).
        heads: Attention heads of ``gat`` (``dim`` must be divisible by it).
        edge_hidden: Hidden width of ``nnconv``'s edge network.
        dropout: Dropout on each layer's update.
    """

    def __init__(
        self,
        dim: int = 32,
        n_layers: int = 2,
        layer_type: str = "gat",
        k: int = 2,
        bands_um: Sequence[Sequence[float]] = (),
        wavelength_range_um: Sequence[float] = (1.95, 3.90),
        n_bins: int = 282,
        heads: int = 4,
        edge_hidden: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if layer_type == "gat" and dim % heads:
            raise ConfigError(f"graph dim={dim} with heads={heads}", "make dim a multiple of heads")
        if n_layers < 0:
            raise ConfigError(f"graph n_layers={n_layers}", "use n_layers >= 0 (0: no message passing)")
        self.layer_type, self.n_bins, self.dim = layer_type, n_bins, dim
        self.register_buffer("wavelengths_um", bin_wavelengths(n_bins, wavelength_range_um).float(), persistent=False)
        edge_index, edge_attr = spectral_edges(self.wavelengths_um.double(), k, [list(b) for b in bands_um])
        self.register_buffer("edge_index", edge_index, persistent=False)
        self.register_buffer("edge_attr", edge_attr, persistent=False)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_layers))
        self.convs = nn.ModuleList(_make_layer(layer_type, dim, heads, edge_hidden) for _ in range(n_layers))
        self.act, self.drop = nn.GELU(), nn.Dropout(dropout)

    def _conv(self, conv: nn.Module, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        if self.layer_type == "gcn":
            return conv(x, edge_index)
        return conv(x, edge_index, edge_attr)

    def forward(self, x: Tensor) -> Tensor:
        """Message passing on node features ``x`` of shape (batch, n_bins, dim); same shape out."""
        b, n, d = x.shape
        edge_index, edge_attr = batch_graph(self.edge_index, self.edge_attr, n, b)
        h = x.reshape(b * n, d)
        for norm, conv in zip(self.norms, self.convs, strict=True):
            h = h + self.drop(self.act(self._conv(conv, norm(h), edge_index, edge_attr)))
        return h.reshape(b, n, d)
