"""Pair experts: they find the confused pair, fix it out-of-sample and touch nothing else.

Out-of-sample scores come from the cross-fitted stack (src/ensemble/stack.py): each fold is
corrected by experts whose pairs, thresholds and weights were chosen on the other folds."""

from __future__ import annotations

import numpy as np
import pytest

from src.core.errors import DataError
from src.ensemble.blends import SelectMember
from src.ensemble.experts import PairExperts, confused_pairs, pair_features, top2
from src.ensemble.stack import StackRecipe, cross_fit_stack, expert_summary
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


def experts_only(**kwargs) -> StackRecipe:
    """A stack of one member as is plus pair experts: scores the experts alone, cross-fitted."""
    return StackRecipe({"base": lambda: SelectMember(0)}, experts=lambda: PairExperts(**kwargs))


def test_experts_fix_the_confusable_pair_out_of_sample(confusable) -> None:
    base, features, y, folds = confusable
    experts = PairExperts(top_k=2).fit(base, features, y, folds)
    assert experts.pairs_[0] == (2, 3)
    assert experts.thresholds_[(2, 3)] > 0
    cross = cross_fit_stack(experts_only(top_k=2), [base], features, y, folds)
    corrected = cross.stages[-1]
    np.testing.assert_array_equal(cross.stages[0], base)
    assert accuracy(corrected, y) > accuracy(base, y) + 0.1  # every choice made on the other folds
    (row,) = [r for r in expert_summary(cross.experts, ["0", "1", "2", "3"]) if r["pair"] == "2|3"]
    assert row["folds_chosen"] == 5 and row["oof_rows_gated"] > 50
    assert row["oof_net_fixed"] >= 0.1 * len(y)
    np.testing.assert_allclose(corrected.sum(axis=1), 1.0)


def test_pairs_are_chosen_without_the_fold_they_correct(rng) -> None:
    """Fold 0 alone confuses 0 with 1 (fixable); the other folds confuse 2 with 3. On all rows
    the 0|1 pair is the most confused, so experts chosen there would fix fold 0 with the label
    counts of fold 0 itself; the stack that scores fold 0 never sees them and picks 2|3."""
    y, folds = make_labels(rng, 600, C)
    z = noisy_logits(rng, y, C, signal=4.0, noise=0.3)
    in_fold0 = folds == 0
    swap01 = in_fold0 & np.isin(y, [0, 1])
    z[swap01] = z[swap01][:, [1, 0, 2, 3]]  # fold 0: every 0 looks like a 1 and back
    swap23 = ~in_fold0 & np.isin(y, [2, 3]) & (rng.random(len(y)) < 0.2)
    z[swap23] = z[swap23][:, [0, 1, 3, 2]]
    base = probs_of(z)
    features = np.column_stack([y == 1, rng.normal(size=len(y))]).astype(float)  # knows 0 from 1
    assert PairExperts(top_k=1).fit(base, features, y, folds).pairs_ == [(0, 1)]
    cross = cross_fit_stack(experts_only(top_k=1), [base], features, y, folds)
    assert cross.stacks[0].experts.pairs_ == [(2, 3)]
    assert all(cross.stacks[k].experts.pairs_ == [(0, 1)] for k in range(1, 5))
    assert accuracy(cross.stages[-1][in_fold0], y[in_fold0]) == accuracy(base[in_fold0], y[in_fold0])


def test_experts_need_two_folds(confusable) -> None:
    base, features, y, _ = confusable
    with pytest.raises(DataError, match="at least 2 folds"):
        PairExperts().fit(base, features, y, np.zeros(len(y), dtype=np.int64))


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
    cross = cross_fit_stack(experts_only(top_k=2, margins=[0.0, 0.5, 1.0]), [base], useless, y, folds)
    assert accuracy(cross.stages[-1], y) > accuracy(base, y) - 0.03
