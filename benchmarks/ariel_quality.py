"""Ariel quality: V50 against both baselines on simulated planets, same data, folds and metrics.

    .venv/bin/python benchmarks/ariel_quality.py [--train 96 --val 32 --test 32] [--data DIR]
        [--only ariel_v50,ariel_mlp,ariel_polyfit] [--set KEY=VALUE ...]

Simulates ``train + val`` labelled planets and ``test`` unlabelled ones at the toy scale (60 AIRS,
720 FGS1 read pairs per visit, 30 time bins each), or reuses ``--data``. Validation is fold 0 of
``(train + val) / val`` folds. Each experiment runs through ``train.py``'s job in this process
(``experiment=<name> data=ariel_toy data.root=<dataset>``, CSV logger, outputs in a temporary
root), so its calibration callbacks and ``submission.csv`` are the pipeline's own. Test scores
come from ``submission.csv`` against the simulator's true depths (``truth/test/*.npz``, which no
model reads). Prints, per model: Ariel 2024 and 2025 scores, MAE (ppm), coverage of the 68% and
95% intervals (calibrated sigma), the calibrated validation score and the wall time of the run.

Targets (issue): V50's 2024 score >= best baseline + 0.05, V50's coverage@68 in [0.63, 0.73]
after calibration. Asserts nothing: the machine is shared and timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import src.core  # noqa: E402,F401  (resolvers)
from src.callbacks.ariel.outputs import depth_columns  # noqa: E402
from src.core.training import train  # noqa: E402
from src.datamodules.ariel.simulate import simulate_dataset  # noqa: E402
from src.metrics.ariel import central_z, score_2024, score_2025  # noqa: E402

EXPERIMENTS = ("ariel_v50", "ariel_mlp", "ariel_polyfit")


def compose_cfg(overrides: list[str], root: Path):
    """Compose configs/train.yaml as ``python train.py`` would, rooted at ``root``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("train", overrides=[*overrides, f"paths.root_dir={root}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def truth_table(data: Path, split: str) -> pd.DataFrame:
    """True depths of a split's planets from the simulator's truth files, indexed by planet_id."""
    rows = {int(p.stem.split("_")[0]): np.load(p)["depths"] for p in sorted((data / "truth" / split).glob("*_0.npz"))}
    return pd.DataFrame.from_dict(rows, orient="index", columns=depth_columns("wl"))


def naive_stats(data: Path, n_folds: int) -> tuple[float, float]:
    """Mean and std of the training fold's labels (the scores' naive prediction)."""
    labels = pd.read_csv(data / "train.csv").set_index("planet_id")
    folds_file = sorted(data.glob(f"folds_*k{n_folds}_*.csv"))[0]
    folds = pd.read_csv(folds_file, dtype={"sample_id": str}).set_index("sample_id")["fold"]
    train_ids = [int(s) for s, f in folds.items() if f != 0]
    values = labels.loc[train_ids].to_numpy(np.float64)
    return float(values.mean()), float(values.std())


def test_scores(sub: pd.DataFrame, truth: pd.DataFrame, naive: tuple[float, float]) -> dict[str, float]:
    sub = sub.set_index("planet_id").loc[truth.index]
    y = torch.from_numpy(truth.to_numpy(np.float64))
    mu = torch.from_numpy(sub[depth_columns("wl")].to_numpy(np.float64))
    sigma = torch.from_numpy(sub[depth_columns("sigma")].to_numpy(np.float64))
    z = ((y - mu) / sigma).abs()
    return {
        "score2024": float(score_2024(y, mu, sigma, *naive)),
        "score2025": float(score_2025(y, mu, sigma, *naive)),
        "mae_ppm": float(1e6 * (y - mu).abs().mean()),
        "cov68": float((z <= central_z(0.68)).double().mean()),
        "cov95": float((z <= central_z(0.95)).double().mean()),
    }


def run(name: str, data: Path, root: Path, n_folds: int, extra: list[str]) -> tuple[Path, float]:
    overrides = [f"experiment={name}", "data=ariel_toy", f"data.root={data}", f"data.n_folds={n_folds}",
                 "logger=csv", "extras.print_config=false", "run_name=bench_quality", "force=true", *extra]  # fmt: skip
    cfg = compose_cfg(overrides, root)
    start = time.perf_counter()
    train(cfg)
    return Path(cfg.paths.output_dir), time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=96)
    p.add_argument("--val", type=int, default=32)
    p.add_argument("--test", type=int, default=32)
    p.add_argument("--seed", type=int, default=1, help="dataset seed")
    p.add_argument("--data", type=Path, default=None, help="existing simulated dataset (default: simulate one)")
    p.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated experiments")
    p.add_argument("--set", action="append", default=[], help="extra override for every run (repeatable)")
    args = p.parse_args()
    labelled = args.train + args.val
    n_folds = labelled // args.val
    tmp = tempfile.TemporaryDirectory(prefix="ariel_quality_")
    root = Path(tmp.name)
    data = args.data
    if data is None:
        data = root / "data" / "ariel_bench"
        start = time.perf_counter()
        simulate_dataset(data, labelled, args.seed, args.test)
        print(f"simulated {labelled}+{args.test} planets in {time.perf_counter() - start:.0f} s")
    truth = truth_table(data, "test")
    rows = []
    for name in args.only.split(","):
        run_dir, wall = run(name, data, root, n_folds, args.set)
        naive = naive_stats(data, n_folds)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        scores = test_scores(pd.read_csv(run_dir / "submission.csv"), truth, naive)
        rows.append({"model": name, **scores, "val_cal_2024": metrics.get("val/cal/score2024"), "wall_s": wall})
        print(f"{name}: done in {wall:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    print(f"\nsimulated planets: {args.train} train / {args.val} val (fold 0 of {n_folds}) / {args.test} test")
    print("test-split scores from submission.csv (calibrated sigma); wall_s = train.py job incl. data loading")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if {"ariel_v50"} <= set(table.model) and len(table) > 1:
        v50 = table.set_index("model").loc["ariel_v50"]
        best = table[table.model != "ariel_v50"]["score2024"].max()
        margin = v50["score2024"] - best
        ok = margin >= 0.05 and 0.63 <= v50["cov68"] <= 0.73
        print(f"V50 - best baseline (2024 score): {margin:+.4f}; V50 coverage@68: {v50['cov68']:.3f} -> "
              f"targets {'met' if ok else 'NOT met'}")  # fmt: skip


if __name__ == "__main__":
    main()
