"""The stack (choose a candidate, calibrate, add pair experts) is scored out of sample: a fold's
predictions depend on no label of that fold, while the same stack fitted on every row would."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from src.core.errors import ConfigError
from src.ensemble.blends import LogisticStacker, MeanBlend, NNLSBlend, SelectMember
from src.ensemble.calibration import ClassBias, TemperatureScaling
from src.ensemble.experts import PairExperts, pair_features
from src.ensemble.stack import StackRecipe, choose, cross_fit_stack, fit_stack, inner_folds
from tests.ensemble.synthetic import make_labels, noisy_logits, probs_of

C = 4


def full_recipe(**kwargs) -> StackRecipe:
    candidates = {"member:a": partial(SelectMember, 0), "member:b": partial(SelectMember, 1), "blend:mean": MeanBlend,
                  "blend:nnls": NNLSBlend, "blend:logreg": LogisticStacker}  # fmt: skip
    return StackRecipe(candidates, calibration=(ClassBias, TemperatureScaling),
                       experts=partial(PairExperts, top_k=2), **kwargs)  # fmt: skip


@pytest.fixture
def members(rng):
    y, folds = make_labels(rng, 500, C)
    P = [probs_of(noisy_logits(rng, y, C, signal=1.5, noise=1.0)) for _ in range(2)]
    return P, pair_features(P), y, folds


def test_stage_names_follow_the_steps() -> None:
    assert full_recipe().stage_names() == ["selected", "selected+calibrated", "selected+calibrated+experts"]
    assert StackRecipe({"m": MeanBlend}).stage_names() == ["selected"]
    assert StackRecipe({"m": MeanBlend}, experts=PairExperts).stage_names() == ["selected", "selected+experts"]


def test_a_folds_labels_reach_none_of_its_choices(members, rng) -> None:
    """Relabel fold 0 at random: the cross-fitted stages of fold 0 stay bit for bit the same
    (candidate, bias, temperature, pairs, thresholds all chosen on folds 1-4), while the stack
    fitted on every row — what an in-sample selection would score — changes on fold 0."""
    P, features, y, folds = members
    held = folds == 0
    relabelled = y.copy()
    relabelled[held] = rng.integers(0, C, held.sum())
    recipe = full_recipe()
    honest = cross_fit_stack(recipe, P, features, y, folds)
    honest_relabelled = cross_fit_stack(recipe, P, features, relabelled, folds)
    assert len(honest.stages) == 3 and honest.chosen[0] == honest_relabelled.chosen[0]
    for stage, stage_relabelled in zip(honest.stages, honest_relabelled.stages, strict=True):
        np.testing.assert_array_equal(stage[held], stage_relabelled[held])
        assert not np.array_equal(stage[~held], stage_relabelled[~held])  # fold 0 trains folds 1-4
    leaky = fit_stack(recipe, P, features, y, folds).predict(P, features)
    leaky_relabelled = fit_stack(recipe, P, features, relabelled, folds).predict(P, features)
    assert not np.array_equal(leaky[-1][held], leaky_relabelled[-1][held])


def test_the_candidate_is_chosen_on_the_other_folds(rng) -> None:
    """Member a is perfect on fold 0 and weaker than b elsewhere; b is wrong on every row of fold 0.
    Over all rows a wins, so a choice made on every row picks a for fold 0 too; the stack that
    scores fold 0 has not seen fold 0 and picks b."""
    y, folds = make_labels(rng, 500, C, n_folds=5)
    held = folds == 0
    za = noisy_logits(rng, y, C, signal=1.0, noise=1.0)
    zb = noisy_logits(rng, y, C, signal=1.5, noise=1.0)
    za[held] = noisy_logits(rng, y[held], C, signal=50.0, noise=0.1)
    zb[held] = noisy_logits(rng, y[held], C, signal=-5.0, noise=0.1)  # wrong on every fold 0 row
    P = [probs_of(za), probs_of(zb)]
    recipe = StackRecipe({"member:a": partial(SelectMember, 0), "member:b": partial(SelectMember, 1)})
    full = fit_stack(recipe, P, pair_features(P), y, folds)
    cross = cross_fit_stack(recipe, P, pair_features(P), y, folds)
    assert full.chosen == "member:a" and cross.chosen[0] == "member:b"
    assert all(cross.chosen[k] == "member:a" for k in range(1, 5))
    np.testing.assert_array_equal(cross.stages[0][held], P[1][held])  # the honest score pays for it


def test_two_folds_are_enough(members) -> None:
    """The other fold of a 2-fold table is one fold: nested fits split it in two, stratified."""
    P, features, y, folds = members
    two = folds % 2
    inner = inner_folds(np.zeros(len(y), dtype=np.int64), y, seed=0)
    assert set(inner) == {0, 1} and abs(int(inner.sum()) - len(y) // 2) <= C
    cross = cross_fit_stack(full_recipe(), P, features, y, two)
    assert set(cross.chosen) == {0, 1} and all(np.isfinite(s).all() for s in cross.stages)
    np.testing.assert_array_equal(inner_folds(folds, y, seed=0), folds)


def test_choose_breaks_accuracy_ties_by_log_loss_and_checks_the_metric() -> None:
    y = np.array([0, 1, 1])
    sharp = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
    soft = np.array([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4]])
    assert choose({"soft": soft, "sharp": sharp}, y, "acc") == "sharp"
    assert choose({"soft": soft, "sharp": sharp}, y, "log_loss") == "sharp"
    with pytest.raises(ConfigError, match="select_by='f1'"):
        choose({"soft": soft}, y, "f1")
