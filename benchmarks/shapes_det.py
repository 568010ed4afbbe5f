"""Detection through the full stack: train, predict and evaluate `experiment=shapes_det` on the CPU.

    python benchmarks/shapes_det.py [--seeds 3] [--first-seed 0] [--ablation-seeds 1] [extra overrides]
    python benchmarks/shapes_det.py --seeds 1 --ablation-seeds 0 trainer.max_epochs=1 data.max_images=40  # smoke

Per seed ``s`` (the data seed, which draws another toy set into its own folder, and the training
seed, which sets the folds and the training order): ``train.py experiment=shapes_det`` (timed from
process start to exit: data generation, training, validation, the test pass and MLflow included),
then ``predict.py split=test`` and ``evaluate.py`` on that artifact. The headline AP50 is
evaluate.py's COCO bbox AP50 on the held-out test images (drawn apart from the training pool,
never used for any choice: the checkpoint is the best epoch on the validation fold).

Targets: test AP50 >= 0.8 and train.py wall time <= 300 s, on the mean over the seeds with a
margin larger than the std.

Ablation (``--ablation-seeds``): the same run with the 256-channel feature pyramid of
torchvision's own builders (``model.net.fpn_channels=256``) stopped at the same 300 s by
``trainer.max_time``: what the narrow pyramid, the cause of the CPU training time, buys.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import Recorder  # noqa: E402

AP50_TARGET = 0.8
WALL_TARGET_S = 300.0
ABLATION = ("model.net.fpn_channels=256", "++trainer.max_time=00:00:05:00")


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        sys.exit(f"{what} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_one(seed: int, name: str, extra: list[str]) -> dict[str, Any]:
    """Train, predict and evaluate one seed; figures and commands."""
    run_name = f"bench_shapes_det_{name}_seed{seed}"
    data_dir = Path(os.environ.get("PODIUM_ROOT") or ROOT) / "data"
    common = ["experiment=shapes_det", f"run_name={run_name}", f"seed={seed}", f"data.prepare.seed={seed}",
              f"data.root={data_dir}/shapes_seed{seed}", "extras.print_config=false", *extra]  # fmt: skip
    train = [sys.executable, str(ROOT / "train.py"), *common, "force=true"]
    start = time.perf_counter()
    _run(train, f"training (seed {seed})")
    wall = time.perf_counter() - start
    run_dir = Path(os.environ.get("PODIUM_ROOT") or ROOT) / "outputs" / "shapes_det" / run_name
    _run([sys.executable, str(ROOT / "predict.py"), *common, "split=test"], f"predict (seed {seed})")
    folder = run_dir / "predictions" / "test"
    _run([sys.executable, str(ROOT / "evaluate.py"), f"path={folder}"], f"evaluate (seed {seed})")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    evaluated = json.loads((folder / "eval" / "metrics.json").read_text())["metrics"]
    result = {"seed": seed, "cmd": train, "wall": wall, "train": metrics, "eval": evaluated}
    print(
        f"seed {seed} ({name}): wall {wall:.1f} s, epochs {metrics['epoch']}, val/map_50 (best) "
        f"{metrics['best/score']:.4f}, test AP50 {evaluated['bbox/AP50']:.4f}, AP {evaluated['bbox/AP']:.4f}, "
        f"F1@0.5 {evaluated['f1/iou_0.5/full/micro_f1']:.4f}",
        flush=True,
    )
    return result


def record(rec: Recorder, runs: list[dict[str, Any]], ablation: list[dict[str, Any]]) -> None:
    """Figures over the seeds, the targets, the ablation and a table of the runs."""
    ev = lambda key, rs=runs: [r["eval"][key] for r in rs]  # noqa: E731
    rec.figure("test_ap50", ev("bbox/AP50"), label="test bbox AP50 (evaluate.py)", digits=4)
    rec.figure("test_ap", ev("bbox/AP"), label="test bbox AP 0.50:0.95", digits=4)
    rec.figure("test_f1_50", ev("f1/iou_0.5/full/micro_f1"), label="test F1 at IoU 0.5 (score >= 0.5)", digits=4)
    rec.figure("val_map50_best", [r["train"]["best/score"] for r in runs], label="val/map_50 of the chosen epoch",
               digits=4)  # fmt: skip
    rec.figure("wall_s", [r["wall"] for r in runs], label="train.py wall time, process start to exit", unit="s",
               digits=1)  # fmt: skip
    rec.target("test_ap50", ">=", AP50_TARGET, text="held-out test images, mean over the seeds")
    rec.target("wall_s", "<=", WALL_TARGET_S, text="data generation, training, test pass and MLflow included")
    rows = [[r["seed"], "fpn 64 (shipped)", r["train"]["epoch"], f"{r['wall']:.1f}", f"{r['eval']['bbox/AP50']:.4f}",
             f"{r['eval']['bbox/AP']:.4f}", f"{r['eval']['f1/iou_0.5/full/micro_f1']:.4f}"] for r in runs]  # fmt: skip
    if ablation:
        rec.figure("ablation_fpn256_ap50", ev("bbox/AP50", ablation), digits=4,
                   label="ablation: 256-channel FPN, same 300 s budget, test AP50")  # fmt: skip
        rows += [[r["seed"], "fpn 256 (ablation)", r["train"]["epoch"], f"{r['wall']:.1f}",
                  f"{r['eval']['bbox/AP50']:.4f}", f"{r['eval']['bbox/AP']:.4f}",
                  f"{r['eval']['f1/iou_0.5/full/micro_f1']:.4f}"] for r in ablation]  # fmt: skip
    rec.table("Runs (seed = data seed and training seed)",
              ["seed", "model", "epochs", "wall s", "test AP50", "test AP", "test F1@0.5"], rows)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="runs, one per seed (default 3)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    p.add_argument("--ablation-seeds", type=int, default=1, help="seeds of the 256-channel FPN ablation (default 1)")
    p.add_argument("overrides", nargs="*", help="extra overrides of every command (e.g. trainer.max_epochs=1)")
    args = p.parse_args()
    rec = Recorder("shapes_det", title="Detection: shapes_det trained on the CPU, scored by evaluate.py")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    runs = [run_one(seed, "fpn64", args.overrides) for seed in seeds]
    ablation = [run_one(seed, "fpn256", [*args.overrides, *ABLATION]) for seed in seeds[: args.ablation_seeds]]
    record(rec, runs, ablation)
    rec.write(summary=f"`train.py experiment=shapes_det` once per seed ({len(runs)} seeds; each draws its own toy set "
              "and folds), then `predict.py split=test` and `evaluate.py`: FCOS over a timm ResNet-18 and a "
              "64-channel FPN trained from scratch for 10 epochs on 320 images; AP50 on 100 held-out test images. "
              "The ablation trains torchvision's 256-channel pyramid for the same 300 s.")  # fmt: skip


if __name__ == "__main__":
    main()
