"""Sigma calibration of Ariel predictions, fitted on the validation fold.

Both callbacks read the predictions ``ArielRegressor.validation_step`` returns (``mu``,
``sigma_raw``, ``target``; depths as fractions) and refit at the end of every validation epoch,
so each checkpoint (``last``, ``best``) carries the calibration of its own weights in the
callback state (``state_dict`` / ``load_state_dict``). What is left after ``fit`` is the
calibration of the final validation pass, and ``trainer.predict(ckpt_path=...)`` restores the one
stored with the checkpoint it loads.

* :class:`TemperatureScaling`: sigma scales ``s`` by the closed form ``s^2 = mean(z^2)``,
  ``z = (y - mu) / sigma``, per bin (shrunk towards the global scale) or one global scale; applied
  to ``sigma`` at predict time (``on_predict_batch_end`` and :meth:`TemperatureScaling.calibrate`).
  Its ``val/cal/*`` metrics are cross-fitted (each half of the fold scored with the scale fitted on
  the other half), so they are out-of-sample.
* :class:`ConformalCalibration`: split-conformal quantiles of ``|y - mu| / sigma`` per bin (or
  one max-over-bins quantile for simultaneous bands); predict outputs gain interval half-widths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from src.core.contracts import GaussianPredictor
from src.core.errors import ConfigError
from src.core.io import write_json_atomic
from src.metrics.ariel import central_z
from src.modules.ariel.module import ArielMetrics


def _level_name(level: float) -> str:
    return f"{round(100 * level):d}"


#: What the sigma calibrators read from each validation batch.
CALIBRATION_KEYS = ("mu", "sigma_raw", "target", "planet_id")


class ValidationBuffer:
    """Validation predictions of one epoch on this process (cleared at each epoch start).

    Args:
        keys: The output entries to keep; outputs lacking one of them are ignored.
    """

    def __init__(self, keys: Sequence[str] = CALIBRATION_KEYS) -> None:
        self.keys = tuple(keys)
        self.parts: dict[str, list[Tensor]] = {}

    def clear(self) -> None:
        self.parts = {}

    def add(self, outputs: Any) -> None:
        if not isinstance(outputs, dict) or any(key not in outputs for key in self.keys):
            return
        for key in self.keys:
            self.parts.setdefault(key, []).append(outputs[key].detach())

    def __len__(self) -> int:
        return sum(len(t) for t in self.parts.get("mu", []))

    def get(self, key: str) -> Tensor:
        return torch.cat(self.parts[key])


def gather_rows(pl_module: pl.LightningModule, x: Tensor) -> Tensor:
    """Rows of ``x`` from every process, concatenated in rank order.

    Row counts may differ by process (evaluation splits are not padded, see
    ``PodiumDataModule.eval_sampler``): each process pads to the longest share for the collective
    and the padding is cut off again. A collective: call it on every process.
    """
    if pl_module.trainer is None or pl_module.trainer.world_size == 1:
        return x
    counts = pl_module.all_gather(torch.tensor(x.shape[0], device=x.device)).reshape(-1).tolist()
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[: x.shape[0]] = x
    gathered = pl_module.all_gather(padded)
    return torch.cat([gathered[rank, :n] for rank, n in enumerate(counts)])


def gather_by_planet(pl_module: pl.LightningModule, ids: Tensor, *values: Tensor) -> list[Tensor]:
    """``[ids, *values]`` gathered from every process, rows in ascending planet id.

    The order then depends neither on the number of processes nor on how the split was shared
    out, so order-dependent fits (the conformal cross-fit halves) give the same result on one
    process and on many. A collective: call it on every process.
    """
    ids = gather_rows(pl_module, ids)
    order = torch.argsort(ids)
    return [ids[order], *(gather_rows(pl_module, v)[order] for v in values)]


def alternate_halves(n: int) -> tuple[Tensor, Tensor]:
    """Row indices of the two cross-fit halves of ``n`` rows: even and odd positions."""
    rows = torch.arange(n)
    return rows[0::2], rows[1::2]


class ValidationCollector(Callback):
    """Collect validation predictions each epoch and refit at its end (not during sanity checks).

    Args:
        keys: The validation output entries :meth:`refit` reads from ``self.buffer``.
    """

    module_hooks = (GaussianPredictor,)

    def __init__(self, keys: Sequence[str] = CALIBRATION_KEYS) -> None:
        self.buffer = ValidationBuffer(keys)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.buffer.clear()

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self.buffer.add(outputs)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or len(self.buffer) == 0:
            return
        self.refit(trainer, pl_module)

    def refit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise NotImplementedError


class _SigmaCalibrator(ValidationCollector):
    """A validation-fitted calibration that also rewrites predict outputs (see :meth:`calibrate`)."""

    def calibrate(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if isinstance(outputs, dict):
            self.calibrate(outputs)


class TemperatureScaling(_SigmaCalibrator):
    """Scale sigma per bin (or globally) so that ``mean(z^2) = 1`` on the validation fold.

    The per-bin estimate ``s_b^2 = (sum_i z_ib^2 + k s_g^2) / (n + k)`` is shrunk towards the
    global one ``s_g^2`` with ``k = shrinkage`` pseudo-planets, since a validation fold of a few
    dozen planets gives noisy per-bin variances. The scale kept for predict time (``scale``, in the
    checkpoint) is fitted on the whole fold.

    The validation metrics with calibrated sigmas are cross-fitted, so out-of-sample: the fold's
    predictions are gathered from every process in planet-id order and split into two halves
    (alternate planets); each half is scored with the scale fitted on the other half, and
    ``val/cal/*`` (the :class:`ArielMetrics` scalars, ``z_mean``, ``z_std``) are computed over both
    halves together. Those cross-fitted scales are kept per planet and applied to the fold's own
    planets at predict time (``predictions/val.csv`` and out-of-fold records score as ``val/cal/*``);
    every other planet gets the whole-fold scale. ``val/cal_insample/*`` are the same metrics with
    the whole-fold scale scored on the fold it was fitted on (optimistic; for comparison), and
    ``val/ts_scale`` is the mean whole-fold scale. A fold of one planet has no other half: its
    cross-fitted sigma stays unscaled.

    Args:
        per_bin: One scale per bin (else one global scale: the mu-only baseline's constant sigma).
        shrinkage: Pseudo-planets of the global scale in each per-bin estimate (0: none).
        min_scale: Smallest allowed scale.
        max_scale: Largest allowed scale.
    """

    def __init__(
        self, per_bin: bool = True, shrinkage: float = 8.0, min_scale: float = 1e-3, max_scale: float = 1e3
    ) -> None:
        super().__init__()
        if shrinkage < 0 or not 0 < min_scale <= max_scale:
            raise ConfigError(
                f"TemperatureScaling shrinkage={shrinkage}, min_scale={min_scale}, max_scale={max_scale}",
                "use shrinkage >= 0 and 0 < min_scale <= max_scale",
            )
        self.per_bin, self.shrinkage = per_bin, float(shrinkage)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.scale: Tensor | None = None
        # planet id -> the scale fitted on the other half of the fold (the planets the whole-fold
        # scale was fitted on get this one at predict time, so their sigma stays out-of-sample)
        self.held_out: dict[int, Tensor] = {}

    def fit_scale(self, sum_z2: Tensor, count: Tensor) -> Tensor:
        """Scales from per-bin sums of z^2 (bins,) over ``count`` planets (closed form)."""
        global_s2 = sum_z2.sum() / (count * sum_z2.numel())
        if self.per_bin:
            s2 = (sum_z2 + self.shrinkage * global_s2) / (count + self.shrinkage)
        else:
            s2 = global_s2.expand_as(sum_z2)
        return s2.sqrt().clamp(self.min_scale, self.max_scale)

    def fit_rows(self, z2: Tensor) -> Tensor:
        """Scales (bins,) fitted on squared z-scores ``z2`` of shape (planets, bins); ones without planets."""
        if len(z2) == 0:
            return torch.ones(z2.shape[1:], dtype=z2.dtype, device=z2.device)
        count = torch.tensor(float(len(z2)), dtype=z2.dtype, device=z2.device)
        return self.fit_scale(z2.sum(0), count)

    def cross_fit(self, z2: Tensor) -> Tensor:
        """Each planet's scale fitted on the other half of the rows (alternate rows), (planets, bins).

        Args:
            z2: Squared z-scores ``((y - mu) / sigma)^2``, shape (planets, bins), rows in a fixed
                order (planet id), so the halves do not depend on how the fold was shared out.
        """
        scales = torch.ones_like(z2)
        first, second = alternate_halves(len(z2))
        scales[first] = self.fit_rows(z2[second])
        scales[second] = self.fit_rows(z2[first])
        return scales

    @override
    def refit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        get = self.buffer.get
        ids, mu, sigma, y = gather_by_planet(pl_module, get("planet_id"), get("mu"), get("sigma_raw"), get("target"))
        self.fit_and_log(pl_module, mu, sigma, y, ids)

    def fit_and_log(
        self, pl_module: pl.LightningModule, mu: Tensor, sigma: Tensor, y: Tensor, ids: Tensor | None = None
    ) -> None:
        """Fit ``scale`` on the whole fold and log ``val/cal/*`` (cross-fitted), ``val/cal_insample/*``
        and ``val/ts_scale``.

        Args:
            pl_module: Gives the naive prediction (``naive_mean``, ``naive_sigma``) and ``log``.
            mu: Predicted depths of every planet of the fold, (planets, bins), rows in planet-id order.
            sigma: Uncalibrated sigmas, same shape.
            y: True depths, same shape.
            ids: Planet ids of the rows; kept with their cross-fitted scales, which :meth:`calibrate`
                applies to these planets instead of the whole-fold scale.
        """
        z2 = (((y - mu) / sigma) ** 2).double()
        self.scale = self.fit_rows(z2).float().cpu()
        crossed = self.cross_fit(z2)
        if ids is not None and len(ids) > 1:
            rows = crossed.float().cpu()
            self.held_out = {int(pid): rows[i] for i, pid in enumerate(ids.tolist())}
        self._log_scores(pl_module, "val/cal", mu, sigma * crossed.to(sigma.dtype), y)
        self._log_scores(pl_module, "val/cal_insample", mu, sigma * self.scale.to(sigma.device), y)
        pl_module.log("val/ts_scale", float(self.scale.mean()), sync_dist=True)

    @staticmethod
    def _log_scores(pl_module: pl.LightningModule, prefix: str, mu: Tensor, sigma: Tensor, y: Tensor) -> None:
        """Log the scores of the whole gathered fold (equal on every process: no metric sync)."""
        metrics = ArielMetrics(sync=False).to(mu.device)
        metrics.set_naive(float(pl_module.naive_mean), float(pl_module.naive_sigma))
        metrics.update(mu, sigma, y)
        values = {name: getattr(metrics, name).compute() for name in ArielMetrics.SCALARS}
        values["z_mean"], values["z_std"] = metrics.z.compute()
        for name, value in values.items():
            pl_module.log(f"{prefix}/{name}", float(value), sync_dist=True)

    def calibrate(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Scale ``outputs["sigma"]`` in place by the fitted scales (no-op before fitting).

        A planet of the validation fold the scale was fitted on (its id in ``outputs["planet_id"]``)
        gets the scale fitted on the other half of the fold instead, so validation and out-of-fold
        predictions carry out-of-sample sigmas, equal to the ones ``val/cal/*`` scored.
        """
        if self.scale is None:
            return outputs
        sigma = outputs["sigma"]
        scales = self.scale.to(sigma.device).expand_as(sigma).clone()
        if self.held_out and "planet_id" in outputs:
            for row, pid in enumerate(outputs["planet_id"].reshape(-1).tolist()):
                if int(pid) in self.held_out:
                    scales[row] = self.held_out[int(pid)].to(sigma.device)
        outputs["sigma"] = sigma * scales.to(sigma.dtype)
        return outputs

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": None if self.scale is None else self.scale.tolist(),
            "per_bin": self.per_bin,
            "held_out": {str(pid): row.tolist() for pid, row in self.held_out.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        scale = state_dict.get("scale")
        self.scale = None if scale is None else torch.tensor(scale, dtype=torch.float32)
        held_out = state_dict.get("held_out") or {}
        self.held_out = {int(pid): torch.tensor(row, dtype=torch.float32) for pid, row in held_out.items()}


def conformal_quantile(scores: Tensor, level: float) -> Tensor:
    """Split-conformal quantile over the first axis: the ``ceil((n + 1) level)``-th smallest score.

    With fewer than ``1 / (1 - level) - 1`` calibration points that rank exceeds ``n`` and the
    quantile is infinite (no finite band has the guarantee).

    Args:
        scores: Non-conformity scores, shape (n, ...).
        level: Nominal coverage in (0, 1).

    Returns:
        Quantiles, shape (...).
    """
    n = scores.shape[0]
    rank = math.ceil((n + 1) * level)
    if rank > n:
        return torch.full(scores.shape[1:], math.inf, dtype=scores.dtype, device=scores.device)
    return scores.sort(dim=0).values[rank - 1]


class ConformalCalibration(_SigmaCalibrator):
    """Split-conformal intervals on the scores ``|y - mu| / sigma`` of the validation fold.

    Per bin, the band ``mu ± q_b sigma`` covers a new planet's depth with probability at least
    ``level`` (exchangeability). With ``simultaneous``, the score of a planet is its maximum over
    bins and one quantile ``q`` gives bands that cover the whole spectrum at once (no independence
    between bins assumed).

    Coverage is reported honestly by cross-fitting: quantiles fitted on one half of the fold
    (alternate planets) are scored on the other half and vice versa. Logged as
    ``val/conformal/cov<level>`` (per-cell), ``val/conformal/width<level>_ppm`` (mean half-width)
    and, when simultaneous, ``val/conformal/sim_cov<level>`` (share of planets covered in every
    bin). The quantiles and coverages are written to ``<dirpath>/conformal.json`` after fit.

    Args:
        levels: Nominal coverages.
        simultaneous: Also fit the max-over-bins quantile (simultaneous bands).
        dirpath: Folder of ``conformal.json`` (the run directory); null: no file.
    """

    def __init__(
        self, levels: Sequence[float] = (0.68, 0.95), simultaneous: bool = True, dirpath: str | None = None
    ) -> None:
        super().__init__()
        self.levels = [float(v) for v in levels]
        for level in self.levels:
            central_z(level)  # validates the range
        self.simultaneous, self.dirpath = simultaneous, dirpath
        self.quantiles: dict[str, list[float]] = {}
        self.sim_quantiles: dict[str, float] = {}
        self.report: dict[str, float] = {}

    @staticmethod
    def scores(mu: Tensor, sigma: Tensor, y: Tensor) -> Tensor:
        """Non-conformity ``|y - mu| / sigma``, shape (planets, bins)."""
        return ((y - mu).abs() / sigma).double()

    def _cross_fit(self, scores: Tensor, sigma: Tensor, level: float) -> dict[str, float]:
        halves = alternate_halves(len(scores))
        inside, width, sim_inside, n = 0.0, 0.0, 0.0, 0
        for fit_idx, eval_idx in ((halves[0], halves[1]), (halves[1], halves[0])):
            if len(fit_idx) == 0 or len(eval_idx) == 0:
                continue
            q = conformal_quantile(scores[fit_idx], level)
            covered = scores[eval_idx] <= q
            inside += float(covered.double().sum())
            width += float((q * sigma[eval_idx]).sum())
            sim_q = conformal_quantile(scores[fit_idx].max(dim=1).values, level)
            sim_inside += float((scores[eval_idx].max(dim=1).values <= sim_q).double().sum())
            n += len(eval_idx)
        cells = max(n * scores.shape[1], 1)
        name = _level_name(level)
        out = {f"cov{name}": inside / cells, f"width{name}_ppm": 1e6 * width / cells}
        if self.simultaneous:
            out[f"sim_cov{name}"] = sim_inside / max(n, 1)
        return out

    @override
    def refit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        get = self.buffer.get
        _, mu, sigma, y = gather_by_planet(pl_module, get("planet_id"), get("mu"), get("sigma_raw"), get("target"))
        scores = self.scores(mu, sigma, y).cpu()
        sigma = sigma.double().cpu()
        self.report = {}
        for level in self.levels:
            name = _level_name(level)
            self.quantiles[name] = conformal_quantile(scores, level).tolist()
            if self.simultaneous:
                self.sim_quantiles[name] = float(conformal_quantile(scores.max(dim=1).values, level))
            self.report.update(self._cross_fit(scores, sigma, level))
        for key, value in self.report.items():
            if math.isfinite(value):  # equal on every process (gathered predictions)
                pl_module.log(f"val/conformal/{key}", value, sync_dist=True)

    def calibrate(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Add ``half_width_<level>`` (and ``sim_half_width_<level>``) to predict outputs (depth units)."""
        base = outputs.get("sigma_raw", outputs["sigma"])
        for name, q in self.quantiles.items():
            outputs[f"half_width_{name}"] = base * torch.tensor(q, dtype=base.dtype, device=base.device)
            if name in self.sim_quantiles:
                outputs[f"sim_half_width_{name}"] = base * self.sim_quantiles[name]
        return outputs

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dirpath is None or not trainer.is_global_zero or not self.quantiles:
            return
        write_json_atomic(Path(self.dirpath) / "conformal.json", self.state_dict())

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "levels": self.levels,
            "quantiles": self.quantiles,
            "sim_quantiles": self.sim_quantiles,
            "cross_fit_coverage": self.report,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.quantiles = dict(state_dict.get("quantiles", {}))
        self.sim_quantiles = dict(state_dict.get("sim_quantiles", {}))
        self.report = dict(state_dict.get("cross_fit_coverage", {}))
