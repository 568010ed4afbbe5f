"""LightningDataModule for image classification datasets in the generic layout."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from typing_extensions import override

from src.callbacks.reproducibility import epoch_seed
from src.core.errors import ConfigError, DataError
from src.datamodules.base import PodiumDataModule
from src.datamodules.folds import check_fold, load_or_create_folds
from src.datamodules.images.augment import build_transform
from src.datamodules.images.layout import ImageTable, fingerprint, read_split


class SeededDistributedSampler(DistributedSampler):
    """A DistributedSampler that hands each index its own augmentation seed.

    Yields ``(index, seed)`` with ``seed = f(run seed, epoch, index)``, so a sample's augmentation
    depends on neither the DataLoader worker that loads it, nor the number of processes, nor
    whether the run was resumed. Lightning calls ``set_epoch`` on it every epoch.
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        for index in super().__iter__():
            yield index, epoch_seed(self.seed, self.epoch, index)


class SeededWeightedSampler(SeededDistributedSampler):
    """Class-balanced sampling with replacement (``WeightedRandomSampler``'s rule), per process.

    Each epoch draws ``len(dataset)`` indices with probability proportional to ``weights`` from
    a generator seeded by (seed, epoch), then gives every process its share; each index again
    carries its own augmentation seed.

    Args:
        dataset: The training dataset.
        weights: One non-negative weight per sample (``1 / count[label]`` balances classes).
        num_replicas: Number of processes.
        rank: This process's rank.
        seed: Run seed.
    """

    def __init__(self, dataset: Dataset, weights: Sequence[float], num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.weights = torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g).tolist()
        for index in drawn[self.rank : self.total_size : self.num_replicas]:
            yield index, epoch_seed(self.seed, self.epoch, index)


