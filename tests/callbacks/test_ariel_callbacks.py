"""Ariel callbacks in isolation: temperature scaling, conformal quantiles, physics checks, CSV format."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.callbacks.ariel.calibration import ConformalCalibration, TemperatureScaling, conformal_quantile
from src.callbacks.ariel.outputs import submission_frame
from src.callbacks.ariel.physics import PhysicsConstraints, high_frequency_power, violation_maps
from src.core.errors import ConfigError
from src.modules.ariel.parts import ArielOutput


def test_temperature_scale_is_the_closed_form_rms_of_z() -> None:
    n = 10.0
    sum_z2 = torch.tensor([4.0 * n, 1.0 * n, 0.25 * n], dtype=torch.float64)  # mean z^2 of 4, 1, 1/4
    count = torch.tensor(n, dtype=torch.float64)
    per_bin = TemperatureScaling(per_bin=True, shrinkage=0.0).fit_scale(sum_z2, count)
    torch.testing.assert_close(per_bin, torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64))
    global_s2 = (4.0 + 1.0 + 0.25) / 3
    single = TemperatureScaling(per_bin=False).fit_scale(sum_z2, count)
    torch.testing.assert_close(single, torch.full((3,), math.sqrt(global_s2), dtype=torch.float64))
    # Shrinkage: k pseudo-planets at the global variance.
    shrunk = TemperatureScaling(per_bin=True, shrinkage=10.0).fit_scale(sum_z2, count)
    assert float(shrunk[0]) == pytest.approx(math.sqrt((4.0 * n + 10.0 * global_s2) / (n + 10.0)))


def test_temperature_state_round_trips_and_scales_sigma() -> None:
    ts = TemperatureScaling()
    outputs = {"sigma": torch.ones(2, 3)}
    assert torch.equal(ts.calibrate(dict(outputs))["sigma"], outputs["sigma"])  # unfitted: unchanged
    ts.scale = torch.tensor([1.0, 2.0, 3.0])
    restored = TemperatureScaling()
    restored.load_state_dict(ts.state_dict())
    torch.testing.assert_close(restored.calibrate(dict(outputs))["sigma"], torch.tensor([[1.0, 2.0, 3.0]] * 2))
    with pytest.raises(ConfigError, match="shrinkage=-1"):
        TemperatureScaling(shrinkage=-1)


def test_conformal_quantile_uses_the_finite_sample_rank() -> None:
    scores = torch.arange(1.0, 10.0)[:, None]  # n = 9
    assert float(conformal_quantile(scores, 0.68)[0]) == 7.0  # ceil(10 x 0.68) = 7th smallest
    assert math.isinf(float(conformal_quantile(scores, 0.95)[0]))  # rank 10 > n: no finite band
    cal = ConformalCalibration(levels=[0.68])
    cal.quantiles, cal.sim_quantiles = {"68": [2.0, 3.0]}, {"68": 4.0}
    out = cal.calibrate({"sigma": torch.ones(1, 2), "sigma_raw": torch.full((1, 2), 0.5)})
    torch.testing.assert_close(out["half_width_68"], torch.tensor([[1.0, 1.5]]))
    torch.testing.assert_close(out["sim_half_width_68"], torch.tensor([[2.0, 2.0]]))


def test_conformal_cross_fit_coverage_is_close_to_nominal_on_gaussian_scores() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(400, 50, generator=g, dtype=torch.float64).abs()
    report = ConformalCalibration(levels=[0.68, 0.95])._cross_fit(scores, torch.ones_like(scores), 0.68)
    assert report["cov68"] == pytest.approx(0.68, abs=0.03)
    assert report["sim_cov68"] == pytest.approx(0.68, abs=0.08)


def test_violation_maps_flag_spikes_negatives_and_noise() -> None:
    smooth = 0.01 + 1e-4 * torch.linspace(0, 1, 283, dtype=torch.float64).repeat(3, 1)
    maps = violation_maps(smooth, smooth_threshold_ppm=50.0, fft_cutoff=0.25, fft_threshold=0.5)
    assert not maps["any"].any()
    spiky, negative, noisy = smooth[0].clone(), smooth[1].clone(), smooth[2].clone()
    spiky[100] += 1e-3  # a 1000 ppm spike: |second difference| of 1000 and 2000 ppm around it
    negative -= 0.0105  # a smooth spectrum below zero everywhere
    noisy[1:] += 1e-3 * torch.randn(282, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    maps = violation_maps(torch.stack([spiky, negative, noisy]), 50.0, 0.25, 0.5)
    assert maps["smooth"][0].nonzero().flatten().tolist() == [99, 100, 101]
    assert maps["negative"].any(dim=1).tolist() == [False, True, False] and bool(maps["negative"][1].all())
    assert maps["high_freq"].tolist() == [True, False, True]  # a one-bin spike is high-frequency too


def test_physics_penalty_is_zero_for_a_straight_positive_spectrum() -> None:
    cb = PhysicsConstraints(smooth_weight=1.0, negative_weight=1.0, fft_weight=1.0)
    unit = torch.full((2, 283), 1e-4)
    straight = 0.01 + 1e-4 * torch.arange(283.0).repeat(2, 1) / 283

    def out(mu: torch.Tensor) -> ArielOutput:
        return ArielOutput(mu=mu, sigma=unit, ref=mu, unit=unit, embedding=mu)

    assert float(cb.penalty(out(straight), {})) == pytest.approx(0.0, abs=1e-6)
    bumpy = straight.clone()
    bumpy[:, 1::2] += 1e-4  # one unit up and down every bin: d2 = ±2 units, all power at Nyquist
    assert float(cb.penalty(out(bumpy), {})) > 3.0
    _, share = high_frequency_power(bumpy[:, 1:].double(), 0.25)
    assert float(share.min()) > 0.9


def test_submission_frame_has_the_competition_columns() -> None:
    ids = np.array([2_000_000_007, 12])  # ids beyond float32 precision stay exact
    frame = submission_frame(ids, np.full((2, 283), 0.01), np.full((2, 283), 1e-4))
    assert list(frame.columns[:3]) == ["planet_id", "wl_1", "wl_2"] and frame.columns[-1] == "sigma_283"
    assert frame.shape == (2, 1 + 2 * 283) and frame["planet_id"].tolist() == [2_000_000_007, 12]
    with pytest.raises(ValueError, match="283"):
        submission_frame(ids, np.zeros((2, 10)), np.zeros((2, 10)))
