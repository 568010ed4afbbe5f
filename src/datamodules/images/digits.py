"""scikit-learn's bundled handwritten digits written into the generic image layout.

1,797 real 8×8 grey-scale scans (16 intensity levels) become ``data/digits/train.csv`` and
``data/digits/train/<label>/<image_id>.png``, exactly the layout a user's own dataset uses.

Groups. scikit-learn's digits are the test part of UCI optdigits, written by 13 people other than
the 30 who wrote its training part, but the data ship no writer ids. The ``group`` column holds
``n_blocks`` (13) contiguous blocks of the original sample order (``block_00`` … ``block_12``,
139 or 138 images each): blocks of the original sample order, not writer ids. The order is not
random: holding out whole blocks costs a 1-nearest-neighbour classifier on the raw pixels about
one point of accuracy against random folds of the same sizes (0.976 vs 0.988, 5 folds), while
randomly shuffled blocks cost nothing, so the blocks carry writer-like structure. Folds
(``StratifiedGroupKFold`` over label and group) keep each block in one fold, and the ensemble's
group audit holds out whole blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from src.core.io import atomic_path

N_DIGITS = 1797
#: Writers of the UCI optdigits test part, which is scikit-learn's digits set.
N_BLOCKS = 13


def block_groups(n: int, n_blocks: int = N_BLOCKS) -> list[str]:
    """Group keys of ``n`` samples: ``n_blocks`` contiguous blocks of the sample order.

    Blocks differ in size by at most one sample (``numpy.array_split``'s rule: the first
    ``n % n_blocks`` blocks hold one more).

    Args:
        n: Number of samples, in their original order.
        n_blocks: Number of blocks (at least 1, at most ``n``).

    Returns:
        ``block_00``, ``block_01``, ... one key per sample, in sample order.
    """
    if not 1 <= n_blocks <= n:
        raise ValueError(f"n_blocks={n_blocks} must be in 1..{n}")
    width = max(2, len(str(n_blocks - 1)))
    parts = np.array_split(np.arange(n), n_blocks)
    return [f"block_{b:0{width}d}" for b, part in enumerate(parts) for _ in part]


def digits_table(labels: np.ndarray, n_blocks: int = N_BLOCKS) -> pd.DataFrame:
    """``train.csv`` of the digits: ``image_id`` (``digit_<index>``), ``label``, ``group``."""
    ids = [f"digit_{idx:04d}" for idx in range(len(labels))]
    return pd.DataFrame(
        {"image_id": ids, "label": [str(int(t)) for t in labels], "group": block_groups(len(labels), n_blocks)}
    )


def _is_complete(root: Path, expected: pd.DataFrame) -> bool:
    """Whether ``train.csv`` is exactly ``expected`` and every image it names exists."""
    csv = root / "train.csv"
    if not csv.is_file():
        return False
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    return df.equals(expected) and all(
        (root / "train" / lab / f"{i}.png").is_file() for i, lab in zip(df.image_id, df.label, strict=True)
    )


def write_digits(root: str | Path, n_blocks: int = N_BLOCKS) -> Path:
    """Write the digits dataset under ``root`` unless a complete copy is already there.

    Images are written first and ``train.csv`` last (atomically), so a half-written folder is
    never taken for a complete one and the next call finishes the job. A ``train.csv`` with other
    groups (an older layout, another ``n_blocks``) is written again; images already there are
    kept.

    Args:
        root: Dataset folder, e.g. ``data/digits``.
        n_blocks: Number of contiguous blocks of the original sample order used as groups.

    Returns:
        The path of ``train.csv``.
    """
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    table = digits_table(digits.target, n_blocks)
    if _is_complete(root, table):
        return root / "train.csv"
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for img, image_id, label in zip(pixels, table.image_id, table.label, strict=True):
        path = root / "train" / label / f"{image_id}.png"
        if not path.is_file():
            with atomic_path(path) as tmp:
                Image.fromarray(img, mode="L").save(tmp, format="PNG")
    with atomic_path(root / "train.csv") as tmp:
        table.to_csv(tmp, index=False)
    return root / "train.csv"
