"""What every podium datamodule shares: a global batch size split over processes, and loaders
whose order and randomness depend on (seed, epoch) alone."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from typing_extensions import override

from src.core.errors import ConfigError, DataError


class PodiumDataModule(pl.LightningDataModule):
    """Base class. Subclasses save ``batch_size``, ``num_workers``, ``seed`` (and optionally
    ``pin_memory``) as hyper-parameters, fill ``train_set``/``val_set``/``test_set`` in ``setup``
    and build one split's loader in ``_loader``."""

    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        raise NotImplementedError

    def _split(self, name: str) -> Dataset:
        dataset = getattr(self, f"{name}_set", None)
        if dataset is None:
            where = getattr(self, "root", "the dataset folder")
            raise DataError(f"{type(self).__name__}: no {name} split under {where}", f"add {name} data or skip it")
        return dataset

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self._split("train"), train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self._split("val"), train=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self._split("test"), train=False)

    def _world(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def per_device_batch_size(self) -> int:
        """The global ``batch_size`` divided over the processes of the run."""
        world, _ = self._world()
        if self.hparams.batch_size % world:
            raise ConfigError(
                f"data.batch_size={self.hparams.batch_size} is not divisible by the {world} processes",
                f"use a multiple of {world}",
            )
        return self.hparams.batch_size // world

    def make_loader(self, dataset: Dataset, sampler: Sampler | None, drop_last: bool = False) -> DataLoader:
        """A DataLoader with the per-device batch size and its own seeded generator.

        The generator keeps iterator creation from drawing on the global RNG, whose per-epoch
        state ``EpochSeed`` controls; the sampler (a DistributedSampler, even on one process,
        whose ``set_epoch`` Lightning calls) fixes the order.
        """
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.per_device_batch_size(),
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.hparams.get("pin_memory", False),
            persistent_workers=workers > 0,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )
