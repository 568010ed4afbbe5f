"""The generic image layout, read from a user's own folder (15 classes grouped by PLU code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from src.core.errors import DataError
from src.datamodules.images.augment import build_transform
from src.datamodules.images.datamodule import ImageDataset, ImageFolderDataModule
from src.datamodules.seeding import SeededDistributedSampler

FRUITS = [f"fruit{i:02d}" for i in range(15)]


def make_fruit_set(root: Path, per_class: int = 6, with_test: bool = True) -> Path:
    """15 classes, RGB JPEGs of varied sizes, two PLU codes per class (3 images each)."""
    rng = np.random.default_rng(0)
    rows = []
    for c, fruit in enumerate(FRUITS):
        (root / "train" / fruit).mkdir(parents=True)
        for i in range(per_class):
            image_id = f"{fruit}_{i}"
            size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / fruit / f"{image_id}.jpg")
            rows.append((image_id, fruit, f"plu{4000 + 2 * c + i % 2}"))
    pd.DataFrame(rows, columns=["image_id", "label", "plu"]).to_csv(root / "train.csv", index=False)
    if with_test:
        (root / "test").mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / "test" / f"t{i}.png")
        pd.DataFrame({"image_id": [f"t{i}" for i in range(5)]}).to_csv(root / "test.csv", index=False)
    return root


def fruit_dm(root: Path, **kwargs) -> ImageFolderDataModule:
    defaults = dict(root=str(root), num_classes=15, group_column="plu", n_folds=2, batch_size=8,
                    image_size=16, in_chans=3, mean=[0.5] * 3, std=[0.5] * 3, augment="full")  # fmt: skip
    return ImageFolderDataModule(**{**defaults, **kwargs})


def test_user_folder_with_plu_groups(tmp_path: Path) -> None:
    dm = fruit_dm(make_fruit_set(tmp_path / "fruits"))
    dm.setup("fit")
    assert dm.num_classes == 15 and dm.classes == FRUITS
    assert len(dm.train_set) + len(dm.val_set) == 90 and dm.has_test and len(dm.test_set) == 5
    train_df = pd.read_csv(tmp_path / "fruits" / "train.csv").set_index("image_id")
    train_groups = set(train_df.loc[dm.train_set.sample_ids, "plu"])
    val_groups = set(train_df.loc[dm.val_set.sample_ids, "plu"])
    assert train_groups.isdisjoint(val_groups)  # a PLU code never straddles train and val
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (8, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert (batch["label"] >= 0).all() and (batch["label"] < 15).all()
    test_batch = next(iter(dm.test_dataloader()))
    assert (test_batch["label"] == -1).all()


def test_folds_file_is_written_once_and_shared(tmp_path: Path) -> None:
    root = make_fruit_set(tmp_path / "fruits", with_test=False)
    fruit_dm(root).setup("fit")
    (folds_file,) = root.glob("folds_*.csv")
    stamp = folds_file.stat().st_mtime_ns
    other = fruit_dm(root, augment="none")
    other.setup("fit")
    assert folds_file.stat().st_mtime_ns == stamp
    assert len(list(root.glob("folds_*.csv"))) == 1


def test_num_classes_mismatch_names_the_fix(tmp_path: Path) -> None:
    dm = fruit_dm(make_fruit_set(tmp_path / "fruits", with_test=False), num_classes=10)
    with pytest.raises(DataError, match=r"15 classes.*data.num_classes=10"):
        dm.setup("fit")


def test_unknown_test_label_and_missing_group_column(tmp_path: Path) -> None:
    root = make_fruit_set(tmp_path / "fruits")
    pd.DataFrame({"image_id": ["t0"], "label": ["durian"]}).to_csv(root / "test.csv", index=False)
    with pytest.raises(DataError, match="durian"):
        fruit_dm(root).setup("fit")
    with pytest.raises(DataError, match="group column 'store'"):
        fruit_dm(root, group_column="store").setup("fit")


def test_augmentation_depends_on_seed_and_epoch_only(tmp_path: Path) -> None:
    root = make_fruit_set(tmp_path / "fruits", with_test=False)
    paths = sorted((root / "train" / FRUITS[0]).glob("*.jpg"))
    dataset = ImageDataset(paths, [0] * len(paths), [p.stem for p in paths],
                           build_transform("full", 16, [0.5] * 3, [0.5] * 3), "RGB")  # fmt: skip

    def epoch_images(epoch: int) -> list[torch.Tensor]:
        sampler = SeededDistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch * 1000 + 7)  # the global RNG must not matter
        return [dataset[key]["image"] for key in sampler]

    a, b, c = epoch_images(1), epoch_images(1), epoch_images(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
