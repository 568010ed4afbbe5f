"""Fault matrix: kill a digits run again and again, resume it, and count what survived.

    python benchmarks/faults.py [--kills 8] [--seed 0]

One uninterrupted reference run (tiny timm ResNet, 3 epochs of 8 steps), then, each in its own
run directory, one fault per run followed by the same command again:

- SIGKILL at ``--kills`` random global steps (drawn without replacement, seeded);
- SIGKILL while writing ``last.ckpt``, ``metrics.json`` and ``manifest.json`` (the temporary is
  cut to half its size first, as a torn write leaves it);
- a NaN batch at a random step with ``model.nonfinite_loss=raise`` (must exit 3 and resume).

A fault is survived when the rerun exits 0, its ``metrics.json`` equals the reference's, its
MLflow run holds every (metric, step) of the reference exactly once with equal values, and no
temporary file is left. Prints one line per fault and the totals.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.core.mlflow_client import client  # noqa: E402

SHORT = ["experiment=digits", "model.net.model_name=test_resnet", "extras.print_config=false",
         "trainer.max_epochs=3", "+trainer.limit_train_batches=8"]  # fmt: skip
STEPS = 24


def train(root: Path, name: str, faults: list[str] | None = None) -> int:
    env = {**os.environ, "PODIUM_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    prefix = ["-m", "tests.faults", *faults] if faults else []
    cmd = [sys.executable, *prefix, "train.py", *SHORT, f"run_name={name}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True).returncode


def history(root: Path, run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    rid = json.loads((run_dir / "manifest.json").read_text())["mlflow_run_id"]
    c = client(root / "mlruns")
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(rid, k)) for k in c.get_run(rid).data.metrics}


def verdict(root: Path, name: str, reference: tuple[dict, dict]) -> str:
    run_dir = root / "outputs" / "digits" / name
    if not (run_dir / "metrics.json").is_file():
        return "LOST: no metrics.json after the rerun"
    if json.loads((run_dir / "metrics.json").read_text()) != reference[0]:
        return "LOST: metrics differ from the uninterrupted run"
    if history(root, run_dir) != reference[1]:
        return "LOST: MLflow history differs (duplicate, missing or changed steps)"
    if list(run_dir.rglob(".*.tmp")):
        return "LOST: temporary files left behind"
    return "survived"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        assert train(root, "reference") == 0, "the reference run failed"
        ref_dir = root / "outputs" / "digits" / "reference"
        reference = (json.loads((ref_dir / "metrics.json").read_text()), history(root, ref_dir))
        steps = sorted(rng.sample(range(1, STEPS), args.kills))
        faults = [(f"kill_step_{s}", ["--kill-at-step", str(s)]) for s in steps]
        for target in ("last.ckpt", "metrics.json", "manifest.json"):
            faults.append((f"kill_writing_{target.split('.')[0]}", ["--kill-on-write", target]))
        nan_step = rng.randrange(1, STEPS)
        faults.append((f"nan_step_{nan_step}", ["--nan-at-step", str(nan_step)]))
        survived = 0
        for name, fault in faults:
            first = train(root, name, fault)
            rerun = train(root, name)
            result = verdict(root, name, reference) if rerun == 0 else f"LOST: rerun exited {rerun}"
            survived += result == "survived"
            print(f"{name:24s} first exit {first:4d}  rerun exit {rerun}  {result}", flush=True)
        print(f"faults injected: {len(faults)}  survived: {survived}  lost: {len(faults) - survived}  "
              f"({time.perf_counter() - start:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
