"""Checkpoints written like every other trusted file: temp sibling, fsync, rename; checked on load.

Lightning's own writer streams the bytes into the destination (through an fsspec transaction that
has no fsync), so a machine that dies mid-write can leave a ``last.ckpt`` that looks present and
is not. Here the destination only ever holds a complete file, and a file that does not load is
reported by name with the fix instead of as a deep unpickling traceback.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from src.core.errors import RunStateError
from src.core.io import atomic_path

#: What ``torch.load`` raises on a truncated or foreign file.
UNREADABLE = (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError)


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
