"""Digits, 5 folds × two timm backbones, then ensembles fitted on out-of-fold predictions only.

    python benchmarks/digits_cv.py [--members resnet10t lcnet_050] [--epochs 8]

Runs `cv.py experiment=digits model.net.model_name=<m>` per member (finished folds are reused
on a rerun), then `ensemble.py` over the members, and prints the ranking table (OOF accuracy,
log-loss, ECE and the risk audit of every member and blend, all scored on nested OOF) and the
targets of issue #5: best blend OOF accuracy >= best single member's and >= 0.985; ECE after
temperature scaling <= 0.015. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", nargs="+", default=["resnet10t", "lcnet_050"])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    root = Path(os.environ.get("PODIUM_ROOT", ROOT))
    member_dirs = []
    for name in args.members:
        run_name = f"bench_cv_{name}"
        seconds = run(
            [
                str(ROOT / "cv.py"),
                "experiment=digits",
                f"model.net.model_name={name}",
                f"trainer.max_epochs={args.epochs}",
                f"run_name={run_name}",
                "extras.print_config=false",
            ]
        )
        member_dir = root / "outputs" / "digits" / run_name
        metrics = json.loads((member_dir / "metrics.json").read_text())
        print(
            f"member {name:<12}: OOF acc {metrics['oof/score']:.4f}  fold val/acc "
            f"{metrics['cv/val/acc/mean']:.4f} ± {metrics['cv/val/acc/std']:.4f}  ({seconds:.0f} s this call)"
        )
        member_dirs.append(str(member_dir))
    seconds = run(
        [
            str(ROOT / "ensemble.py"),
            f"members=[{','.join(member_dirs)}]",
            "run_name=bench_digits_cv",
            f"train_csv={root / 'data' / 'digits' / 'train.csv'}",
            "force=true",
            "extras.print_config=false",
        ]
    )
    out = root / "outputs" / "ensemble" / "bench_digits_cv"
    ranking = pd.read_csv(out / "ranking.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 4):
        print(ranking.to_string(index=False))
    print(f"ensemble wall time: {seconds:.0f} s; final stage: {metrics.get('final')}")
    single = ranking.loc[ranking["kind"] == "member", "acc"].max()
    blends = ranking.loc[ranking["kind"] == "blend", "acc"].max()
    print(f"best single member OOF acc : {single:.4f}")
    print(
        f"best blend OOF acc         : {blends:.4f}  (target >= best single and >= 0.985: "
        f"{'met' if blends >= single and blends >= 0.985 else 'NOT met'})"
    )
    ece_before, ece_after = metrics.get("calib/ece_before"), metrics.get("calib/ece_after")
    if ece_after is not None:
        print(
            f"ECE before / after calibration: {ece_before:.4f} / {ece_after:.4f}  (target <= 0.015: "
            f"{'met' if ece_after <= 0.015 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
