"""Framework overhead: ms per training step through train.py's full stack vs a plain loop vs bare Lightning.

    python benchmarks/overhead.py [--rounds 5] [--epochs 3]
    python benchmarks/overhead.py --rounds 2 --epochs 1 --batches 8 --model test_resnet   # smoke run

Three ways to train the digits model, each in its own fresh process, run in alternating order
(podium, plain, bare, podium, plain, bare, ...) so that a change in the shared machine's load
falls on all three alike:

(a) podium: ``train.py experiment=digits`` with everything on: Hydra, Lightning, the MLflow
    logger, checkpoints, the rich progress bar, LR monitor, per-epoch and per-batch seeding, the
    NaN guard, metrics; a StepTimer callback records the wall time between consecutive steps.
(b) plain: a PyTorch loop over the same DataLoader (the same datamodule), the same timm model,
    AdamW and warm-up/cosine schedule, deterministic algorithms on as in (a), timed the same way.
(c) bare: the same loop as a minimal LightningModule (no logger, metrics or progress bar; the
    StepTimer is its only callback), which splits (a)/(b) into Lightning's own share and podium's.

Each run's figure is the median of its step times (each epoch's first steps skipped; validation
and checkpoints fall between epochs, outside the steps). The ratios are taken within a round and
the targets are on their median over the rounds: podium/plain <= 1.10, and, when Lightning itself
(bare/plain) is above 1.10, podium/bare <= 1.03. One more bare and one more podium run under
Lightning's SimpleProfiler show which hook costs how many ms per step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import Recorder  # noqa: E402

SKIP = 2  # steps ignored at the start of each epoch, as StepTimer(skip=2)
KINDS = ("podium", "plain", "bare")
NAMES = {"podium": "train.py stack", "plain": "plain PyTorch", "bare": "bare Lightning"}
#: Hooks that run once per training batch (the last part of a SimpleProfiler action name).
STEP_HOOKS = frozenset({
    "run_training_batch", "train_dataloader_next", "optimizer_step", "training_step", "backward",
    "optimizer_zero_grad", "lr_scheduler_step", "configure_gradient_clipping", "on_train_batch_start",
    "on_train_batch_end", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_before_zero_grad",
})  # fmt: skip
LIMIT_PODIUM_PLAIN = 1.10
LIMIT_PODIUM_BARE = 1.03
#: A hook podium adds is worth making cheaper when it costs more than this share of a step.
NOTABLE_SHARE = 0.03


# ---- the three ways to train ---------------------------------------------------------------------


def _root() -> Path:
    return Path(os.environ.get("PODIUM_ROOT") or ROOT)


def _timer_overrides(out_file: Path) -> list[str]:
    return ["+callbacks.step_timer._target_=src.callbacks.timing.StepTimer", f"+callbacks.step_timer.skip={SKIP}",
            f"+callbacks.step_timer.out_file={out_file}"]  # fmt: skip


def _command(kind: str, args: argparse.Namespace, out_file: Path, profile: bool) -> list[str]:
    """The command of one run of ``kind``, writing its step seconds (and profile) to ``out_file``."""
    if kind == "podium":
        cmd = [sys.executable, str(ROOT / "train.py"), "experiment=digits", "run_name=bench_overhead", "force=true",
               f"trainer.max_epochs={args.epochs}", f"model.net.model_name={args.model}", "extras.print_config=false",
               *_timer_overrides(out_file)]  # fmt: skip
        if args.batches:
            cmd.append(f"+trainer.limit_train_batches={args.batches}")
        return cmd + (["+trainer.profiler=simple"] if profile else [])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--out", str(out_file),
           "--epochs", str(args.epochs), "--model", args.model]  # fmt: skip
    if args.batches:
        cmd += ["--batches", str(args.batches)]
    return cmd + (["--profile"] if profile else [])


def measure(kind: str, args: argparse.Namespace, profile: bool = False) -> dict[str, Any]:
    """One run of ``kind`` in a fresh process: its step seconds, batches, profile and wall time (s)."""
    with tempfile.TemporaryDirectory(prefix="overhead_") as tmp:
        out_file = Path(tmp) / "steps.json"
        start = time.perf_counter()
        proc = subprocess.run(_command(kind, args, out_file, profile), cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{kind} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        result = json.loads(out_file.read_text())
    if not result["step_seconds"]:
        sys.exit(f"{kind} run timed no step: raise --batches or --epochs above {SKIP + 1} steps per epoch")
    return {**result, "wall_s": wall}


def _parts(epochs: int, model: str, batches: int | None) -> tuple[Any, Any, Any, Any]:
    """The digits experiment's train loader, network, AdamW and warm-up/cosine schedule."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import src.core  # noqa: F401  (registers podium's config resolvers)
    from src.modules.schedulers import warmup_cosine

    overrides = ["experiment=digits", f"paths.root_dir={_root()}", f"model.net.model_name={model}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(config_name="train", overrides=overrides)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    net = instantiate(cfg.model.net)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.model.optimizer.lr, weight_decay=cfg.model.optimizer.weight_decay)
    steps = epochs * min(len(loader), batches or len(loader))
    sched = warmup_cosine(opt, total_steps=steps, warmup_fraction=cfg.model.scheduler.warmup_fraction)
    return loader, net, opt, sched


def bare_lightning_run(epochs: int, model: str, batches: int | None, out_file: Path, profile: bool) -> None:
    """The same loop as a minimal LightningModule: no logger, metrics or progress bar."""
    import lightning.pytorch as pl
    import torch.nn.functional as F

    from src.callbacks.timing import StepTimer

    loader, net, opt, sched = _parts(epochs, model, batches)

    class Bare(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: dict, batch_idx: int) -> Any:
            return F.cross_entropy(self.net(batch["image"]), batch["label"])

        def configure_optimizers(self) -> Any:
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         limit_train_batches=batches, deterministic=True, accelerator="cpu",
                         callbacks=[StepTimer(skip=SKIP, out_file=str(out_file))],
                         profiler="simple" if profile else None)  # fmt: skip
    trainer.fit(Bare(), train_dataloaders=loader)


