"""Shared pieces of the video post-filter tests: a tiny datamodule, module and trainer."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from src.callbacks.seeding import EpochSeed
from src.callbacks.threads import CPUThreads
from src.datamodules.video.codec import CodecSettings
from src.datamodules.video.datamodule import VideoPairDataModule
from src.modules.postfilter.module import PostFilterModule
from src.modules.postfilter.network import PostFilterCNN

#: carphone through x264 at CRF 32: ~29.5 dB decoded PSNR on the test block.
CODEC = CodecSettings(name="libx264", crf=32, preset="medium")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test (tiny convs on a shared CPU), then the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_datamodule(cache_dir: Path, **overrides: Any) -> VideoPairDataModule:
    """carphone, a few small patches per epoch (2 optimizer steps)."""
    settings = {"source": "carphone", "codec": CODEC, "cache_dir": str(cache_dir), "patch_size": 32,
                "patches_per_epoch": 32, "batch_size": 16, "eval_batch_size": 6, "seed": 0, **overrides}  # fmt: skip
    return VideoPairDataModule(**settings)


def toy_module(features: int = 16, depth: int = 3, lr: float = 3e-3) -> PostFilterModule:
    """A ~7 k-parameter filter (seeded)."""
    torch.manual_seed(0)
    net = PostFilterCNN(features=features, depth=depth)
    return PostFilterModule(net, optimizer=functools.partial(torch.optim.AdamW, lr=lr))


def toy_trainer(root: Path, callbacks: list[pl.Callback], epochs: int, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU trainer on one thread, seeded per epoch like ``train.py``."""
    return pl.Trainer(
        default_root_dir=str(root),
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        callbacks=[CPUThreads(1), EpochSeed(0), *callbacks],
        **kwargs,
    )
