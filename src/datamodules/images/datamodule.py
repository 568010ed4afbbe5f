"""LightningDataModule for image classification datasets in the generic layout."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from typing_extensions import override

from src.core.errors import ConfigError, DataError
from src.core.io import file_fingerprint
from src.datamodules.base import PodiumDataModule
from src.datamodules.folds import check_fold, load_or_create_folds
from src.datamodules.images.augment import build_transform, check_profile
from src.datamodules.images.cleaning import manifest_changes
from src.datamodules.images.layout import ImageTable, fingerprint, read_split
from src.datamodules.integrity import BAD_IMAGE_POLICIES, undecodable
from src.datamodules.seeding import SeededDistributedSampler, SeededWeightedSampler

log = logging.getLogger("podium")
#: Undecodable files named in an error or warning; the rest are counted.
SHOWN_BAD_IMAGES = 5


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


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the dataset folder where it lies inside it, else in full."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


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
        bad_images: What to do with images PIL cannot decode, found when the dataset is first
            read: ``raise`` (a DataError naming them) or ``quarantine`` (drop them from every
            split with a logged warning; folds are assigned before, so the folds file does not
            change).
        manifest: The dataset's cleaning manifest, applied when the file exists: ``drop`` rows
            leave every split, ``relabel`` rows train with their ``new_label`` (see
            :mod:`~src.datamodules.images.cleaning`); None: not applied.
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
        bad_images: str = "raise",
        manifest: str | None = None,
    ) -> None:
        super().__init__()
        check_fold(fold, n_folds)
        check_profile(augment)
        if in_chans not in (1, 3):
            raise ConfigError(f"data.in_chans={in_chans} is not supported", "use 1 (grey) or 3 (RGB)")
        if len(mean) != in_chans or len(std) != in_chans:
            raise ConfigError(
                f"data.mean/data.std have {len(mean)}/{len(std)} values for in_chans={in_chans}",
                "give one mean and one std per channel",
            )
        if sampler not in {"shuffle", "weighted"}:
            raise ConfigError(f"data.sampler={sampler!r} is not a sampler", "use 'shuffle' or 'weighted'")
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ConfigError(
                f"data.bad_images={bad_images!r} is not a policy for undecodable images",
                "use 'raise' (stop and name them) or 'quarantine' (drop them and train on the rest)",
            )
        self.save_hyperparameters(logger=False, ignore=["prepare"])
        self.root = Path(root)
        self.name = name or self.root.name
        self.prepare = prepare
        self.train_set: ImageDataset | None = None
        self.val_set: ImageDataset | None = None
        self.test_set: ImageDataset | None = None
        self.classes: list[str] = []
        self._tables: dict[str, ImageTable] | None = None
        #: Per split, positions (in its CSV) of the images dropped by ``bad_images=quarantine``.
        self.quarantined: dict[str, list[int]] = {}
        #: Image ids the cleaning manifest drops.
        self._dropped: set[str] = set()

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
        """Write the dataset if a ``prepare`` callable is set, then read and check it.

        Checking here (rank 0, before the run records anything) makes a bad CSV, label or image
        fail the command at once; ``setup`` reuses what was read.
        """
        if self.prepare is not None:
            self.prepare(self.root)
        self.tables()

    def tables(self) -> dict[str, ImageTable]:
        """The ``train`` (and ``test``) splits resolved to files and checked, read once.

        Every image is decoded once (verdicts cached in the dataset folder, see
        :mod:`~src.datamodules.integrity`); what happens to undecodable ones follows
        ``data.bad_images``.

        Raises:
            DataError: A CSV, label, class count or image file is wrong (see ``read_split``).
        """
        if self._tables is None:
            hp = self.hparams
            train = read_split(self.root, "train", hp.label_column, hp.group_column)
            self._check_num_classes(train)
            train = self._apply_manifest(train)
            tables = {"train": train}
            if self.has_test:
                tables["test"] = read_split(self.root, "test", hp.label_column, None, classes=train.classes)
            self.quarantined = self._handle_bad_images(tables)
            if self._dropped:
                keep = set(self.quarantined.get("train", []))
                dropped = [i for i, sid in enumerate(train.sample_ids) if sid in self._dropped]
                self.quarantined["train"] = sorted(keep | set(dropped))
            self._tables = tables
        return self._tables

    def manifest_path(self) -> Path | None:
        """The cleaning manifest that applies (None: not configured, or no such file)."""
        path = self.hparams.manifest
        return Path(path) if path and Path(path).is_file() else None

    def _apply_manifest(self, table: ImageTable) -> ImageTable:
        """The training table with the manifest's relabels; its drops are kept for ``tables``."""
        path = self.manifest_path()
        if path is None:
            return table
        drop, relabel = manifest_changes(path, table.classes)
        self._dropped = drop
        if drop or relabel:
            rank_zero_only(log.info)(
                f"cleaning manifest {path}: {len(drop)} image(s) dropped, {len(relabel)} relabelled"
            )
        labels = [relabel.get(sid, lab) for sid, lab in zip(table.sample_ids, table.labels, strict=True)]
        return replace(table, labels=labels)

    def _check_num_classes(self, table: ImageTable) -> None:
        expected = self.hparams.num_classes
        if expected is not None and expected != len(table.classes):
            raise DataError(
                f"{self.root / 'train.csv'} has {len(table.classes)} classes {table.classes[:20]}, "
                f"but data.num_classes={expected}",
                f"set data.num_classes={len(table.classes)}",
            )

    def _handle_bad_images(self, tables: dict[str, ImageTable]) -> dict[str, list[int]]:
        """Find undecodable images; raise, or return their positions per split to drop them."""
        paths = [p for table in tables.values() for p in table.paths]
        bad, start = {}, 0
        found = undecodable(paths, self.root)
        for split, table in tables.items():
            stop = start + len(table.paths)
            bad[split] = [i - start for i in found if start <= i < stop]
            start = stop
        if not found:
            return {}
        names = [_relative(paths[i], self.root) for i in found[:SHOWN_BAD_IMAGES]]
        more = f" and {len(found) - len(names)} more" if len(found) > len(names) else ""
        shown = ", ".join(names) + more
        if self.hparams.bad_images == "raise":
            raise DataError(
                f"{len(found)} of {len(paths)} images under {self.root} cannot be decoded: {shown}",
                "replace or remove those files, pass data.bad_images=quarantine to train without them, or "
                f"list every problem with python -m src.datamodules.images.cleaning --root {self.root}",
            )
        rank_zero_only(log.warning)(
            f"data.bad_images=quarantine: dropping {len(found)} undecodable image(s) under {self.root} "
            f"from every split: {shown}"
        )
        return bad

    def _usable(self, split: str, n: int) -> np.ndarray:
        """``(n,)`` bool: rows of ``split`` that were not quarantined."""
        keep = np.ones(n, dtype=bool)
        keep[self.quarantined.get(split, [])] = False
        return keep

    def fingerprint(self) -> str:
        """Fingerprint of the training data (CSV and image files' names, sizes, mtimes, and the
        cleaning manifest that applies)."""
        manifest = self.manifest_path()
        base = fingerprint(self.tables()["train"], self.root / "train.csv")
        return base if manifest is None else file_fingerprint([manifest], base)

    def _subset(self, table: ImageTable, mask: np.ndarray, transform: Callable) -> ImageDataset:
        idx = np.flatnonzero(mask).tolist()
        mode = "L" if self.hparams.in_chans == 1 else "RGB"
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return ImageDataset(pick(table.paths), pick(table.labels), pick(table.sample_ids), transform, mode)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        tables = self.tables()
        table = tables["train"]
        self.classes = table.classes
        # Folds are assigned over every row, quarantined ones included: dropping a bad image
        # must not change the dataset's folds file, which every model of the dataset shares.
        folds = load_or_create_folds(self.root, table.sample_ids, hp.n_folds, hp.seed, table.labels, table.groups)[
            "fold"
        ].to_numpy()
        usable = self._usable("train", len(table.paths))
        train_tf = build_transform(hp.augment, hp.image_size, hp.mean, hp.std)
        eval_tf = build_transform("none", hp.image_size, hp.mean, hp.std)
        self.train_set = self._subset(table, (folds != hp.fold) & usable, train_tf)
        self.val_set = self._subset(table, (folds == hp.fold) & usable, eval_tf)
        if "test" in tables:
            test = tables["test"]
            self.test_set = self._subset(test, self._usable("test", len(test.paths)), eval_tf)

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