def plain_run(epochs: int, model: str, batches: int | None, out_file: Path) -> None:
    """The plain PyTorch loop, timed as the StepTimer times a Lightning run."""
    import torch.nn.functional as F

    loader, net, opt, sched = _parts(epochs, model, batches)
    seconds: list[float] = []
    count = 0
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        net.train()
        last = None
        for i, batch in enumerate(loader):
            if batches and i >= batches:
                break
            loss = F.cross_entropy(net(batch["image"]), batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            now = time.perf_counter()
            if last is not None and i > SKIP:
                seconds.append(now - last)
            last, count = now, count + 1
    out_file.write_text(json.dumps({"step_seconds": seconds, "batches": count}))


# ---- where the time goes -------------------------------------------------------------------------


def _display(action: str) -> str:
    """A short, run-independent name of a SimpleProfiler action (module class names dropped)."""
    action = re.sub(r"\{'monitor': ([^,]+),.*?\}", r"(monitor=\1)", action)
    action = re.sub(r"^\[LightningModule\][^.]+\.", "module.", action)
    action = re.sub(r"^\[Strategy\][^.]+\.", "strategy.", action)
    action = re.sub(r"^\[_TrainingEpochLoop\]\.", "loop.", action)
    return re.sub(r"^\[Callback\]", "", action)


def step_costs(run: dict[str, Any]) -> dict[str, float]:
    """ms per training batch of every per-step hook a profiled run recorded."""
    costs: dict[str, float] = {}
    for action, entry in run.get("profile", {}).items():
        if action.rsplit(".", 1)[-1] in STEP_HOOKS:
            name = _display(action)
            costs[name] = costs.get(name, 0.0) + entry["total_s"] * 1e3 / run["batches"]
    return costs


def profile_rows(podium: dict[str, Any], bare: dict[str, Any], top: int) -> list[list[Any]]:
    """Rows (hook, podium ms, bare ms, podium − bare) of the ``top`` costliest per-step hooks."""
    p, b = step_costs(podium), step_costs(bare)
    names = sorted(set(p) | set(b), key=lambda n: -max(p.get(n, 0.0), b.get(n, 0.0)))[:top]
    rows = [(n, p.get(n, 0.0), b.get(n, 0.0)) for n in names]
    framework = ("module.", "strategy.", "loop.", "run_")
    rows.append(("all callback hooks together", sum(v for n, v in p.items() if not n.startswith(framework)),
                 sum(v for n, v in b.items() if not n.startswith(framework))))  # fmt: skip
    mean_p, mean_b = (float(np.mean(r["step_seconds"])) * 1e3 for r in (podium, bare))
    rows.append(("whole step (StepTimer mean, profiled run)", mean_p, mean_b))
    return [[n, f"{x:.2f}", f"{y:.2f}", f"{x - y:+.2f}"] for n, x, y in rows]


def notable_hooks(podium: dict[str, Any], bare: dict[str, Any]) -> list[tuple[str, float, float]]:
    """Hooks costing podium more than bare Lightning by over NOTABLE_SHARE of a step: (name, ms, share)."""
    p, b = step_costs(podium), step_costs(bare)
    step_ms = float(np.median(podium["step_seconds"])) * 1e3
    extra = [(n, v - b.get(n, 0.0)) for n, v in p.items() if not n.startswith("run_")]
    return sorted(((n, d, d / step_ms) for n, d in extra if d > NOTABLE_SHARE * step_ms), key=lambda t: -t[1])


# ---- the benchmark -------------------------------------------------------------------------------


def run_rounds(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """``args.rounds`` rounds of podium, plain, bare, in that order, each run in a fresh process."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for r in range(args.rounds):
        for kind in KINDS:
            run = measure(kind, args)
            runs[kind].append(run)
            sec = run["step_seconds"]
            print(f"round {r + 1}/{args.rounds} {NAMES[kind]:15s}: median {np.median(sec) * 1e3:7.1f} ms/step, "
                  f"mean {np.mean(sec) * 1e3:7.1f} over {len(sec)} steps (process {run['wall_s']:.1f} s)",
                  flush=True)  # fmt: skip
    return runs


def record_ratios(rec: Recorder, runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Per-kind ms/step, per-round ratios and their medians as figures; returns the medians."""
    med = {k: np.array([np.median(r["step_seconds"]) for r in runs[k]]) * 1e3 for k in KINDS}
    mean = {k: np.array([np.mean(r["step_seconds"]) for r in runs[k]]) * 1e3 for k in KINDS}
    for kind in KINDS:
        rec.figure(f"{kind}_ms", med[kind], label=f"{NAMES[kind]}, ms/step (median step of a run)", unit="ms",
                   digits=1)  # fmt: skip
    medians = {}
    for a, b in (("podium", "plain"), ("bare", "plain"), ("podium", "bare")):
        per_run = med[a] / med[b]
        rec.figure(f"ratio_{a}_{b}_runs", per_run, label=f"{a}/{b}, per run", digits=3)
        medians[f"{a}_{b}"] = float(np.median(per_run))
        rec.figure(f"ratio_{a}_{b}", medians[f"{a}_{b}"], label=f"{a}/{b}, median of {len(per_run)} runs", digits=3)
    for a, b in (("podium", "plain"), ("podium", "bare")):
        rec.figure(f"ratio_{a}_{b}_of_means", float(np.median(mean[a] / mean[b])), digits=3,
                   label=f"{a}/{b} of mean step times (periodic logging included), median of runs")  # fmt: skip
    return medians


def record_targets(rec: Recorder, medians: dict[str, float], rounds: int) -> None:
    """podium/plain <= 1.10 on the median; podium/bare <= 1.03, which applies when bare/plain > 1.10."""
    rec.target("ratio_podium_plain", "<=", LIMIT_PODIUM_PLAIN,
               text=f"the podium stack over the plain loop, median of {rounds} alternating runs")  # fmt: skip
    lightning = medians["bare_plain"]
    if lightning > LIMIT_PODIUM_PLAIN:
        why = f"applies: Lightning itself (bare/plain median {lightning:.3f}) is above {LIMIT_PODIUM_PLAIN:.2f}"
    else:
        why = (f"what podium adds to Lightning; the podium/plain target above is the one that applies, as bare/plain "
               f"(median {lightning:.3f}) is within {LIMIT_PODIUM_PLAIN:.2f}")  # fmt: skip
    rec.target("ratio_podium_bare", "<=", LIMIT_PODIUM_BARE, text=why)


def record_profile(rec: Recorder, args: argparse.Namespace) -> None:
    """One profiled bare and one profiled podium run: the table of per-step hook costs."""
    bare = measure("bare", args, profile=True)
    podium = measure("podium", args, profile=True)
    rows = profile_rows(podium, bare, args.profile_rows)
    rec.table("Where a training step's time goes (SimpleProfiler, one profiled run each; ms per training batch; "
              "a hook's time includes the hooks nested in it: run_training_batch holds module.optimizer_step, "
              "which holds strategy.training_step and strategy.backward)",
              ["hook", "podium ms/step", "bare Lightning ms/step", "podium − bare"], rows)  # fmt: skip
    print(f"\n{'hook (profiled runs, ms per training batch)':60s} {'podium':>8s} {'bare':>8s} {'diff':>8s}")
    for name, p, b, d in rows:
        print(f"{name[:60]:60s} {p:>8s} {b:>8s} {d:>8s}")
    notable = notable_hooks(podium, bare)
    if notable:
        listed = "; ".join(f"{n} +{d:.1f} ms ({s:.1%})" for n, d, s in notable)
        text = f"Hooks costing podium more than {NOTABLE_SHARE:.0%} of a step over bare Lightning: {listed}."
    else:
        text = f"No hook costs podium more than {NOTABLE_SHARE:.0%} of a step over bare Lightning."
    rec.note(text + " Logger writes and `self.log` bookkeeping run outside the profiled hooks; they are in the "
             "whole-step row.")  # fmt: skip
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of podium, plain, bare (>= 5 for a "
                   "headline figure)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batches", type=int, default=None, help="training batches per epoch (default: all)")
    p.add_argument("--model", default="resnet18", help="timm model of all three (default: the digits experiment's)")
    p.add_argument("--profile-rows", type=int, default=10, help="hooks in the profile table")
    p.add_argument("--no-profile", action="store_true", help="skip the two profiled runs")
    p.add_argument("--worker", choices=("plain", "bare"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "plain":
        return plain_run(args.epochs, args.model, args.batches, args.out)
    if args.worker == "bare":
        return bare_lightning_run(args.epochs, args.model, args.batches, args.out, args.profile)

    rec = Recorder("overhead", title="Framework overhead")
    runs = run_rounds(args)
    medians = record_ratios(rec, runs)
    steps = len(runs["plain"][0]["step_seconds"])
    print(f"\nmodel / data     : {args.model} on digits, batch 64, {args.epochs} epochs, {os.cpu_count()} CPU cores, "
          f"{args.rounds} alternating rounds, {steps} timed steps per run")  # fmt: skip
    for kind in KINDS:
        fig = rec.figures[f"{kind}_ms"]
        print(f"{NAMES[kind]:17s}: {fig['mean']:.1f} ± {fig['std']:.1f} ms/step over the rounds")
    print(f"ratio stack/plain: median {medians['podium_plain']:.3f} (target <= {LIMIT_PODIUM_PLAIN:.2f})")
    print(f"  of which Lightning itself {medians['bare_plain']:.3f} (bare/plain), podium's stack on top "
          f"{medians['podium_bare']:.3f} (stack/bare)")  # fmt: skip
    record_targets(rec, medians, args.rounds)
    if not args.no_profile:
        record_profile(rec, args)
    rec.write(summary=f"`train.py experiment=digits` ({args.model}, {args.epochs} epochs, everything on) against a "
              "plain PyTorch loop and a bare LightningModule over the same DataLoader, model, optimizer and "
              f"schedule; {args.rounds} rounds run in alternating order, each run in a fresh process; ms/step is "
              "the median step of a run, each epoch's first steps skipped.")  # fmt: skip


if __name__ == "__main__":
    main()
