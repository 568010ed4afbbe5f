"""scikit-learn's digits land in the generic layout once, with the real pixel values and
documented groups (contiguous blocks of the original sample order)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from src.datamodules.images.datamodule import ImageFolderDataModule
from src.datamodules.images.digits import N_BLOCKS, N_DIGITS, block_groups, write_digits


def digits_dm(root: Path, **kwargs) -> ImageFolderDataModule:
    defaults = dict(root=str(root), num_classes=10, n_folds=5, seed=0, image_size=8, in_chans=1, mean=[0.5],
                    std=[0.5])  # fmt: skip
    return ImageFolderDataModule(**{**defaults, **kwargs})


def test_layout_and_pixels(data_dir: Path) -> None:
    root = data_dir / "digits"
    df = pd.read_csv(root / "train.csv", dtype=str)
    assert list(df.columns) == ["image_id", "label", "group"] and len(df) == N_DIGITS
    assert sorted(df.label.unique(), key=int) == [str(i) for i in range(10)]
    digits = load_digits()
    img = np.asarray(Image.open(root / "train" / df.label[5] / f"{df.image_id[5]}.png"))
    np.testing.assert_array_equal(img, np.round(digits.images[5] * 255 / 16).astype(np.uint8))
    assert int(df.label[5]) == digits.target[5]


def test_groups_are_contiguous_blocks_of_the_sample_order(data_dir: Path) -> None:
    df = pd.read_csv(data_dir / "digits" / "train.csv", dtype=str)
    assert df.group.nunique() == N_BLOCKS == 13
    sizes = df.group.value_counts()
    assert set(sizes) == {138, 139} and sizes.sum() == N_DIGITS
    # Contiguous: the group changes exactly N_BLOCKS - 1 times along the original order.
    assert (df.group != df.group.shift()).sum() == N_BLOCKS
    assert df.group.iloc[0] == "block_00" and df.group.iloc[-1] == "block_12"
    assert df.group.is_monotonic_increasing
    assert block_groups(5, 2) == ["block_00"] * 3 + ["block_01"] * 2
    with pytest.raises(ValueError, match="n_blocks=0"):
        block_groups(5, 0)


def test_folds_keep_blocks_together(data_dir: Path) -> None:
    dm = digits_dm(data_dir / "digits")
    dm.setup("fit")
    df = pd.read_csv(data_dir / "digits" / "train.csv", dtype=str).set_index("image_id")
    train_blocks = set(df.loc[dm.train_set.sample_ids, "group"])
    val_blocks = set(df.loc[dm.val_set.sample_ids, "group"])
    assert train_blocks.isdisjoint(val_blocks) and len(train_blocks | val_blocks) == N_BLOCKS
    assert len(dm.train_set) + len(dm.val_set) == N_DIGITS


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


def test_an_older_layout_is_regrouped_and_gets_new_folds(data_dir: Path, tmp_path: Path) -> None:
    """A copy written when every image was its own group: write_digits rewrites its train.csv,
    and the datamodule computes new folds instead of reading the stale folds file."""
    root = tmp_path / "digits"
    shutil.copytree(data_dir / "digits", root, ignore=shutil.ignore_patterns("folds_*.csv", "*.json"))
    old = pd.read_csv(root / "train.csv", dtype=str)
    old["group"] = old["image_id"]
    old.to_csv(root / "train.csv", index=False)
    digits_dm(root).setup("fit")
    (stale,) = root.glob("folds_*.csv")

    write_digits(root)
    assert pd.read_csv(root / "train.csv", dtype=str).group.nunique() == N_BLOCKS
    dm = digits_dm(root)
    dm.setup("fit")
    assert stale.is_file() and len(list(root.glob("folds_*.csv"))) == 2
    df = pd.read_csv(root / "train.csv", dtype=str).set_index("image_id")
    assert set(df.loc[dm.train_set.sample_ids, "group"]).isdisjoint(df.loc[dm.val_set.sample_ids, "group"])
