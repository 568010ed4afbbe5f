"""Ariel scores and calibration metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from src.core.errors import ConfigError
from src.metrics.ariel import (
    ArielScore2024,
    ArielScore2025,
    IntervalCoverage,
    MAEppm,
    MeanGLL,
    ZScoreMoments,
    central_z,
    gaussian_log_likelihood,
    score_2024,
    score_2025,
)

LN_2PI = math.log(2 * math.pi)


def gll(y: float, mu: float, sigma: float) -> float:
    return -0.5 * (LN_2PI + math.log(sigma**2) + ((y - mu) / sigma) ** 2)


# One planet, two cells: an FGS1 cell and an AIRS cell.
Y = torch.tensor([[0.01, 0.02]], dtype=torch.float64)
MU = torch.tensor([[0.011, 0.02]], dtype=torch.float64)
SIGMA = torch.tensor([[0.001, 0.002]], dtype=torch.float64)
NAIVE = (0.015, 0.005)


def test_gaussian_log_likelihood_matches_the_formula() -> None:
    value = gaussian_log_likelihood(torch.tensor(0.01), torch.tensor(0.011), torch.tensor(0.001))
    # -1/2 [ln 2pi + ln 1e-6 + 1] = -1/2 [1.837877 - 13.815511 + 1]
    assert float(value) == pytest.approx(5.488817, abs=1e-5)


def test_score_2024_hand_computed() -> None:
    pred = gll(0.01, 0.011, 0.001) + gll(0.02, 0.02, 0.002)  # 5.488817 + 5.295670
    naive = gll(0.01, 0.015, 0.005) + gll(0.02, 0.015, 0.005)  # 2 x 3.879379
    ideal = gll(0.01, 0.01, 1e-5) + gll(0.02, 0.02, 1e-5)  # 2 x 10.593987
    expected = (pred - naive) / (ideal - naive)
    assert expected == pytest.approx(0.2253094, abs=1e-6)
    assert float(score_2024(Y, MU, SIGMA, *NAIVE)) == pytest.approx(expected, abs=1e-9)


def test_score_2025_hand_computed() -> None:
    # Per cell: (pred - naive) / (ideal - naive); FGS1 ideal sigma 1e-6, AIRS 1e-5.
    fgs1 = (gll(0.01, 0.011, 0.001) - gll(0.01, 0.015, 0.005)) / (gll(0.01, 0.01, 1e-6) - gll(0.01, 0.015, 0.005))
    airs = (gll(0.02, 0.02, 0.002) - gll(0.02, 0.015, 0.005)) / (gll(0.02, 0.02, 1e-5) - gll(0.02, 0.015, 0.005))
    assert (fgs1, airs) == (pytest.approx(0.1784855, abs=1e-6), pytest.approx(0.2109268, abs=1e-6))
    expected = (57.846 * fgs1 + airs) / 58.846
    assert expected == pytest.approx(0.1790368, abs=1e-6)
    assert float(score_2025(Y, MU, SIGMA, *NAIVE)) == pytest.approx(expected, abs=1e-9)


def test_scores_are_clipped_to_the_unit_interval() -> None:
    y = torch.tensor([[0.01, 0.02, 0.03]], dtype=torch.float64)
    # Far off with a tiny sigma: far worse than naive -> 0.
    assert float(score_2024(y, y + 0.01, torch.full_like(y, 1e-6), *NAIVE)) == 0.0
    assert float(score_2025(y, y + 0.01, torch.full_like(y, 1e-6), *NAIVE)) == 0.0
    # Exact with a sigma below the ideal one: better than ideal -> 1.
    assert float(score_2024(y, y, torch.full_like(y, 1e-7), *NAIVE)) == 1.0
    assert float(score_2024(y, y, torch.full_like(y, 1e-5), *NAIVE)) == pytest.approx(1.0, abs=1e-12)


def test_batches_accumulate_like_one_update() -> None:
    torch.manual_seed(0)
    y = 0.01 + 0.002 * torch.rand(6, 283, dtype=torch.float64)
    mu = y + 1e-4 * torch.randn_like(y)
    sigma = 1e-4 * (1 + torch.rand_like(y))
    for cls in (ArielScore2024, ArielScore2025):
        whole, parts = cls(*NAIVE), cls(*NAIVE)
        whole.update(mu, sigma, y)
        parts.update(mu[:2], sigma[:2], y[:2])
        parts.update(mu[2:], sigma[2:], y[2:])
        assert float(parts.compute()) == pytest.approx(float(whole.compute()), abs=1e-12)


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="sigma must be > 0"):
        score_2024(Y, MU, torch.zeros_like(SIGMA), *NAIVE)
    with pytest.raises(ConfigError, match="naive_sigma=0.0"):
        ArielScore2024(0.01, 0.0)


def test_mae_coverage_and_z_moments() -> None:
    y = torch.tensor([[0.5, 1.5, -0.9, 3.0]], dtype=torch.float64) * 1e-4
    mu = torch.zeros_like(y)
    sigma = torch.full_like(y, 1e-4)
    mae = MAEppm()
    mae.update(mu, y)
    assert float(mae.compute()) == pytest.approx((50 + 150 + 90 + 300) / 4)
    assert central_z(0.68) == pytest.approx(0.994458, abs=1e-6) and central_z(0.95) == pytest.approx(1.959964, abs=1e-6)
    cov68, cov95 = IntervalCoverage(0.68), IntervalCoverage(0.95)
    for cov in (cov68, cov95):
        cov.update(mu, sigma, y)
    assert float(cov68.compute()) == 0.5  # |z| = 0.5 and 0.9 inside 0.994
    assert float(cov95.compute()) == 0.75  # 1.5 too, not 3.0
    z = ZScoreMoments()
    z.update(mu, sigma, y)
    mean, std = z.compute()
    values = torch.tensor([0.5, 1.5, -0.9, 3.0], dtype=torch.float64)
    assert float(mean) == pytest.approx(float(values.mean()))
    assert float(std) == pytest.approx(float(values.std(unbiased=False)))
    g = MeanGLL()
    g.update(mu, sigma, y)
    assert float(g.compute()) == pytest.approx(sum(gll(float(v), 0.0, 1e-4) for v in y[0]) / 4)


def test_records_of_several_folds_are_each_scored_against_their_own_naive_prediction() -> None:
    from src.metrics.ariel import ArielScore2024, ArielScore2025, score_records

    g = torch.Generator().manual_seed(0)
    y = 0.01 + 0.002 * torch.rand(6, 5, generator=g, dtype=torch.float64)
    mu = y + 1e-4 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    sigma = torch.full_like(y, 2e-4)
    naive = [(0.011, 0.0008)] * 3 + [(0.0105, 0.0011)] * 3  # two folds, two training-label statistics
    records = [
        {
            "sample_id": str(i), "split": "val", "errors": [], "gt": {"mu": y[i].tolist()},
            "pred": {"mu": mu[i].tolist(), "sigma": sigma[i].tolist()},
            "naive": {"mean": naive[i][0], "sigma": naive[i][1]},
        }
        for i in range(6)
    ]  # fmt: skip
    metrics, per_planet = score_records(records)
    for name, metric in (("score2024", ArielScore2024()), ("score2025", ArielScore2025())):
        for rows in (slice(0, 3), slice(3, 6)):  # what the two folds' models were scored with
            metric.set_naive(*naive[rows.start])
            metric.update(mu[rows], sigma[rows], y[rows])
        assert metrics[name] == pytest.approx(float(metric.compute()), rel=1e-12), name
    assert len(per_planet) == 6
    one_naive = [{**r, "naive": {"mean": 0.011, "sigma": 0.0008}} for r in records]
    assert score_records(one_naive)[0]["score2024"] != pytest.approx(metrics["score2024"])
