"""Out-of-fold predictions: after fit, predict the validation fold and the test split with TTA.

Writes, under ``dirpath`` (``<run dir>/oof/``):
    val.parquet     sample_id, fold, label, logit_0..logit_{C-1}, prob_0..prob_{C-1}
    test.parquet    sample_id, logit_*, prob_* (when the datamodule has a test split)
    classes.json    {"classes": [...]} class names by index

The fold runner (``src/core/cv.py``) concatenates the folds' ``val.parquet`` into one OOF table
per model and averages their test predictions; ensembles read only those tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

from src.core.contracts import ClassLabels
from src.core.io import atomic_path, write_json_atomic
from src.datamodules.images.tta import predict_logits, tta_views


def prediction_frame(ids: list[str], logits: np.ndarray, **columns: Any) -> pd.DataFrame:
    """A prediction table: ids, extra columns, then ``logit_*`` and ``prob_*`` (softmax)."""
    probs = torch.from_numpy(logits).softmax(dim=-1).numpy()
    frame = pd.DataFrame({"sample_id": ids, **columns})
    n_classes = logits.shape[1]
    logit_cols = pd.DataFrame(logits.astype(np.float32), columns=[f"logit_{c}" for c in range(n_classes)])
    prob_cols = pd.DataFrame(probs.astype(np.float32), columns=[f"prob_{c}" for c in range(n_classes)])
    return pd.concat([frame, logit_cols, prob_cols], axis=1)


class OOFPredictionWriter(pl.Callback):
    """Predict the validation fold (and test split) once training ends; write parquet tables.

    Args:
        dirpath: Output folder (``${paths.output_dir}/oof``).
        tta: TTA setting: ``none``, ``flip``, ``geo4`` or ``geo8``.
        weights: ``final`` (default) predicts with the weights training ended with, which no
            score of the validation fold chose (unless a callback swaps weights by validation,
            as ``SelectiveSWA`` does), so the out-of-fold score is out of sample; ``best`` loads
            the best checkpoint's weights first (what ModelCheckpoint kept, chosen on this same
            validation fold: the OOF score is then optimistic).
    """

    datamodule_hooks = (ClassLabels,)

    def __init__(self, dirpath: str, tta: str = "none", weights: str = "final") -> None:
        self.dirpath = Path(dirpath)
        self.views = tta_views(tta)
        if weights not in {"best", "final"}:
            raise ValueError(f"weights={weights!r}: use 'best' or 'final'")
        self.weights = weights

    def _load_best(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        if self.weights == "best" and isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
            state = torch.load(ckpt.best_model_path, map_location=pl_module.device, weights_only=False)
            pl_module.load_state_dict(state["state_dict"])

    def _predict(self, pl_module: pl.LightningModule, loader: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
        ids: list[str] = []
        labels: list[np.ndarray] = []
        logits: list[np.ndarray] = []
        for batch in loader:
            images = batch["image"].to(pl_module.device)
            logits.append(predict_logits(pl_module, images, self.views).cpu().numpy())
            labels.append(np.asarray(batch["label"]))
            ids.extend(batch["id"])
        return ids, np.concatenate(labels), np.concatenate(logits)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return
        dm = trainer.datamodule
        self._load_best(trainer, pl_module)
        was_training = pl_module.training
        pl_module.eval()
        ids, labels, logits = self._predict(pl_module, dm.val_dataloader())
        fold = int(dm.hparams.fold)
        self._write("val.parquet", prediction_frame(ids, logits, fold=fold, label=labels))
        if getattr(dm, "has_test", False):
            ids, _, logits = self._predict(pl_module, dm.test_dataloader())
            self._write("test.parquet", prediction_frame(ids, logits))
        write_json_atomic(self.dirpath / "classes.json", {"classes": list(dm.classes)})
        pl_module.train(was_training)

    def _write(self, name: str, frame: pd.DataFrame) -> None:
        with atomic_path(self.dirpath / name) as tmp:
            frame.to_parquet(tmp, index=False)
