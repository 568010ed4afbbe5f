"""Blends of members that predict a Gaussian per target (mean ``mu`` and deviation ``sigma``).

The blend of ``M`` members with weights ``w`` (non-negative, summing to 1) is the Gaussian that
matches the first two moments of the mixture ``sum_m w_m N(mu_m, sigma_m^2)``:

    mu    = sum_m w_m mu_m
    var   = sum_m w_m (sigma_m^2 + mu_m^2) - mu^2      (within- plus between-member spread)

so members that disagree widen the blended sigma. The weights maximise the mean Gaussian
log-likelihood of the blend on out-of-fold rows; :func:`nested_gaussian_oof` scores a blend on
rows its weights never saw (fitted on the other folds), as the classification blends are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import softmax

from src.core.artifacts import RECORDS_FILE, read_resolved_config
from src.core.errors import DataError
from src.ensemble.oof import read_cv_records

Array = npt.NDArray[np.float64]
#: Where a record holds the predicted mean, the predicted deviation and the truth.
GAUSSIAN_FIELDS = (("pred", "mu"), ("pred", "sigma"), ("gt", "mu"))


def mixture_moments(weights: Array, mus: Sequence[Array], sigmas: Sequence[Array], floor: float) -> tuple[Array, Array]:
    """The mean and standard deviation of the weighted mixture of Gaussians.

    Args:
        weights: ``(M,)`` non-negative weights summing to 1.
        mus: One ``(n, T)`` array of means per member.
        sigmas: One ``(n, T)`` array of standard deviations per member (same unit as ``mus``).
        floor: Smallest standard deviation returned (same unit).

    Returns:
        ``(mu, sigma)``, each ``(n, T)``.
    """
    w = np.asarray(weights, dtype=np.float64)[:, None, None]
    mu_stack, sigma_stack = np.stack(mus), np.stack(sigmas)
    mu = (w * mu_stack).sum(axis=0)
    second = (w * (sigma_stack**2 + mu_stack**2)).sum(axis=0)
    return mu, np.sqrt(np.maximum(second - mu**2, floor**2))


def mean_gll(y: Array, mu: Array, sigma: Array) -> float:
    """Mean Gaussian log-likelihood per cell (natural log, constant included)."""
    z = (y - mu) / sigma
    return float(np.mean(-0.5 * (np.log(2.0 * np.pi) + 2.0 * np.log(sigma) + z**2)))


class GaussianMixtureBlend:
    """Member weights that maximise the moment-matched mixture's log-likelihood.

    The weights are the softmax of free logits (so they stay on the simplex), fitted with
    L-BFGS from equal weights.

    Args:
        sigma_floor: Smallest blended standard deviation, in the targets' unit.
        max_iter: L-BFGS iterations.

    Attributes:
        weights_: ``(M,)`` fitted weights, summing to 1.
    """

    def __init__(self, sigma_floor: float = 1e-8, max_iter: int = 200) -> None:
        self.sigma_floor = sigma_floor
        self.max_iter = max_iter

    def fit(self, mus: Sequence[Array], sigmas: Sequence[Array], y: Array) -> GaussianMixtureBlend:
        n_members = len(mus)

        def loss(logits: Array) -> float:
            mu, sigma = mixture_moments(softmax(logits), mus, sigmas, self.sigma_floor)
            return -mean_gll(y, mu, sigma)

        result = minimize(loss, np.zeros(n_members), method="L-BFGS-B", options={"maxiter": self.max_iter})
        self.weights_ = softmax(result.x)
        return self

    def predict(self, mus: Sequence[Array], sigmas: Sequence[Array]) -> tuple[Array, Array]:
        return mixture_moments(self.weights_, mus, sigmas, self.sigma_floor)


def nested_gaussian_oof(
    make_blend: type[GaussianMixtureBlend] | object,
    mus: Sequence[Array],
    sigmas: Sequence[Array],
    y: Array,
    folds: npt.NDArray[np.int64],
) -> tuple[Array, Array]:
    """Honest out-of-fold blended predictions: fold ``k``'s rows from weights fitted on the others.

    Args:
        make_blend: A callable returning an unfitted :class:`GaussianMixtureBlend`.
        mus: One ``(n, T)`` array of means per member.
        sigmas: One ``(n, T)`` array of deviations per member.
        y: ``(n, T)`` true values.
        folds: ``(n,)`` validation fold of each row (at least two distinct values).

    Returns:
        ``(mu, sigma)``, each ``(n, T)``.

    Raises:
        DataError: Fewer than two folds.
    """
    ids = np.unique(folds)
    if ids.size < 2:
        raise DataError(
            f"nested fitting needs at least 2 folds, the OOF records have {ids.tolist()}",
            "train the members with data.n_folds >= 2 (python cv.py ...)",
        )
    mu_out, sigma_out = np.zeros_like(np.asarray(y, dtype=np.float64)), np.zeros_like(np.asarray(y, dtype=np.float64))
    for k in ids:
        held, fit = folds == k, folds != k
        blend = make_blend().fit([m[fit] for m in mus], [s[fit] for s in sigmas], y[fit])
        mu_out[held], sigma_out[held] = blend.predict([m[held] for m in mus], [s[held] for s in sigmas])
    return mu_out, sigma_out


# ---- members from cross-validation records ----------------------------------------------------


@dataclass(frozen=True, eq=False)
class GaussianMember:
    """One K-fold model's out-of-fold Gaussian predictions, from ``cv.py``'s merged records.

    Attributes:
        name: Display name.
        source: The records file (``<member>/oof/gt_vs_pred.jsonl``).
        sample_ids: ``(n,)`` sample ids (sorted).
        folds: ``(n,)`` validation fold of each sample.
        y: ``(n, T)`` true values.
        mu: ``(n, T)`` predicted means.
        sigma: ``(n, T)`` predicted standard deviations (same unit).
        naive: Each record's ``naive`` entry (what the competition scores are normalised by: one
            per fold, the training labels' mean and deviation), or None.
        task: The records' task.
        evaluator: Dotted path of the task's ``score_records``.
    """

    name: str
    source: Path
    sample_ids: npt.NDArray[np.str_]
    folds: npt.NDArray[np.int64]
    y: Array
    mu: Array
    sigma: Array
    naive: list[dict[str, float]] | None
    task: str
    evaluator: str


def load_gaussian_member(path: Path, name: str) -> GaussianMember:
    """Read a member's merged out-of-fold records with ``pred`` ``{mu, sigma}`` and ``gt`` ``{mu}``.

    Raises:
        DataError: No records, unlabelled records, records without a fold, or of unequal width.
    """
    source = path / "oof" / RECORDS_FILE
    if not source.is_file():
        raise DataError(
            f"member {path} holds no out-of-fold records ({source})",
            "point members at finished cv.py run directories (outputs/<experiment>/<cv run>)",
        )
    resolved = read_resolved_config(source.parent) or {}
    records = sorted(read_cv_records(source), key=lambda r: r["sample_id"])
    try:
        mu, sigma, y = (np.asarray([r[a][b] for r in records], dtype=np.float64) for a, b in GAUSSIAN_FIELDS)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{source}: records lack pred.mu/pred.sigma/gt.mu of one width ({exc})", "use μ/σ members"
        ) from exc
    return GaussianMember(
        name=name,
        source=source,
        sample_ids=np.asarray([r["sample_id"] for r in records], dtype=str),
        folds=np.asarray([r["fold"] for r in records], dtype=np.int64),
        y=y,
        mu=mu,
        sigma=sigma,
        naive=[r["naive"] for r in records] if "naive" in records[0] else None,
        task=str(resolved.get("task") or ""),
        evaluator=str(resolved.get("evaluator") or ""),
    )


def check_aligned(members: Sequence[GaussianMember]) -> None:
    """Members must cover the same samples with the same folds and truth (one dataset, one folds file).

    Raises:
        DataError: Naming the first member that differs and how.
    """
    ref = members[0]
    for m in members[1:]:
        if m.task != ref.task or not np.array_equal(m.sample_ids, ref.sample_ids):
            what = "task" if m.task != ref.task else "samples"
            raise DataError(
                f"members {ref.name} and {m.name} differ in their {what}",
                "blend cross-validations of one task on one dataset (the same folds file)",
            )
        if not np.array_equal(m.folds, ref.folds) or not np.allclose(m.y, ref.y):
            raise DataError(
                f"members {ref.name} and {m.name} disagree on folds or truth for the same samples",
                "cross-validate every member on the same data and folds file",
            )


def records_of(member: GaussianMember, mu: Array, sigma: Array) -> list[dict[str, Any]]:
    """Records (``src.core.artifacts``) of predictions ``(mu, sigma)`` over ``member``'s samples."""
    return [
        {
            "sample_id": str(sid),
            "split": "val",
            "fold": int(member.folds[i]),
            "gt": {"mu": member.y[i].tolist()},
            "pred": {"mu": mu[i].tolist(), "sigma": sigma[i].tolist()},
            "errors": [],
            **({"naive": member.naive[i]} if member.naive else {}),
        }
        for i, sid in enumerate(member.sample_ids)
    ]
