"""The Ariel competition table, built from predicted depths and sigmas.

Used by the submission callback after fit and by the module's prediction export (``predict.py``),
so both write the same columns: ``planet_id``, ``wl_1..wl_283`` (depths) and
``sigma_1..sigma_283`` (their standard deviations), fractions of the stellar flux.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.core.io import atomic_path
from src.modules.ariel.parts import N_TARGETS


def depth_columns(prefix: str, n: int = N_TARGETS) -> list[str]:
    """``<prefix>_1 .. <prefix>_n``."""
    return [f"{prefix}_{k}" for k in range(1, n + 1)]


def submission_frame(planet_id: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> pd.DataFrame:
    """The competition table: ``planet_id``, ``wl_1..wl_283``, ``sigma_1..sigma_283``."""
    if mu.shape != sigma.shape or mu.shape[1:] != (N_TARGETS,):
        raise ValueError(f"mu {mu.shape} and sigma {sigma.shape} must both be (planets, {N_TARGETS})")
    frame = pd.DataFrame({"planet_id": np.asarray(planet_id, dtype=np.int64)})
    values = pd.DataFrame(
        np.concatenate([mu, sigma], axis=1).astype(np.float64), columns=depth_columns("wl") + depth_columns("sigma")
    )
    return pd.concat([frame, values], axis=1)


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` as CSV atomically and return the path."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path
