"""The job behind ``predict.py`` for Ariel runs: checkpoint -> calibrated ``submission.csv``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from src.callbacks.ariel.outputs import as_numpy, depth_columns, submission_frame, write_csv
from src.core.errors import ConfigError, RunStateError
from src.core.training import instantiate_group

SPLITS = ("test", "val")


def find_checkpoint(run_dir: Path, ckpt: str | None) -> Path:
    """The checkpoint to load.

    Args:
        run_dir: The run directory.
        ckpt: ``last`` (or null): ``checkpoints/last.ckpt``, the weights training ended with, which
            is what the run's own ``submission.csv`` used (``ArielSubmissionWriter(weights=final)``);
            ``best``: the monitored best checkpoint recorded in ``metrics.json``; else a file path.
    """
    if ckpt in (None, "last", "best"):
        if ckpt == "best":
            metrics = run_dir / "metrics.json"
            best = json.loads(metrics.read_text()).get("best/checkpoint") if metrics.is_file() else None
            path = run_dir / best if best else run_dir / "checkpoints" / "missing-best.ckpt"
        else:
            path = run_dir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise RunStateError(
                f"no {ckpt or 'last'} checkpoint in {run_dir / 'checkpoints'}",
                "train the run first with the same overrides (python train.py ...), or pass ckpt=<path>",
            )
        return path
    path = Path(ckpt)
    if not path.is_file():
        raise RunStateError(f"checkpoint ckpt={ckpt} does not exist", "pass last, best or the path of a .ckpt file")
    return path


def _stack(outputs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    keys = outputs[0].keys()
    return {k: as_numpy(torch.cat([o[k] for o in outputs])) for k in keys}


def predict(cfg: DictConfig) -> Path:
    """Load the checkpoint, predict ``cfg.split`` with the calibration callbacks, write the table.

    Returns:
        The written CSV (competition format; for ``split=val`` the true depths are appended as
        ``true_*`` columns).
    """
    if cfg.split not in SPLITS:
        raise ConfigError(
            f"split={cfg.split!r} is not a split predict.py writes",
            f"pass split=test (the submission) or split=val (with the true depths); one of {list(SPLITS)}",
        )
    run_dir = Path(cfg.paths.output_dir)
    ckpt = find_checkpoint(run_dir, cfg.get("ckpt"))
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("predict")
    model = instantiate(cfg.model)
    callbacks = [cb for cb in instantiate_group(cfg.get("callbacks")) if callable(getattr(cb, "calibrate", None))]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False, enable_checkpointing=False)
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    outputs = trainer.predict(model, dataloaders=loader, ckpt_path=str(ckpt), weights_only=False)
    preds = _stack(outputs)
    frame = submission_frame(preds["planet_id"], preds["mu"], preds["sigma"])
    if cfg.split == "val":
        import pandas as pd

        truth = pd.DataFrame(preds["target"].astype(np.float64), columns=depth_columns("true"))
        frame = pd.concat([frame, truth], axis=1)
    default = "submission.csv" if cfg.split == "test" else "predictions/val_predict.csv"
    out = Path(cfg.output) if cfg.get("output") else run_dir / default
    if rank_zero_only.rank == 0:
        write_csv(out, frame)
        print(f"podium: wrote {len(frame)} planets to {out} (checkpoint {ckpt})")
    return out
