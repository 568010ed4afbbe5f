"""Digits through the full stack: validation accuracy and wall time of `train.py experiment=digits`.

    python benchmarks/digits.py [extra overrides]

Target (issue #2): val/acc >= 0.97 within 180 s of wall time on a 2-core CPU. Prints figures,
asserts nothing: this machine is shared and timings are noisy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(extra: list[str]) -> None:
    run_name = "bench_digits"
    cmd = [sys.executable, str(ROOT / "train.py"), "experiment=digits", f"run_name={run_name}", "force=true",
           "extras.print_config=false", *extra]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    root = Path(os.environ.get("PODIUM_ROOT", ROOT))
    run_dir = root / "outputs" / "digits" / run_name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    print(f"command          : {' '.join(cmd[1:])}")
    print(f"host             : {manifest['host']['cpu_count']} CPU cores, torch {manifest['packages']['torch']}")
    print(f"epochs           : {metrics['epoch']}  steps: {metrics['global_step']}")
    print(f"val/acc (final)  : {metrics['val/acc']:.4f}")
    print(f"val/acc (best)   : {metrics['best/score']:.4f}  ({metrics['best/checkpoint']})")
    print(f"val/loss (final) : {metrics['val/loss']:.4f}")
    print(f"wall time        : {wall:.1f} s (process start to exit, data and MLflow included)")
    ok = metrics["val/acc"] >= 0.97 and wall <= 180
    print(f"target           : val/acc >= 0.97 in <= 180 s -> {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main(sys.argv[1:])
