"""Digits cross-validated with two timm backbones, then ensembles fitted on out-of-fold predictions only.

    python benchmarks/digits_cv.py [--seeds 3] [--first-seed 42] [--members resnet18 resnet10t]
                                   [--epochs 8] [--folds 5] [extra cv.py overrides]
    PODIUM_BENCH_RESULTS=/tmp/r PODIUM_ROOT=/tmp/p python benchmarks/digits_cv.py \\
        --seeds 1 --folds 2 --epochs 1 --limit-batches 2                   # smoke run

One repeat per seed ``s``: ``seed=s`` is the training seed and the seed of the folds
(``data.seed``), so every repeat trains and validates on other folds. Per repeat, ``cv.py
experiment=digits model.net.model_name=<m>`` for each member (final weights predict each fold's
validation rows: ``cv.ckpt=last``, ``callbacks.oof.weights=final``; a finished cross-validation
is reused on a rerun), then ``ensemble.py`` over the members with ``select_from=[blend]``: every
blend is scored by nested OOF, and the ``selected`` stage is the blend each held-out fold's stack
chose on the other folds (then calibrated, then pair experts), so no choice sees the rows it is
scored on. Folds are grouped by 13 contiguous blocks of the original sample order (not writer
ids; ``src/datamodules/images/digits.py``), and the risk audit holds out whole blocks.

Targets, on the mean over the seeds with a margin larger than the std:
(a) selected blend − better member OOF accuracy, paired per seed, > 0 (the blend strictly beats
the best member, which is picked with hindsight on each seed); (b) selected blend OOF accuracy
>= 0.985; (c) ECE after calibration <= 0.015.

Budget: the default run (3 seeds × 2 members × 5 folds × 8 epochs) took 2,739 s on the 2-core
machine with OMP_NUM_THREADS=1 while ``ariel_quality.py`` ran alongside (``env.wall_s`` of
``benchmarks/results/digits_cv.json``; the wall time per seed is a figure there).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import Recorder, stat  # noqa: E402

GAIN_TARGET = 0.0
ACC_TARGET = 0.985
ECE_TARGET = 0.015
STAGES = ("selected", "selected+calibrated", "selected+calibrated+experts")
AUDIT = (
    ("acc_group_median", "group hold-out median acc"),
    ("acc_group_min", "group hold-out min acc"),
    ("acc_boot_p5", "bootstrap 5th-percentile acc"),
    ("acc_holdout_min", "stratified hold-out min acc"),
)


def project_root() -> Path:
    """Where cv.py and ensemble.py write outputs/ and data/ (``PODIUM_ROOT`` or the repository)."""
    return Path(os.environ.get("PODIUM_ROOT") or ROOT)


def run(cmd: list[str]) -> float:
    """Run a podium entry point; its wall time (s). Exits with its stderr tail on failure."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def tag(args: argparse.Namespace) -> str:
    """Run-name suffix of the settings (another setting never reuses a finished run)."""
    limit = f"_b{args.limit_batches}" if args.limit_batches else ""
    extra = f"_{hashlib.sha256(' '.join(args.overrides).encode()).hexdigest()[:6]}" if args.overrides else ""
    return f"e{args.epochs}_k{args.folds}{limit}{extra}"


def cross_validate(member: str, seed: int, args: argparse.Namespace) -> tuple[Path, float]:
    """``cv.py`` of one member and seed; its run directory and wall time (s)."""
    run_name = f"bench_cv_{member}_{tag(args)}_s{seed}"
    limit = [f"+trainer.limit_train_batches={args.limit_batches}"] if args.limit_batches else []
    seconds = run(
        [
            str(ROOT / "cv.py"),
            "experiment=digits",
            f"model.net.model_name={member}",
            f"seed={seed}",
            f"trainer.max_epochs={args.epochs}",
            f"data.n_folds={args.folds}",
            f"run_name={run_name}",
            "extras.print_config=false",
            *limit,
            *args.overrides,
        ]
    )
    member_dir = project_root() / "outputs" / "digits" / run_name
    metrics = json.loads((member_dir / "metrics.json").read_text())
    print(
        f"  member {member:<10} OOF acc {metrics['oof/acc']:.4f}  fold val/acc "
        f"{metrics['cv/val/acc/mean']:.4f} ± {metrics['cv/val/acc/std']:.4f}  ({seconds:.0f} s)",
        flush=True,
    )
    return member_dir, seconds


