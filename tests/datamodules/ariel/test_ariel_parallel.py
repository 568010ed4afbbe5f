"""Planets calibrated in worker processes: the same arrays as in one process, a progress bar,
a failing planet named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.core.errors import ConfigError, DataError
from src.datamodules.ariel.parallel import PlanetJob, run_jobs
from tests.datamodules.ariel.test_ariel_datamodule import make
from tests.datamodules.ariel.workers import fails_on_two


def test_two_worker_processes_give_the_arrays_of_one(tiny_root: Path, tmp_path: Path, capsys) -> None:
    one = make(tiny_root, tmp_path / "one")
    one.prepare_data()
    two = make(tiny_root, tmp_path / "two", calibration={"workers": 2})
    two.prepare_data()
    out = capsys.readouterr().out
    assert "Ariel calibration" in out and "3/3" in out
    assert set(one._calibrated) == set(two._calibrated) and len(one._calibrated) == 3
    for key, arrays in one._calibrated.items():
        for name, values in arrays.items():
            np.testing.assert_array_equal(values, two._calibrated[key][name])
    again = make(tiny_root, tmp_path / "two", calibration={"workers": 2})  # what the workers cached
    again.prepare_data()
    assert (again.cache.hits, again.cache.misses) == (3, 0)


def test_a_planet_failing_in_a_worker_is_named() -> None:
    jobs = [PlanetJob("train", k, "fp") for k in (1, 2, 3)]
    with pytest.raises(DataError, match="calibrating train planet 2 failed in a worker: ValueError: bad frames"):
        list(run_jobs(jobs, fails_on_two, workers=2, show_progress=False))


@pytest.mark.parametrize("workers", [0, -1, 1.5, "4", True])
def test_workers_must_be_a_positive_int(tiny_root: Path, tmp_path: Path, workers) -> None:
    with pytest.raises(ConfigError, match="data.calibration.workers="):
        make(tiny_root, tmp_path, calibration={"workers": workers})
