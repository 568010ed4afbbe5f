"""DetectionDataModule: grouped stratified folds, variable-length batches, seeded flips of image and
boxes, loaders end to end, and the Hydra configs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from src.core.errors import ConfigError, DataError
from src.core.resolvers import PROJECT_ROOT
from src.datamodules.detection.coco import DetectionTable
from src.datamodules.detection.datamodule import (
    DetectionDataModule,
    DetectionDataset,
    collate_detection,
    hflip,
)
from tests.datamodules.detection.test_shapes import TINY, tiny_shapes


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_shapes(tmp_path_factory.mktemp("shapes"))


def make_dm(root: Path, **kwargs) -> DetectionDataModule:
    return DetectionDataModule(**{"root": str(root), "num_classes": 3, "n_folds": 3, "seed": 0, "batch_size": 4,
                                  **kwargs})  # fmt: skip


def test_splits_classes_and_grouped_folds(shapes_root: Path) -> None:
    coco = json.loads((shapes_root / "annotations.json").read_text())
    group_of = {image["file_name"]: image["group"] for image in coco["images"]}
    val_ids: list[str] = []
    for fold in range(3):
        dm = make_dm(shapes_root, fold=fold)
        dm.prepare_data()
        dm.setup("fit")
        assert dm.classes == ["circle", "rectangle", "triangle"] and dm.num_classes == 3
        assert dm.has_test and dm.splits() == ("val", "test") and len(dm.test_set) == TINY["n_test"]
        val, train = dm.sample_ids("val"), dm.train_set.sample_ids
        assert len(train) + len(val) == TINY["n_train"]
        assert {group_of[i] for i in train}.isdisjoint({group_of[i] for i in val})  # no group in two folds
        val_ids += dm.sample_ids("val")
    assert sorted(val_ids) == sorted(group_of)  # each image validates exactly once
    assert len(list(shapes_root.glob("folds_stratgroup_k3_seed0_*.csv"))) == 1  # one shared folds file
    ungrouped = make_dm(shapes_root, group_field=None)
    ungrouped.setup("fit")
    assert len(list(shapes_root.glob("folds_strat_k3_seed0_*.csv"))) == 1


def test_strata_are_the_most_frequent_class() -> None:
    def table(labels: list[list[int]]) -> DetectionTable:
        return DetectionTable(
            source=Path("x"), paths=[Path("x")] * len(labels), sample_ids=list("abcd")[: len(labels)],
            sizes=[(1, 1)] * len(labels), groups=None, boxes=[np.zeros((len(x), 4)) for x in labels],
            labels=[np.asarray(x, dtype=np.int64) for x in labels], classes=["cat", "dog", "eel"],
        )  # fmt: skip

    # dog twice beats cat once; no boxes -> "none"; a tie goes to the lower label (cat).
    assert table([[1, 2, 2], [], [3, 1], [3]]).strata() == ["dog", "none", "cat", "eel"]
    assert len(table([[1], [2], [3]]).head(2)) == 2


def test_too_few_groups_and_class_count_mismatch_are_refused(shapes_root: Path) -> None:
    with pytest.raises(DataError, match=r"annotations.json has \d+ group\(s\) \('group'\) for data.n_folds=20"):
        make_dm(shapes_root, n_folds=20).setup("fit")
    with pytest.raises(DataError, match=r"annotations.json has 3 classes .* but data.num_classes=4") as info:
        make_dm(shapes_root, num_classes=4).prepare_data()
    assert "set data.num_classes=3" in str(info.value)


def test_config_values_are_refused_at_construction(shapes_root: Path) -> None:
    cases = {"format": ("yolo", "data.format='yolo'"), "augment": ("rotate", "data.augment='rotate'"),
             "max_images": (1, "data.max_images=1"), "num_classes": (0, "data.num_classes=0"),
             "fold": (3, "data.fold=3 is out of range")}  # fmt: skip
    for key, (value, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            make_dm(shapes_root, **{key: value})
    dm = make_dm(shapes_root, eval_batch_size=0)
    with pytest.raises(ConfigError, match="data.eval_batch_size=0"):
        dm.check_settings()


def test_collate_keeps_variable_length_targets() -> None:
    samples = [
        {"image": torch.zeros(3, 4, 5), "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
         "id": "a", "size": (5, 4)},
        {"image": torch.ones(3, 6, 2), "boxes": torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 3], [0, 2, 2, 6]]),
         "labels": torch.tensor([1, 3, 2]), "id": "b", "size": (2, 6)},
    ]  # fmt: skip
    batch = collate_detection(samples)
    assert set(batch) == {"images", "targets", "ids", "sizes"}
    assert [tuple(x.shape) for x in batch["images"]] == [(3, 4, 5), (3, 6, 2)]
    assert [len(t["boxes"]) for t in batch["targets"]] == [0, 3] and batch["targets"][1]["labels"].tolist() == [1, 3, 2]
    assert batch["ids"] == ["a", "b"] and batch["sizes"] == [(5, 4), (2, 6)]
    collate = DetectionDataModule(root="unused").collate_fn()
    assert pickle.loads(pickle.dumps(collate)) is collate_detection  # module-level: workers can pickle it


def test_hflip_moves_boxes_and_pixels_by_hand() -> None:
    image = torch.zeros(3, 6, 10)
    image[:, 2:5, 1:4] = 1.0  # object on columns 1, 2, 3 and rows 2, 3, 4
    boxes = torch.tensor([[1.0, 2.0, 4.0, 5.0], [0.0, 0.0, 10.0, 1.5]])
    flipped, moved = hflip(image, boxes)
    # Columns 1..3 of a width-10 image land on 9-3..9-1 = 6..8: x1' = 10 - 4 = 6, x2' = 10 - 1 = 9.
    assert moved.tolist() == [[6.0, 2.0, 9.0, 5.0], [0.0, 0.0, 10.0, 1.5]]
    cols = torch.nonzero(flipped[0].sum(0)).flatten().tolist()
    assert cols == [6, 7, 8] and boxes.tolist()[0] == [1.0, 2.0, 4.0, 5.0]  # input untouched


def test_seeded_flip_is_deterministic_and_only_in_training(shapes_root: Path) -> None:
    dm = make_dm(shapes_root)
    dm.setup("fit")
    ds: DetectionDataset = dm.train_set
    plain = ds[0]
    assert plain["image"].dtype == torch.float32 and plain["image"].min() >= 0.0 and plain["image"].max() <= 1.0
    assert plain["boxes"].dtype == torch.float32 and plain["labels"].dtype == torch.int64
    assert plain["size"] == (64, 64) and plain["id"] == ds.sample_ids[0]
    state = torch.get_rng_state()
    flipped_seeds = []
    for seed in range(16):
        a, b = ds[(0, seed)], ds[(0, seed)]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
        gen = torch.Generator().manual_seed(seed)
        expect_flip = bool(torch.rand((), generator=gen) < 0.5)
        if expect_flip:
            flipped_seeds.append(seed)
            image, boxes = hflip(plain["image"], plain["boxes"])
            assert torch.equal(a["image"], image) and torch.equal(a["boxes"], boxes)
            assert not torch.equal(a["boxes"], plain["boxes"])
        else:
            assert torch.equal(a["image"], plain["image"]) and torch.equal(a["boxes"], plain["boxes"])
        assert torch.equal(a["labels"], plain["labels"])
    assert 0 < len(flipped_seeds) < 16
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    # Evaluation splits never flip, even when handed a seed.
    val0 = dm.val_set[0]
    assert torch.equal(dm.val_set[(0, flipped_seeds[0])]["boxes"], val0["boxes"])


def test_loaders_end_to_end(shapes_root: Path) -> None:
    dm = make_dm(shapes_root, eval_batch_size=5)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(dm.train_set) // 4  # drop_last: no batch of one
    batch = batches[0]
    assert len(batch["images"]) == len(batch["targets"]) == len(batch["ids"]) == len(batch["sizes"]) == 4
    for image, target, size in zip(batch["images"], batch["targets"], batch["sizes"], strict=True):
        assert tuple(image.shape) == (3, size[1], size[0]) == (3, 64, 64)
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.shape == (len(labels), 4) and len(labels) >= 1
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 2] > boxes[:, 0]).all()
        assert ((labels >= 1) & (labels <= 3)).all()
    # Same seed and epoch, same batches (order and flips).
    again = next(iter(dm.train_dataloader()))
    assert again["ids"] == batch["ids"] and all(
        torch.equal(a, b) for a, b in zip(again["images"], batch["images"], strict=True)
    )
    val = list(dm.val_dataloader())
    assert len(val[0]["ids"]) == min(5, len(dm.val_set))
    assert [i for b in val for i in b["ids"]] == dm.sample_ids("val")
    test_ids = [i for b in dm.predict_dataloader_for("test") for i in b["ids"]]
    assert test_ids == dm.sample_ids("test") == [f"test_{k:04d}.png" for k in range(TINY["n_test"])]


def test_max_images_and_fingerprint(shapes_root: Path, tmp_path: Path) -> None:
    dm = make_dm(shapes_root, max_images=12)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 12 and len(dm.test_set) == TINY["n_test"]
    full = make_dm(shapes_root)
    assert dm.fingerprint() != full.fingerprint()
    root = tmp_path / "copy"
    shutil.copytree(shapes_root, root, ignore=shutil.ignore_patterns("folds_*.csv"))
    before = make_dm(root).fingerprint()
    assert make_dm(root).fingerprint() == before
    image = root / "images" / "train_0005.png"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert make_dm(root).fingerprint() != before


def test_hydra_configs_instantiate(shapes_root: Path, tmp_path: Path) -> None:
    def compose(name: str, **data) -> DetectionDataModule:
        cfg = OmegaConf.create({"seed": 5, "paths": {"data_dir": str(tmp_path)},
                                "data": OmegaConf.load(PROJECT_ROOT / "configs" / "data" / name)})  # fmt: skip
        cfg.data.merge_with(data)
        return instantiate(cfg.data)

    tiny = {k: v for k, v in TINY.items() if k != "seed"}
    dm = compose("shapes.yaml", prepare={**tiny, "n_train": 12, "n_test": 2}, n_folds=2)
    assert isinstance(dm, DetectionDataModule) and dm.root == tmp_path / "shapes"
    assert dm.hparams.seed == 5 and dm.hparams.num_classes == 3 and dm.hparams.augment == "flip"
    assert dm.has_test is False and dm.classes == []  # nothing written yet: asking does not fail
    dm.prepare_data()
    assert dm.has_test is True
    dm.setup("fit")
    assert json.loads((tmp_path / "shapes" / "annotations.json").read_text())["info"]["parameters"]["n_train"] == 12
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["images"]) == 8 or len(batch["images"]) == len(dm.train_set)
    user = compose("coco_folder.yaml", root=str(shapes_root), num_classes=3, num_workers=0)
    user.prepare_data()
    assert user.classes == ["circle", "rectangle", "triangle"] and user.hparams.format == "auto"
