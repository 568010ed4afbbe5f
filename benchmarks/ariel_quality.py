"""Ariel quality: the V50, its ablations and three baselines on simulated planets, several seeds.

    OMP_NUM_THREADS=1 python benchmarks/ariel_quality.py [--seeds 3] [--first-seed 1]
        [--train 96 --val 32 --test 32] [--epochs N] [--only v50,v50_no_mamba,...] [--set KEY=VALUE]
    # smoke run (tiny frames, 2 seeds, 2 epochs; results elsewhere):
    PODIUM_BENCH_RESULTS=/tmp/ariel_results OMP_NUM_THREADS=1 python benchmarks/ariel_quality.py \\
        --seeds 2 --train 4 --val 2 --test 2 --epochs 2 --tiny

Models, all through ``train.py``'s job in this process (``experiment=<name> data=ariel_toy
data.root=<dataset>``, CSV logger, outputs in a temporary root), so data, folds, calibration
callbacks and ``submission.csv`` are the pipeline's own:

* ``v50``: the full model (``experiment=ariel_v50``);
* ``v50_no_mamba``: the same without Mamba (``model.net.fgs1_encoder=null``: the FGS1 steps are
  pooled directly, no parameters);
* ``v50_no_gnn``: the same without the GNN (``model.net.graph.n_layers=0``: no message passing
  between bins);
* ``prior``: the V50's closed-form transit-fit prior alone (``experiment=ariel_prior``);
* ``mlp`` and ``polyfit``: the baselines (``experiment=ariel_mlp``, ``experiment=ariel_polyfit``).

Repeat ``k`` (``--seeds`` repeats) simulates its own dataset with seed ``first_seed + k`` (``train
+ val`` labelled planets, ``test`` unlabelled ones, toy scale: 60 AIRS and 720 FGS1 read pairs,
30 time bins each) and trains every model with ``seed=first_seed + k``; validation is fold 0 of
``(train + val) / val`` star-grouped folds. The dataset is calibrated once per repeat before the
models run, so each model's wall time is its ``train.py`` job alone (data loading included).
Test scores come from ``submission.csv`` (calibrated sigma) against the simulator's true depths
(``truth/test/*.npz``, which no model reads): Ariel 2024 and 2025 scores, MAE (ppm), coverage of
the 68 % and 95 % intervals. ``val/cal/score2024`` is the cross-fitted (out-of-sample) validation
score after temperature scaling.

Figures (``benchmarks/results/ariel_quality.json``, mean ± std over the repeats): each model's
test scores, coverages, ``val/cal/score2024`` and wall time; per repeat, the paired differences
of the test 2024 score: V50 − best baseline, where the best baseline of a repeat is the one of
``mlp``, ``polyfit`` and ``prior`` with the highest ``val/cal/score2024`` (chosen on validation,
never on test), and V50 − each ablation (what Mamba, the GNN and all learned parts add).
Targets: V50 − best baseline > 0.05; V50 coverage@68 in [0.63, 0.73].

Budget: the full default (6 models, 3 repeats at 96/32/32 planets, the experiments' own epochs:
V50 variants 40, MLP 60) took 2,068 s on the 2-core machine with ``OMP_NUM_THREADS=1`` while
``digits_cv.py`` ran alongside (``env.wall_s`` of ``benchmarks/results/ariel_quality.json``; each
model's own wall time is a figure there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import Recorder  # noqa: E402

import src.core  # noqa: E402,F401  (resolvers)
from src.callbacks.ariel.outputs import depth_columns  # noqa: E402
from src.core.training import train  # noqa: E402
from src.datamodules.ariel.forward import SimConfig  # noqa: E402
from src.datamodules.ariel.simulate import simulate_dataset  # noqa: E402
from src.metrics.ariel import central_z, score_2024, score_2025  # noqa: E402

#: model -> (experiment, extra overrides, label); the order of the table.
MODELS: dict[str, tuple[str, list[str], str]] = {
    "v50": ("ariel_v50", [], "V50"),
    "v50_no_mamba": ("ariel_v50", ["model.net.fgs1_encoder=null"], "V50 without Mamba"),
    "v50_no_gnn": ("ariel_v50", ["model.net.graph.n_layers=0"], "V50 without GNN"),
    "prior": ("ariel_prior", [], "V50 prior alone"),
    "mlp": ("ariel_mlp", [], "MLP"),
    "polyfit": ("ariel_polyfit", [], "polyfit"),
}
#: Models without trainable weights: one epoch, whatever --epochs says.
CLOSED_FORM = ("prior", "polyfit")
BASELINES = ("mlp", "polyfit", "prior")
#: ablation -> what V50 minus it measures
ABLATIONS = {"v50_no_mamba": "Mamba adds", "v50_no_gnn": "the GNN adds",
             "prior": "the learned parts (Mamba, GNN, head) add"}  # fmt: skip
#: figure -> (label, unit, digits)
FIGURES = {
    "score2024": ("test score2024", "", 3),
    "score2025": ("test score2025", "", 3),
    "mae_ppm": ("test MAE", "ppm", 0),
    "cov68": ("test coverage@68", "", 3),
    "cov95": ("test coverage@95", "", 3),
    "val_cal_score2024": ("val/cal/score2024 (cross-fitted)", "", 3),
    "val_cov68": ("val coverage@68 before temperature scaling", "", 3),
    "val_cal_z_mean": ("val z mean after temperature scaling (cross-fitted)", "", 3),
    "wall_s": ("wall time", "s", 0),
}
#: The ablation table of the learned parts: row label -> model.
LEARNED_PARTS = {"prior": "prior", "+ Mamba": "v50_no_gnn", "+ GNN": "v50_no_mamba", "both (V50)": "v50"}
#: The tests' tiny frames (--tiny): 24 AIRS and 96 FGS1 read pairs, 24 time bins each.
TINY_SIM = {"airs_pairs": 24, "fgs1_pairs": 96}
TINY_DATA = ["data.calibration.instruments.FGS1.bin_size=4", "data.calibration.instruments.AIRS-CH0.bin_size=1"]
MARGIN_TARGET = 0.05
COV68_RANGE = (0.63, 0.73)
#: Hard simulation: V50 over its prior on the 2025 score; sigma before and after temperature scaling.
LEARNED_TARGET_2025 = 0.03
RAW_COV68_MIN = 0.45
Z_MEAN_RANGE = (-0.2, 0.2)


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
    """Scores of a submission against the true depths (depth fractions; MAE in ppm)."""
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


class Repeat:
    """One repeat: its simulated dataset and the overrides every model of it shares."""

    def __init__(self, seed: int, root: Path, args: argparse.Namespace) -> None:
        self.seed, self.root, self.args = seed, root, args
        self.n_folds = (args.train + args.val) // args.val
        self.data = root / "data" / f"ariel_seed{seed}"

    def overrides(self, model: str) -> list[str]:
        experiment, extra, _ = MODELS[model]
        epochs = [] if self.args.epochs is None or model in CLOSED_FORM else [f"trainer.max_epochs={self.args.epochs}"]
        return [f"experiment={experiment}", "data=ariel_toy", f"data.root={self.data}", f"data.n_folds={self.n_folds}",
                f"seed={self.seed}", "logger=csv", "extras.print_config=false", f"run_name={model}_seed{self.seed}",
                "force=true", *(TINY_DATA if self.args.tiny else []), *extra, *epochs, *self.args.set]  # fmt: skip

    def prepare(self) -> float:
        """Simulate and calibrate the dataset (once, before any model is timed); returns seconds."""
        start = time.perf_counter()
        cfg = replace(SimConfig(**TINY_SIM) if self.args.tiny else SimConfig(), difficulty=self.args.difficulty)
        simulate_dataset(self.data, self.args.train + self.args.val, self.seed, self.args.test, cfg)
        instantiate(compose_cfg(self.overrides("polyfit"), self.root).data).prepare_data()
        return time.perf_counter() - start

    def run(self, model: str) -> dict[str, float]:
        """Train ``model`` on this repeat's dataset; its test and validation figures."""
        cfg = compose_cfg(self.overrides(model), self.root)
        start = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - start
        run_dir = Path(cfg.paths.output_dir)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        naive = naive_stats(self.data, self.n_folds)
        scores = test_scores(pd.read_csv(run_dir / "submission.csv"), truth_table(self.data, "test"), naive)
        return {**scores, "val_cal_score2024": float(metrics["val/cal/score2024"]),
                "val_cov68": float(metrics["val/cov68"]), "val_cal_z_mean": float(metrics["val/cal/z_mean"]),
                "wall_s": wall}  # fmt: skip


