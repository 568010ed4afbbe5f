"""Synthetic members: class logits = signal on the true class + Gaussian noise, known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import softmax

from src.ensemble.oof import write_oof


def noisy_logits(rng: np.random.Generator, y: np.ndarray, n_classes: int, signal: float, noise: float) -> np.ndarray:
    """``(n, C)`` logits: ``signal`` on the true class plus independent N(0, noise²) everywhere."""
    z = rng.normal(0.0, noise, (len(y), n_classes))
    z[np.arange(len(y)), y] += signal
    return z


def make_labels(rng: np.random.Generator, n: int, n_classes: int, n_folds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels and a random fold assignment."""
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    folds = rng.permutation(np.arange(n) % n_folds)
    return y, folds


def probs_of(z: np.ndarray) -> np.ndarray:
    return softmax(z, axis=1)


def write_member(
    root: Path,
    name: str,
    seed: int,
    n: int = 300,
    n_classes: int = 4,
    n_test: int = 40,
    signal: float = 2.0,
    noise: float = 1.5,
    shuffle: bool = True,
) -> Path:
    """A member directory in the fold runner's format (labels/folds shared across seeds via seed 0)."""
    rng = np.random.default_rng(0)
    y, folds = make_labels(rng, n, n_classes)
    test_y = rng.integers(0, n_classes, n_test)
    own = np.random.default_rng(seed)
    z = noisy_logits(own, y, n_classes, signal, noise)
    test_z = noisy_logits(own, test_y, n_classes, signal, noise)
    ids = np.array([f"img_{i:04d}" for i in range(n)])
    order = own.permutation(n) if shuffle else np.arange(n)
    test_ids = [f"t_{i:03d}" for i in range(n_test)]
    return write_oof(
        root / name,
        ids[order],
        folds[order],
        y[order],
        z[order],
        [f"c{c}" for c in range(n_classes)],
        test_ids=test_ids,
        test_probs=probs_of(test_z),
    ).parent
