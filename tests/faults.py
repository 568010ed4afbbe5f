"""Run an entry point with a fault injected: ``python -m tests.faults [faults] -- train.py <overrides>``.

The faults are installed by patching, so the run's config (and so its resume identity) is exactly
that of the plain command:

--kill-at-step N     SIGKILL the process when the training loop reaches global step N
--in-fit K           ... in the K-th ``Trainer`` the process builds (CV folds run in one process)
--kill-on-write GLOB SIGKILL while writing a file whose name matches GLOB: the temporary sibling
                     is cut to half its size first, as a write torn by the kill would leave it
--nan-at-step N      fill the float tensors of the batch at global step N with NaN
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import runpy
import signal
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

import src.core.io as podium_io


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(pl.Callback):
    """SIGKILL the process as the batch of global step ``step`` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step:
            print(f"faults: SIGKILL at global step {self.step}", flush=True)
            _die()


class NaNAtStep(pl.Callback):
    """Poison the batch of global step ``step``: every float tensor in it becomes NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step and isinstance(batch, dict):
            for value in batch.values():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    value.fill_(float("nan"))


def _add_callbacks(make: list[pl.Callback], in_fit: int) -> None:
    """Append ``make`` to the callbacks of the ``in_fit``-th Trainer built in this process."""
    original = pl.Trainer.__init__
    built = {"n": 0}

    def init(self: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        built["n"] += 1
        if built["n"] == in_fit:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), *make]
        original(self, *args, **kwargs)

    pl.Trainer.__init__ = init


def _kill_on_write(pattern: str) -> None:
    original = podium_io._commit

    def commit(tmp: Path, final: Path) -> None:
        if fnmatch.fnmatch(final.name, pattern):
            size = tmp.stat().st_size
            os.truncate(tmp, size // 2)
            print(f"faults: SIGKILL while writing {final} ({size // 2} of {size} bytes written)", flush=True)
            _die()
        original(tmp, final)

    podium_io._commit = commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--in-fit", type=int, default=1)
    parser.add_argument("--kill-on-write")
    parser.add_argument("--nan-at-step", type=int)
    parser.add_argument("entry", help="the entry script, e.g. train.py")
    parser.add_argument("overrides", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    callbacks: list[pl.Callback] = []
    if args.kill_at_step is not None:
        callbacks.append(KillAtStep(args.kill_at_step))
    if args.nan_at_step is not None:
        callbacks.append(NaNAtStep(args.nan_at_step))
    if callbacks:
        _add_callbacks(callbacks, args.in_fit)
    if args.kill_on_write:
        _kill_on_write(args.kill_on_write)
    entry = str(Path(args.entry).resolve())
    sys.argv = [entry, *args.overrides]
    sys.path.insert(0, str(Path(entry).parent))
    runpy.run_path(entry, run_name="__main__")


if __name__ == "__main__":
    main()