class ImageDataset(Dataset):
    """Images read from disk on access; ``dataset[(index, seed)]`` augments under that seed.

    Args:
        paths: Image files.
        labels: Class indices (``-1`` for unlabelled samples).
        sample_ids: Identifiers returned with each sample (keys of out-of-fold tables).
        transform: PIL image → tensor.
        mode: PIL mode images are converted to (``"L"`` grey, ``"RGB"`` colour).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        sample_ids: Sequence[str],
        transform: Callable,
        mode: str,
    ) -> None:
        self.paths, self.labels, self.sample_ids = list(paths), list(labels), list(sample_ids)
        self.transform, self.mode = transform, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                image = img.convert(self.mode)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {path}: {exc}", "replace or remove the file") from exc
        if seed is None:
            tensor = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                tensor = self.transform(image)
        return {"image": tensor, "label": self.labels[index], "id": self.sample_ids[index]}


class ImageFolderDataModule(PodiumDataModule):
    """Reads ``<root>/train.csv`` (+ optional ``test.csv``), splits train by the dataset's folds.

    Validation is fold ``fold`` of a ``StratifiedGroupKFold`` over label and group, written once
    to the dataset's folds file and shared by every model of the dataset.

    Args:
        root: Dataset folder.
        num_classes: Expected number of classes (the model's head size); checked against the data.
        name: Dataset name (defaults to the folder's name).
        prepare: Optional callable ``prepare(root)`` that writes the dataset (run once, rank 0).
        label_column: CSV column with class names.
        group_column: CSV column with group keys (``None`` for ungrouped folds).
        n_folds: Number of folds.
        fold: Validation fold index.
        seed: Seed of the folds and of the training shuffle.
        batch_size: Global batch size, split evenly over the processes of a DDP run.
        num_workers: DataLoader worker processes per training process.
        image_size: Side length in pixels the images are resized to.
        in_chans: 1 (grey) or 3 (RGB).
        mean: Normalisation mean per channel (pixel values in [0, 1]).
        std: Normalisation std per channel.
        augment: Training augmentation profile (see ``augment.PROFILES``).
        sampler: ``shuffle`` (each sample once per epoch) or ``weighted`` (class-balanced draws
            with replacement, ``WeightedRandomSampler``'s rule).
        pin_memory: Pin host memory for faster GPU transfer.
    """

    def __init__(
        self,
        root: str,
        num_classes: int | None = None,
        name: str | None = None,
        prepare: Callable[[Path], Any] | None = None,
        label_column: str = "label",
        group_column: str | None = "group",
        n_folds: int = 5,
        fold: int = 0,
        seed: int = 42,
        batch_size: int = 64,
        num_workers: int = 0,
        image_size: int = 32,
        in_chans: int = 3,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        augment: str = "none",
        sampler: str = "shuffle",
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        check_fold(fold, n_folds)
        if in_chans not in (1, 3):
            raise ConfigError(f"data.in_chans={in_chans} is not supported", "use 1 (grey) or 3 (RGB)")
        if len(mean) != in_chans or len(std) != in_chans:
            raise ConfigError(
                f"data.mean/data.std have {len(mean)}/{len(std)} values for in_chans={in_chans}",
                "give one mean and one std per channel",
            )
        if sampler not in {"shuffle", "weighted"}:
            raise ConfigError(f"data.sampler={sampler!r} is not a sampler", "use 'shuffle' or 'weighted'")
        self.save_hyperparameters(logger=False, ignore=["prepare"])
        self.root = Path(root)
        self.name = name or self.root.name
        self.prepare = prepare
        self.train_set: ImageDataset | None = None
        self.val_set: ImageDataset | None = None
        self.test_set: ImageDataset | None = None
        self.classes: list[str] = []

    @property
    def num_classes(self) -> int:
        """Number of classes in the training split (after ``setup``)."""
        return len(self.classes)

    @property
    def has_test(self) -> bool:
        """Whether the dataset has a test split (``test.csv``)."""
        return (self.root / "test.csv").is_file()

    @override
    def prepare_data(self) -> None:
        if self.prepare is not None:
            self.prepare(self.root)

    def _table(self) -> ImageTable:
        hp = self.hparams
        return read_split(self.root, "train", hp.label_column, hp.group_column)

    def fingerprint(self) -> str:
        """Fingerprint of the training data (CSV and image files' names, sizes, mtimes)."""
        return fingerprint(self._table(), self.root / "train.csv")

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        table = self._table()
        self.classes = table.classes
        if hp.num_classes is not None and hp.num_classes != len(table.classes):
            raise DataError(
                f"{self.root / 'train.csv'} has {len(table.classes)} classes {table.classes[:20]}, "
                f"but data.num_classes={hp.num_classes}",
                f"set data.num_classes={len(table.classes)}",
            )
        folds = load_or_create_folds(self.root, table.sample_ids, hp.n_folds, hp.seed, table.labels, table.groups)[
            "fold"
        ].to_numpy()
        mode = "L" if hp.in_chans == 1 else "RGB"
        train_tf = build_transform(hp.augment, hp.image_size, hp.mean, hp.std)
        eval_tf = build_transform("none", hp.image_size, hp.mean, hp.std)

        def subset(mask: Any, tf: Callable) -> ImageDataset:
            idx = [i for i, m in enumerate(mask) if m]
            pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
            return ImageDataset(pick(table.paths), pick(table.labels), pick(table.sample_ids), tf, mode)

        self.train_set = subset(folds != hp.fold, train_tf)
        self.val_set = subset(folds == hp.fold, eval_tf)
        if self.has_test:
            test = read_split(self.root, "test", hp.label_column, None, classes=table.classes)
            self.test_set = ImageDataset(test.paths, test.labels, test.sample_ids, eval_tf, mode)

    def class_counts(self) -> list[int]:
        """Training-split samples per class (after ``setup``)."""
        counts = [0] * self.num_classes
        for label in self.train_set.labels:
            counts[label] += 1
        return counts

    def _train_sampler(self, dataset: ImageDataset, world: int, rank: int) -> DistributedSampler:
        seed = self.hparams.seed
        if self.hparams.sampler == "weighted":
            counts = self.class_counts()
            weights = [1.0 / counts[label] for label in dataset.labels]
            return SeededWeightedSampler(dataset, weights, num_replicas=world, rank=rank, seed=seed)
        return SeededDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        world, rank = self._world()
        sampler = self._train_sampler(dataset, world, rank) if train else None
        # A last batch of one breaks batch norm; validation keeps every sample.
        return self.make_loader(dataset, sampler, drop_last=train and len(dataset) > self.per_device_batch_size())