def ensemble(member_dirs: list[Path], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """``ensemble.py`` over one seed's members; its ranking (by name), metrics and wall time."""
    run_name = f"bench_digits_cv_{tag(args)}_s{seed}"
    seconds = run(
        [
            str(ROOT / "ensemble.py"),
            f"members=[{','.join(map(str, member_dirs))}]",
            f"run_name={run_name}",
            f"train_csv={project_root() / 'data' / 'digits' / 'train.csv'}",
            "select_from=[blend]",
            f"seed={seed}",
            "force=true",
            "extras.print_config=false",
        ]
    )
    out = project_root() / "outputs" / "ensemble" / run_name
    ranking = pd.read_csv(out / "ranking.csv").set_index("name")
    metrics = json.loads((out / "metrics.json").read_text())
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 4):
        print(ranking.drop(columns="kind").to_string())
    print(f"  ensemble: {seconds:.0f} s; blend chosen per held-out fold: {metrics['selected_per_fold']}", flush=True)
    return {"ranking": ranking, "metrics": metrics, "seconds": seconds}


def one_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Both members' cross-validations and the ensemble of one seed."""
    print(f"--- seed {seed}", flush=True)
    dirs, seconds = [], 0.0
    for member in args.members:
        member_dir, wall = cross_validate(member, seed, args)
        dirs.append(member_dir)
        seconds += wall
    result = ensemble(dirs, seed, args)
    result["members"] = {m: f"member:{d.name}" for m, d in zip(args.members, dirs, strict=True)}
    result["seed"], result["wall"] = seed, seconds + result["seconds"]
    return result


def acc(res: dict[str, Any], name: str, column: str = "acc") -> float:
    return float(res["ranking"].loc[name, column])


def record_figures(rec: Recorder, runs: list[dict[str, Any]], members: list[str], blends: list[str]) -> None:
    """Every candidate's OOF accuracy per seed, the paired gain, ECE and the final stage's audit."""
    for m in members:
        rec.figure(f"acc_{m}", [acc(r, r["members"][m]) for r in runs], label=f"OOF acc, member {m}", digits=4)
    for b in blends:
        rec.figure(
            f"acc_blend_{b}", [acc(r, f"blend:{b}") for r in runs], label=f"OOF acc, blend {b} (nested)", digits=4
        )
    labels = ("OOF acc, blend chosen per fold on the other folds", "… + class bias and temperature", "… + pair experts")
    for stage, label in zip(STAGES, labels, strict=True):
        rec.figure(f"acc_{stage.replace('+', '_')}", [acc(r, stage) for r in runs], label=label, digits=4)
    best_member = [max(acc(r, r["members"][m]) for m in members) for r in runs]
    rec.figure(
        "gain_vs_best_member",
        [acc(r, "selected") - b for r, b in zip(runs, best_member, strict=True)],
        label="selected blend − better member, OOF acc (paired per seed)",
        digits=4,
    )
    rec.figure("ece_before", [r["metrics"]["calib/ece_before"] for r in runs], label="ECE before calibration", digits=4)
    rec.figure("ece_after", [r["metrics"]["calib/ece_after"] for r in runs], label="ECE after calibration", digits=4)
    for column, label in AUDIT:
        rec.figure(column, [acc(r, STAGES[-1], column) for r in runs], label=f"final stage: {label}", digits=4)
    rec.figure(
        "wall_s",
        [r["wall"] for r in runs],
        label="wall time per seed (cross-validations + ensemble)",
        unit="s",
        digits=0,
    )