def best_baseline(row: dict[str, dict[str, float]]) -> str | None:
    """The baseline with the highest cross-fitted validation score of one repeat (never test)."""
    present = [b for b in BASELINES if b in row]
    return max(present, key=lambda b: row[b]["val_cal_score2024"]) if present else None


def mean_std(values: Sequence[float], digits: int) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def record_models(rec: Recorder, results: list[dict[str, dict[str, float]]], models: list[str]) -> None:
    """One figure per model and quantity, and the model × figure table."""
    rows = []
    for model in models:
        label = MODELS[model][2]
        row = [label]
        for key, (name, unit, digits) in FIGURES.items():
            values = [r[model][key] for r in results]
            rec.figure(f"{model}.{key}", values, label=f"{label}: {name}", unit=unit, digits=digits)
            row.append(mean_std(values, digits))
        rows.append(row)
    columns = ["model", *(f"{name} ({unit})" if unit else name for name, unit, _ in FIGURES.values())]
    rec.table(f"Per model, mean ± std over {len(results)} repeats", columns, rows)


def verdict(fig: dict[str, Any]) -> str:
    """Whether a paired difference is distinguishable from zero over the repeats (|mean| > std)."""
    if fig["n"] < 2:
        return "one repeat: no spread to judge it by"
    if abs(fig["mean"]) <= fig["std"]:
        return "not distinguishable from zero over these repeats"
    return "a gain larger than its spread" if fig["mean"] > 0 else "a loss larger than its spread"


