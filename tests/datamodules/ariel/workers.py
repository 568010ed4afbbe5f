"""A job for the worker-process test, in a module that imports little (workers are spawned)."""

from __future__ import annotations

import numpy as np


def fails_on_two(job) -> dict:
    """Raises for planet 2, else returns one array."""
    if job.planet_id == 2:
        raise ValueError("bad frames")
    return {"x": np.zeros(1)}
