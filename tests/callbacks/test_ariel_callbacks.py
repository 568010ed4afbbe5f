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
from src.metrics.ariel import central_z
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


class FakeModule:
    """What ``TemperatureScaling.refit`` reads of a module: one process, the naive prediction, log()."""

    trainer = None

    def __init__(self) -> None:
        self.naive_mean = torch.tensor(0.0, dtype=torch.float64)
        self.naive_sigma = torch.tensor(1e-3, dtype=torch.float64)
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **kwargs: object) -> None:
        self.logged[name] = float(value)


def refit_on(ts: TemperatureScaling, ids: torch.Tensor, z: torch.Tensor, sigma: float = 1e-4) -> dict[str, float]:
    """Refit ``ts`` on predictions ``mu = 0``, ``sigma``, ``y = z sigma`` in two batches; the logged values."""
    module = FakeModule()
    ts.buffer.clear()
    for rows in torch.tensor_split(torch.arange(len(ids)), 2):
        sig = torch.full((len(rows), z.shape[1]), sigma)
        ts.buffer.add({"mu": torch.zeros_like(sig), "sigma_raw": sig, "target": z[rows] * sigma,
                       "planet_id": ids[rows]})  # fmt: skip
    ts.refit(None, module)
    return module.logged


def alternating_z(n: int, small: float, large: float) -> torch.Tensor:
    """z = ±small on even rows and ±large on odd rows (sign alternating over 283 bins)."""
    sign = torch.tensor([1.0, -1.0]).repeat(142)[:283]
    size = torch.tensor([small, large]).repeat(n // 2)[:n]
    return size[:, None] * sign[None, :]


def test_temperature_val_cal_is_cross_fitted_and_the_kept_scale_uses_the_whole_fold() -> None:
    # Planets alternate (in planet-id order) between z = ±1 and z = ±3: the whole-fold scale is
    # sqrt(5) and scores mean z^2 = 1 on the same fold, but each half's scale, fitted on the other
    # half, is 3 or 1, so the out-of-sample z are ±1/3 and ±3: mean z^2 = (1/9 + 9) / 2.
    n = 40
    ids = 100 + 7 * torch.arange(n)
    z = alternating_z(n, 1.0, 3.0)
    ts = TemperatureScaling(per_bin=True, shrinkage=0.0)
    logged = refit_on(ts, ids, z)
    torch.testing.assert_close(ts.scale, torch.full((283,), math.sqrt(5.0)))
    assert logged["val/ts_scale"] == pytest.approx(math.sqrt(5.0), rel=1e-5)
    assert logged["val/cal_insample/z_std"] == pytest.approx(1.0, rel=0.02)
    assert logged["val/cal/z_std"] == pytest.approx(math.sqrt((1 / 9 + 9) / 2), rel=0.02)
    assert logged["val/cal/gll"] < logged["val/cal_insample/gll"] - 1.0  # out-of-sample is worse here
    # The halves follow planet ids, not the order the rows arrived in (DDP shares the fold out).
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    assert refit_on(TemperatureScaling(per_bin=True, shrinkage=0.0), ids[order], z[order]) == pytest.approx(logged)
    # A fold of one planet has no other half: its cross-fitted sigma stays unscaled.
    torch.testing.assert_close(ts.cross_fit(z[:1].double() ** 2), torch.ones(1, 283, dtype=torch.float64))


def test_cross_fitted_temperature_brings_coverage_of_overconfident_sigmas_to_nominal() -> None:
    g = torch.Generator().manual_seed(1)
    n = 200
    z_raw = 2.5 * torch.randn(n, 283, generator=g)  # sigma 2.5x too small: raw coverage@68 near 0.31
    raw_cov68 = float((z_raw.abs() <= central_z(0.68)).double().mean())
    logged = refit_on(TemperatureScaling(per_bin=True), torch.arange(n), z_raw)
    assert raw_cov68 < 0.35
    assert logged["val/cal/cov68"] == pytest.approx(0.68, abs=0.02)
    assert logged["val/cal/cov95"] == pytest.approx(0.95, abs=0.02)
    assert logged["val/cal/z_std"] == pytest.approx(1.0, abs=0.05)


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


def test_fold_planets_get_their_cross_fitted_scale_at_predict_time_others_the_whole_fold_scale():
    # Half the fold (even rows) is 3x overconfident, the other half calibrated: the scale each
    # planet gets at predict time is the one fitted without it, and survives a checkpoint.
    from src.callbacks.ariel.calibration import TemperatureScaling

    torch.manual_seed(0)
    n, bins = 8, 5
    y = torch.zeros(n, bins)
    mu = torch.randn(n, bins)
    sigma = torch.ones(n, bins)
    sigma[0::2] = 1 / 3
    ids = torch.arange(100, 100 + n)

    class Host:
        naive_mean, naive_sigma = 0.0, 1.0

        def log(self, *args, **kwargs):
            pass

    ts = TemperatureScaling(per_bin=False)
    ts.fit_and_log(Host(), mu, sigma, y, ids)
    z2 = ((y - mu) / sigma) ** 2
    other_half = {0: z2[1::2].mean().sqrt(), 1: z2[0::2].mean().sqrt()}
    restored = TemperatureScaling(per_bin=False)
    restored.load_state_dict(ts.state_dict())
    for cal in (ts, restored):
        out = cal.calibrate({"planet_id": torch.tensor([100, 101, 999]), "sigma": torch.ones(3, bins)})
        assert torch.allclose(out["sigma"][0], other_half[0].expand(bins).float(), rtol=1e-5)
        assert torch.allclose(out["sigma"][1], other_half[1].expand(bins).float(), rtol=1e-5)
        assert torch.allclose(out["sigma"][2], ts.scale.expand(bins), rtol=1e-5)  # not in the fold
    assert not torch.allclose(other_half[0], other_half[1])
