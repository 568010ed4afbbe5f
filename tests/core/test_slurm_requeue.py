"""Lightning's SLURM auto-requeue under podium's resume contract.

On the requeue signal Lightning saves ``<run dir>/hpc_ckpt_<n>.ckpt`` and runs ``scontrol requeue
<job id>``; SLURM then stops the job with SIGTERM and later runs the same command again, which must
resume from that checkpoint (the newest resume point) and end as an uninterrupted run does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from src.core.checkpoint_io import load_checkpoint_file
from src.core.rundir import RunDir, RunState
from src.datamodules.base import ResumableLoader
from tests.conftest import TRAIN_PY, read_metrics
from tests.core.test_faults import assert_each_step_once, history, run_id
from tests.core.test_training import SHORT, wait_for

JOB_ID = "4242"
#: trainer=slurm as configured (SLURMEnvironment with auto_requeue on SIGUSR1), on this CPU.
SLURM_TRAINER = ["trainer=slurm", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.deterministic=true"]
ARGS = [*SHORT, *SLURM_TRAINER]  # 3 epochs x 8 steps, MLflow logger
STEPS_PER_EPOCH = 8
#: What `scontrol requeue` does to a running job: SIGTERM now, the same batch script again later.
FAKE_SCONTROL = '#!/bin/sh\necho "$@" >> "$SCONTROL_ARGV"\nkill -TERM $PPID\n'


def slurm_env(root: Path) -> dict[str, str]:
    """One task of a one-node SLURM job (what srun sets, as far as Lightning reads it), with a
    fake ``scontrol`` first on PATH."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PODIUM_ROOT=str(root),
        PYTHONUNBUFFERED="1",
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        SCONTROL_ARGV=str(root / "scontrol.argv"),
        SLURM_JOB_ID=JOB_ID,
        SLURM_JOB_NAME="podium-requeue-test",  # not "bash"/"interactive": those hide SLURM from Lightning
        SLURM_NTASKS="1",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_NNODES="1",
        SLURM_NODELIST="localhost",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
    )
    return env


def train(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, TRAIN_PY, *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"train.py exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_requeue_signal_saves_hpc_checkpoint_and_rerun_resumes_exactly(root: Path) -> None:
    env = slurm_env(root)
    train([*ARGS, "run_name=uninterrupted"], env)
    expected = read_metrics(root / "outputs" / "digits" / "uninterrupted")

    args = [*ARGS, "run_name=requeued"]
    run = RunDir(root / "outputs" / "digits" / "requeued")
    first = subprocess.Popen(
        [sys.executable, TRAIN_PY, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(run.last_ckpt, first, timeout=60)  # epoch 0 done
        time.sleep(0.1)  # let epoch 1 start: the signal then lands mid-epoch
        first.send_signal(signal.SIGUSR1)  # SLURM's --signal=USR1@<seconds before the time limit>
        _, stderr = first.communicate(timeout=60)
    finally:
        first.kill()
    assert "Handling auto-requeue signal" in stderr, stderr[-4000:]
    assert "Received SIGTERM" in stderr and not run.metrics_file.exists()  # stopped, unfinished
    assert (root / "scontrol.argv").read_text().split() == ["requeue", JOB_ID]
    assert run.hpc_checkpoints() == [run.path / "hpc_ckpt_1.ckpt"]
    assert run.state() is RunState.RESUMABLE and run.resume_checkpoint() == run.path / "hpc_ckpt_1.ckpt"
    saved = load_checkpoint_file(run.path / "hpc_ckpt_1.ckpt", mmap=True)
    assert saved["epoch"] == 1 and STEPS_PER_EPOCH < saved["global_step"] < 2 * STEPS_PER_EPOCH  # mid-epoch 1
    # The interrupted epoch's running aggregates travel in the mid-epoch checkpoint only.
    assert saved["podium_partial_epoch"]["batches_done"] == saved["global_step"] - STEPS_PER_EPOCH
    assert "podium_partial_epoch" not in load_checkpoint_file(run.last_ckpt, mmap=True)

    again = train(args, env)  # what SLURM runs when the requeued job starts again
    assert f"Restoring states from the checkpoint path at {run.path / 'hpc_ckpt_1.ckpt'}" in again.stderr
    (resume,) = run.manifest()["resumes"]
    assert resume["checkpoint"] == "hpc_ckpt_1.ckpt" and resume["global_step"] == saved["global_step"]
    assert read_metrics(run.path) == expected
    assert (root / "scontrol.argv").read_text().split() == ["requeue", JOB_ID]  # requeued once
    # One MLflow run, every metric at the same steps with the same values as the uninterrupted run.
    requeued, straight = (
        history(root, run_id(run.path)),
        history(root, run_id(root / "outputs" / "digits" / "uninterrupted")),
    )
    assert_each_step_once(requeued)
    assert requeued == straight


def test_resume_checkpoint_is_the_newest_resume_point(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    assert run.state() is RunState.FRESH and run.resume_checkpoint() is None
    for name, mtime in (("hpc_ckpt_2.ckpt", 200), ("hpc_ckpt_10.ckpt", 300), (".hpc_ckpt_11.ckpt.x1.tmp", 400)):
        (run.path / name).write_bytes(b"x")
        os.utime(run.path / name, (mtime, mtime))
    assert run.hpc_checkpoints() == [run.path / "hpc_ckpt_2.ckpt", run.path / "hpc_ckpt_10.ckpt"]
    assert run.state() is RunState.RESUMABLE and run.resume_checkpoint() == run.path / "hpc_ckpt_10.ckpt"

    run.last_ckpt.write_bytes(b"x")  # trained past the requeue checkpoint, then killed
    os.utime(run.last_ckpt, (500, 500))
    assert run.resume_checkpoint() == run.last_ckpt
    os.utime(run.last_ckpt, (100, 100))  # requeued after the last epoch's checkpoint
    assert run.resume_checkpoint() == run.path / "hpc_ckpt_10.ckpt"

    run.reset()
    assert run.state() is RunState.FRESH and run.hpc_checkpoints() == []


@pytest.mark.parametrize("workers", [0, 1])  # worker processes take indices as soon as an iterator exists
def test_resumable_loader_starts_after_the_batches_already_trained_on(workers: int) -> None:
    data = torch.arange(10)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = ResumableLoader(data, batch_size=2, sampler=sampler, num_workers=workers)
    done = {"batches": 3}
    loader.batches_done = lambda dl: done["batches"] if dl is loader else 0
    assert len(loader) == 5  # Lightning still counts the whole epoch

    batches = iter(loader)  # Lightning makes the iterator before it restores the checkpoint...
    sampler.set_epoch(1)  # ...and before it sets the epoch and the loop's batch counter
    done["batches"] = 2
    order = list(sampler)
    assert [b.tolist() for b in batches] == [order[i : i + 2] for i in range(4, 10, 2)]
