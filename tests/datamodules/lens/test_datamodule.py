"""LensDataModule: grouped folds stratified by bucket, work-resolution batches, full-resolution
prediction batches, seeded flips that mirror the principal point, and pairs for the heuristics."""

from __future__ import annotations

import shutil
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from src.core.errors import ConfigError, DataError
from src.datamodules.lens.datamodule import FLIP_P, LensDataModule, camera_vector, collate_lens
from src.datamodules.lens.geometry import Camera
from src.datamodules.lens.layout import TEST_TARGET_DIR, TRAIN_DIR, decode_image
from src.datamodules.lens.simulate import write_lens_set

#: 30 pairs and 10 test images: about a second to write.
SET = dict(n_train=30, n_test=10, seed=0)


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lens_set(tmp_path_factory.mktemp("lens") / "sim", **SET)


def make_dm(root: Path, **kwargs) -> LensDataModule:
    settings = {"root": str(root), "n_folds": 3, "seed": 0, "batch_size": 4, "work_long_side": 64, "thumb_size": 32}
    return LensDataModule(**{**settings, **kwargs})


@pytest.fixture(scope="module")
def dm(sim_root: Path) -> LensDataModule:
    module = make_dm(sim_root, prepare=partial(write_lens_set, **SET))
    module.prepare_data()
    module.setup("fit")
    return module


def test_setup_splits_and_grouped_folds(sim_root: Path, dm: LensDataModule) -> None:
    assert dm.has_test and dm.splits() == ("val", "test") and len(dm.test_set) == 10
    assert dm.tables()["train"].groups is not None
    group_of = dict(zip(dm.tables()["train"].sample_ids, dm.tables()["train"].groups, strict=True))
    val_ids: list[str] = []
    for fold in range(3):
        module = dm if fold == 0 else make_dm(sim_root, fold=fold)
        module.setup("fit")
        train, val = module.train_set.sample_ids, module.sample_ids("val")
        assert len(train) + len(val) == 30 and val
        assert {group_of[i] for i in train}.isdisjoint({group_of[i] for i in val})  # no group in both
        val_ids += val
    assert sorted(val_ids) == sorted(group_of)  # each pair validates exactly once
    assert len(list(sim_root.glob("folds_stratgroup_k3_seed0_*.csv"))) == 1
    ungrouped = make_dm(sim_root, group_field=None)
    ungrouped.setup("fit")
    assert ungrouped.tables()["train"].groups is None
    assert len(list(sim_root.glob("folds_strat_k3_seed0_*.csv"))) == 1
    assert dm.fingerprint() == make_dm(sim_root).fingerprint() and len(dm.fingerprint()) == 16


def test_train_batch_shapes_and_dtypes(dm: LensDataModule) -> None:
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["input"]) == len(batch["target"]) == len(batch["ids"]) == 4
    for inp, target, (width, height) in zip(batch["input"], batch["target"], batch["sizes"], strict=True):
        assert inp.dtype == target.dtype == torch.float32 and inp.shape == target.shape
        assert inp.shape[0] == 3 and max(inp.shape[1:]) == 64  # long side = work_long_side, aspect kept
        assert inp.shape[2] == round(width * 64 / max(width, height))
        assert float(inp.min()) >= 0.0 and float(inp.max()) <= 1.0 and float(target.max()) > 0
    assert batch["thumb"].shape == (4, 3, 32, 32) and batch["thumb"].dtype == torch.float32
    assert batch["camera"].shape == (4, 5) and torch.isfinite(batch["camera"]).all()
    assert batch["labelled"].dtype == torch.bool and batch["labelled"].all()
    assert set(batch["parents"]) <= {"landscape", "portrait", "square"} and "input_paths" not in batch
    val = next(iter(dm.val_dataloader()))
    assert len(val["input"]) == 4 and val["labelled"].all()


def test_predict_batches_are_full_resolution(dm: LensDataModule) -> None:
    table = dm.tables()["test"]
    batch = next(iter(dm.predict_dataloader_for("test")))
    assert batch["ids"] == table.sample_ids[:4] == dm.sample_ids("test")[:4]
    for i, inp in enumerate(batch["input"]):
        width, height = table.sizes[i]
        assert inp.dtype == torch.uint8 and inp.shape == (height, width, 3)
        assert torch.equal(inp, torch.from_numpy(decode_image(table.inputs[i])))
        assert batch["target"][i].shape == inp.shape and batch["target"][i].dtype == torch.uint8
        assert batch["input_paths"][i] == str(table.inputs[i])
        assert batch["target_paths"][i] == str(table.targets[i]) and Path(batch["target_paths"][i]).is_file()
    assert batch["labelled"].all() and batch["thumb"].shape == (4, 3, 32, 32)
    # The thumbnail is the work-resolution one, as in training.
    work = dm.test_set[0]
    assert torch.equal(batch["thumb"][0], work["thumb"]) and max(work["input"].shape[1:]) == 64


