"""The transit fit searches durations around the star table's T14, so long transits are found."""

from __future__ import annotations

import numpy as np
import torch

from src.modules.ariel.transit_fit import TransitWindowFit, expected_duration_h, window_share

META = ["Rs", "Ms", "Ts", "Mp", "e", "P", "sma", "i"]


def orbit(duration_h: float, b: float = 0.3, k: float = 0.1, period_d: float = 3.0) -> tuple[float, float]:
    """(a/Rs, inclination in degrees) of a circular orbit whose exact T14 is ``duration_h``."""
    chord = np.sqrt((1 + k) ** 2 - b**2)
    # T14 = P/pi asin(chord / (a sin i)) with a sin i = sqrt(a^2 - b^2)
    a_sin_i = chord / np.sin(np.pi * duration_h / (24 * period_d))
    a = np.sqrt(a_sin_i**2 + b**2)
    return float(a), float(np.degrees(np.arccos(b / a)))


def test_expected_duration_inverts_the_orbit_and_refuses_non_transits():
    a, inc = orbit(5.0)
    t14 = expected_duration_h(torch.tensor([3.0, 3.0]), torch.tensor([a, a]), torch.tensor([inc, 60.0]))
    assert abs(float(t14[0]) - 5.0) < 1e-6
    assert torch.isnan(t14[1])  # b = a cos 60° > 1 + k: no transit


def test_a_five_hour_transit_is_found_with_the_star_table_and_missed_without():
    n, steps, hours, t0, dur = 3, 90, 9.0, 4.2, 5.0
    times = ((torch.arange(steps) + 0.5) * hours / steps).expand(n, -1).double()
    box = window_share(times, torch.full((n,), t0).double(), torch.full((n,), dur).double())
    depth = torch.tensor([[0.006], [0.01], [0.014]], dtype=torch.float64)
    flux = 1e4 * (1 - depth[:, None, :] * box[..., None]).expand(-1, -1, 283)
    a, inc = orbit(dur)
    meta = torch.tensor([[1.0, 1.0, 5500.0, 1.0, 0.0, 3.0, a, inc]] * n)
    batch = {"fgs1": flux[..., 0].float(), "fgs1_time": times.float(), "airs": flux[..., 1:].float(),
             "airs_time": times.float(), "meta": meta}  # fmt: skip
    with_table = TransitWindowFit(t0_range_h=1.0, n_t0=41, meta_columns=META, n_duration=21)(batch)
    assert torch.allclose(with_table.duration_h.double(), torch.full((n,), dur).double(), atol=0.05)
    torch.testing.assert_close(with_table.depth[:, 0].double(), depth[:, 0], atol=2e-4, rtol=0)
    without = TransitWindowFit(t0_range_h=1.0, n_t0=41, n_duration=21)(batch)  # grid stops at 3.5 h
    assert float(without.duration_h.max()) <= 3.5
    assert float((without.depth[:, 0].double() - depth[:, 0]).abs().min()) > 5e-4
