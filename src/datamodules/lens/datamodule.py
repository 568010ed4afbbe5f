"""LightningDataModule for lens-distortion correction: distorted photos and their corrected targets.

Training, validation and test loaders serve work-resolution samples (decoded and resized inside the
Dataset, so DataLoader workers do it); prediction serves the files at their own size, which the
competition's export needs. :meth:`LensDataModule.pairs` hands the heuristics' fits the labelled
pairs as arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from typing_extensions import override

from src.core.errors import ConfigError
from src.core.io import file_fingerprint
from src.datamodules.base import PodiumDataModule
from src.datamodules.folds import check_fold, validation_folds
from src.datamodules.integrity import BAD_IMAGE_POLICIES
from src.datamodules.lens.geometry import Camera
from src.datamodules.lens.layout import (
    METADATA,
    MIN_SIDE,
    TEST_DIR,
    LensTable,
    check_buckets,
    decode_image,
    read_layout,
)

#: Training augmentations: ``none``, or ``flip`` (horizontal flip of input and target with p = 0.5).
AUGMENTS = ("none", "flip")
#: Probability of the horizontal flip of ``augment="flip"``.
FLIP_P = 0.5
#: The camera vector's entries.
CAMERA_FIELDS = ("k1", "k2", "cx", "cy", "focal")


def camera_vector(camera: Camera | None) -> torch.Tensor:
    """``float32 (5,)`` ``[k1, k2, cx, cy, focal]``, NaN everywhere for an unknown camera."""
    if camera is None:
        return torch.full((len(CAMERA_FIELDS),), math.nan, dtype=torch.float32)
    return torch.tensor([getattr(camera, k) for k in CAMERA_FIELDS], dtype=torch.float32)


def squash(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` resized to ``side`` x ``side`` regardless of its aspect (``INTER_AREA``; linear when enlarging)."""
    enlarge = side > image.shape[0] or side > image.shape[1]
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR if enlarge else cv2.INTER_AREA)