def test_flip_mirrors_images_and_the_principal_point(dm: LensDataModule) -> None:
    dataset = dm.train_set
    index = next(i for i, c in enumerate(dataset.table.cameras) if c is not None and c.cx != 0)  # crop_left
    decisions = {}
    for seed in range(40):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            decisions[seed] = bool(torch.rand(()) < FLIP_P)
    flip_seed = next(s for s, f in decisions.items() if f)
    keep_seed = next(s for s, f in decisions.items() if not f)
    plain, flipped, kept = dataset[index], dataset[(index, flip_seed)], dataset[(index, keep_seed)]
    assert torch.equal(flipped["input"], plain["input"].flip(2))
    assert torch.equal(flipped["target"], plain["target"].flip(2))
    assert torch.equal(flipped["thumb"], plain["thumb"].flip(2))
    assert float(plain["camera"][2]) == pytest.approx(1 / 6) and float(flipped["camera"][2]) == pytest.approx(-1 / 6)
    assert torch.equal(flipped["camera"][[0, 1, 3, 4]], plain["camera"][[0, 1, 3, 4]])
    assert torch.equal(kept["input"], plain["input"]) and torch.equal(kept["camera"], plain["camera"])
    none = make_dm(Path(dm.root), augment="none")
    none.setup("fit")
    assert torch.equal(none.train_set[(index, flip_seed)]["input"], plain["input"])


def test_pairs_per_bucket_and_long_side(dm: LensDataModule) -> None:
    table = dm.train_set.table
    counts = Counter(table.buckets)
    pairs = dm.pairs("train", long_side=48, per_bucket=2, seed=3)
    got = Counter(p.bucket for p in pairs)
    assert got == {bucket: min(2, n) for bucket, n in counts.items()}
    assert [p.id for p in pairs] == [p.id for p in dm.pairs("train", long_side=48, per_bucket=2, seed=3)]
    order = {sample_id: k for k, sample_id in enumerate(table.sample_ids)}
    assert [order[p.id] for p in pairs] == sorted(order[p.id] for p in pairs)  # the split's order
    for p in pairs:
        assert p.input.dtype == np.uint8 and p.input.shape == p.target.shape and max(p.input.shape[:2]) == 48
        assert isinstance(p.camera, Camera) and p.parent in ("landscape", "portrait", "square")
    full = dm.pairs("val")
    assert [p.id for p in full] == dm.sample_ids("val")
    assert all(p.input.shape == (p.size[1], p.size[0], 3) for p in full)
    assert len(dm.pairs("test", per_bucket=1)) == len(set(dm.tables()["test"].buckets))
    with pytest.raises(ConfigError, match="split='holdout'"):
        dm.pairs("holdout")
    with pytest.raises(ConfigError, match="per_bucket=0"):
        dm.pairs("train", per_bucket=0)


def test_unlabelled_test_inputs_and_a_bad_file(sim_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(sim_root, tmp_path / "copy", ignore=shutil.ignore_patterns("folds_*", "image_check*")))
    shutil.rmtree(root / TEST_TARGET_DIR)
    first = sorted((root / TRAIN_DIR).iterdir())[0]
    first.write_bytes(first.read_bytes()[:100])
    with pytest.raises(DataError, match=r"cannot be decoded"):
        make_dm(root).prepare_data()
    module = make_dm(root, bad_images="quarantine")
    module.prepare_data()
    module.setup("fit")
    assert len(module.train_set) + len(module.val_set) == 29
    batch = next(iter(module.predict_dataloader_for("test")))
    assert not batch["labelled"].any() and batch["target_paths"] == [None] * 4
    assert all(int(t.max()) == 0 and t.shape == i.shape for t, i in zip(batch["target"], batch["input"], strict=True))
    assert module.pairs("test") == []
    test_batch = next(iter(module.test_dataloader()))
    assert not test_batch["labelled"].any() and float(test_batch["target"][0].abs().sum()) == 0.0


def test_settings_that_are_refused(sim_root: Path) -> None:
    with pytest.raises(ConfigError, match="data.augment='rotate'"):
        make_dm(sim_root, augment="rotate")
    with pytest.raises(ConfigError, match="data.work_long_side=4"):
        make_dm(sim_root, work_long_side=4)
    with pytest.raises(ConfigError, match="data.max_images=2 is not a whole number >= 3"):
        make_dm(sim_root, max_images=2)
    with pytest.raises(ConfigError, match="data.buckets.x"):
        make_dm(sim_root, buckets={"x": [0, 1]})
    with pytest.raises(ConfigError, match="data.fold=3"):
        make_dm(sim_root, fold=3)
    with pytest.raises(
        DataError, match=r"metadata.csv has \d+ group\(s\) \('group'\) for data.n_folds=25: a fold would hold no sample"
    ):
        make_dm(sim_root, n_folds=25).setup("fit")


def test_camera_vector_and_collate() -> None:
    assert torch.isnan(camera_vector(None)).all() and camera_vector(None).shape == (5,)
    assert camera_vector(Camera(-0.1, 0.2, 0.1, 0.0, 1.5)).tolist() == pytest.approx([-0.1, 0.2, 0.1, 0.0, 1.5])
    sample = {"id": "a", "bucket": "b", "parent": "landscape", "size": (4, 2), "input": torch.zeros(3, 2, 4),
              "target": torch.zeros(3, 2, 4), "labelled": False, "thumb": torch.zeros(3, 8, 8),
              "camera": camera_vector(None)}  # fmt: skip
    batch = collate_lens([sample, {**sample, "id": "b", "labelled": True}])
    assert batch["ids"] == ["a", "b"] and batch["labelled"].tolist() == [False, True]
    assert batch["thumb"].shape == (2, 3, 8, 8) and batch["camera"].shape == (2, 5) and batch["sizes"] == [(4, 2)] * 2