def candidate_table(rec: Recorder, runs: list[dict[str, Any]], members: list[str], blends: list[str]) -> None:
    """Mean ± std over the seeds of every candidate's OOF scores, printed and recorded."""
    names = [(f"member {m}", [r["members"][m] for r in runs]) for m in members]
    names += [(f"blend {b} (nested)", [f"blend:{b}"] * len(runs)) for b in blends]
    names += [(stage, [stage] * len(runs)) for stage in STAGES]
    columns = ["acc", "log_loss", "ece", "acc_group_median", "acc_group_min"]
    rows = []
    for label, per_seed in names:
        cells = [stat([acc(r, n, c) for r, n in zip(runs, per_seed, strict=True)]) for c in columns]
        rows.append([label, *(f"{s['mean']:.4f} ± {s['std']:.4f}" for s in cells)])
    print(pd.DataFrame(rows, columns=["candidate", *columns]).to_string(index=False))
    rec.table(
        f"Every candidate, mean ± std over {len(runs)} seeds (OOF, out of sample)",
        ["candidate", "OOF acc", "log-loss", "ECE", "group hold-out median acc", "group hold-out min acc"],
        rows,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="repeats, one per seed (default 3)")
    p.add_argument("--first-seed", type=int, default=42, help="seeds are first-seed, first-seed + 1, ...")
    p.add_argument("--members", nargs="+", default=["resnet18", "resnet10t"], help="timm backbones")
    p.add_argument("--epochs", type=int, default=8, help="epochs per fold (default 8)")
    p.add_argument("--folds", type=int, default=5, help="data.n_folds (default 5; at least 2)")
    p.add_argument("--limit-batches", type=int, default=0, help="training batches per epoch (default 0: all)")
    p.add_argument("overrides", nargs="*", help="extra cv.py overrides (e.g. model.optimizer.lr=3e-3)")
    args = p.parse_args()
    rec = Recorder("digits_cv", title="Digits cross-validation and OOF ensembles")
    runs = [one_seed(seed, args) for seed in range(args.first_seed, args.first_seed + args.seeds)]
    blends = sorted(n.removeprefix("blend:") for n in runs[0]["ranking"].index if n.startswith("blend:"))
    print(f"--- {len(runs)} seeds")
    record_figures(rec, runs, args.members, blends)
    candidate_table(rec, runs, args.members, blends)
    rec.target(
        "gain_vs_best_member",
        ">",
        GAIN_TARGET,
        text="the blend chosen on the other folds strictly beats the better member of each seed",
    )
    rec.target("acc_selected", ">=", ACC_TARGET, text="blend chosen per fold on the other folds")
    rec.target("ece_after", "<=", ECE_TARGET, text="calibration fitted on the other folds")
    rec.table(
        "Blend chosen for each held-out fold (on the other folds)",
        ["seed", "per fold"],
        [
            [
                r["seed"],
                ", ".join(f"{k}: {v.removeprefix('blend:')}" for k, v in r["metrics"]["selected_per_fold"].items()),
            ]
            for r in runs
        ],
    )
    rec.note(
        "Groups are 13 contiguous blocks of the original sample order of scikit-learn's digits, not writer ids "
        "(the data ship none); folds keep each block together and the group audit holds out whole blocks."
    )
    rec.write(
        summary=f"`cv.py experiment=digits` per member ({', '.join(args.members)}; {args.epochs} epochs, "
        f"{args.folds} folds grouped by blocks of the sample order, final weights predict each fold) and "
        f"`ensemble.py select_from=[blend]` per seed, {len(runs)} seeds (the seed sets training and folds). "
        "Every figure is scored on rows no fitted or chosen part saw."
    )


if __name__ == "__main__":
    main()
