"""Ariel Data Challenge scores and calibration diagnostics, as torchmetrics ``Metric`` classes.

All inputs are transit depths as fractions of the stellar flux, shaped ``(planets, 283)``: column 0
is FGS1 (``wl_1``), columns 1..282 the AIRS-CH0 bins (``wl_2..wl_283``). ``sigma`` is the
predicted standard deviation of each depth, in the same unit.

The Gaussian log-likelihood of one cell is ``GLL(y; mu, sigma) = -1/2 [ln 2 pi + ln sigma^2 +
(y - mu)^2 / sigma^2]``. Both competition scores compare the prediction's GLL with a *naive*
prediction (the training labels' mean and standard deviation, two scalars) and an *ideal* one
(``mu = y`` with a tiny ``sigma_true``):

* 2024: ``(sum GLL_pred - sum GLL_naive) / (sum GLL_ideal - sum GLL_naive)`` over every planet and
  bin, ``sigma_true = 1e-5``, clipped to [0, 1];
* 2025: the same ratio per cell with ``sigma_true = 1e-6`` (FGS1) and ``1e-5`` (AIRS), averaged
  with weight 57.846 on FGS1 and 1 on each AIRS bin, clipped to [0, 1].

Every state is a sum reduced with ``"sum"``, so the scores are exact under DDP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import Metric, SumMetric

from src.core.artifacts import RecordError, record_field
from src.core.errors import ConfigError

LOG_2PI = math.log(2.0 * math.pi)
N_BINS = 283
SIGMA_TRUE_2024 = 1e-5
FGS1_SIGMA_TRUE_2025 = 1e-6
AIRS_SIGMA_TRUE_2025 = 1e-5
FGS1_WEIGHT_2025 = 57.846


def gaussian_log_likelihood(y: Tensor, mu: Tensor, sigma: Tensor | float) -> Tensor:
    """Element-wise Gaussian log-likelihood ``-1/2 [ln 2 pi + ln sigma^2 + (y - mu)^2 / sigma^2]``.

    Args:
        y: Observed depths, any shape.
        mu: Predicted depths, broadcastable to ``y``.
        sigma: Predicted standard deviations (> 0), broadcastable to ``y``.

    Returns:
        The log-likelihood of each cell (nats), shape of ``y``.
    """
    sigma = torch.as_tensor(sigma, dtype=y.dtype, device=y.device)
    return -0.5 * (LOG_2PI + 2.0 * torch.log(sigma) + ((y - mu) / sigma) ** 2)


def _check_inputs(mu: Tensor, sigma: Tensor, y: Tensor) -> None:
    if mu.shape != y.shape or sigma.shape != y.shape:
        raise ValueError(f"mu {tuple(mu.shape)}, sigma {tuple(sigma.shape)} and y {tuple(y.shape)} must match")
    if bool((sigma <= 0).any()):
        raise ValueError(f"sigma must be > 0 everywhere (min {float(sigma.min()):.3g}): use a sigma floor")


def _check_naive(naive_sigma: float) -> None:
    if not naive_sigma > 0:
        raise ConfigError(
            f"naive_sigma={naive_sigma}: the naive prediction's standard deviation must be > 0",
            "compute it from the training labels (it is their standard deviation)",
        )


def score_2024(
    y: Tensor, mu: Tensor, sigma: Tensor, naive_mean: float, naive_sigma: float, sigma_true: float = SIGMA_TRUE_2024
) -> Tensor:
    """The Ariel 2024 score of a whole prediction table (see module docstring).

    Args:
        y: True depths, shape (planets, bins).
        mu: Predicted depths, shape (planets, bins).
        sigma: Predicted standard deviations, shape (planets, bins).
        naive_mean: Mean of the training labels (scalar).
        naive_sigma: Standard deviation of the training labels (scalar).
        sigma_true: The ideal prediction's standard deviation.

    Returns:
        A scalar in [0, 1].
    """
    # A whole table in hand: no gathering from other processes (a rank-zero caller would hang).
    metric = ArielScore2024(naive_mean, naive_sigma, sigma_true, sync_on_compute=False).to(y.device)
    metric.update(mu, sigma, y)
    return metric.compute()


def score_2025(
    y: Tensor,
    mu: Tensor,
    sigma: Tensor,
    naive_mean: float,
    naive_sigma: float,
    fgs1_sigma_true: float = FGS1_SIGMA_TRUE_2025,
    airs_sigma_true: float = AIRS_SIGMA_TRUE_2025,
    fgs1_weight: float = FGS1_WEIGHT_2025,
) -> Tensor:
    """The Ariel 2025 score of a whole prediction table (see module docstring); a scalar in [0, 1]."""
    metric = ArielScore2025(
        naive_mean, naive_sigma, fgs1_sigma_true, airs_sigma_true, fgs1_weight, sync_on_compute=False
    ).to(y.device)
    metric.update(mu, sigma, y)
    return metric.compute()


class _NaiveMixin:
    """The naive prediction (training-label mean and standard deviation), settable after init."""

    naive_mean: float
    naive_sigma: float

    def set_naive(self, mean: float, sigma: float) -> None:
        """Set the naive prediction from the training labels (mean and standard deviation, depth)."""
        _check_naive(float(sigma))
        self.naive_mean, self.naive_sigma = float(mean), float(sigma)


class ArielScore2024(_NaiveMixin, Metric):
    """Ariel 2024 score: the GLL sums of prediction, naive and ideal, normalised once at the end.

    Args:
        naive_mean: Mean of all training labels (depth fraction).
        naive_sigma: Standard deviation of all training labels (depth fraction).
        sigma_true: Standard deviation of the ideal prediction (depth fraction).
    """

    higher_is_better = True
    full_state_update = False

    def __init__(
        self, naive_mean: float = 0.0, naive_sigma: float = 1.0, sigma_true: float = SIGMA_TRUE_2024, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.set_naive(naive_mean, naive_sigma)
        self.sigma_true = float(sigma_true)
        for name in ("gll_pred", "gll_naive", "gll_ideal"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: Tensor, sigma: Tensor, y: Tensor) -> None:
        """Add a batch: ``mu``, ``sigma``, ``y`` of shape (planets, bins)."""
        _check_inputs(mu, sigma, y)
        y, mu, sigma = y.double(), mu.double(), sigma.double()
        self.gll_pred += gaussian_log_likelihood(y, mu, sigma).sum()
        self.gll_naive += gaussian_log_likelihood(y, torch.full_like(y, self.naive_mean), self.naive_sigma).sum()
        self.gll_ideal += gaussian_log_likelihood(y, y, self.sigma_true).sum()

    def compute(self) -> Tensor:
        """The clipped score, a float64 scalar in [0, 1]."""
        score = (self.gll_pred - self.gll_naive) / (self.gll_ideal - self.gll_naive)
        return score.clamp(0.0, 1.0)


class ArielScore2025(_NaiveMixin, Metric):
    """Ariel 2025 score: per-cell normalised GLL, weighted mean (FGS1 weight 57.846, AIRS 1).

    Args:
        naive_mean: Mean of all training labels (depth fraction).
        naive_sigma: Standard deviation of all training labels (depth fraction).
        fgs1_sigma_true: Ideal standard deviation of the FGS1 cell (column 0).
        airs_sigma_true: Ideal standard deviation of the AIRS cells (columns 1..).
        fgs1_weight: Weight of the FGS1 cell; each AIRS cell weighs 1.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        naive_mean: float = 0.0,
        naive_sigma: float = 1.0,
        fgs1_sigma_true: float = FGS1_SIGMA_TRUE_2025,
        airs_sigma_true: float = AIRS_SIGMA_TRUE_2025,
        fgs1_weight: float = FGS1_WEIGHT_2025,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.set_naive(naive_mean, naive_sigma)
        self.fgs1_sigma_true, self.airs_sigma_true = float(fgs1_sigma_true), float(airs_sigma_true)
        self.fgs1_weight = float(fgs1_weight)
        self.add_state("weighted", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _cell_weights(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-column ideal sigma and weight, shape (bins,)."""
        sigma_true = torch.full(y.shape[-1:], self.airs_sigma_true, dtype=y.dtype, device=y.device)
        weight = torch.ones(y.shape[-1:], dtype=y.dtype, device=y.device)
        sigma_true[0], weight[0] = self.fgs1_sigma_true, self.fgs1_weight
        return sigma_true, weight

    def update(self, mu: Tensor, sigma: Tensor, y: Tensor) -> None:
        """Add a batch: ``mu``, ``sigma``, ``y`` of shape (planets, bins); column 0 is FGS1."""
        _check_inputs(mu, sigma, y)
        y, mu, sigma = y.double(), mu.double(), sigma.double()
        sigma_true, weight = self._cell_weights(y)
        pred = gaussian_log_likelihood(y, mu, sigma)
        naive = gaussian_log_likelihood(y, torch.full_like(y, self.naive_mean), self.naive_sigma)
        ideal = gaussian_log_likelihood(y, y, sigma_true)
        cell = (pred - naive) / (ideal - naive)
        self.weighted += (cell * weight).sum()
        self.weight += weight.sum() * y.shape[0]

    def compute(self) -> Tensor:
        """The clipped weighted mean, a float64 scalar in [0, 1]."""
        return (self.weighted / self.weight).clamp(0.0, 1.0)


class MeanGLL(Metric):
    """Mean Gaussian log-likelihood per cell (nats; higher is better)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: Tensor, sigma: Tensor, y: Tensor) -> None:
        """Add a batch of shape (planets, bins)."""
        _check_inputs(mu, sigma, y)
        self.total += gaussian_log_likelihood(y.double(), mu.double(), sigma.double()).sum()
        self.count += y.numel()

    def compute(self) -> Tensor:
        return self.total / self.count


class MAEppm(Metric):
    """Mean absolute error of the depths, in parts per million of the stellar flux."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: Tensor, y: Tensor) -> None:
        """Add a batch: predicted and true depths (fractions), same shape."""
        self.total += (y.double() - mu.double()).abs().sum()
        self.count += y.numel()

    def compute(self) -> Tensor:
        return 1e6 * self.total / self.count


def central_z(level: float) -> float:
    """Half-width, in standard deviations, of the central ``level`` interval of N(0, 1)."""
    if not 0.0 < level < 1.0:
        raise ConfigError(f"interval level {level} is outside (0, 1)", "use e.g. 0.68 or 0.95")
    return float(torch.special.ndtri(torch.tensor(0.5 + level / 2.0, dtype=torch.float64)))


class IntervalCoverage(Metric):
    """Share of cells whose truth lies in the central Gaussian interval ``mu ± z(level) sigma``.

    Args:
        level: Nominal coverage of the interval, e.g. 0.68 (z = 0.994) or 0.95 (z = 1.960).
    """

    higher_is_better = None
    full_state_update = False

    def __init__(self, level: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.level = float(level)
        self.z = central_z(self.level)
        self.add_state("inside", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: Tensor, sigma: Tensor, y: Tensor) -> None:
        """Add a batch of shape (planets, bins)."""
        _check_inputs(mu, sigma, y)
        self.inside += ((y - mu).abs() <= self.z * sigma).sum()
        self.count += y.numel()

    def compute(self) -> Tensor:
        return self.inside / self.count


class ZScoreMoments(Metric):
    """Mean and standard deviation of ``z = (y - mu) / sigma`` (0 and 1 when calibrated)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("count", "sum_z", "sum_z2"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: Tensor, sigma: Tensor, y: Tensor) -> None:
        """Add a batch of shape (planets, bins)."""
        _check_inputs(mu, sigma, y)
        z = (y.double() - mu.double()) / sigma.double()
        self.count += z.numel()
        self.sum_z += z.sum()
        self.sum_z2 += (z**2).sum()

    def compute(self) -> Tensor:
        """``[mean, std]`` of z (population standard deviation), float64."""
        mean = self.sum_z / self.count
        var = (self.sum_z2 / self.count - mean**2).clamp(min=0.0)
        return torch.stack([mean, var.sqrt()])


def gaussian_nll(t: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood without the constant: ``ln sigma + (t - mu)^2 / 2 sigma^2``."""
    return (torch.log(sigma) + 0.5 * ((t - mu) / sigma) ** 2).mean()


class ArielMetrics(nn.Module):
    """The validation metrics of one split, updated together from (mu, sigma, y)."""

    #: Single-valued metrics, logged as ``<split>/<name>``.
    SCALARS = ("score2024", "score2025", "gll", "mae_ppm", "cov68", "cov95")

    def __init__(self, sync: bool = True) -> None:
        """Args:
        sync: Synchronise the states of every process on ``compute`` (torchmetrics' default, for
            metrics logged during training); False for scores of local arrays (``score_records``),
            which must not wait for processes that are not scoring.
        """
        super().__init__()
        kw = {"sync_on_compute": sync}
        self.score2024, self.score2025 = ArielScore2024(**kw), ArielScore2025(**kw)
        self.gll, self.mae_ppm = MeanGLL(**kw), MAEppm(**kw)
        self.cov68, self.cov95 = IntervalCoverage(0.68, **kw), IntervalCoverage(0.95, **kw)
        self.z = ZScoreMoments(**kw)
        # Planets seen, summed over processes: proves a DDP run validates every planet once.
        self.samples = SumMetric(**kw)

    def set_naive(self, mean: float, sigma: float) -> None:
        self.score2024.set_naive(mean, sigma)
        self.score2025.set_naive(mean, sigma)

    def update(self, mu: Tensor, sigma: Tensor, y: Tensor) -> None:
        for name in ("score2024", "score2025", "gll", "cov68", "cov95", "z"):
            getattr(self, name).update(mu, sigma, y)
        self.mae_ppm.update(mu, y)
        self.samples.update(torch.tensor(float(len(y)), dtype=torch.float64, device=y.device))

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()

    def log_to(self, module: pl.LightningModule, prefix: str, batch_size: int) -> None:
        """Log the metric objects (Lightning computes and resets them at epoch end)."""
        for name in self.SCALARS:
            module.log(f"{prefix}/{name}", getattr(self, name), on_epoch=True, batch_size=batch_size)
        module.log(f"{prefix}/samples", self.samples, on_epoch=True, batch_size=batch_size)

    def log_z(self, module: pl.LightningModule, prefix: str) -> None:
        """Log z mean/std (a two-valued metric, computed and reset by hand at epoch end)."""
        if int(self.z.update_count) == 0:
            return
        mean, std = self.z.compute()
        module.log(f"{prefix}/z_mean", mean.float(), sync_dist=True)  # equal on every process (synced)
        module.log(f"{prefix}/z_std", std.float(), sync_dist=True)
        self.z.reset()


# ---- records of gt_vs_pred.jsonl (evaluate.py) --------------------------------------------------


def _matrix(records: Sequence[dict[str, Any]], dotted: str) -> Tensor:
    """``(planets, bins)`` float64 of one list field of every record, rows checked for width."""
    rows = [record_field(records, i, dotted, list) for i in range(len(records))]
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            what = f"record {records[i]['sample_id']!r}: {dotted} has {len(row)} values, the first record {width}"
            raise RecordError(i, what, "write one value per spectral bin in every record")
    return torch.tensor(rows, dtype=torch.float64)


def _check_scorable(records: Sequence[dict[str, Any]], mu: Tensor, sigma: Tensor, y: Tensor) -> None:
    finite = torch.isfinite(mu).all(1) & torch.isfinite(sigma).all(1) & torch.isfinite(y).all(1)
    bad = torch.nonzero(~finite | (sigma <= 0).any(1)).flatten().tolist()
    if bad:
        i = bad[0]
        raise RecordError(
            i,
            f"record {records[i]['sample_id']!r}: pred.mu/pred.sigma/gt.mu hold non-finite values or a sigma <= 0",
            "mark such a record with an error code (nonfinite_pred, nonpositive_sigma) or fix the prediction",
        )


def _naive_groups(records: Sequence[dict[str, Any]]) -> list[tuple[tuple[float, float] | None, list[int]]]:
    """Record indices grouped by their naive prediction (training-label mean and std).

    The folds of a cross-validation each have their own (each fold's model was trained and scored
    against its own training labels), so merged out-of-fold records form one group per fold.
    ``[(None, every index)]`` when the records carry none.
    """
    if "naive" not in records[0]:
        return [(None, list(range(len(records))))]
    groups: dict[tuple[float, float], list[int]] = {}
    for i in range(len(records)):
        pair = (
            float(record_field(records, i, "naive.mean", (int, float))),
            float(record_field(records, i, "naive.sigma", (int, float))),
        )
        groups.setdefault(pair, []).append(i)
    return list(groups.items())


def _per_planet(records: Sequence[dict[str, Any]], mu: Tensor, sigma: Tensor, y: Tensor) -> list[dict[str, Any]]:
    """Per planet: mean GLL (nats per bin), MAE (ppm), coverage of the 68 % and 95 % intervals."""
    figures = {
        "gll": gaussian_log_likelihood(y, mu, sigma).mean(1),
        "mae_ppm": 1e6 * (y - mu).abs().mean(1),
    }
    for level in (0.68, 0.95):
        figures[f"cov{round(100 * level)}"] = ((y - mu).abs() <= central_z(level) * sigma).double().mean(1)
    columns = {k: v.tolist() for k, v in figures.items()}
    return [{"sample_id": r["sample_id"], **{k: v[i] for k, v in columns.items()}} for i, r in enumerate(records)]


def score_records(records: Sequence[dict[str, Any]]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The Ariel scores of labelled records: ``pred`` ``{"mu", "sigma"}`` against ``gt`` ``{"mu"}``.

    Both competition scores need the naive prediction the model was scored against: each record's
    ``naive`` ``{"mean", "sigma"}`` (``predict.py`` writes it). Each record is scored against its
    own, so the merged out-of-fold records of a cross-validation (one naive per fold) score as the
    folds' models were scored. Records without one get every score but ``score2024`` and
    ``score2025``.

    Args:
        records: Labelled Ariel records (depths and sigmas as fractions of the stellar flux).

    Returns:
        ``{"score2024", "score2025", "gll" (nats per cell), "mae_ppm", "cov68", "cov95", "z_mean",
        "z_std", "samples"}`` and per planet ``sample_id``, ``gll``, ``mae_ppm``, ``cov68``, ``cov95``.

    Raises:
        RecordError: A record of another task, of another width, or with values no score takes.
    """
    mu, sigma, y = _matrix(records, "pred.mu"), _matrix(records, "pred.sigma"), _matrix(records, "gt.mu")
    if mu.shape != y.shape or sigma.shape != y.shape:
        what = f"pred.mu {tuple(mu.shape)}, pred.sigma {tuple(sigma.shape)} and gt.mu {tuple(y.shape)} differ in width"
        raise RecordError(0, what, "write one value per spectral bin in each field")
    _check_scorable(records, mu, sigma, y)
    metrics = ArielMetrics(sync=False)
    groups = _naive_groups(records)
    for naive, rows in groups:
        if naive is not None:
            metrics.set_naive(*naive)  # the scores' states are sums: each group adds its own share
        metrics.update(mu[rows], sigma[rows], y[rows])
    scored = groups[0][0] is not None
    names = [n for n in ArielMetrics.SCALARS if scored or not n.startswith("score")]
    values = {name: float(getattr(metrics, name).compute()) for name in names}
    z_mean, z_std = metrics.z.compute()
    values.update({"z_mean": float(z_mean), "z_std": float(z_std), "samples": float(len(records))})
    return values, _per_planet(records, mu, sigma, y)
