"""Mamba state-space encoder of a time series, on mamba-ssm's CUDA kernels or on mambapy.

Both backends build a mixer with the same parameters under the same names (``in_proj``,
``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``), and the norms and residual
connections around it are podium's own, so one checkpoint loads on either backend:

* ``mamba_ssm``: ``mamba_ssm.Mamba`` with its fused CUDA selective scan (the ``gpu`` extra);
* ``mambapy``: ``mambapy.mamba.MambaBlock``, pure PyTorch with a parallel (Blelloch) scan;
* ``auto``: mamba-ssm when it imports and the module runs on a CUDA device, else mambapy.

The backend is chosen per forward pass for ``auto``, so a model built on the CPU and moved to a
GPU picks up the kernels.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from src.core.errors import ConfigError

BACKENDS = ("auto", "mamba_ssm", "mambapy")


def mamba_ssm_available() -> bool:
    """Whether ``mamba_ssm`` (the CUDA kernels) can be imported."""
    return importlib.util.find_spec("mamba_ssm") is not None


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis with a learned gain."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _mambapy_mixer(d_model: int, d_state: int, d_conv: int, expand: int) -> nn.Module:
    from mambapy.mamba import MambaBlock, MambaConfig

    return MambaBlock(MambaConfig(d_model=d_model, n_layers=1, d_state=d_state, d_conv=d_conv, expand_factor=expand))


def _mamba_ssm_mixer(d_model: int, d_state: int, d_conv: int, expand: int) -> nn.Module:
    from mamba_ssm import Mamba

    return Mamba(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand)


class MambaLayer(nn.Module):
    """Pre-norm residual Mamba layer: ``x + mixer(norm(x))``.

    The parameters live in a mambapy ``MambaBlock``; on the ``mamba_ssm`` path the same
    parameters are lent to a ``mamba_ssm.Mamba`` built once and kept outside the state dict.
    """

    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mixer = _mambapy_mixer(d_model, d_state, d_conv, expand)
        self._shape = (d_model, d_state, d_conv, expand)
        self._cuda_mixer: list[nn.Module] = []  # a list keeps it out of the module tree

    def _kernel_mixer(self) -> nn.Module:
        """A ``mamba_ssm.Mamba`` sharing this layer's parameters (built on first use)."""
        if not self._cuda_mixer:
            mixer = _mamba_ssm_mixer(*self._shape).to(self.norm.weight.device)
            self._cuda_mixer.append(mixer)
        mixer = self._cuda_mixer[0]
        for name, param in self.mixer.named_parameters():
            module_name, _, attr = name.rpartition(".")
            owner = mixer.get_submodule(module_name) if module_name else mixer
            setattr(owner, attr, param)
        return mixer

    def forward(self, x: Tensor, backend: str) -> Tensor:
        mixer = self._kernel_mixer() if backend == "mamba_ssm" else self.mixer
        return x + mixer(self.norm(x))


class MambaEncoder(nn.Module):
    """A stack of residual Mamba layers over ``(batch, time, features)`` series.

    Args:
        in_features: Features per time step.
        d_model: Width of the state-space layers.
        n_layers: Number of Mamba layers.
        d_state: SSM state size per channel.
        d_conv: Causal depthwise-convolution width.
        expand: Inner width factor of each layer.
        backend: ``auto``, ``mamba_ssm`` or ``mambapy`` (see module docstring).
        bidirectional: Also run the stack over the reversed series and add the two (a transit
            is symmetric in time, a causal scan alone is not).
    """

    def __init__(
        self,
        in_features: int,
        d_model: int = 32,
        n_layers: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        backend: str = "auto",
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigError(f"Mamba backend={backend!r} is unknown", f"use one of {list(BACKENDS)}")
        if backend == "mamba_ssm" and not mamba_ssm_available():
            raise ConfigError(
                "Mamba backend='mamba_ssm' but the mamba_ssm package is not installed",
                "install the gpu extra (pip install -e .[gpu]) or use backend=auto",
            )
        self.backend = backend
        self.bidirectional = bidirectional
        self.proj = nn.Linear(in_features, d_model)
        self.layers = nn.ModuleList(MambaLayer(d_model, d_state, d_conv, expand) for _ in range(n_layers))
        self.norm = RMSNorm(d_model)
        self.out_features = d_model

    def resolved_backend(self, device: torch.device) -> str:
        """The backend a forward pass on ``device`` uses."""
        if self.backend != "auto":
            return self.backend
        return "mamba_ssm" if device.type == "cuda" and mamba_ssm_available() else "mambapy"

    def _scan(self, h: Tensor, backend: str) -> Tensor:
        for layer in self.layers:
            h = layer(h, backend)
        return h

    def forward(self, x: Tensor) -> Tensor:
        """Encode ``x`` of shape (batch, time, in_features) into (batch, time, d_model)."""
        backend = self.resolved_backend(x.device)
        h = self.proj(x)
        out = self._scan(h, backend)
        if self.bidirectional:
            out = out + self._scan(h.flip(1), backend).flip(1)
        return self.norm(out)
