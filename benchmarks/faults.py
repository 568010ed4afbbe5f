"""Fault matrix: kill a digits run again and again, resume it, and count what survived.

    python benchmarks/faults.py [--kills 8] [--seed 0] [--epochs 3] [--batches 8]
    python benchmarks/faults.py --kills 1 --epochs 2 --batches 3   # smoke run

One uninterrupted reference run (tiny timm ResNet, by default 3 epochs of 8 steps), then, each in
its own run directory, one fault per run followed by the same command again:

- SIGKILL at ``--kills`` random global steps (drawn without replacement, seeded);
- SIGKILL while writing ``last.ckpt``, ``metrics.json`` and ``manifest.json`` (the temporary is
  cut to half its size first, as a torn write leaves it);
- a NaN batch at a random step with ``model.nonfinite_loss=raise`` (must exit 3 and resume).

A fault is survived when the rerun exits 0, its ``metrics.json`` equals the reference's, its
MLflow run holds every (metric, step) of the reference exactly once with equal values, and no
temporary file is left. Prints one line per fault and the totals; records them, with the target
survived == injected, in ``benchmarks/results/faults.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import Recorder  # noqa: E402

from src.core.mlflow_client import client  # noqa: E402


def short_run(epochs: int, batches: int) -> list[str]:
    """Overrides of the short digits run every fault is injected into."""
    return ["experiment=digits", "model.net.model_name=test_resnet", "extras.print_config=false",
            f"trainer.max_epochs={epochs}", f"+trainer.limit_train_batches={batches}"]  # fmt: skip


def train(root: Path, name: str, overrides: list[str], faults: list[str] | None = None) -> int:
    """Run ``train.py`` (under ``tests.faults`` when ``faults`` are given); its exit code."""
    env = {**os.environ, "PODIUM_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    prefix = ["-m", "tests.faults", *faults] if faults else []
    cmd = [sys.executable, *prefix, "train.py", *overrides, f"run_name={name}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True).returncode


def history(root: Path, run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every MLflow metric of a run directory's run: ``{key: [(step, value), ...]}``, sorted by step."""
    rid = json.loads((run_dir / "manifest.json").read_text())["mlflow_run_id"]
    c = client(root / "mlruns")
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(rid, k)) for k in c.get_run(rid).data.metrics}


def verdict(root: Path, name: str, reference: tuple[dict, dict]) -> str:
    """``survived``, or ``LOST: <why>`` when the rerun's results differ from the reference run's."""
    run_dir = root / "outputs" / "digits" / name
    if not (run_dir / "metrics.json").is_file():
        return "LOST: no metrics.json after the rerun"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics != reference[0]:
        keys = sorted(k for k in set(metrics) | set(reference[0]) if metrics.get(k) != reference[0].get(k))
        more = ", ..." if len(keys) > 4 else ""
        return f"LOST: metrics differ from the uninterrupted run ({', '.join(keys[:4])}{more})"
    if history(root, run_dir) != reference[1]:
        return "LOST: MLflow history differs (duplicate, missing or changed steps)"
    if list(run_dir.rglob(".*.tmp")):
        return "LOST: temporary files left behind"
    return "survived"


def fault_list(rng: random.Random, kills: int, steps: int) -> list[tuple[str, list[str]]]:
    """(name, tests.faults arguments) of every fault: kills at random steps, torn writes, a NaN batch."""
    if not 0 <= kills < steps:
        sys.exit(f"--kills {kills}: choose 0 to {steps - 1} (the run has {steps} steps)")
    faults = [(f"kill_step_{s}", ["--kill-at-step", str(s)]) for s in sorted(rng.sample(range(1, steps), kills))]
    for target in ("last.ckpt", "metrics.json", "manifest.json"):
        faults.append((f"kill_writing_{target.split('.')[0]}", ["--kill-on-write", target]))
    nan_step = rng.randrange(1, steps)
    faults.append((f"nan_step_{nan_step}", ["--nan-at-step", str(nan_step)]))
    return faults


def run_matrix(root: Path, overrides: list[str], faults: list[tuple[str, list[str]]]) -> list[list[Any]]:
    """The reference run, then every fault and its rerun; one row (fault, exits, verdict) per fault."""
    if train(root, "reference", overrides) != 0:
        sys.exit("the reference run failed")
    ref_dir = root / "outputs" / "digits" / "reference"
    reference = (json.loads((ref_dir / "metrics.json").read_text()), history(root, ref_dir))
    rows = []
    for name, fault in faults:
        first = train(root, name, overrides, fault)
        rerun = train(root, name, overrides)
        result = verdict(root, name, reference) if rerun == 0 else f"LOST: rerun exited {rerun}"
        print(f"{name:24s} first exit {first:4d}  rerun exit {rerun}  {result}", flush=True)
        rows.append([name, first, rerun, result])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs at random global steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill and NaN steps")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the short run")
    parser.add_argument("--batches", type=int, default=8, help="training batches per epoch of the short run")
    args = parser.parse_args()
    rec = Recorder("faults", title="Fault matrix")
    faults = fault_list(random.Random(args.seed), args.kills, args.epochs * args.batches)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_matrix(Path(tmp), short_run(args.epochs, args.batches), faults)
    wall = time.perf_counter() - start
    survived = sum(row[3] == "survived" for row in rows)
    print(f"faults injected: {len(rows)}  survived: {survived}  lost: {len(rows) - survived}  ({wall:.0f} s)")
    rec.figure("injected", len(rows), label="faults injected", digits=0)
    rec.figure("survived", survived, label="faults survived", digits=0)
    rec.figure("lost", len(rows) - survived, label="faults lost", digits=0)
    rec.figure("survived_share", survived / len(rows), label="survived / injected", digits=3)
    rec.figure("wall_s", wall, label="wall time, reference run and every fault with its rerun", unit="s", digits=0)
    rec.target("survived_share", ">=", 1.0, text="survived == injected: every fault survived")
    rec.table("Faults (first: the run with the fault injected; rerun: the same command again)",
              ["fault", "first exit", "rerun exit", "verdict"], rows)  # fmt: skip
    rec.write(summary=f"digits (tiny ResNet, {args.epochs} epochs × {args.batches} steps): SIGKILL at {args.kills} "
              "random global steps, SIGKILL while writing `last.ckpt`, `metrics.json` and `manifest.json`, and a NaN "
              "batch, each in its own run followed by the same command again. Survived: the rerun exits 0, its "
              "`metrics.json` and whole MLflow metric history equal the uninterrupted run's, and no temporary file "
              "is left.")  # fmt: skip


if __name__ == "__main__":
    main()
