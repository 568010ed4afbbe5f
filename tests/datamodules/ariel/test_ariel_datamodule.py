"""ArielDataModule: batch shapes, folds, cache hits and misses, DDP batch split, Hydra config."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DistributedSampler

from src.core.errors import ConfigError, DataError
from src.datamodules.ariel.datamodule import ArielDataModule
from src.datamodules.ariel.simulate import simulate_dataset

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "data" / "ariel_toy.yaml"


def make(root: Path, tmp_path: Path, **kwargs) -> ArielDataModule:
    """A datamodule whose cache and folds live in ``tmp_path`` (the shared dataset stays clean)."""
    kwargs = {"n_folds": 2, "batch_size": 2, "seed": 5, **kwargs}
    return ArielDataModule(str(root), cache_dir=str(tmp_path / "cache"), folds_dir=str(tmp_path), **kwargs)


@pytest.fixture(scope="module")
def toy_module(toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> ArielDataModule:
    dm = make(toy_root, tmp_path_factory.mktemp("dm"), n_folds=3)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_have_documented_shapes(toy_module, toy_root):
    batch = next(iter(toy_module.train_dataloader()))
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    assert shapes == {
        "fgs1": (2, 30),
        "fgs1_var": (2, 30),
        "fgs1_time": (2, 30),
        "airs": (2, 30, 282),
        "airs_var": (2, 30, 282),
        "airs_time": (2, 30),
        "meta": (2, 8),
        "target": (2, 283),
        "planet_id": (2,),
    }
    assert batch["airs"].dtype == torch.float32 and batch["planet_id"].dtype == torch.int64
    labels = pd.read_csv(toy_root / "train.csv").set_index("planet_id")
    for pid, target in zip(batch["planet_id"].tolist(), batch["target"], strict=True):
        np.testing.assert_allclose(target.numpy(), labels.loc[pid].to_numpy(), rtol=1e-6)
    val = next(iter(toy_module.val_dataloader()))
    assert val["airs"].shape[1:] == (30, 282)
    test = next(iter(toy_module.test_dataloader()))
    assert "target" not in test and test["fgs1"].shape == (1, 30) and test["meta"].shape == (1, 8)
    assert toy_module.has_test


def test_validation_is_the_configured_fold(toy_module):
    folds = toy_module.folds().set_index("sample_id")["fold"]
    val_ids = toy_module.val_set.tensors["planet_id"].tolist()
    train_ids = toy_module.train_set.tensors["planet_id"].tolist()
    assert all(folds[str(p)] == 0 for p in val_ids) and all(folds[str(p)] != 0 for p in train_ids)
    assert len(val_ids) + len(train_ids) == 3


def test_folds_file_is_written_once_and_reused(tiny_root, tmp_path):
    first = make(tiny_root, tmp_path, n_folds=2)
    first.prepare_data()
    first.setup()
    files = list(tmp_path.glob("folds_*.csv"))
    assert len(files) == 1
    stamp, content = files[0].stat().st_mtime_ns, files[0].read_text()
    second = make(tiny_root, tmp_path, n_folds=2, fold=1)
    second.prepare_data()
    second.setup()
    assert list(tmp_path.glob("folds_*.csv")) == files
    assert files[0].stat().st_mtime_ns == stamp and files[0].read_text() == content
    ids = lambda dm: set(dm.val_set.tensors["planet_id"].tolist())  # noqa: E731
    assert ids(first).isdisjoint(ids(second)) and len(ids(first) | ids(second)) == 2


def test_cache_hit_miss_and_recompute(tiny_copy, tmp_path):
    first = make(tiny_copy, tmp_path)
    first.prepare_data()
    assert (first.cache.hits, first.cache.misses) == (0, 3)
    again = make(tiny_copy, tmp_path)
    again.prepare_data()
    assert (again.cache.hits, again.cache.misses) == (0 + 3, 0)
    ablated = make(
        tiny_copy,
        tmp_path,
        calibration={"steps": ["adc", "mask", "linearity", "dark", "cds", "bin", "background", "extract"]},
    )
    ablated.prepare_data()
    assert ablated.chain_hash != first.chain_hash and ablated.cache.misses == 3

    pid = int(pd.read_csv(tiny_copy / "train.csv")["planet_id"].iloc[0])
    raw = tiny_copy / "train" / str(pid) / "FGS1_signal_0.parquet"
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))
    entry = first.cache.path("train", pid, 0)
    other = next(p for p in entry.parent.iterdir() if p != entry)
    other.write_bytes(other.read_bytes()[:-100])  # a truncated entry fails verification
    touched = make(tiny_copy, tmp_path)
    touched.prepare_data()
    reasons = sorted(reason for _, reason in touched.cache.reasons)
    assert touched.cache.hits == 1 and reasons[0].startswith("stale") and reasons[1].startswith("unreadable")
    final = make(tiny_copy, tmp_path)
    final.prepare_data()
    assert (final.cache.hits, final.cache.misses) == (3, 0)


def test_setup_without_prepare_names_the_missing_cache(tiny_root, tmp_path):
    with pytest.raises(DataError, match=r"calibrated cache entry .*npz is absent.*\n.*prepare_data"):
        make(tiny_root, tmp_path, n_folds=2).setup()


def test_global_batch_size_is_split_over_processes(tiny_root, tmp_path):
    dm = make(tiny_root, tmp_path, batch_size=8, n_folds=2)
    dm.prepare_data()
    dm.setup()
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    loader = dm.train_dataloader()
    assert loader.batch_size == 4
    assert isinstance(loader.sampler, DistributedSampler)
    assert (loader.sampler.num_replicas, loader.sampler.rank, loader.sampler.seed) == (2, 1, 5)
    assert loader.sampler.shuffle and dm.val_dataloader().generator.initial_seed() == 5
    dm.hparams.batch_size = 7
    with pytest.raises(ConfigError, match="batch_size=7 is not divisible by the 2 processes"):
        dm.train_dataloader()


def test_shuffle_depends_on_seed_and_epoch_only(toy_module, toy_root, tmp_path):
    def order(dm: ArielDataModule, epoch: int) -> list[int]:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [int(p) for batch in loader for p in batch["planet_id"]]

    twin = make(toy_root, tmp_path, n_folds=3)
    twin.cache = toy_module.cache
    twin.setup()
    assert order(toy_module, 3) == order(twin, 3)
    assert sorted(order(toy_module, 3)) == sorted(toy_module.train_set.tensors["planet_id"].tolist())


def test_fingerprint_is_stable_and_tracks_raw_files(tiny_copy, tmp_path):
    dm = make(tiny_copy, tmp_path)
    fp = dm.fingerprint()
    assert fp == make(tiny_copy, tmp_path).fingerprint() and len(fp) == 16
    raw = next((tiny_copy / "train").iterdir()) / "AIRS-CH0_signal_0.parquet"
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))
    assert dm.fingerprint() != fp


def test_bad_fold_is_rejected(tiny_root, tmp_path):
    with pytest.raises(ConfigError, match="data.fold=3 is out of range for data.n_folds=3"):
        make(tiny_root, tmp_path, fold=3, n_folds=3)


def test_hydra_config_simulates_when_missing_and_yields_batches(tmp_path):
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "seed": 11, "data": OmegaConf.load(CONFIG)})
    cfg.data.simulate.merge_with({"planets": 4, "test_planets": 1, "airs_pairs": 8, "fgs1_pairs": 48})
    cfg.data.n_folds, cfg.data.batch_size = 2, 2
    dm = instantiate(cfg.data)
    assert isinstance(dm, ArielDataModule) and dm.hparams.seed == 11
    assert dm.root == tmp_path / "ariel_toy"
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    # 48 FGS1 pairs / bin 24 = 2 bins; 8 AIRS pairs / bin 2 = 4 bins.
    assert batch["fgs1"].shape == (2, 2) and batch["airs"].shape == (2, 4, 282)
    assert (tmp_path / "ariel_toy" / "cache" / dm.chain_hash).is_dir()


def test_2024_naming_is_read_by_the_same_code(tmp_path, tiny_cfg):
    root = simulate_dataset(tmp_path / "old", planets=2, seed=1, test_planets=1, cfg=replace(tiny_cfg, edition="2024"))
    pid = pd.read_csv(root / "train_labels.csv")["planet_id"].iloc[0]
    assert (root / "train" / str(pid) / "AIRS-CH0_signal.parquet").is_file()
    assert (root / "train_adc_info.csv").is_file() and not (root / "train_star_info.csv").exists()
    dm = make(root, tmp_path, edition="2024", n_folds=2, group_by=["star"])
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["meta"].shape == (1, 0) and batch["airs"].shape == (1, 4, 282)
    assert dm._groups(dm.planet_ids("train")) == ["0", "1"]


class _MeanModel(pl.LightningModule):
    """The smallest model that consumes a batch: depths from the mean AIRS spectrum."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(282, 283)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        spectrum = batch["airs"].mean(dim=1) / batch["airs"].mean()
        return torch.nn.functional.mse_loss(self.head(spectrum), batch["target"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_trainer_keeps_our_sampler_and_advances_its_epoch(tiny_root, tmp_path):
    dm = make(tiny_root, tmp_path, batch_size=1)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_MeanModel(), datamodule=dm)
    sampler = trainer.train_dataloader.sampler
    assert isinstance(sampler, DistributedSampler) and sampler.seed == 5 and sampler.epoch == 1


def test_ranks_see_disjoint_shards_of_the_training_planets(toy_module):
    shards = []
    for rank in (0, 1):
        toy_module.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = toy_module.train_dataloader()
        loader.sampler.set_epoch(4)
        shards.append({int(p) for batch in loader for p in batch["planet_id"]})
    toy_module.trainer = None
    assert shards[0].isdisjoint(shards[1])
    assert shards[0] | shards[1] == set(toy_module.train_set.tensors["planet_id"].tolist())