def _as_float(pixels: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``float32 (3, H, W)`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0)


class LensDataset(Dataset):
    """A split's image pairs read from disk on access; ``dataset[(index, seed)]`` augments under that seed.

    A work-resolution sample (``full=False``): ``{"id", "bucket", "parent", "size": (W, H) of the file,
    "input": float32 (3, h, w) in [0, 1] (long side ``work_long_side``, aspect kept), "target": the
    same (zeros when unlabelled), "labelled": bool, "thumb": float32 (3, thumb_size, thumb_size) the
    input squashed to a square, "camera": float32 (5,) [k1, k2, cx, cy, focal] or NaN}``.

    A full-resolution sample (``full=True``, prediction): the same keys with ``input`` / ``target`` as
    uint8 ``(H, W, 3)`` tensors at the file's size, plus ``"input_path"`` and ``"target_path"`` (str
    or None). Its thumbnail is the work-resolution one, so a model sees the same thumbnail in training
    and prediction.

    Args:
        table: The split's images.
        full: Serve full-resolution samples.
        work_long_side: Long side of work-resolution images (and of the image thumbnails are made from).
        thumb_size: Side of the square thumbnail.
        augment: ``none`` or ``flip``; applied only to keys that carry a seed (the training loader's). A
            flip mirrors input, target and thumbnail and negates the camera's ``cx``.
    """

    def __init__(
        self, table: LensTable, full: bool, work_long_side: int, thumb_size: int, augment: str = "none"
    ) -> None:
        self.table, self.full = table, full
        self.work_long_side, self.thumb_size, self.augment = work_long_side, thumb_size, augment

    @property
    def sample_ids(self) -> list[str]:
        """The split's ids in loader order."""
        return self.table.sample_ids

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        t = self.table
        size = tuple(t.sizes[index])
        input_path, target_path = t.inputs[index], t.targets[index]
        work = decode_image(input_path, self.work_long_side, size)
        thumb = _as_float(squash(work, self.thumb_size))
        camera = camera_vector(t.cameras[index])
        if self.full:
            pixels = decode_image(input_path, None, size)
            inp = torch.from_numpy(pixels)
            target = (
                torch.from_numpy(decode_image(target_path, None, size))
                if target_path is not None
                else torch.zeros_like(inp)
            )
        else:
            inp = _as_float(work)
            target = (
                _as_float(decode_image(target_path, self.work_long_side, size))
                if target_path is not None
                else torch.zeros_like(inp)
            )
        if seed is not None and self.augment == "flip":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                flip = bool(torch.rand(()) < FLIP_P)
            if flip:
                width_dim = 1 if self.full else 2
                inp, target, thumb = inp.flip(width_dim), target.flip(width_dim), thumb.flip(2)
                camera[2] = -camera[2]
        sample = {
            "id": t.sample_ids[index],
            "bucket": t.buckets[index],
            "parent": t.parents[index],
            "size": size,
            "input": inp,
            "target": target,
            "labelled": target_path is not None,
            "thumb": thumb,
            "camera": camera,
        }
        if self.full:
            sample["input_path"] = str(input_path)
            sample["target_path"] = None if target_path is None else str(target_path)
        return sample


def collate_lens(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of lens samples: images as lists (buckets differ in size), the rest stacked.

    Returns:
        ``{"input": [image], "target": [image], "ids": [str], "buckets": [str], "parents": [str],
        "sizes": [(W, H)], "thumb": float32 (B, 3, t, t), "camera": float32 (B, 5), "labelled": bool
        (B,)}``, plus ``"input_paths"`` / ``"target_paths"`` (str or None) for full-resolution samples.
    """
    batch = {
        "input": [s["input"] for s in samples],
        "target": [s["target"] for s in samples],
        "ids": [s["id"] for s in samples],
        "buckets": [s["bucket"] for s in samples],
        "parents": [s["parent"] for s in samples],
        "sizes": [tuple(s["size"]) for s in samples],
        "thumb": torch.stack([s["thumb"] for s in samples]),
        "camera": torch.stack([s["camera"] for s in samples]),
        "labelled": torch.tensor([bool(s["labelled"]) for s in samples], dtype=torch.bool),
    }
    if samples and "input_path" in samples[0]:
        batch["input_paths"] = [s["input_path"] for s in samples]
        batch["target_paths"] = [s["target_path"] for s in samples]
    return batch


@dataclass(frozen=True)
class LensPair:
    """One labelled pair as arrays, for the heuristics' fits.

    Attributes:
        id: The sample id.
        bucket: Its size bucket.
        parent: Its orientation.
        size: ``(width, height)`` of the files.
        input: ``(h, w, 3)`` uint8 RGB distorted image.
        target: ``(h, w, 3)`` uint8 RGB corrected image.
        camera: The camera of ``metadata.csv``, or None.
    """

    id: str
    bucket: str
    parent: str
    size: tuple[int, int]
    input: np.ndarray
    target: np.ndarray
    camera: Camera | None


class LensDataModule(PodiumDataModule):
    """Reads the lens-correction layout (:mod:`~src.datamodules.lens.layout`).

    Validation is fold ``fold`` of the train pairs, from the dataset's folds file
    (``StratifiedGroupKFold`` over each image's size bucket and its ``metadata.csv`` group; stratified
    by bucket only without groups), shared by every model of the dataset. The test split is
    ``test-originals/``, labelled where ``test-targets/`` has the image.

    Args:
        root: Dataset folder.
        prepare: Optional callable ``prepare(root)`` that writes the dataset (run once, rank 0), e.g.
            :func:`~src.datamodules.lens.simulate.write_lens_set`.
        buckets: Optional ``{name: [width, height]}`` naming sizes; other sizes are ``"<w>x<h>"``.
        group_field: ``metadata.csv`` column of group keys; None (or no ``metadata.csv``) for folds
            grouped by nothing.
        n_folds: Number of folds.
        fold: Validation fold index.
        seed: Seed of the folds, the training shuffle and the flips.
        batch_size: Global training batch size, split evenly over the processes of a DDP run.
        eval_batch_size: Images per validation, test and predict batch and process (default: the
            per-process training batch for validation and test, ``batch_size`` for predict).
        num_workers: DataLoader worker processes per training process.
        work_long_side: Long side (pixels) of the images of the training, validation and test loaders.
        thumb_size: Side of the square thumbnail of every sample.
        augment: ``none`` or ``flip`` (seeded horizontal flip of input and target, p = 0.5; training only).
        bad_images: ``raise`` or ``quarantine`` (leave bad files out; see :func:`read_layout`).
        pin_memory: Pin host memory for faster GPU transfer.
        max_images: Use only the first (sorted) ids of each split (a quick smoke run); None for all.
    """

    def __init__(
        self,
        root: str,
        prepare: Callable[[Path], Any] | None = None,
        buckets: Mapping[str, Sequence[int]] | None = None,
        group_field: str | None = "group",
        n_folds: int = 5,
        fold: int = 0,
        seed: int = 42,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        work_long_side: int = 192,
        thumb_size: int = 128,
        augment: str = "flip",
        bad_images: str = "raise",
        pin_memory: bool = False,
        max_images: int | None = None,
    ) -> None:
        super().__init__()
        check_fold(fold, n_folds)
        if augment not in AUGMENTS:
            raise ConfigError(f"data.augment={augment!r} is not a lens augmentation", f"use one of {list(AUGMENTS)}")
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ConfigError(
                f"data.bad_images={bad_images!r} is not a policy for bad image files",
                "use 'raise' (stop and name them) or 'quarantine' (leave them out)",
            )
        for key, value, least in (
            ("work_long_side", work_long_side, MIN_SIDE),
            ("thumb_size", thumb_size, MIN_SIDE),
            ("max_images", max_images, n_folds),
        ):
            if key == "max_images" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"data.{key}={value!r} is not a whole number >= {least}", f"pass data.{key}=<n>")
        check_buckets(buckets)
        self.save_hyperparameters(logger=False, ignore=["prepare"])
        self.root = Path(root)
        self.prepare = prepare
        self.train_set: LensDataset | None = None
        self.val_set: LensDataset | None = None
        self.test_set: LensDataset | None = None
        self._tables: dict[str, LensTable] | None = None

    @property
    def has_test(self) -> bool:
        """Whether the dataset has test inputs (``test-originals/``); answered from the folder until read."""
        if self._tables is not None:
            return "test" in self._tables
        return (self.root / TEST_DIR).is_dir()

    @override
    def prepare_data(self) -> None:
        """Write the dataset if a ``prepare`` callable is set, then read and check it.

        Checking here (rank 0, before the run records anything) makes a bad file fail the command at
        once; ``setup`` reuses what was read.
        """
        if self.prepare is not None:
            self.prepare(self.root)
        self.tables()

    def tables(self) -> dict[str, LensTable]:
        """The ``train`` (and ``test``) tables, read and checked once.

        Raises:
            DataError: A file, name or ``metadata.csv`` is wrong (see :func:`read_layout`).
        """
        if self._tables is None:
            hp = self.hparams
            self._tables = read_layout(self.root, hp.buckets, hp.max_images, hp.bad_images, hp.group_field)
        return self._tables

    def fingerprint(self) -> str:
        """Fingerprint of the data: name, size and mtime of every image file and of ``metadata.csv``."""
        tables = self.tables().values()
        paths = [p for t in tables for pair in zip(t.inputs, t.targets, strict=True) for p in pair if p is not None]
        metadata = self.root / METADATA
        return file_fingerprint(paths + ([metadata] if metadata.is_file() else []))

    def _folds(self, table: LensTable) -> np.ndarray:
        """Fold index of each train pair."""
        hp = self.hparams
        source = self.root / METADATA if table.groups is not None else table.source
        return validation_folds(
            self.root, table.sample_ids, hp.fold, hp.n_folds, hp.seed, table.strata(), table.groups,
            str(source), hp.group_field,
        )  # fmt: skip

    def _dataset(self, table: LensTable, full: bool = False, augment: str = "none") -> LensDataset:
        hp = self.hparams
        return LensDataset(table, full, hp.work_long_side, hp.thumb_size, augment)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        tables = self.tables()
        table = tables["train"]
        folds = self._folds(table)
        self.train_set = self._dataset(table.subset(np.flatnonzero(folds != hp.fold)), augment=hp.augment)
        self.val_set = self._dataset(table.subset(np.flatnonzero(folds == hp.fold)))
        if "test" in tables:
            self.test_set = self._dataset(tables["test"])

    @override
    def collate_fn(self) -> Callable[[list[Any]], Any]:
        """:func:`collate_lens`: images as lists, thumbnails, cameras and labelled flags stacked."""
        return collate_lens

    @override
    def predict_dataset(self, split: str) -> Dataset:
        """Every sample of ``split`` at full resolution (uint8 ``(H, W, 3)``, with file paths), in order."""
        self.check_split(split)
        return self._dataset(self._split(split).table, full=True)

    def pairs(
        self, split: str = "train", long_side: int | None = None, per_bucket: int | None = None, seed: int = 0
    ) -> list[LensPair]:
        """The labelled pairs of ``split`` as arrays, for the heuristics' fits.

        Args:
            split: ``train``, ``val`` or ``test``.
            long_side: Resize each pair so its long side has this many pixels (aspect kept); None: full size.
            per_bucket: At most this many pairs per size bucket, drawn with ``seed``; None: all.
            seed: Seed of the draw.

        Returns:
            The pairs in the split's order.

        Raises:
            ConfigError: ``split`` is not set up, or ``long_side`` / ``per_bucket`` is not a whole number >= 1.
        """
        if self.train_set is None:
            self.setup()
        if split not in ("train", *self.splits()):
            have = ", ".join(("train", *self.splits()))
            raise ConfigError(f"split={split!r} is not a split of {type(self).__name__}", f"pass one of {have}")
        for key, value in (("long_side", long_side), ("per_bucket", per_bucket)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"pairs: {key}={value!r} is not a whole number >= 1", f"pass {key}=<n> or None")
        table = self._split(split).table
        labelled = [i for i, target in enumerate(table.targets) if target is not None]
        if per_bucket is not None:
            rng = np.random.default_rng(seed)
            chosen: list[int] = []
            for bucket in sorted(set(table.buckets[i] for i in labelled)):
                members = [i for i in labelled if table.buckets[i] == bucket]
                if len(members) > per_bucket:
                    members = sorted(rng.choice(members, size=per_bucket, replace=False).tolist())
                chosen += members
            labelled = sorted(chosen)
        out = []
        for i in labelled:
            size = tuple(table.sizes[i])
            out.append(
                LensPair(
                    id=table.sample_ids[i],
                    bucket=table.buckets[i],
                    parent=table.parents[i],
                    size=size,
                    input=decode_image(table.inputs[i], long_side, size),
                    target=decode_image(table.targets[i], long_side, size),
                    camera=table.cameras[i],
                )
            )
        return out
