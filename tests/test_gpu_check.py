"""The GPU check's plan, dry run, wheel resolution and Dockerfile reading (no training), and the
mambapy encoder on CUDA against the CPU (a gpu-marked test the check runs)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

EXPERIMENTS = ("digits", "ariel_v50", "video_postfilter", "shapes_det", "lens_learned")


SHIPPED_RESULT = ROOT / "benchmarks" / "results" / "gpu_check.json"


def check(*args: str, results: Path) -> subprocess.CompletedProcess:
    """``gpu_check.py <args>`` with the result files sent to ``results``."""
    env = {**os.environ, "PODIUM_BENCH_RESULTS": str(results)}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip


def shipped_state() -> tuple[int, int] | None:
    return (SHIPPED_RESULT.stat().st_mtime_ns, SHIPPED_RESULT.stat().st_size) if SHIPPED_RESULT.exists() else None


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """``gpu_check.py --dry-run`` with the result files sent to an empty folder."""
    results = tmp_path_factory.mktemp("results")
    before = shipped_state()
    proc = check("--dry-run", results=results)
    assert shipped_state() == before  # the committed result, if any, untouched
    return proc, results


def test_dry_run_lists_every_family_within_the_budget_and_writes_nothing(dry_run) -> None:
    proc, results = dry_run
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in EXPERIMENTS:
        assert re.search(rf"train\.py experiment={name} .*trainer=gpu", out), f"no GPU run of {name}"
        assert re.search(rf"train\.py experiment={name} .*trainer=cpu", out), f"no CPU twin of {name}"
    assert "-m tests.faults --kill-at-step" in out and "--time-calibration" in out and "pytest -m gpu" in out
    assert "wheels:" in out and ".gpu-wheels" in out
    total = float(re.search(r"planned total timeout: ([\d.]+) s", out).group(1))
    assert 0 < total <= 480
    assert list(results.iterdir()) == []  # no gpu_check.json from a dry run


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the plain command runs the check")
def test_without_cuda_the_plain_command_prints_the_plan_and_exits_0(tmp_path: Path) -> None:
    proc = check(results=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "GPU check plan (no CUDA device here); nothing is run." in proc.stdout
    assert "planned total timeout:" in proc.stdout and list(tmp_path.iterdir()) == []


def test_plan_phases_add_up_their_longest_lanes_and_runs_use_the_gpu_trainer(tmp_path: Path) -> None:
    settings = gpu_check.Settings(work=tmp_path, cores=tuple(range(16)))
    phases = gpu_check.build_plan(settings)
    assert [p.name for p in phases] == ["install", "prepare", "families", "calibration"]
    lanes = {name: sum(s.timeout_s for s in lane) for name, lane in phases[2].lanes.items()}
    assert phases[2].timeout_s == max(lanes.values())
    assert gpu_check.planned_total(phases) == sum(p.timeout_s for p in phases) <= gpu_check.BUDGET_S
    steps = {s.name: s for p in phases for s in p.steps()}
    assert len(steps) == sum(len(p.steps()) for p in phases)  # step names are unique (their log files)
    video = steps["video_postfilter-gpu"].cmd
    assert "trainer=gpu" in video and "trainer.precision=32-true" in video  # QAT stays 32-bit
    assert "trainer.precision=bf16-mixed" in steps["digits-gpu"].cmd
    # The GPU lane and the CPU twins get disjoint cores; the calibration uses all 16.
    assert set(steps["digits-gpu"].cores).isdisjoint(steps["digits-cpu-twin"].cores)
    assert steps["calibration"].cmd[-1] == "1,16"
    # The killed run and its rerun are one command: the rerun resumes the same run directory.
    kill, rerun = steps["resume-kill"].cmd, steps["resume-rerun"].cmd
    assert kill[kill.index("train.py") :] == rerun[rerun.index("train.py") :] and steps["resume-kill"].expect_kill


def test_wheels_skip_what_the_image_has_and_replace_mlflow_by_its_client() -> None:
    deps = ["torch==2.14.1", "lightning>=2.6,<2.7", "hydra-core>=1.3,<1.4", "mlflow>=3.0", "Rich>=13",
            "hydra-optuna-sweeper>=1.2", "av>=14"]  # fmt: skip
    assert gpu_check.needed_requirements(deps) == ["hydra-core<1.4,>=1.3", "mlflow-skinny", "sqlalchemy", "alembic",
                                                   "av>=14"]  # fmt: skip


def test_wheel_requirements_keep_the_ones_whose_markers_hold_for_that_python() -> None:
    metadata = "\n".join([
        "Name: demo", "Version: 1.0",
        "Requires-Dist: typing-extensions>=4.6",
        'Requires-Dist: tomli>=1.1; python_version < "3.11"',
        'Requires-Dist: greenlet>=1; extra == "asyncio"',
        'Requires-Dist: pywin32; sys_platform == "win32"',
        'Requires-Dist: exceptiongroup; python_version < "3.12"',
    ])  # fmt: skip
    assert gpu_check.wheel_requirements(metadata, "3.11") == ["typing-extensions>=4.6", "exceptiongroup"]
    assert gpu_check.wheel_requirements(metadata, "3.12") == ["typing-extensions>=4.6"]


DOCKERFILE = """FROM nvidia/cuda:12.8.0-cudnn-devel-ubuntu24.04
RUN pip install --upgrade pip==25.0 wheel
RUN pip install -e '.[dev]'
RUN pip install --no-build-isolation 'mamba-ssm>=2.2' \\
        'causal-conv1d>=1.4'
