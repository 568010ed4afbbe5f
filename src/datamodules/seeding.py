"""Seeds that depend on (run seed, epoch, batch or sample) alone, and the samplers that carry them.

A sample's augmentation and a batch's dropout then depend on neither the DataLoader worker, nor
the number of processes, nor whether the run was resumed (see ``src.callbacks.seeding``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def _mix(*parts: int) -> int:
    """A 32-bit seed mixing ``parts`` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed mixing the run seed, the epoch and the process rank."""
    return _mix(seed, epoch, rank)


def batch_seed(seed: int, epoch: int, batch: int, rank: int = 0) -> int:
    """A 32-bit seed mixing the run seed, the epoch, the batch index in the epoch and the rank."""
    return _mix(seed, epoch, rank, batch)


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
