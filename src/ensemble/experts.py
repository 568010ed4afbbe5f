"""Gated pair experts: a binary model for each of the most confused class pairs.

For a pair ``(a, b)`` the expert is fitted on the OOF rows labelled ``a`` or ``b`` and answers
"a or b?". It is applied only where that question is the open one: rows whose top-2 predicted
classes are exactly ``{a, b}`` and whose top-1/top-2 probability margin is below a threshold.
There it redistributes the pair's probability mass ``p_a + p_b`` by the expert's answer; every
other row and every other class keeps its probability bit for bit.

:meth:`PairExperts.fit` makes every choice on the rows it is given: which pairs (the most
confused ones there), each pair's threshold (tuned on the expert's nested answers, each from an
expert fitted on the other folds of those rows) and the experts themselves (fitted on all of
them). Scores on those same rows would be optimistic, so the ensemble scores experts only on rows
they were not fitted on (:func:`src.ensemble.stack.cross_fit_stack`: fitted on the other folds,
applied to the held-out one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix

from src.core.errors import DataError
from src.ensemble.blends import log_probs

Array = npt.NDArray[np.float64]
Pair = tuple[int, int]
DEFAULT_MARGINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def pair_features(P_list: Sequence[Array], eps: float = 1e-6) -> Array:
    """The experts' default input: the members' log-probabilities side by side, ``(n, M*C)``."""
    return np.concatenate([log_probs(np.asarray(P), eps) for P in P_list], axis=1)


def confused_pairs(probs: Array, y: npt.NDArray[np.int64], top_k: int) -> list[Pair]:
    """The ``top_k`` class pairs most often confused (either direction) by ``argmax(probs)``.

    Args:
        probs: ``(n, C)`` OOF probabilities.
        y: ``(n,)`` true classes.
        top_k: Number of pairs.

    Returns:
        Pairs ``(a, b)`` with ``a < b``, most confused first; pairs never confused are left out.
    """
    n_classes = probs.shape[1]
    cm = confusion_matrix(y, probs.argmax(axis=1), labels=np.arange(n_classes))
    upper = np.triu_indices(n_classes, k=1)
    counts = (cm + cm.T)[upper]
    order = np.argsort(-counts, kind="stable")[:top_k]
    return [(int(upper[0][i]), int(upper[1][i])) for i in order if counts[i] > 0]


def top2(probs: Array) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], Array]:
    """Top-1 class, top-2 class and the margin ``p_top1 - p_top2`` of every row."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(probs))
    return order[:, 0], order[:, 1], probs[rows, order[:, 0]] - probs[rows, order[:, 1]]


def redistribute(probs: Array, rows: npt.NDArray[np.bool_], pair: Pair, p_b: Array) -> Array:
    """A copy of ``probs`` where ``rows`` share ``p_a + p_b`` as ``(1 - p_b, p_b)`` of the expert."""
    a, b = pair
    out = probs.copy()
    mass = probs[rows, a] + probs[rows, b]
    out[rows, a] = mass * (1.0 - p_b[rows])
    out[rows, b] = mass * p_b[rows]
    return out


