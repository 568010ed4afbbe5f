"""MLflow logging cost: ms per logged step on a tracking server (PostgreSQL behind it) vs the embedded store.

    python benchmarks/tracking_server.py [--steps 300] [--epochs 2]
    python benchmarks/tracking_server.py --steps 50 --epochs 1 --batches 10    # smoke run

Both stores on this machine: the embedded SQLite store (``<root>/mlruns``) and an ``mlflow server``
(one worker) on a throwaway PostgreSQL cluster (``tests/tracking_server.py``), so the server's
figure is its own cost (HTTP, the server, PostgreSQL) without a network's latency. One run each:

(a) logging alone: a run directory's MLflow run (``RunSpec.open``) logs ``--steps`` steps of the
    metrics a digits training step logs when every step logs (``train/loss_step``, ``train/acc``,
    ``epoch``, ``lr-AdamW``) through ``MlflowRun.log_points``, what ``PodiumMLFlowLogger`` does per
    logged step (one ``log_batch`` request); each step timed alone.
(b) ``train.py experiment=digits`` (``test_resnet``, ``trainer.log_every_n_steps=1``: every step
    logs) with a StepTimer: the median wall time of a training step, logging included.

No target: the figures say what a shared server costs per logged step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

#: The metric keys a digits training step logs when every step logs.
STEP_KEYS = ("train/loss_step", "train/acc", "epoch", "lr-AdamW")
SKIP = 2  # steps ignored at the start of each epoch by the StepTimer


def log_steps(store_dir: Path, tracking_uri: str | None, run_dir: Path, steps: int) -> list[float]:
    """Seconds per logged step of ``steps`` logged steps into a new run of the store ((a) above)."""
    from src.core.mlflow_client import RunSpec

    run = RunSpec(store_dir, "bench_tracking", "log_steps", tracking_uri=tracking_uri).open(run_dir, None)
    run.log_points([("warmup", 0.0, int(time.time() * 1000), 0)])  # the run's metric history read once
    seconds = []
    for step in range(steps):
        now = int(time.time() * 1000)
        points = [(key, 1.0 / (step + 1 + i), now, step) for i, key in enumerate(STEP_KEYS)]
        start = time.perf_counter()
        run.log_points(points)
        seconds.append(time.perf_counter() - start)
    run.terminate("FINISHED")
    if run.kept:
        sys.exit(f"the store kept {run.kept} record(s) in {run.pending.path}: it stopped answering mid-benchmark")
    return seconds


def train_steps(root: Path, env_uri: str | None, args: argparse.Namespace, name: str) -> dict[str, Any]:
    """One ``train.py`` run logging every step; its step seconds and wall time."""
    out_file = root / f"{name}-steps.json"
    cmd = [
        sys.executable, str(ROOT / "train.py"), "experiment=digits", f"run_name=bench_{name}", "force=true",
        "model.net.model_name=test_resnet", "extras.print_config=false", f"trainer.max_epochs={args.epochs}",
        "++trainer.log_every_n_steps=1", "+callbacks.step_timer._target_=src.callbacks.timing.StepTimer",
        f"+callbacks.step_timer.skip={SKIP}", f"+callbacks.step_timer.out_file={out_file}",
    ]  # fmt: skip
    if args.batches:
        cmd.append(f"+trainer.limit_train_batches={args.batches}")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PODIUM_ROOT"] = str(root)
    if env_uri:
        env["MLFLOW_TRACKING_URI"] = env_uri
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"train.py ({name}) failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(out_file.read_text())
    return {"step_seconds": result["step_seconds"], "wall_s": wall}


def refuse(reason: str) -> None:
    sys.exit(f"cannot start the tracking server: {reason}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="logged steps of (a) per store")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the train.py run (b) per store")
    parser.add_argument("--batches", type=int, default=None, help="limit training batches per epoch (smoke runs)")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # "embedded" is the embedded store, whatever the shell says

    from src.datamodules.images.digits import write_digits
    from tests.tracking_server import running_tracking_server

    rec = Recorder("tracking_server", title="MLflow logging cost: tracking server on PostgreSQL vs embedded store")
    with tempfile.TemporaryDirectory(prefix="bench_tracking_") as tmp:
        root = Path(tmp)
        write_digits(root / "data" / "digits")
        with running_tracking_server(on_missing=refuse) as server:
            stores = {"embedded": None, "server": server.uri}
            logged = {k: log_steps(root / "mlruns", uri, root / "runs" / k, args.steps) for k, uri in stores.items()}
            trained = {k: train_steps(root, uri, args, k) for k, uri in stores.items()}

    rows = []
    for kind in stores:
        ms = [s * 1000 for s in logged[kind]]
        step_ms = [s * 1000 for s in trained[kind]["step_seconds"]]
        what = "server (PostgreSQL)" if kind == "server" else "embedded (SQLite)"
        rec.figure(f"{kind}_log_ms", statistics.median(ms), label=f"ms per logged step, {what}", unit="ms", digits=2)
        rec.figure(f"{kind}_step_ms", statistics.median(step_ms), label=f"train.py step, {what}", unit="ms", digits=1)
        rows.append([what, len(ms), round(statistics.median(ms), 2), round(percentile(ms, 0.9), 2),
                     round(max(ms), 2), len(step_ms), round(statistics.median(step_ms), 1),
                     round(trained[kind]["wall_s"], 1)])  # fmt: skip
    server_ms, embedded_ms = rec.figures["server_log_ms"]["mean"], rec.figures["embedded_log_ms"]["mean"]
    rec.figure("log_ratio", server_ms / embedded_ms, label="logged step, server / embedded", digits=2)
    rec.table(
        "One run per store (logging alone; train.py logging every step)",
        ["store", "logged steps", "median ms", "p90 ms", "max ms", "train steps", "median step ms", "train.py wall s"],
        rows,
    )
    rec.note(
        f"Logging alone, each step logs {len(STEP_KEYS)} metrics in one request, as PodiumMLFlowLogger does. The "
        "server runs on this machine with one worker: a server across a network adds its round trip to each "
        "logged step (Lightning logs every 10 steps by default, trainer.log_every_n_steps)."
    )
    rec.write(
        summary=(
            f"One run per store: {args.steps} logged steps through MlflowRun.log_points, then a digits train.py run "
            f"(test_resnet, {args.epochs} epochs) logging every step."
        )
    )


if __name__ == "__main__":
    main()
