"""Framework overhead: seconds per training step through train.py's full stack vs a plain loop.

    python benchmarks/overhead.py [--epochs 3]

(a) `train.py experiment=digits` with everything on: Hydra, Lightning, the MLflow logger,
    checkpoints, the rich progress bar, LR monitor, per-epoch and per-batch seeding, the NaN guard; a StepTimer callback
    records the wall time between consecutive training steps.
(b) A plain PyTorch loop over the same DataLoader (the same datamodule), the same timm model,
    AdamW and warm-up/cosine schedule, deterministic algorithms on as in (a), timed the same way.
Both skip each epoch's first steps. Prints the median seconds per step of each and the ratio
(target <= 1.10). (c) The same loop as a bare LightningModule (no logger, callbacks, metrics or
progress bar) splits that ratio into Lightning's own share and podium's on top. Validation and
checkpoint time fall between epochs, outside the step timings; the totals are printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SKIP = 2  # steps ignored at the start of each epoch, as StepTimer(skip=2)


def stack_run(epochs: int, out_file: Path) -> tuple[list[float], float]:
    cmd = [sys.executable, str(ROOT / "train.py"), "experiment=digits", "run_name=bench_overhead", "force=true",
           f"trainer.max_epochs={epochs}", "extras.print_config=false",
           "+callbacks.step_timer._target_=src.callbacks.timing.StepTimer", f"+callbacks.step_timer.skip={SKIP}",
           f"+callbacks.step_timer.out_file={out_file}"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"train.py failed:\n{proc.stderr[-3000:]}")
    return json.loads(out_file.read_text())["step_seconds"], total


def _parts(epochs: int) -> tuple[Any, Any, Any, Any]:
    """The digits experiment's train loader, network, AdamW and warm-up/cosine schedule."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import src.core  # noqa: F401
    from src.modules.schedulers import warmup_cosine

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(config_name="train", overrides=["experiment=digits", f"paths.root_dir={ROOT}"])
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    net = instantiate(cfg.model.net)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.model.optimizer.lr, weight_decay=cfg.model.optimizer.weight_decay)
    sched = warmup_cosine(opt, total_steps=epochs * len(loader), warmup_fraction=cfg.model.scheduler.warmup_fraction)
    return loader, net, opt, sched


def bare_lightning_run(epochs: int) -> tuple[list[float], float]:
    """The same loop as a minimal LightningModule: no logger, callbacks, metrics or progress bar."""
    import lightning.pytorch as pl
    import torch.nn.functional as F

    loader, net, opt, sched = _parts(epochs)

    class Bare(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.seconds, self.last, self.index = net, [], None, 0

        def training_step(self, batch: dict, batch_idx: int) -> Any:
            return F.cross_entropy(self.net(batch["image"]), batch["label"])

        def on_train_epoch_start(self) -> None:
            self.last = None

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            now = time.perf_counter()
            if self.last is not None and batch_idx > SKIP:
                self.seconds.append(now - self.last)
            self.last = now

        def configure_optimizers(self) -> Any:
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    module = Bare()
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         deterministic=True, accelerator="cpu")  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return module.seconds, time.perf_counter() - start


def plain_run(epochs: int) -> tuple[list[float], float]:
    import torch.nn.functional as F

    loader, net, opt, sched = _parts(epochs)
    seconds: list[float] = []
    start = time.perf_counter()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        net.train()
        last = None
        for i, batch in enumerate(loader):
            loss = F.cross_entropy(net(batch["image"]), batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            now = time.perf_counter()
            if last is not None and i > SKIP:
                seconds.append(now - last)
            last = now
    return seconds, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack, stack_total = stack_run(args.epochs, Path(tmp) / "steps.json")
    plain, plain_total = plain_run(args.epochs)
    bare, bare_total = bare_lightning_run(args.epochs)
    s, p, b = float(np.median(stack)), float(np.median(plain)), float(np.median(bare))
    print(f"model / data     : resnet18 on digits, batch 64, {args.epochs} epochs, {os.cpu_count()} CPU cores")
    print(f"plain PyTorch    : median {p * 1e3:.1f} ms/step over {len(plain)} steps (loop total {plain_total:.1f} s)")
    print(
        f"train.py stack   : median {s * 1e3:.1f} ms/step over {len(stack)} steps (process total {stack_total:.1f} s)"
    )
    print(f"bare Lightning   : median {b * 1e3:.1f} ms/step over {len(bare)} steps (fit total {bare_total:.1f} s)")
    print(f"ratio stack/plain: {s / p:.3f} (target <= 1.10)")
    print(f"  of which Lightning itself {b / p:.3f} (bare/plain), podium's stack on top {s / b:.3f} (stack/bare)")


if __name__ == "__main__":
    main()
