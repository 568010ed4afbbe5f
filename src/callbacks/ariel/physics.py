"""Physical constraints on predicted transmission spectra: penalties in training, violation rates.

A transmission spectrum is a transit depth per wavelength: positive, and smooth on the scale of
the AIRS-CH0 bins (molecular bands are tens of bins wide). Three checks, each with a loss weight
and a violation threshold in config:

* smoothness: second differences ``mu[b+1] - 2 mu[b] + mu[b-1]`` along the AIRS bins (ppm);
* non-negativity: ``mu < 0`` in any bin;
* high-frequency power: share of the AIRS spectrum's FFT power (straight line removed) above
  ``fft_cutoff`` x Nyquist.

:class:`PhysicsConstraints` adds the weighted penalties to the training loss of an
``ArielRegressor`` (through ``add_loss_term``), logs violation rates of the validation predictions
every epoch (``val/physics/*``: per-cell and per-planet) and writes per-planet and per-bin rates
after fit (``physics_planets.csv``, ``physics_bins.csv``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from src.callbacks.ariel.calibration import ValidationCollector, gather_by_planet
from src.core.contracts import GaussianPredictor, LossTermHost
from src.core.errors import ConfigError
from src.core.io import atomic_path
from src.modules.ariel.parts import ArielOutput


def second_difference(spectrum: Tensor) -> Tensor:
    """Second differences along the last axis, shape (..., bins - 2)."""
    return spectrum[..., 2:] - 2 * spectrum[..., 1:-1] + spectrum[..., :-2]


def detrend(spectrum: Tensor) -> Tensor:
    """``spectrum`` minus its least-squares straight line along the last axis."""
    n = spectrum.shape[-1]
    t = torch.linspace(-1.0, 1.0, n, dtype=spectrum.dtype, device=spectrum.device)
    centred = spectrum - spectrum.mean(-1, keepdim=True)
    slope = (centred * t).sum(-1, keepdim=True) / (t * t).sum()
    return centred - slope * t


def high_frequency_power(spectrum: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """FFT power of the detrended spectrum above ``cutoff`` x Nyquist: (absolute per bin, share of total).

    The straight line is removed first: a sloped spectrum is physical, and the jump between its
    ends would otherwise leak power to every frequency.

    Args:
        spectrum: Values along the last axis (e.g. AIRS depths), shape (..., bins).
        cutoff: Frequency cut as a fraction of the Nyquist frequency, in (0, 1).

    Returns:
        The high-frequency power divided by the number of bins (Parseval: a mean square), and its
        share of the total power (0 when the spectrum is flat); each shape (...).
    """
    x = detrend(spectrum)
    power = torch.fft.rfft(x, dim=-1).abs() ** 2
    freqs = torch.fft.rfftfreq(x.shape[-1], device=x.device) / 0.5
    high = power[..., freqs > cutoff].sum(-1)
    total = power[..., 1:].sum(-1)
    # A spectrum that is a straight line to rounding error has no shape to judge.
    floor = (1e-9 * spectrum.abs().mean(-1) * x.shape[-1]) ** 2
    share = torch.where(total > floor, high / total.clamp(min=1e-300), torch.zeros_like(high))
    return high / x.shape[-1] ** 2, share


def violation_maps(
    mu: Tensor, smooth_threshold_ppm: float, fft_cutoff: float, fft_threshold: float
) -> dict[str, Tensor]:
    """Boolean violation maps of predicted depths ``mu`` (planets, 283), FGS1 first.

    Returns:
        ``smooth`` and ``negative`` (planets, 283) per cell (smoothness is judged at the interior
        AIRS bins), ``high_freq`` (planets,) per planet, and ``any`` (planets, 283): a cell
        violates anything, counting the planet's high-frequency flag on its AIRS bins.
    """
    airs = mu[:, 1:].double()
    smooth = torch.zeros_like(mu, dtype=torch.bool)
    smooth[:, 2:-1] = second_difference(airs).abs() > smooth_threshold_ppm * 1e-6
    negative = mu < 0
    _, share = high_frequency_power(airs, fft_cutoff)
    high_freq = share > fft_threshold
    any_cell = smooth | negative
    any_cell[:, 1:] |= high_freq[:, None]
    return {"smooth": smooth, "negative": negative, "high_freq": high_freq, "any": any_cell}


class PhysicsConstraints(ValidationCollector):
    """Smoothness, non-negativity and high-frequency penalties; violation rates of validation spectra.

    Penalties are computed on ``mu / unit`` (the network's loss unit, so weights are unitless) and
    added to the training loss as ``train/physics``.

    Args:
        smooth_weight: Weight of the mean squared second difference.
        negative_weight: Weight of the mean squared negative part.
        fft_weight: Weight of the high-frequency mean-square power.
        fft_cutoff: High-frequency cut, fraction of Nyquist.
        smooth_threshold_ppm: A cell violates smoothness when ``|second difference|`` exceeds this (ppm).
        fft_threshold: A planet violates when the high-frequency share of its AIRS power exceeds this.
        dirpath: Folder of the CSV files (the run directory); null: no files.
    """

    module_hooks = (GaussianPredictor, LossTermHost)

    def __init__(
        self,
        smooth_weight: float = 1.0,
        negative_weight: float = 1.0,
        fft_weight: float = 0.1,
        fft_cutoff: float = 0.25,
        smooth_threshold_ppm: float = 50.0,
        fft_threshold: float = 0.5,
        dirpath: str | None = None,
    ) -> None:
        if min(smooth_weight, negative_weight, fft_weight) < 0 or not 0 < fft_cutoff < 1:
            raise ConfigError(
                f"PhysicsConstraints weights ({smooth_weight}, {negative_weight}, {fft_weight}), "
                f"fft_cutoff={fft_cutoff}",
                "use weights >= 0 and 0 < fft_cutoff < 1 (a fraction of the Nyquist frequency)",
            )
        super().__init__(keys=("mu", "planet_id"))
        self.weights = {"smooth": smooth_weight, "negative": negative_weight, "fft": fft_weight}
        self.fft_cutoff, self.fft_threshold = float(fft_cutoff), float(fft_threshold)
        self.smooth_threshold_ppm = float(smooth_threshold_ppm)
        self.dirpath = dirpath
        self.planet_rates: dict[str, list[float]] = {}
        self.bin_rates: list[float] = []

    def penalty(self, out: ArielOutput, batch: dict[str, Tensor]) -> Tensor:
        """The weighted penalty of a batch's predictions (scalar, in loss units)."""
        x = out.mu / out.unit
        airs = x[:, 1:]
        total = self.weights["smooth"] * second_difference(airs).pow(2).mean()
        total = total + self.weights["negative"] * F.relu(-x).pow(2).mean()
        if self.weights["fft"] > 0:
            high, _ = high_frequency_power(airs, self.fft_cutoff)
            total = total + self.weights["fft"] * high.mean()
        return total

    def maps(self, mu: Tensor) -> dict[str, Tensor]:
        """Violation maps of ``mu`` (planets, 283) under this callback's thresholds."""
        return violation_maps(mu, self.smooth_threshold_ppm, self.fft_cutoff, self.fft_threshold)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and any(w > 0 for w in self.weights.values()) and hasattr(pl_module, "add_loss_term"):
            pl_module.add_loss_term("physics", self.penalty)

    @override
    def refit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mu = self.buffer.get("mu")
        maps = self.maps(mu)
        sums = torch.stack(
            [
                maps["smooth"].double().sum(),
                maps["negative"].double().sum(),
                maps["high_freq"].double().sum(),
                maps["any"].any(dim=1).double().sum(),
                torch.tensor(float(mu.numel()), dtype=torch.float64, device=mu.device),
                torch.tensor(float(len(mu)), dtype=torch.float64, device=mu.device),
            ]
        )
        sums = trainer.strategy.reduce(sums, reduce_op="sum")
        smooth, negative, high, planets_any, cells, planets = sums.tolist()
        for name, value in (
            ("smooth_rate", smooth / cells),
            ("negative_rate", negative / cells),
            ("high_freq_rate", high / planets),
            ("planet_rate", planets_any / planets),
        ):
            pl_module.log(f"val/physics/{name}", value, sync_dist=True)  # equal on every process
        self._keep_rates(pl_module, maps, self.buffer.get("planet_id"))

    def _keep_rates(self, pl_module: pl.LightningModule, maps: dict[str, Tensor], ids: Tensor) -> None:
        """Per-planet and per-bin rates of the last validation pass over every process (for the CSV files)."""
        names = list(maps)
        ids, *gathered = gather_by_planet(pl_module, ids, *(maps[k].double() for k in names))
        full = dict(zip(names, gathered, strict=True))
        self.planet_rates = rates_table(full, ids.cpu().numpy()).to_dict("list")
        self.bin_rates = full["any"].mean(0).cpu().tolist()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dirpath is None or not trainer.is_global_zero or not self.planet_rates:
            return
        folder = Path(self.dirpath)
        with atomic_path(folder / "physics_planets.csv") as tmp:
            pd.DataFrame(self.planet_rates).to_csv(tmp, index=False)
        bins = pd.DataFrame({"bin": [f"wl_{k + 1}" for k in range(len(self.bin_rates))], "any": self.bin_rates})
        with atomic_path(folder / "physics_bins.csv") as tmp:
            bins.to_csv(tmp, index=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"planet_rates": self.planet_rates, "bin_rates": self.bin_rates}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.planet_rates = dict(state_dict.get("planet_rates", {}))
        self.bin_rates = list(state_dict.get("bin_rates", []))


def rates_table(maps: dict[str, Tensor], planet_ids: np.ndarray) -> pd.DataFrame:
    """Per-planet violation shares as a table (planet_id, smooth, negative, high_freq, any)."""
    return pd.DataFrame(
        {
            "planet_id": planet_ids,
            "smooth": maps["smooth"].double().mean(1).cpu().numpy(),
            "negative": maps["negative"].double().mean(1).cpu().numpy(),
            "high_freq": maps["high_freq"].double().cpu().numpy(),
            "any": maps["any"].double().mean(1).cpu().numpy(),
        }
    )
