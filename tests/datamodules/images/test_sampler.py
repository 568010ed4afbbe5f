"""The training sampler of ``data.sampler``: ``weighted`` draws every class equally often."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from src.datamodules.images.datamodule import ImageDataset, ImageFolderDataModule
from src.datamodules.seeding import SeededWeightedSampler

COUNTS = [400, 200, 100, 40, 10]  # a long-tailed label list: the rarest class is 1/75 of the data


def datamodule(tmp_path: Path, sampler: str) -> ImageFolderDataModule:
    """A datamodule whose training split holds ``COUNTS[c]`` samples of class ``c`` (no image files:
    the sampler reads labels only)."""
    labels = [c for c, n in enumerate(COUNTS) for _ in range(n)]
    dm = ImageFolderDataModule(str(tmp_path), num_classes=len(COUNTS), sampler=sampler, batch_size=10, seed=3)
    dm.classes = [str(c) for c in range(len(COUNTS))]
    dm.train_set = ImageDataset([tmp_path] * len(labels), labels, [str(i) for i in range(len(labels))], str, "L")
    return dm


def drawn_classes(dm: ImageFolderDataModule, epoch: int, world: int = 1, rank: int = 0) -> list[int]:
    """The labels of one epoch of the datamodule's training sampler on process ``rank``."""
    sampler = dm._train_sampler(dm.train_set, world, rank)
    sampler.set_epoch(epoch)
    return [dm.train_set.labels[index] for index, _ in sampler]


def per_class(labels: list[int]) -> list[int]:
    counts = collections.Counter(labels)
    return [counts[c] for c in range(len(COUNTS))]


def test_weighted_sampler_draws_an_epoch_with_equal_class_counts(tmp_path: Path) -> None:
    dm = datamodule(tmp_path, "weighted")
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, SeededWeightedSampler)
    n, k = sum(COUNTS), len(COUNTS)
    for epoch in range(3):
        counts = per_class(drawn_classes(dm, epoch))
        assert sum(counts) == n  # an epoch is as long as the dataset
        # Multinomial draws: 150 expected per class, std 11; 30% is a 4-sigma band.
        assert all(abs(c - n / k) < 0.3 * n / k for c in counts), counts
    pooled = per_class([y for epoch in range(8) for y in drawn_classes(dm, epoch)])
    assert max(pooled) / min(pooled) < 1.15, pooled  # 8 epochs: within a few percent of equal


def test_shuffle_sampler_keeps_the_imbalance(tmp_path: Path) -> None:
    # The contrast that makes the balance above the sampler's doing: one pass over every sample.
    assert per_class(drawn_classes(datamodule(tmp_path, "shuffle"), epoch=0)) == COUNTS


def test_weighted_draws_depend_on_seed_and_epoch_only_and_split_over_processes(tmp_path: Path) -> None:
    dm = datamodule(tmp_path, "weighted")
    first = drawn_classes(dm, epoch=0)
    assert drawn_classes(dm, epoch=0) == first  # the same epoch again: the same draws
    assert drawn_classes(dm, epoch=1) != first
    # Two processes share one draw: their halves interleave to the single-process epoch.
    halves = [drawn_classes(dm, epoch=0, world=2, rank=rank) for rank in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == len(first) // 2
    assert [y for pair in zip(*halves, strict=True) for y in pair] == first[: 2 * len(halves[0])]
    for half in halves:
        assert all(abs(c - len(half) / len(COUNTS)) < 0.35 * len(half) / len(COUNTS) for c in per_class(half))


def test_rare_class_samples_are_each_drawn_repeatedly(tmp_path: Path) -> None:
    # Balancing by repetition: the 10 rarest samples fill a fifth of the epoch, ~15 draws each.
    dm = datamodule(tmp_path, "weighted")
    rare = {i for i, y in enumerate(dm.train_set.labels) if y == len(COUNTS) - 1}
    sampler = dm._train_sampler(dm.train_set, 1, 0)
    sampler.set_epoch(0)
    draws = collections.Counter(index for index, _ in sampler if index in rare)
    assert set(draws) == rare
    assert min(draws.values()) >= 5 and sum(draws.values()) == pytest.approx(sum(COUNTS) / len(COUNTS), rel=0.3)
