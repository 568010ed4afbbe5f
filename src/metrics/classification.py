"""Scores of out-of-fold classification tables (``label`` and ``prob_*`` columns)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def prob_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The ``(samples, classes)`` probability matrix of a prediction table."""
    cols = sorted((c for c in frame.columns if c.startswith("prob_")), key=lambda c: int(c.split("_")[1]))
    return frame[cols].to_numpy(dtype=np.float64)


def oof_accuracy(frame: pd.DataFrame) -> float:
    """Top-1 accuracy of an out-of-fold table."""
    return float((prob_matrix(frame).argmax(axis=1) == frame["label"].to_numpy()).mean())
