"""What every podium datamodule shares: a global batch size split over processes, and loaders
whose order and randomness depend on (seed, epoch) alone."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from typing_extensions import override

from src.core.errors import ConfigError, DataError
from src.core.private_api import IndexBatchesLoader
from src.datamodules.seeding import SeededDistributedSampler

#: The splits a datamodule may serve for prediction, in this order.
PREDICT_SPLITS = ("val", "test")


class _AfterDone:
    """Batches of indices without the first ``done()`` ones, counted when the first is requested."""

    def __init__(self, batches: Iterable[Any], done: Callable[[], int]) -> None:
        self.batches, self.done = batches, done

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.batches)
        for _ in range(self.done()):
            if next(it, None) is None:
                return
        yield from it


class _OnFirstNext:
    """An iterator made by ``make()`` when its first item is requested."""

    def __init__(self, make: Callable[[], Iterator[Any]]) -> None:
        self._make, self._it = make, None

    def __iter__(self) -> _OnFirstNext:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._it = self._make()
        return next(self._it)

    def __getstate__(self) -> dict[str, Any]:
        return {"_make": self._make, "_it": None}  # torch's iterators cannot be pickled


class ResumableLoader(IndexBatchesLoader):
    """A DataLoader that continues a training epoch resumed from a mid-epoch checkpoint.

    Lightning restores the loop's batch counter from a mid-epoch checkpoint (the one it writes when
    SLURM asks a job to requeue) but restarts a plain DataLoader at the epoch's first batch. The
    order of indices depends on the sampler's (seed, epoch) alone, so dropping the first
    ``batches_done(loader)`` batches of indices, before any sample is read, continues the epoch
    where it stopped. Lightning's ``state_dict`` protocol marks the loader resumable; the position
    itself is the loop's, so it saves nothing.

    Each iteration's torch iterator is made when its first batch is requested: Lightning calls
    ``iter()`` on the training loader before it restores a checkpoint and sets the sampler's epoch,
    and worker processes would take that epoch's indices (and the skip count) right then.
    """

    batches_done: Callable[[DataLoader], int] | None = None

    def __iter__(self) -> Any:
        return _OnFirstNext(super().__iter__)

    @override
    def index_batches(self, base: Any) -> Any:
        done = self.batches_done
        return base if done is None else _AfterDone(base, lambda: done(self))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class PodiumDataModule(pl.LightningDataModule):
    """Base class. Subclasses save ``batch_size``, ``num_workers``, ``seed`` (and optionally
    ``pin_memory``, ``eval_batch_size``) as hyper-parameters, fill ``train_set``/``val_set``/
    ``test_set`` in ``setup``, and may build one split's loader their own way in ``_loader``."""

    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None

    #: Loader settings that must be positive integers (``num_workers`` may be 0).
    POSITIVE_SETTINGS = ("batch_size", "eval_batch_size")

    def check_settings(self) -> None:
        """Refuse loader settings no DataLoader accepts, at start-up (before a run directory exists).

        Raises:
            ConfigError: naming ``data.<key>``, its value and the fix.
        """
        for key in self.POSITIVE_SETTINGS:
            value = self.hparams.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(
                    f"data.{key}={value!r} is not a positive whole number", f"pass data.{key}=<n> with n >= 1"
                )
        workers = self.hparams.get("num_workers", 0)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(
                f"data.num_workers={workers!r} is not a whole number >= 0", "pass data.num_workers=0 or more"
            )

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        """One split's loader: training shuffled by (seed, epoch) over the processes, its last batch
        dropped when it would be short (a batch of one breaks batch norm); evaluation keeps every
        sample, on exactly one process (:meth:`eval_sampler`), in ``eval_batch_size`` batches."""
        if train:
            world, rank = self._world()
            sampler = SeededDistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.hparams.seed
            )
            return self.make_loader(dataset, sampler, drop_last=len(dataset) > self.per_device_batch_size())
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.get("eval_batch_size") or self.per_device_batch_size(),
            sampler=self.eval_sampler(dataset),
            shuffle=False,
            num_workers=workers,
            pin_memory=self.hparams.get("pin_memory", False),
            persistent_workers=workers > 0,
            collate_fn=self.collate_fn(),
        )

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

    def eval_sampler(self, dataset: Dataset) -> Sampler | None:
        """This process's share of an evaluation split: every sample on exactly one process.

        Lightning's default for a distributed run pads the split with repeated samples until it
        divides evenly, which counts those samples twice in synced metrics and in gathered
        predictions. Processes here may run one batch fewer instead; nothing in validation or
        test synchronises per batch. A split smaller than the world keeps the padding so that
        every process still runs a batch. None (plain order) on one process.
        """
        world, rank = self._world()
        if world == 1:
            return None
        if len(dataset) < world:
            return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)

    def make_loader(self, dataset: Dataset, sampler: Sampler | None, drop_last: bool = False) -> DataLoader:
        """A DataLoader with the per-device batch size and its own seeded generator.

        The generator keeps iterator creation from drawing on the global RNG, whose per-epoch
        state ``EpochSeed`` controls; the sampler (a DistributedSampler, even on one process,
        whose ``set_epoch`` Lightning calls) fixes the order, and a training epoch resumed
        mid-way starts after the batches it already trained on (:class:`ResumableLoader`).
        """
        workers = self.hparams.num_workers
        loader = ResumableLoader(
            dataset,
            batch_size=self.per_device_batch_size(),
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.hparams.get("pin_memory", False),
            persistent_workers=workers > 0,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(self.hparams.seed),
            collate_fn=self.collate_fn(),
        )
        loader.batches_done = self._train_batches_done
        return loader

    def _train_batches_done(self, loader: DataLoader) -> int:
        """Batches of the current epoch the fit loop has trained on when it asks ``loader`` for
        the epoch's first batch: those before the checkpoint of a run resumed mid-epoch, else 0.
        Other iterations of a loader (predictions, calibration passes in callbacks) start at 0."""
        trainer = self.trainer
        if loader is not getattr(trainer, "train_dataloader", None):
            return 0
        return trainer.fit_loop.epoch_loop.batch_progress.current.ready

    # ---- prediction (predict.py) -------------------------------------------------------------------

    #: The split :meth:`predict_dataloader` serves; ``predict.py`` sets it before ``trainer.predict``.
    predict_split: str = "test"

    @property
    def has_test(self) -> bool:
        """Whether a test split is set up."""
        return self.test_set is not None

    def collate_fn(self) -> Callable[[list[Any]], Any] | None:
        """How samples become a batch in every loader: None is torch's default collate."""
        return None

    def splits(self) -> tuple[str, ...]:
        """The splits :meth:`predict_dataloader_for` serves (after ``setup``): ``val`` and ``test``
        where present."""
        return tuple(name for name in PREDICT_SPLITS if getattr(self, f"{name}_set", None) is not None)

    def check_split(self, split: str) -> None:
        """Refuse a split this datamodule does not serve, listing those it does.

        Raises:
            ConfigError: naming ``split``, the datamodule and its splits.
        """
        have = self.splits()
        if split not in have:
            raise ConfigError(
                f"split={split!r} is not a split of {type(self).__name__} (it has: {', '.join(have) or 'none'})",
                f"pass split=<one of {', '.join(have)}>" if have else "point data.root at a dataset with a val split",
            )

    def predict_dataset(self, split: str) -> Dataset:
        """Every sample of ``split`` with evaluation transforms, in a fixed order."""
        self.check_split(split)
        return self._split(split)

    def sample_ids(self, split: str) -> list[str]:
        """The stable ids of ``split``'s samples in loader order (the records' ``sample_id``)."""
        ids = getattr(self.predict_dataset(split), "sample_ids", None)
        if ids is None:
            raise NotImplementedError(f"{type(self).__name__} must implement sample_ids")
        return [str(i) for i in ids]

    def predict_batch_size(self) -> int:
        """Samples per predict batch: ``eval_batch_size`` where set, else ``batch_size``."""
        return int(self.hparams.get("eval_batch_size") or self.hparams.batch_size)

    def predict_dataloader_for(self, split: str) -> DataLoader:
        """A loader over every sample of ``split`` once, in order, on one process (no sampler, so
        no distributed padding repeats a sample)."""
        workers = self.hparams.get("num_workers", 0)
        return DataLoader(
            self.predict_dataset(split),
            batch_size=self.predict_batch_size(),
            shuffle=False,
            num_workers=workers,
            pin_memory=self.hparams.get("pin_memory", False),
            collate_fn=self.collate_fn(),
        )

    @override
    def predict_dataloader(self) -> DataLoader:
        return self.predict_dataloader_for(self.predict_split)
