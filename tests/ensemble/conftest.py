"""Fixtures of the ensemble tests (synthetic data helpers live in tests/ensemble/synthetic.py)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
