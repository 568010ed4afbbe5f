"""LightningDataModule for object detection: COCO folders or record files, variable-length targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from typing_extensions import override

from src.core.errors import ConfigError, DataError
from src.core.io import file_fingerprint
from src.datamodules.base import PodiumDataModule
from src.datamodules.detection.coco import FILES, FORMATS, DetectionTable, read_dataset
from src.datamodules.folds import check_fold, validation_folds

#: Training augmentations: ``none``, or ``flip`` (horizontal flip of image and boxes with p = 0.5).
AUGMENTS = ("none", "flip")
#: Probability of the horizontal flip of ``augment="flip"``.
FLIP_P = 0.5


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror a ``(C, H, W)`` image and its ``(N, 4)`` ``[x1, y1, x2, y2]`` pixel boxes left to right.

    Pixel column ``c`` moves to ``W - 1 - c``, so a box covering columns ``[x1, x2)`` covers
    ``[W - x2, W - x1)`` afterwards.
    """
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return image.flip(-1), flipped


class DetectionDataset(Dataset):
    """Images read from disk on access with their boxes; ``dataset[(index, seed)]`` augments under that seed.

    A sample is ``{"image": float32 (3, H, W) in [0, 1], "boxes": float32 (N, 4) [x1, y1, x2, y2]
    pixels, "labels": int64 (N,) 1-based classes, "id": sample_id, "size": (width, height)}``.

    Args:
        paths: Image files.
        sample_ids: Identifiers returned with each sample.
        sizes: ``(width, height)`` of each image.
        boxes: Per image a float32 ``(N, 4)`` array.
        labels: Per image an int64 ``(N,)`` array.
        augment: ``none`` or ``flip``; applied only to keys that carry a seed (the training loader's).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        sample_ids: Sequence[str],
        sizes: Sequence[tuple[int, int]],
        boxes: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        augment: str = "none",
    ) -> None:
        self.paths, self.sample_ids, self.sizes = list(paths), list(sample_ids), list(sizes)
        self.boxes, self.labels, self.augment = list(boxes), list(labels), augment

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {path}: {exc}", "replace or remove the file") from exc
        width, height = self.sizes[index]
        if pixels.shape[:2] != (height, width):
            raise DataError(
                f"image {path} is {pixels.shape[1]}x{pixels.shape[0]} pixels, not {width}x{height} as when the "
                "dataset was read",
                "the file changed during the run: restore it, or start the run again",
            )
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self._image(index)
        boxes = torch.from_numpy(np.array(self.boxes[index], dtype=np.float32).reshape(-1, 4))
        labels = torch.from_numpy(np.array(self.labels[index], dtype=np.int64).reshape(-1))
        if seed is not None and self.augment == "flip":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                flip = bool(torch.rand(()) < FLIP_P)
            if flip:
                image, boxes = hflip(image, boxes)
        return {"image": image, "boxes": boxes, "labels": labels, "id": self.sample_ids[index],
                "size": tuple(self.sizes[index])}  # fmt: skip


def collate_detection(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of detection samples, kept as lists (images differ in size, targets in length).

    Returns:
        ``{"images": [(3, H, W) float], "targets": [{"boxes": (N, 4) float32, "labels": (N,) int64}],
        "ids": [str], "sizes": [(width, height)]}``, in sample order.
    """
    return {
        "images": [s["image"] for s in samples],
        "targets": [{"boxes": s["boxes"], "labels": s["labels"]} for s in samples],
        "ids": [s["id"] for s in samples],
        "sizes": [tuple(s["size"]) for s in samples],
    }


