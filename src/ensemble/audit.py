"""Risk audit of a prediction vector: how low could its accuracy be on another sample?

A leaderboard's private split is one draw of rows (often of whole groups: patients, writers,
sites). These numbers say how far accuracy on such a draw can fall below the OOF mean, for a
fixed set of predictions (nothing is refitted):

- ``acc_boot_p5``: 5th percentile of accuracy over bootstrap resamples of the rows.
- ``acc_holdout_min`` / ``acc_holdout_mean``: over repeated stratified hold-outs
  (``StratifiedShuffleSplit``), the worst and mean accuracy of the held-out part.
- ``acc_group_median`` / ``acc_group_min``: the same over group hold-outs
  (``GroupShuffleSplit``), where whole groups are held out together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit, StratifiedShuffleSplit

AUDIT_COLUMNS = ("acc", "acc_boot_p5", "acc_holdout_min", "acc_holdout_mean", "acc_group_median", "acc_group_min")


def bootstrap_accuracy(correct: npt.NDArray[np.bool_], n_boot: int, seed: int) -> npt.NDArray[np.float64]:
    """Accuracies of ``n_boot`` bootstrap resamples (rows drawn with replacement).

    The number of correct rows in a resample of ``n`` rows drawn with replacement is exactly
    ``Binomial(n, accuracy)``, so it is drawn as such: the same distribution as resampling indices,
    without an ``(n_boot, n)`` index matrix.
    """
    rng = np.random.default_rng(seed)
    n = len(correct)
    return rng.binomial(n, correct.mean(), size=n_boot) / n


def _split_accuracies(correct: npt.NDArray[np.bool_], splits: Any) -> npt.NDArray[np.float64]:
    return np.array([correct[test].mean() for _, test in splits])


def holdout_accuracy(
    correct: npt.NDArray[np.bool_], y: npt.NDArray[np.int64], n_splits: int, test_size: float, seed: int
) -> npt.NDArray[np.float64]:
    """Accuracy on ``n_splits`` stratified random hold-outs of ``test_size`` of the rows.

    Where stratifying is impossible (a class with a single row, or fewer held-out rows than
    classes) the hold-outs are plain random ones.
    """
    x = np.zeros(len(correct))
    try:
        splitter = StratifiedShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
        return _split_accuracies(correct, splitter.split(x, y))
    except ValueError:
        splitter = ShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
        return _split_accuracies(correct, splitter.split(x))


def group_holdout_accuracy(
    correct: npt.NDArray[np.bool_], groups: npt.ArrayLike, n_splits: int, test_size: float, seed: int
) -> npt.NDArray[np.float64]:
    """Accuracy on ``n_splits`` random hold-outs of whole groups (about ``test_size`` of groups)."""
    splitter = GroupShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
    return _split_accuracies(correct, splitter.split(np.zeros(len(correct)), groups=np.asarray(groups)))


def risk_audit(
    pred: npt.NDArray[np.integer],
    y: npt.NDArray[np.integer],
    groups: npt.ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    n_splits: int = 20,
    test_size: float = 0.2,
) -> dict[str, float]:
    """Accuracy and its downside risk for predicted classes ``pred`` against ``y``.

    Args:
        pred: ``(n,)`` predicted class indices.
        y: ``(n,)`` true class indices.
        groups: ``(n,)`` group key of each row, or None (group columns are then NaN).
        n_boot: Bootstrap resamples.
        seed: Seed of the resamples and splits.
        n_splits: Number of hold-out splits (stratified and grouped alike).
        test_size: Fraction of rows (stratified) or groups (grouped) held out per split.

    Returns:
        A row keyed by :data:`AUDIT_COLUMNS`, every value in [0, 1] (or NaN).
    """
    correct = np.asarray(pred) == np.asarray(y)
    y = np.asarray(y, dtype=np.int64)
    holdout = holdout_accuracy(correct, y, n_splits, test_size, seed)
    row = {
        "acc": float(correct.mean()),
        "acc_boot_p5": float(np.percentile(bootstrap_accuracy(correct, n_boot, seed), 5)),
        "acc_holdout_min": float(holdout.min()),
        "acc_holdout_mean": float(holdout.mean()),
        "acc_group_median": float("nan"),
        "acc_group_min": float("nan"),
    }
    if groups is not None and len(np.unique(np.asarray(groups))) >= 2:
        grouped = group_holdout_accuracy(correct, groups, n_splits, test_size, seed)
        row["acc_group_median"] = float(np.median(grouped))
        row["acc_group_min"] = float(grouped.min())
    return row
