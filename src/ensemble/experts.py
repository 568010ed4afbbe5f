"""Gated pair experts: a binary model for each of the most confused class pairs.

For a pair ``(a, b)`` the expert is fitted on the OOF rows labelled ``a`` or ``b`` and answers
"a or b?". It is applied only where that question is the open one: rows whose top-2 predicted
classes are exactly ``{a, b}`` and whose top-1/top-2 probability margin is below a threshold tuned
on OOF. There it redistributes the pair's probability mass ``p_a + p_b`` by the expert's answer;
every other row and every other class keeps its probability bit for bit.

Honesty: the expert's OOF answers come from experts fitted on the other folds, and the reported
OOF probabilities use thresholds tuned on the other folds too, so the gain they show is
out-of-sample. The final experts and thresholds (used on test rows) are fitted on all OOF rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix

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
        margins: Candidate margin thresholds, tuned on OOF for accuracy.
        factory: Makes an unfitted binary classifier (``fit(X, t)``, ``predict_proba(X)``);
            default ``LogisticRegression(C=1.0, max_iter=1000)``.

    Attributes:
        pairs_: The pairs, most confused first.
        thresholds_: Tuned margin threshold per pair (fitted on all OOF rows).
        oof_probs_: ``(n, C)`` honest OOF probabilities after the experts.
        oof_gated_counts_: OOF rows the expert was applied to, per pair (nested thresholds).
        oof_net_fixed_: Per pair, OOF rows it made right minus rows it made wrong (honest).
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
        """Choose pairs, fit experts (nested for OOF, then on all rows) and tune thresholds.

        Args:
            probs: ``(n, C)`` honest OOF probabilities the experts correct.
            features: ``(n, F)`` expert inputs (e.g. :func:`pair_features` of the members).
            y: ``(n,)`` true classes.
            folds: ``(n,)`` fold of each row, for nested fits.
        """
        self.pairs_ = confused_pairs(probs, y, self.top_k)
        self.experts_: dict[Pair, Any] = {}
        self.thresholds_: dict[Pair, float] = {}
        self.oof_gated_counts_: dict[Pair, int] = {}
        self.oof_net_fixed_: dict[Pair, int] = {}
        base_correct = probs.argmax(axis=1) == y
        first, second, margin = top2(probs)
        out = probs.copy()
        for pair in self.pairs_:
            gate = _gate(first, second, pair)
            in_pair = np.isin(y, pair)
            p_b = self._nested_answers(features, y, folds, pair, gate, in_pair)
            changed = self._nested_gate(probs, y, folds, gate, margin, pair, p_b)
            out = redistribute(out, changed, pair, p_b)
            self.oof_gated_counts_[pair] = int(changed.sum())
            self.oof_net_fixed_[pair] = int(
                (out[changed].argmax(axis=1) == y[changed]).sum() - base_correct[changed].sum()
            )
            self.thresholds_[pair] = best_threshold(probs, y, gate, margin, pair, p_b, self.margins)
            self.experts_[pair] = _fit_binary(self.factory, features[in_pair], y[in_pair] == pair[1])
        self.oof_probs_ = out
        return self

    def predict(self, probs: Array, features: Array) -> Array:
        """Apply the fitted experts; rows outside every gate are returned unchanged.

        Args:
            probs: ``(n, C)`` probabilities (same pipeline as the OOF ones fitted on).
            features: ``(n, F)`` expert inputs built like the fitting ones.
        """
        first, second, margin = top2(probs)
        out = probs.copy()
        self.gated_counts_: dict[Pair, int] = {}
        for pair in self.pairs_:
            rows = _gate(first, second, pair) & (margin < self.thresholds_[pair])
            p_b = np.zeros(len(probs))
            if rows.any():
                p_b[rows] = self.experts_[pair].predict_proba(features[rows])[:, 1]
            out = redistribute(out, rows, pair, p_b)
            self.gated_counts_[pair] = int(rows.sum())
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

    def _nested_gate(
        self,
        probs: Array,
        y: npt.NDArray[np.int64],
        folds: npt.NDArray[np.int64],
        gate: npt.NDArray[np.bool_],
        margin: Array,
        pair: Pair,
        p_b: Array,
    ) -> npt.NDArray[np.bool_]:
        """Rows changed when each fold's threshold is tuned on the other folds."""
        changed = np.zeros(len(y), dtype=bool)
        for k in np.unique(folds):
            held = folds == k
            other = ~held
            tau = best_threshold(probs[other], y[other], gate[other], margin[other], pair, p_b[other], self.margins)
            changed |= held & gate & (margin < tau)
        return changed

    def summary(self, classes: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per pair: the classes, the tuned threshold, the rows gated and the net fixes."""

        def name(c: int) -> str:
            return classes[c] if classes is not None else str(c)

        gated = getattr(self, "gated_counts_", {})
        return [
            {
                "pair": f"{name(a)}|{name(b)}",
                "threshold": self.thresholds_[(a, b)],
                "oof_rows_gated": self.oof_gated_counts_[(a, b)],
                "oof_net_fixed": self.oof_net_fixed_[(a, b)],
                "test_rows_gated": gated.get((a, b)),
            }
            for a, b in self.pairs_
        ]


def _gate(first: npt.NDArray[np.int64], second: npt.NDArray[np.int64], pair: Pair) -> npt.NDArray[np.bool_]:
    """Rows whose top-2 classes are exactly the pair, in either order."""
    a, b = pair
    return ((first == a) & (second == b)) | ((first == b) & (second == a))
