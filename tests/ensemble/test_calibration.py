"""Calibration: a known temperature and a known class bias are recovered; ECE by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from src.ensemble.blends import nested_oof_predict
from src.ensemble.calibration import CalibrationChain, ClassBias, TemperatureScaling, expected_calibration_error

C = 5


def sample_labels(rng: np.random.Generator, z: np.ndarray) -> np.ndarray:
    """Draw one class per row from softmax(z): z are the true (calibrated) logits."""
    p = softmax(z, axis=1)
    return (p.cumsum(axis=1) > rng.random((len(z), 1))).argmax(axis=1)


@pytest.fixture
def true_logits(rng) -> tuple[np.ndarray, np.ndarray]:
    z = rng.normal(0.0, 2.0, (6000, C))
    return z, sample_labels(rng, z)


def test_expected_calibration_error_matches_hand_computed_values() -> None:
    y = np.array([0, 1, 0, 1])
    # Every row predicts class 0 with confidence 0.8; half are right: |0.5 - 0.8| = 0.3.
    probs = np.tile([0.8, 0.2], (4, 1))
    assert expected_calibration_error(probs, y) == pytest.approx(0.3, abs=1e-6)
    assert expected_calibration_error(np.eye(2)[y], y) == pytest.approx(0.0, abs=1e-9)


def test_temperature_scaling_recovers_a_known_temperature(true_logits) -> None:
    z, y = true_logits
    t_true = 2.5
    overconfident = softmax(z * t_true, axis=1)  # softmax(z'/T) with z' = z * T is calibrated
    scaler = TemperatureScaling().fit(overconfident, y)
    assert scaler.temperature_ == pytest.approx(t_true, rel=0.05)
    calibrated = scaler.predict(overconfident)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), overconfident.argmax(axis=1))
    before, after = expected_calibration_error(overconfident, y), expected_calibration_error(calibrated, y)
    assert before > 0.1 and after < 0.03


def test_class_bias_undoes_a_known_additive_bias(true_logits) -> None:
    z, y = true_logits
    shift = np.array([1.0, -0.5, 0.0, 0.5, -1.0])
    biased = softmax(z + shift, axis=1)
    fixer = ClassBias().fit(biased, y)
    np.testing.assert_allclose(fixer.bias_, -(shift - shift.mean()), atol=0.12)
    fixed = fixer.predict(biased)
    true_acc = (z.argmax(axis=1) == y).mean()
    assert (fixed.argmax(axis=1) == y).mean() > (biased.argmax(axis=1) == y).mean() + 0.01
    assert (fixed.argmax(axis=1) == y).mean() == pytest.approx(true_acc, abs=0.01)


def test_calibration_chain_fits_each_step_on_the_previous_output(true_logits) -> None:
    z, y = true_logits
    shift = np.array([0.8, 0.0, 0.0, 0.0, -0.8])
    probs = softmax((z + shift) * 2.0, axis=1)
    folds = np.arange(len(y)) % 5
    nested = nested_oof_predict(lambda: CalibrationChain([ClassBias, TemperatureScaling]), probs, y, folds)
    chain = CalibrationChain([ClassBias, TemperatureScaling]).fit(probs, y)
    assert chain.steps_[1].temperature_ == pytest.approx(2.0, rel=0.1)
    np.testing.assert_allclose(nested.sum(axis=1), 1.0)
    assert expected_calibration_error(nested, y) < 0.03 < expected_calibration_error(probs, y)