class _Constant:
    """Stands in for an expert whose training rows hold a single class."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, X: Array) -> Array:
        return np.column_stack([np.full(len(X), 1 - self.p), np.full(len(X), self.p)])


def _fit_binary(factory: Callable[[], Any], X: Array, is_b: npt.NDArray[np.bool_]) -> Any:
    if is_b.all() or not is_b.any():
        return _Constant(float(is_b.mean()) if is_b.size else 0.5)
    return factory().fit(X, is_b.astype(np.int64))


def best_threshold(
    probs: Array,
    y: npt.NDArray[np.int64],
    gate: npt.NDArray[np.bool_],
    margin: Array,
    pair: Pair,
    p_b: Array,
    margins: Sequence[float],
) -> float:
    """The margin threshold (from ``margins``) that maximises accuracy; ties go to the smaller.

    Args:
        probs: ``(n, C)`` probabilities before the expert.
        y: ``(n,)`` true classes.
        gate: Rows whose top-2 classes are the pair.
        margin: ``(n,)`` top-1 minus top-2 probability.
        pair: The class pair ``(a, b)``.
        p_b: ``(n,)`` the expert's probability of ``b`` (only read on gated rows).
        margins: Candidate thresholds; a row is changed when ``margin < threshold``.

    Returns:
        The chosen threshold (0 means the expert is never applied).
    """
    base_correct = probs.argmax(axis=1) == y
    best, best_gain = 0.0, 0
    for tau in sorted(set(margins) | {0.0}):
        rows = gate & (margin < tau)
        if not rows.any():
            continue
        new = np.where(p_b[rows] >= 0.5, pair[1], pair[0])
        gain = int((new == y[rows]).sum() - base_correct[rows].sum())
        if gain > best_gain:
            best, best_gain = float(tau), gain
    return best


class PairExperts:
    """Binary experts for the most confused class pairs, gated by top-2 pair and margin.

    Args:
        top_k: Number of most-confused pairs to give an expert.
        margins: Candidate margin thresholds, tuned for accuracy on nested answers.
        factory: Makes an unfitted binary classifier (``fit(X, t)``, ``predict_proba(X)``);
            default ``LogisticRegression(C=1.0, max_iter=1000)``.

    Attributes:
        pairs_: The pairs, most confused first (on the rows fitted on).
        thresholds_: Tuned margin threshold per pair (0: the expert is never applied).
        experts_: The binary expert per pair, fitted on every in-pair row.
        gated_counts_: Rows the experts were applied to, per pair, by the last :meth:`predict`.
    """

    def __init__(
        self,
        top_k: int = 3,
        margins: Sequence[float] = DEFAULT_MARGINS,
        factory: Callable[[], Any] | None = None,
    ) -> None:
        self.top_k = top_k
        self.margins = tuple(float(m) for m in margins)
        self.factory = factory or partial(LogisticRegression, C=1.0, max_iter=1000)

    def fit(self, probs: Array, features: Array, y: npt.NDArray[np.int64], folds: npt.NDArray[np.int64]) -> PairExperts:
        """Choose pairs, tune each pair's threshold on nested answers, fit the experts.

        Args:
            probs: ``(n, C)`` OOF probabilities the experts correct.
            features: ``(n, F)`` expert inputs (e.g. :func:`pair_features` of the members).
            y: ``(n,)`` true classes.
            folds: ``(n,)`` fold of each row: the expert's answer on a fold's rows, which tunes
                the threshold, comes from an expert fitted on the other folds.

        Raises:
            DataError: Fewer than two folds (no expert would be blind to any row).
        """
        if np.unique(folds).size < 2:
            raise DataError(
                f"pair experts need at least 2 folds to tune their thresholds, got {np.unique(folds).tolist()}",
                "train the members with data.n_folds >= 2 (python cv.py ...)",
            )
        self.pairs_ = confused_pairs(probs, y, self.top_k)
        self.experts_: dict[Pair, Any] = {}
        self.thresholds_: dict[Pair, float] = {}
        first, second, margin = top2(probs)
        for pair in self.pairs_:
            gate = _gate(first, second, pair)
            in_pair = np.isin(y, pair)
            p_b = self._nested_answers(features, y, folds, pair, gate, in_pair)
            self.thresholds_[pair] = best_threshold(probs, y, gate, margin, pair, p_b, self.margins)
            self.experts_[pair] = _fit_binary(self.factory, features[in_pair], y[in_pair] == pair[1])
        return self

    def gates(self, probs: Array) -> dict[Pair, npt.NDArray[np.bool_]]:
        """Per pair, the rows its expert applies to: top-2 classes are the pair, margin below its
        threshold. A row's top-2 classes are one pair, so the gates are disjoint."""
        first, second, margin = top2(probs)
        return {pair: _gate(first, second, pair) & (margin < self.thresholds_[pair]) for pair in self.pairs_}

    def predict(self, probs: Array, features: Array) -> Array:
        """Apply the fitted experts; rows outside every gate are returned unchanged.

        Args:
            probs: ``(n, C)`` probabilities (same pipeline as the OOF ones fitted on).
            features: ``(n, F)`` expert inputs built like the fitting ones.
        """
        out = probs.copy()
        self.gated_counts_: dict[Pair, int] = {}
        for pair, rows in self.gates(probs).items():
            p_b = np.zeros(len(probs))
            if rows.any():
                p_b[rows] = self.experts_[pair].predict_proba(features[rows])[:, 1]
            out = redistribute(out, rows, pair, p_b)
            self.gated_counts_[pair] = int(rows.sum())
        return out

    def effects(self, before: Array, after: Array, y: npt.NDArray[np.int64]) -> dict[Pair, tuple[int, int]]:
        """Per pair, ``(rows gated, rows made right minus rows made wrong)`` of one :meth:`predict`.

        Args:
            before: ``(n, C)`` probabilities given to :meth:`predict`.
            after: ``(n, C)`` what it returned.
            y: ``(n,)`` true classes of those rows.
        """
        out = {}
        for pair, rows in self.gates(before).items():
            fixed = (after[rows].argmax(axis=1) == y[rows]).sum() - (before[rows].argmax(axis=1) == y[rows]).sum()
            out[pair] = (int(rows.sum()), int(fixed))
        return out

    def _nested_answers(
        self,
        features: Array,
        y: npt.NDArray[np.int64],
        folds: npt.NDArray[np.int64],
        pair: Pair,
        gate: npt.NDArray[np.bool_],
        in_pair: npt.NDArray[np.bool_],
    ) -> Array:
        """The expert's P(b) on the gated rows of each fold, from an expert blind to that fold."""
        p_b = np.full(len(y), 0.5)
        for k in np.unique(folds):
            held = folds == k
            rows = held & gate
            if rows.any():
                train = in_pair & ~held
                expert = _fit_binary(self.factory, features[train], y[train] == pair[1])
                p_b[rows] = expert.predict_proba(features[rows])[:, 1]
        return p_b

    def summary(self, classes: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per pair: the classes, the tuned threshold and the rows gated by the last
        :meth:`predict` (None before any)."""

        def name(c: int) -> str:
            return classes[c] if classes is not None else str(c)

        gated = getattr(self, "gated_counts_", {})
        rows = []
        for a, b in self.pairs_:
            pair = (a, b)
            rows.append({"pair": f"{name(a)}|{name(b)}", "threshold": self.thresholds_[pair],
                         "test_rows_gated": gated.get(pair)})  # fmt: skip
        return rows


def _gate(first: npt.NDArray[np.int64], second: npt.NDArray[np.int64], pair: Pair) -> npt.NDArray[np.bool_]:
    """Rows whose top-2 classes are exactly the pair, in either order."""
    a, b = pair
    return ((first == a) & (second == b)) | ((first == b) & (second == a))
