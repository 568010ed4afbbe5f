"""Pair experts: they find the confused pair, fix it out-of-sample and touch nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from src.ensemble.experts import PairExperts, confused_pairs, pair_features, top2
from tests.ensemble.synthetic import make_labels, noisy_logits, probs_of

C = 4


@pytest.fixture
def confusable(rng):
    """Member A is good except that it cannot tell classes 2 and 3 apart; member B can.

    The base prediction is A alone; an expert reading both members' log-probabilities can
    separate 2 from 3.
    """
    y, folds = make_labels(rng, 800, C)
    za = noisy_logits(rng, y, C, signal=3.0, noise=0.8)
    pair_rows = np.isin(y, [2, 3])
    za[np.ix_(pair_rows, [2, 3])] = 3.0 + rng.normal(0, 0.3, (pair_rows.sum(), 2))  # no 2-vs-3 signal
    zb = noisy_logits(rng, y, C, signal=2.0, noise=0.7)
    P = [probs_of(za), probs_of(zb)]
    return P[0], pair_features(P), y, folds


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == y).mean())


def test_confused_pairs_ranks_pairs_by_confusions_both_ways() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    pred = np.array([1, 1, 0, 1, 0, 2, 2, 0])  # 0<->1 confused 3 times, 2->0 once, 1<->2 never
    assert confused_pairs(np.eye(3)[pred], y, top_k=5) == [(0, 1), (0, 2)]
    assert confused_pairs(np.eye(3)[pred], y, top_k=1) == [(0, 1)]


def test_experts_fix_the_confusable_pair_out_of_sample(confusable) -> None:
    base, features, y, folds = confusable
    experts = PairExperts(top_k=2).fit(base, features, y, folds)
    assert experts.pairs_[0] == (2, 3)
    assert experts.thresholds_[(2, 3)] > 0
    assert accuracy(experts.oof_probs_, y) > accuracy(base, y) + 0.1  # honest: nested experts and thresholds
    assert experts.oof_gated_counts_[(2, 3)] > 50
    assert experts.oof_net_fixed_[(2, 3)] >= 0.1 * len(y)
    np.testing.assert_allclose(experts.oof_probs_.sum(axis=1), 1.0)


def test_rows_outside_the_gate_keep_their_probabilities_bit_for_bit(confusable) -> None:
    base, features, y, folds = confusable
    experts = PairExperts(top_k=3).fit(base, features, y, folds)
    out = experts.predict(base, features)
    first, second, margin = top2(base)
    gated = np.zeros(len(y), dtype=bool)
    for (a, b), tau in experts.thresholds_.items():
        rows = (np.minimum(first, second) == a) & (np.maximum(first, second) == b) & (margin < tau)
        # On its rows an expert moves only its pair's two columns and keeps their total mass.
        others = [c for c in range(C) if c not in (a, b)]
        np.testing.assert_array_equal(out[np.ix_(rows, others)], base[np.ix_(rows, others)])
        np.testing.assert_allclose(out[rows, a] + out[rows, b], base[rows, a] + base[rows, b], rtol=1e-12)
        gated |= rows
    assert gated.sum() == sum(experts.gated_counts_.values()) > 0
    np.testing.assert_array_equal(out[~gated], base[~gated])  # exact equality, not allclose
    assert not ((out != base).any(axis=1) & ~gated).any()
    assert accuracy(out, y) > accuracy(base, y) + 0.1


def test_without_useful_experts_the_threshold_closes_the_gate(rng) -> None:
    y, folds = make_labels(rng, 400, C)
    base = probs_of(noisy_logits(rng, y, C, 1.0, 1.0))
    useless = rng.normal(size=(400, 3))  # features unrelated to the labels
    experts = PairExperts(top_k=2, margins=[0.0, 0.5, 1.0]).fit(base, useless, y, folds)
    assert set(experts.thresholds_.values()) <= {0.0, 0.5, 1.0}
    assert accuracy(experts.oof_probs_, y) > accuracy(base, y) - 0.03
