"""Blends and stackers on synthetic members whose right answer is known."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from sklearn.metrics import log_loss

from src.core.errors import DataError
from src.ensemble.blends import (
    ClasswiseRidge,
    HGBStacker,
    LogisticStacker,
    MeanBlend,
    NNLSBlend,
    SelectMember,
    nested_oof_predict,
)
from tests.ensemble.synthetic import make_labels, noisy_logits, probs_of

C = 4
FAST_HGB = partial(HGBStacker, max_iter=30)


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == y).mean())


@pytest.fixture
def perfect_and_noisy(rng):
    y, folds = make_labels(rng, 600, C)
    perfect = probs_of(noisy_logits(rng, y, C, signal=6.0, noise=0.3))
    noisy = probs_of(noisy_logits(rng, y, C, signal=1.0, noise=1.5))
    return [perfect, noisy], y, folds


def test_nnls_puts_the_weight_on_the_perfect_member(perfect_and_noisy) -> None:
    P, y, _ = perfect_and_noisy
    blend = NNLSBlend().fit(P, y)
    assert blend.weights_.sum() == pytest.approx(1.0)
    assert blend.weights_[0] > 0.95
    swapped = NNLSBlend().fit(P[::-1], y)
    assert swapped.weights_[1] > 0.95


def test_classwise_ridge_follows_the_perfect_member(perfect_and_noisy) -> None:
    P, y, folds = perfect_and_noisy
    out = nested_oof_predict(ClasswiseRidge, P, y, folds)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert accuracy(out, y) >= accuracy(P[0], y) - 0.01 > 0.98


def test_mean_of_members_with_independent_errors_beats_each(rng) -> None:
    y, _ = make_labels(rng, 2000, C)
    a, b = (probs_of(noisy_logits(rng, y, C, signal=1.5, noise=1.5)) for _ in range(2))
    mean = MeanBlend().fit([a, b], y).predict([a, b])
    assert accuracy(mean, y) > max(accuracy(a, y), accuracy(b, y)) + 0.05
    assert log_loss(y, mean) < min(log_loss(y, a), log_loss(y, b)) - 0.1


@pytest.mark.parametrize("stacker", [LogisticStacker, FAST_HGB], ids=["logreg", "hgb"])
def test_stacker_recovers_a_class_permutation(rng, stacker) -> None:
    y, folds = make_labels(rng, 600, C)
    base = probs_of(noisy_logits(rng, y, C, signal=3.0, noise=1.0))
    perm = np.array([2, 0, 3, 1])
    permuted = np.empty_like(base)
    permuted[:, perm] = base  # the member writes class c's probability in column perm[c]
    assert accuracy(permuted, y) < 0.05
    out = nested_oof_predict(stacker, [permuted], y, folds)
    assert accuracy(out, y) > accuracy(base, y) - 0.03 > 0.9


def test_nested_scores_expose_an_overfitting_stacker(rng) -> None:
    n = 400
    y = rng.integers(0, C, n)
    folds = np.arange(n) % 5
    P = [probs_of(rng.normal(0, 1, (n, C))) for _ in range(2)]  # no information about y at all
    overfit = partial(HGBStacker, max_iter=50, max_leaf_nodes=31, l2_regularization=0.0, learning_rate=0.3)
    in_sample = accuracy(overfit().fit(P, y).predict(P), y)
    nested = accuracy(nested_oof_predict(overfit, P, y, folds), y)
    assert in_sample > 0.9
    assert nested < 0.35  # chance is 0.25
    assert nested < in_sample - 0.5


@pytest.mark.parametrize(
    "factory",
    [MeanBlend, NNLSBlend, ClasswiseRidge, LogisticStacker, FAST_HGB, partial(SelectMember, 1)],
    ids=["mean", "nnls", "ridge", "logreg", "hgb", "select"],
)
def test_every_blend_outputs_probabilities_even_when_a_fold_lacks_a_class(rng, factory) -> None:
    y, folds = make_labels(rng, 200, C)
    folds[y == 3] = 0  # fold 0's complement has no class 3: stackers must still output C columns
    P = [probs_of(noisy_logits(rng, y, C, 2.0, 1.0)) for _ in range(2)]
    out = nested_oof_predict(factory, P, y, folds)
    assert out.shape == (200, C) and np.isfinite(out).all() and (out >= 0).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-9)


def test_nested_fitting_needs_two_folds(rng) -> None:
    y = rng.integers(0, C, 20)
    with pytest.raises(DataError, match="at least 2 folds"):
        nested_oof_predict(MeanBlend, [probs_of(rng.normal(size=(20, C)))], y, np.zeros(20, dtype=int))
