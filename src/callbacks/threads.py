"""Intra-op CPU threads of a training process that trains on the CPU.

On a machine shared with other jobs, PyTorch's default of one thread per core makes small convs
*slower*: the threads wait at every op for a descheduled sibling (the ~35 k-parameter post-filter
trained 5× faster on one thread than on two busy cores, 41 s against 3 min for the toy run).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from typing_extensions import override


class CPUThreads(pl.Callback):
    """Set ``torch.set_num_threads`` while a stage runs on the CPU accelerator.

    Args:
        num_threads: Intra-op threads; None leaves PyTorch's default (one per core).
    """

    def __init__(self, num_threads: int | None = None) -> None:
        self.num_threads = num_threads
        self._before: int | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.num_threads and isinstance(trainer.accelerator, CPUAccelerator):
            self._before = torch.get_num_threads()
            torch.set_num_threads(int(self.num_threads))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._before is not None:  # leave the process as found (tests, notebooks)
            torch.set_num_threads(self._before)
            self._before = None
