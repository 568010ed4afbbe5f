"""Gaussian-member blends: mixture moments, fitted weights, nested out-of-fold predictions."""

from __future__ import annotations

import numpy as np
import pytest

from src.core.errors import DataError
from src.ensemble.gaussian import GaussianMixtureBlend, mean_gll, mixture_moments, nested_gaussian_oof


def test_mixture_moments_add_the_members_disagreement() -> None:
    mus = [np.zeros((2, 3)), np.full((2, 3), 2.0)]
    sigmas = [np.ones((2, 3)), np.ones((2, 3))]
    mu, sigma = mixture_moments(np.array([0.5, 0.5]), mus, sigmas, floor=1e-9)
    assert np.allclose(mu, 1.0)
    assert np.allclose(sigma, np.sqrt(2.0))  # 1 within + 1 between


def _members(rng: np.random.Generator, n: int = 400, t: int = 5) -> tuple[np.ndarray, list, list]:
    y = rng.normal(size=(n, t))
    good_mu, good_sigma = y + rng.normal(scale=0.1, size=(n, t)), np.full((n, t), 0.1)
    bad_mu, bad_sigma = y + rng.normal(scale=1.0, size=(n, t)), np.full((n, t), 1.0)
    return y, [good_mu, bad_mu], [good_sigma, bad_sigma]


def test_fitted_weights_prefer_the_better_member_and_beat_equal_weights() -> None:
    y, mus, sigmas = _members(np.random.default_rng(0))
    blend = GaussianMixtureBlend().fit(mus, sigmas, y)
    assert blend.weights_[0] > 0.8 and np.isclose(blend.weights_.sum(), 1.0)
    fitted = mean_gll(y, *blend.predict(mus, sigmas))
    equal = mean_gll(y, *mixture_moments(np.array([0.5, 0.5]), mus, sigmas, 1e-8))
    assert fitted > equal


def test_nested_oof_never_fits_on_the_rows_it_predicts() -> None:
    y, mus, sigmas = _members(np.random.default_rng(1))
    folds = np.arange(len(y)) % 4
    mu, sigma = nested_gaussian_oof(GaussianMixtureBlend, mus, sigmas, y, folds)
    assert mu.shape == y.shape and np.all(sigma > 0)
    # Poisoning fold 0's labels changes no prediction of fold 0 (its weights came from folds 1-3).
    y_bad = y.copy()
    y_bad[folds == 0] += 100.0
    mu_bad, _ = nested_gaussian_oof(GaussianMixtureBlend, mus, sigmas, y_bad, folds)
    assert np.allclose(mu_bad[folds == 0], mu[folds == 0])
    assert not np.allclose(mu_bad[folds == 1], mu[folds == 1])
    with pytest.raises(DataError, match="at least 2 folds"):
        nested_gaussian_oof(GaussianMixtureBlend, mus, sigmas, y, np.zeros(len(y), dtype=int))
