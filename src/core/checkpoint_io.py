"""Checkpoints written like every other trusted file: temp sibling, fsync, rename; checked on load.

Lightning's own writer streams the bytes into the destination (through an fsspec transaction that
has no fsync), so a machine that dies mid-write can leave a ``last.ckpt`` that looks present and
is not. Here the destination only ever holds a complete file, and a file that does not load is
reported by name with the fix instead of as a deep unpickling traceback. Every checkpoint also
carries the trainer's callback metrics of its moment (:class:`CarryCallbackMetrics`), so a run
resumed after its last epoch still reports them.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from src.core.errors import RunStateError
from src.core.io import atomic_path

#: What ``torch.load`` raises on a truncated or foreign file.
UNREADABLE = (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError)
#: The checkpoint entry that holds the trainer's callback metrics when it was written.
CALLBACK_METRICS_KEY = "podium_callback_metrics"


def load_checkpoint_file(
    path: str | Path, map_location: Any = "cpu", weights_only: bool = False, mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint written by a podium run; an unreadable file is a RunStateError naming it.

    Args:
        path: The checkpoint file.
        map_location: As for ``torch.load``.
        weights_only: As for ``torch.load``; a run's own checkpoints hold partial optimizers, so False.
        mmap: Map the tensors instead of reading them (a cheap look at the metadata).

    Returns:
        The checkpoint dictionary.
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except UNREADABLE as exc:
        raise RunStateError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); it was damaged "
            "or written by something other than this run",
            f"delete {path.name} to resume from an earlier checkpoint, or rerun with force=true to start over",
        ) from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RunStateError(
            f"{path} is not a Lightning checkpoint (no 'state_dict')",
            f"delete {path.name}, or rerun with force=true to start over",
        )
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes through :func:`src.core.io.atomic_path` and verifies loads."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    @override
    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Callable | Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return load_checkpoint_file(path, map_location=map_location, weights_only=bool(weights_only))


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The single-number entries of a metrics mapping (tensors or numbers) as floats."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() == 1:
                out[key] = float(value.detach().cpu())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class CarryCallbackMetrics(pl.Callback):
    """Carry ``trainer.callback_metrics`` in every checkpoint; keep those of the one a fit resumes from.

    A run's final metrics are the trainer's callback metrics when ``fit`` returns, and Lightning
    empties them at the start of every ``fit``. The checkpoint callbacks write the last epoch's
    ``last.ckpt`` in ``on_train_epoch_end``, after the fit loop has counted that epoch, so a run
    killed after it (in an ``on_fit_end`` callback, in the test, or while ``metrics.json`` is
    written) resumes into a fit loop with nothing left to do: ``fit`` returns at once and logs
    nothing. So each checkpoint holds the callback metrics of its moment, and the resumed run
    reports :attr:`carried` overlaid by what it logged itself (``src.core.training``).

    That is right wherever the kill lands: within a fit Lightning only adds callback metrics or
    overwrites them, so an uninterrupted fit ends with the union of the metrics at any of its
    checkpoints and those logged after it, the later value winning, and a fit resumed from that
    checkpoint logs what the uninterrupted one logs after it. Metrics a callback adds in
    ``on_train_end`` (Lightning does not call it when the resumed fit has nothing to train) are
    not carried; those added in ``on_fit_end`` are logged again by the resumed run.

    Attributes:
        carried: The callback metrics of the checkpoint the current fit resumed from (empty for
            a fresh fit).
    """

    def __init__(self) -> None:
        self.carried: dict[str, float] = {}

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[CALLBACK_METRICS_KEY] = scalar_metrics(trainer.callback_metrics)

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Lightning also restores callbacks from the checkpoint a test loads (ckpt_path="best"):
        # those metrics belong to an earlier epoch, not to the end of the fit.
        if trainer.state.fn == TrainerFn.FITTING:
            self.carried = dict(checkpoint.get(CALLBACK_METRICS_KEY, {}))
