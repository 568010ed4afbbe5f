"""scikit-learn's digits land in the generic layout once, with the real pixel values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

from src.datamodules.images.digits import N_DIGITS, write_digits


def test_layout_and_pixels(data_dir: Path) -> None:
    root = data_dir / "digits"
    df = pd.read_csv(root / "train.csv", dtype=str)
    assert list(df.columns) == ["image_id", "label", "group"] and len(df) == N_DIGITS
    assert sorted(df.label.unique(), key=int) == [str(i) for i in range(10)]
    digits = load_digits()
    img = np.asarray(Image.open(root / "train" / df.label[5] / f"{df.image_id[5]}.png"))
    np.testing.assert_array_equal(img, np.round(digits.images[5] * 255 / 16).astype(np.uint8))
    assert int(df.label[5]) == digits.target[5]


def test_second_write_is_a_no_op_and_a_partial_folder_is_completed(tmp_path: Path) -> None:
    root = tmp_path / "digits"
    csv = write_digits(root)
    stamp = csv.stat().st_mtime_ns
    write_digits(root)
    assert csv.stat().st_mtime_ns == stamp
    victim = next((root / "train" / "3").glob("*.png"))
    victim.unlink()
    write_digits(root)
    assert victim.is_file()