class DetectionDataModule(PodiumDataModule):
    """Reads a detection dataset folder (COCO or records, see :mod:`~src.datamodules.detection.coco`).

    Validation is fold ``fold`` of the train pool, from the dataset's folds file
    (``StratifiedGroupKFold`` over each image's most frequent class, ``"none"`` for an image without
    boxes, and its group), shared by every model of the dataset; the test split is the test file
    where present. Images keep their own size; a detector resizes them itself.

    Args:
        root: Dataset folder.
        format: ``auto`` (whichever of ``annotations.json`` / ``records.jsonl`` exists), ``coco`` or ``records``.
        num_classes: Expected number of classes without the background (the model's head size minus
            one); checked against the data.
        name: Dataset name (defaults to the folder's name).
        prepare: Optional callable ``prepare(root)`` that writes the dataset (run once, rank 0).
        group_field: Image key (COCO image / record) holding group keys; None for ungrouped folds.
        n_folds: Number of folds.
        fold: Validation fold index.
        seed: Seed of the folds, the training shuffle and the flips.
        batch_size: Global training batch size, split evenly over the processes of a DDP run.
        eval_batch_size: Images per validation, test and predict batch and process (default: the
            per-process training batch for validation and test, ``batch_size`` for predict).
        num_workers: DataLoader worker processes per training process.
        augment: ``none`` or ``flip`` (seeded horizontal flip of image and boxes, p = 0.5; training only).
        pin_memory: Pin host memory for faster GPU transfer.
        max_images: Use only the first images of each split file (a quick smoke run); None for all.
    """

    def __init__(
        self,
        root: str,
        format: str = "auto",
        num_classes: int | None = None,
        name: str | None = None,
        prepare: Callable[[Path], Any] | None = None,
        group_field: str | None = "group",
        n_folds: int = 5,
        fold: int = 0,
        seed: int = 42,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: str = "flip",
        pin_memory: bool = False,
        max_images: int | None = None,
    ) -> None:
        super().__init__()
        check_fold(fold, n_folds)
        if format not in FORMATS:
            raise ConfigError(f"data.format={format!r} is not a detection layout", f"use one of {list(FORMATS)}")
        if augment not in AUGMENTS:
            raise ConfigError(
                f"data.augment={augment!r} is not a detection augmentation", f"use one of {list(AUGMENTS)}"
            )
        for key, value, least in (("num_classes", num_classes, 1), ("max_images", max_images, n_folds)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(f"data.{key}={value!r} is not a whole number >= {least}", f"pass data.{key}=<n>")
        self.save_hyperparameters(logger=False, ignore=["prepare"])
        self.root = Path(root)
        self.name = name or self.root.name
        self.prepare = prepare
        self.train_set: DetectionDataset | None = None
        self.val_set: DetectionDataset | None = None
        self.test_set: DetectionDataset | None = None
        #: Class names; label ``k + 1`` is ``classes[k]`` (0 is the background). Filled when the data is read.
        self.classes: list[str] = []
        self._tables: dict[str, DetectionTable] | None = None

    @property
    def num_classes(self) -> int:
        """Number of object classes, without the background (after the data is read)."""
        return len(self.classes)

    @property
    def has_test(self) -> bool:
        """Whether the dataset has a test file (``annotations_test.json`` / ``records_test.jsonl``).

        Answered from the files alone until the data is read, so asking never fails.
        """
        if self._tables is not None:
            return "test" in self._tables
        formats = FILES if self.hparams.format == "auto" else {self.hparams.format: FILES[self.hparams.format]}
        return any((self.root / files["test"]).is_file() for files in formats.values())

    @override
    def prepare_data(self) -> None:
        """Write the dataset if a ``prepare`` callable is set, then read and check it.

        Checking here (rank 0, before the run records anything) makes a bad annotation or image fail
        the command at once; ``setup`` reuses what was read.
        """
        if self.prepare is not None:
            self.prepare(self.root)
        self.tables()

    def tables(self) -> dict[str, DetectionTable]:
        """The ``train`` (and ``test``) splits, read and checked once.

        Raises:
            DataError: A file, annotation or image is wrong (see :mod:`~src.datamodules.detection.coco`),
                or the class count differs from ``data.num_classes``.
        """
        if self._tables is None:
            hp = self.hparams
            tables = read_dataset(self.root, hp.format, hp.group_field, hp.max_images)
            train = tables["train"]
            expected = hp.num_classes
            if expected is not None and expected != len(train.classes):
                raise DataError(
                    f"{train.source} has {len(train.classes)} classes {train.classes[:20]}, "
                    f"but data.num_classes={expected}",
                    f"set data.num_classes={len(train.classes)}",
                )
            self.classes = list(train.classes)
            self._tables = tables
        return self._tables

    def fingerprint(self) -> str:
        """Fingerprint of the data: name, size and mtime of the annotation file(s) and of every image file."""
        tables = self.tables().values()
        return file_fingerprint([t.source for t in tables] + [p for t in tables for p in t.paths])

    def _folds(self, table: DetectionTable) -> np.ndarray:
        """Fold index of each train-pool image."""
        hp = self.hparams
        return validation_folds(
            self.root, table.sample_ids, hp.fold, hp.n_folds, hp.seed, table.strata(), table.groups,
            str(table.source), hp.group_field,
        )  # fmt: skip

    @staticmethod
    def _subset(table: DetectionTable, mask: np.ndarray, augment: str) -> DetectionDataset:
        idx = np.flatnonzero(mask).tolist()
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return DetectionDataset(
            pick(table.paths), pick(table.sample_ids), pick(table.sizes), pick(table.boxes), pick(table.labels), augment
        )

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        tables = self.tables()
        table = tables["train"]
        folds = self._folds(table)
        self.train_set = self._subset(table, folds != hp.fold, hp.augment)
        self.val_set = self._subset(table, folds == hp.fold, "none")
        if "test" in tables:
            test = tables["test"]
            self.test_set = self._subset(test, np.ones(len(test), dtype=bool), "none")

    @override
    def collate_fn(self) -> Callable[[list[Any]], Any]:
        """:func:`collate_detection`: lists of images and of ``{"boxes", "labels"}`` targets."""
        return collate_detection