RUN pip install --no-deps -e '.[gpu,docs]' && python -c "import mamba_ssm"
"""


def test_dockerfile_reading_finds_the_base_cuda_requirements_and_an_extra_installed_without_dependencies() -> None:
    found = gpu_check.read_dockerfile(DOCKERFILE)
    assert found.base_cuda == "12.8.0"
    assert found.requirements == ["pip==25.0", "wheel", "mamba-ssm>=2.2", "causal-conv1d>=1.4"]
    assert found.extras == [(["dev"], True), (["gpu", "docs"], False)]
    problems = gpu_check.docker_problems(found, {"dev": ["pytest>=8"], "gpu": ["mamba-ssm>=2.2", "causal-conv1d"]})
    assert any("`gpu` extra is never installed" in p for p in problems)
    assert any("'docs' is not defined" in p for p in problems)
    assert sum("repeated from pyproject.toml's extras" in p for p in problems) == 2


def test_the_shipped_dockerfile_installs_the_gpu_extra_with_its_dependencies() -> None:
    found = gpu_check.read_dockerfile((ROOT / "Dockerfile.gpu").read_text())
    extras = gpu_check.pyproject()["project"]["optional-dependencies"]
    assert gpu_check.docker_problems(found, extras) == []
    assert found.base_cuda is not None and found.base_cuda.startswith("13.")


def test_a_result_measured_on_a_gpu_names_it_in_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import record
    import report

    monkeypatch.setattr(record, "RESULTS", tmp_path)
    rec = record.Recorder("gpu_check", title="GPU check", command="python benchmarks/gpu_check.py")
    rec.env["gpu"] = "NVIDIA H200 (139.8 GiB, CUDA 13.0)"
    rec.figure("digits_samples_s", 5120.0, unit="samples/s", digits=1)
    rec.write()
    (result,) = report.load_results(tmp_path)
    text = "\n".join(report.render_one(result))
    assert ", GPU NVIDIA H200 (139.8 GiB, CUDA 13.0), torch" in text and "5120.0 samples/s" in text


def test_the_peak_memory_callback_is_found_by_its_config_target(tmp_path: Path) -> None:
    """``+callbacks.gpu_memory._target_=gpu_check.PeakGpuMemory`` resolves (benchmarks/ on the path, as
    the check's runs have it) to a Lightning callback that writes its file only where CUDA is."""
    from types import SimpleNamespace

    import lightning.pytorch as pl
    from hydra.utils import instantiate

    out = tmp_path / "memory.json"
    callback = instantiate({"_target_": "gpu_check.PeakGpuMemory", "out_file": str(out)})
    assert isinstance(callback, pl.Callback)
    callback.teardown(SimpleNamespace(is_global_zero=True), None, "fit")
    assert out.exists() == torch.cuda.is_available()


@pytest.mark.gpu
def test_mambapy_on_cuda_matches_the_cpu() -> None:
    """The pure-PyTorch Mamba (the encoder's backend without mamba-ssm) on CUDA: same outputs as on
    the CPU in float32, finite outputs and gradients under bf16 autocast."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from src.modules.ariel.ssm import MambaEncoder

    torch.manual_seed(0)
    cpu = MambaEncoder(3, d_model=32, n_layers=2, backend="mambapy")
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(4, 64, 3)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), atol=1e-4, rtol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    xb = x.cuda().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(xb)
    out.float().square().mean().backward()
    assert torch.isfinite(out).all() and torch.isfinite(xb.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)
