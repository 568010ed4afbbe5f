"""Risk audit: numbers in [0, 1], ordered as they must be, reproducible, and a bootstrap that is one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src.ensemble.audit import AUDIT_COLUMNS, bootstrap_accuracy, risk_audit


@pytest.fixture
def predictions(rng):
    n = 600
    y = rng.integers(0, 4, n)
    pred = np.where(rng.random(n) < 0.8, y, rng.integers(0, 4, n))
    groups = np.array([f"g{i % 40}" for i in range(n)])
    return pred, y, groups


def test_audit_numbers_are_accuracies_in_the_right_order(predictions) -> None:
    pred, y, groups = predictions
    row = risk_audit(pred, y, groups, n_boot=500, seed=0, n_splits=10)
    assert set(row) == set(AUDIT_COLUMNS)
    assert all(0.0 <= v <= 1.0 for v in row.values())
    assert row["acc"] == pytest.approx((pred == y).mean())
    assert row["acc_boot_p5"] <= row["acc"]
    assert row["acc_holdout_min"] <= row["acc_holdout_mean"]
    assert row["acc_group_min"] <= row["acc_group_median"]
    assert row == risk_audit(pred, y, groups, n_boot=500, seed=0, n_splits=10)  # seeded


def test_bootstrap_matches_resampling_rows(predictions) -> None:
    pred, y, _ = predictions
    correct = pred == y
    drawn = bootstrap_accuracy(correct, n_boot=4000, seed=1)
    rng = np.random.default_rng(2)
    resampled = correct[rng.integers(0, len(correct), (4000, len(correct)))].mean(axis=1)
    assert np.percentile(drawn, 5) == pytest.approx(np.percentile(resampled, 5), abs=0.005)
    assert drawn.std() == pytest.approx(math.sqrt(correct.mean() * (1 - correct.mean()) / len(correct)), rel=0.05)


def test_perfect_predictions_and_missing_groups(predictions) -> None:
    _, y, _ = predictions
    row = risk_audit(y, y, None, n_boot=100, seed=0, n_splits=5)
    assert row["acc"] == row["acc_boot_p5"] == row["acc_holdout_min"] == 1.0
    assert math.isnan(row["acc_group_median"]) and math.isnan(row["acc_group_min"])


def test_a_singleton_class_falls_back_to_plain_hold_outs() -> None:
    y = np.array([0] * 30 + [1] * 29 + [2])  # class 2 cannot be stratified
    row = risk_audit(y, y, None, n_boot=10, seed=0, n_splits=3)
    assert row["acc_holdout_min"] == 1.0