def record_differences(rec: Recorder, results: list[dict[str, dict[str, float]]], seeds: list[int]) -> None:
    """Paired per-repeat differences of the test 2024 score, with targets and notes."""
    if not all("v50" in r for r in results):
        return
    chosen = [best_baseline(r) for r in results]
    if all(chosen):
        diffs = [r["v50"]["score2024"] - r[b]["score2024"] for r, b in zip(results, chosen, strict=True)]
        rec.figure("v50_minus_best_baseline", diffs, label="V50 − best baseline (test score2024, paired)", digits=3)
        rec.target("v50_minus_best_baseline", ">", MARGIN_TARGET,
                   text="best baseline of each repeat chosen on val/cal/score2024, not on test")  # fmt: skip
        picks = ", ".join(f"seed {s}: {MODELS[b][2]}" for s, b in zip(seeds, chosen, strict=True))
        rec.note(f"Best baseline per repeat, chosen on the cross-fitted validation score: {picks}.")
    rec.target("v50.cov68", "in", COV68_RANGE, text="calibrated sigma (temperature scaling on validation)")
    for model, part in ABLATIONS.items():
        if not all(model in r for r in results):
            continue
        diffs = [r["v50"]["score2024"] - r[model]["score2024"] for r in results]
        label = f"V50 − {MODELS[model][2]} (test score2024, paired)"
        fig = rec.figure(f"v50_minus_{model}", diffs, label=label, digits=4)
        rec.note(f"What {part} to the test 2024 score (V50 − {MODELS[model][2]}, paired per repeat): "
                 f"{fig['mean']:+.4f} ± {fig['std']:.4f} — {verdict(fig)}.")  # fmt: skip


