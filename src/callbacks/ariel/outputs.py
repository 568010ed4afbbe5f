"""Ariel predictions after fit: the competition submission and the validation predictions.

After ``fit`` the :class:`ArielSubmissionWriter` (rank 0) optionally restores the best checkpoint
(its weights and the calibration callbacks' state stored with it), predicts the validation fold
and the test split, applies every calibration callback (``calibrate``: temperature scaling, then
conformal half-widths), and writes::

    <dirpath>/submission.csv          planet_id, wl_1..wl_283, sigma_1..sigma_283   (test split)
    <dirpath>/predictions/val.csv     planet_id, fold, wl_*, sigma_*, true_* (validation fold)

``predict.py`` writes the same table from a saved checkpoint (``src.modules.ariel.submission``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader
from typing_extensions import override

from src.core.contracts import GaussianPredictor
from src.core.errors import ConfigError
from src.modules.ariel.submission import depth_columns, submission_frame, write_csv


def calibrators(trainer: pl.Trainer) -> list[Any]:
    """The trainer's callbacks that calibrate predictions (have ``calibrate``), in config order."""
    return [cb for cb in trainer.callbacks if callable(getattr(cb, "calibrate", None))]


def as_numpy(value: torch.Tensor) -> np.ndarray:
    """A tensor on the host: floating point as float64, integers (planet ids) kept exact."""
    value = value.detach().cpu()
    return value.double().numpy() if value.is_floating_point() else value.numpy()


@torch.no_grad()
def collect_predictions(
    pl_module: pl.LightningModule, loader: DataLoader, calibrators: Sequence[Any] = ()
) -> dict[str, np.ndarray]:
    """Run ``predict_step`` over a loader, apply the calibrators, and stack the outputs.

    Returns:
        Output name -> array with planets on the first axis (``planet_id``, ``mu``, ``sigma``,
        ``sigma_raw``, ``embedding``, ``target`` when labelled, ``half_width_*`` from conformal).
    """
    was_training = pl_module.training
    pl_module.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for i, batch in enumerate(loader):
        batch = {k: v.to(pl_module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        out = pl_module.predict_step(batch, i)
        for cal in calibrators:
            out = cal.calibrate(out)
        for key, value in out.items():
            parts.setdefault(key, []).append(as_numpy(value))
    pl_module.train(was_training)
    return {k: np.concatenate(v) for k, v in parts.items()}


def restore_best(trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
    """Load the best checkpoint's weights and the calibrators' state stored with it.

    Returns:
        The checkpoint path, or None when there is none (the current weights stay).
    """
    ckpt = trainer.checkpoint_callback
    if not isinstance(ckpt, ModelCheckpoint) or not ckpt.best_model_path:
        return None
    state = torch.load(ckpt.best_model_path, map_location=pl_module.device, weights_only=False)
    pl_module.load_state_dict(state["state_dict"])
    stored = state.get("callbacks", {})
    for cb in calibrators(trainer):
        if cb.state_key in stored:
            cb.load_state_dict(stored[cb.state_key])
    return ckpt.best_model_path


class ArielSubmissionWriter(Callback):
    """Write ``submission.csv`` (test split) and ``predictions/val.csv`` after fit (rank 0).

    Must come before the report in the callbacks config: with ``weights: best`` it restores the
    best checkpoint (and its calibration) for every callback after it.

    Args:
        dirpath: The run directory.
        weights: ``best`` (the monitored best checkpoint) or ``final`` (the weights fit ended with).
        batch_size: Prediction batch size.
    """

    module_hooks = (GaussianPredictor,)

    def __init__(self, dirpath: str, weights: str = "best", batch_size: int = 16) -> None:
        if weights not in {"best", "final"}:
            raise ConfigError(f"ArielSubmissionWriter weights={weights!r}", "use 'best' or 'final'")
        self.dirpath, self.weights, self.batch_size = Path(dirpath), weights, int(batch_size)

    def _loader(self, dataset: Any) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        if self.weights == "best":
            restore_best(trainer, pl_module)  # on every rank: later callbacks see the same weights
        if not trainer.is_global_zero:
            return
        dm, cals = trainer.datamodule, calibrators(trainer)
        val = collect_predictions(pl_module, self._loader(dm.val_set), cals)
        frame = submission_frame(val["planet_id"], val["mu"], val["sigma"])
        frame.insert(1, "fold", int(dm.hparams.fold))
        truth = pd.DataFrame(val["target"].astype(np.float64), columns=depth_columns("true"))
        write_csv(self.dirpath / "predictions" / "val.csv", pd.concat([frame, truth], axis=1))
        if getattr(dm, "test_set", None) is not None:
            test = collect_predictions(pl_module, self._loader(dm.test_set), cals)
            write_csv(self.dirpath / "submission.csv", submission_frame(test["planet_id"], test["mu"], test["sigma"]))
