"""StepTimer: per-step seconds, batches run and the profiler's per-hook totals in its out file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from src.callbacks.timing import StepTimer, load_step_seconds, profiler_totals


class Line(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, profiler: str | None) -> tuple[StepTimer, Path]:
    out = tmp_path / "steps.json"
    timer = StepTimer(skip=1, out_file=str(out))
    data = TensorDataset(torch.randn(24, 3), torch.randn(24, 1))
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", callbacks=[timer], profiler=profiler,
                         default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(Line(), DataLoader(data, batch_size=4))
    return timer, out


def test_step_timer_skips_the_first_steps_of_each_epoch_and_writes_the_profile(tmp_path: Path) -> None:
    timer, out = fit(tmp_path, profiler="simple")
    # 6 batches per epoch, skip=1: the intervals ending at batches 2..5 of each epoch are timed
    assert timer.batches == 12 and len(load_step_seconds(out)) == 2 * 4
    profile = json.loads(out.read_text())["profile"]
    assert profile["run_training_batch"]["calls"] == 12
    assert profile["[Callback]StepTimer.on_train_batch_end"]["calls"] == 12
    assert all(entry["total_s"] >= 0 for entry in profile.values())


def test_no_profile_without_a_recording_profiler(tmp_path: Path) -> None:
    _, out = fit(tmp_path, profiler=None)
    assert "profile" not in json.loads(out.read_text())
    assert profiler_totals(None) == {}