def record_learned_parts(rec: Recorder, results: list[dict[str, dict[str, float]]]) -> None:
    """The ablation table (prior / + Mamba / + GNN / both) on the 2025 score, and the hard-simulation targets."""
    if not all(m in r for r in results for m in LEARNED_PARTS.values()):
        return
    rows = []
    for label, model in LEARNED_PARTS.items():
        over = [r[model]["score2025"] - r["prior"]["score2025"] for r in results]
        rows.append([label, mean_std([r[model]["score2025"] for r in results], 3), mean_std(over, 3),
                     mean_std([r[model]["val_cov68"] for r in results], 3),
                     mean_std([r[model]["val_cal_z_mean"] for r in results], 3)])  # fmt: skip
        if model != "prior":
            rec.figure(f"{model}_minus_prior_2025", over, label=f"{label} − prior (test score2025, paired)", digits=4)
    rec.table(f"Learned parts over the prior, mean ± std over {len(results)} repeats",
              ["model", "test score2025", "− prior (paired)", "val coverage@68 before TS", "val z mean after TS"],
              rows)  # fmt: skip
    rec.target("v50_minus_prior_2025", ">=", LEARNED_TARGET_2025,
               text="the learned parts earn their place: V50 − its prior alone, test score2025, paired")  # fmt: skip
    rec.target("v50.val_cov68", ">=", RAW_COV68_MIN, text="sigma within a factor 1.5 before temperature scaling")
    rec.target("v50.val_cal_z_mean", "in", Z_MEAN_RANGE, text="mu unbiased after temperature scaling")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="repeats (dataset and training seed vary together)")
    p.add_argument("--first-seed", type=int, default=1, help="seed of the first repeat")
    p.add_argument("--train", type=int, default=96, help="training planets")
    p.add_argument("--val", type=int, default=32, help="validation planets (fold 0)")
    p.add_argument("--test", type=int, default=32, help="test planets")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the trained models (default: experiments')")
    p.add_argument("--tiny", action="store_true", help="the tests' tiny frames (smoke runs)")
    p.add_argument("--difficulty", choices=["easy", "hard"], default="easy",
                   help="simulation (hard: results in ariel_quality_hard.json, learned-parts targets)")  # fmt: skip
    p.add_argument("--only", default=None, help=f"comma-separated models of {list(MODELS)} (default: all; hard: "
                   f"{','.join(LEARNED_PARTS.values())})")  # fmt: skip
    p.add_argument("--set", action="append", default=[], help="extra override for every run (repeatable)")
    args = p.parse_args()
    hard = args.difficulty == "hard"
    only = args.only or ",".join(LEARNED_PARTS.values() if hard else MODELS)
    models = [m for m in only.split(",") if m]
    unknown = set(models) - set(MODELS)
    if unknown or args.seeds < 1 or args.val < 1 or args.train < args.val:
        p.error(f"unknown models {sorted(unknown)}" if unknown else "use --seeds >= 1 and --train >= --val >= 1")
    if hard:
        rec = Recorder("ariel_quality_hard", "Ariel quality on the hard simulation: what the learned parts add",
                       command="OMP_NUM_THREADS=1 python benchmarks/ariel_quality.py --difficulty hard")  # fmt: skip
    else:
        rec = Recorder("ariel_quality", "Ariel quality: V50, its ablations and the baselines")
    seeds = [args.first_seed + k for k in range(args.seeds)]
    tmp = tempfile.TemporaryDirectory(prefix="ariel_quality_")
    results = []
    for seed in seeds:
        repeat = Repeat(seed, Path(tmp.name), args)
        print(f"seed {seed}: dataset simulated and calibrated in {repeat.prepare():.0f} s", flush=True)
        row = {}
        for model in models:
            row[model] = repeat.run(model)
            print(f"seed {seed} {model}: " + ", ".join(f"{k} {v:.4f}" for k, v in row[model].items()), flush=True)
        results.append(row)
        shutil.rmtree(repeat.data)  # about 1.6 GB of raw frames per repeat at the default size
    record_models(rec, results, models)
    if hard:
        record_learned_parts(rec, results)
    else:
        record_differences(rec, results, seeds)
    size = f"{args.train} train / {args.val} val (fold 0 of {(args.train + args.val) // args.val}) / {args.test} test"
    rec.write(summary=f"Simulated planets per repeat ({args.difficulty} simulation): {size}"
                      f"{' (tiny frames)' if args.tiny else ''}; "
                      f"{len(seeds)} repeats, seeds {seeds} (dataset and training seed). Test scores from each "
                      "run's submission.csv (calibrated sigma) against the simulator's true depths; "
                      "val/cal/score2024 is cross-fitted (out-of-sample).")  # fmt: skip


if __name__ == "__main__":
    main()
