"""scikit-learn's bundled handwritten digits written into the generic image layout.

1,797 real 8×8 grey-scale scans (16 intensity levels) become ``data/digits/train.csv`` and
``data/digits/train/<label>/<image_id>.png``, exactly the layout a user's own dataset uses. The
dataset carries no writer ids, so every image is its own group.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from src.core.io import atomic_path

N_DIGITS = 1797


def _is_complete(root: Path) -> bool:
    csv = root / "train.csv"
    if not csv.is_file():
        return False
    df = pd.read_csv(csv, dtype=str)
    return len(df) == N_DIGITS and all(
        (root / "train" / lab / f"{i}.png").is_file() for i, lab in zip(df.image_id, df.label, strict=True)
    )


def write_digits(root: str | Path) -> Path:
    """Write the digits dataset under ``root`` unless a complete copy is already there.

    Images are written first and ``train.csv`` last (atomically), so a half-written folder is
    never taken for a complete one and the next call finishes the job.

    Args:
        root: Dataset folder, e.g. ``data/digits``.

    Returns:
        The path of ``train.csv``.
    """
    from sklearn.datasets import load_digits

    root = Path(root)
    if _is_complete(root):
        return root / "train.csv"
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    rows = []
    for idx, (img, target) in enumerate(zip(pixels, digits.target, strict=True)):
        image_id, label = f"digit_{idx:04d}", str(int(target))
        path = root / "train" / label / f"{image_id}.png"
        if not path.is_file():
            with atomic_path(path) as tmp:
                Image.fromarray(img, mode="L").save(tmp, format="PNG")
        rows.append((image_id, label, image_id))
    with atomic_path(root / "train.csv") as tmp:
        pd.DataFrame(rows, columns=["image_id", "label", "group"]).to_csv(tmp, index=False)
    return root / "train.csv"
