"""Every experiment family under ``trainer=ddp_sim`` (2 CPU processes, gloo), and deterministic on CPU.

Each family trains its toy experiment once on one process and once on two (``python train.py``),
then the two-process run is checked against the one-process run: it finishes, records
``world_size: 2``, makes exactly one MLflow run (rank zero alone talks to MLflow), rank 1 writes
nothing into the run directory but its own Hydra job log, the synced ``val/samples`` counts every
validation sample once, and the artifacts written from gathered predictions cover every sample.
The same command again gives identical metrics; another seed another train loss. The digits family
has its own DDP and determinism tests in tests/core/test_training.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from src.core.training import train
from tests.conftest import compose_cfg, mlflow_runs, read_metrics, train_runner
from tests.test_experiments import _ariel

QUIET = ["extras.print_config=false", "callbacks.rich_progress_bar=null"]
# Six simulated planets, two folds: 3 train planets, 3 validation planets, global batch 2 (1 per
# process); validation is shared 2 + 1 between the processes.
ARIEL = ["experiment=ariel_v50", "trainer.max_epochs=2", *QUIET]
# 32 patches of 32 px per epoch at global batch 16 (2 steps), QAT from the second epoch: the run
# passes through the QAT switch; EMA, the int8 export and the RD report stay on as in the experiment.
VIDEO = ["experiment=video_postfilter", "data=video_toy", "data.patches_per_epoch=32", "data.patch_size=32",
         "trainer.max_epochs=2", "callbacks.qat.start_epoch=1", "callbacks.ema.update_starting_at_step=0",
         *QUIET]  # fmt: skip
# 24 shape images of 64 px in three folds: 16 train, 8 validation; global batch 4 (2 per process):
# 4 steps, then validation (4 + 4 images under DDP) and the 6 test images (3 + 3).
# A second logger beside MLflow, so the run directory lists the same files as the csv-only runs.
DDP = ["trainer=ddp_sim", "logger=[csv,mlflow]", "run_name=ddp"]
# Lightning restarts train.py for rank 1 with this Hydra job name: the one file rank 1 may write.
RANK1_LOG = "train_ddp_process_1.log"


@pytest.fixture(scope="module")
def family_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project root for the module: the Ariel toy set and the codec cache are made once."""
    return tmp_path_factory.mktemp("families")


def in_process(root: Path, *overrides: str) -> dict:
    """Train ``overrides`` in this process (no interpreter start-up) and return metrics.json."""
    cfg = compose_cfg(list(overrides), root)
    train(cfg)
    return read_metrics(Path(cfg.paths.output_dir))


def listing(run_dir: Path) -> set[str]:
    """The run directory's files (relative paths), best checkpoints without their epoch."""
    files = (p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    return {re.sub(r"best-epoch\d+", "best-epoch*", f) for f in files}


class FamilyRuns:
    """The one-process and two-process runs of one experiment (made on first use)."""

    def __init__(self, root: Path, experiment: str, args: list[str]) -> None:
        self.root, self.experiment, self.args = root, experiment, args
        self.run: Callable = train_runner(root)
        self._made: set[str] = set()

    def dir(self, name: str) -> Path:
        return self.root / "outputs" / self.experiment / name

    def single(self) -> Path:
        """``python train.py <args> logger=csv run_name=single``."""
        if "single" not in self._made:
            self.run(*self.args, "logger=csv", "run_name=single")
            self._made.add("single")
        return self.dir("single")

    def ddp(self) -> Path:
        """The same under ``trainer=ddp_sim`` (after the single run: it reuses its data)."""
        self.single()
        if "ddp" not in self._made:
            self.run(*self.args, *DDP)
            self._made.add("ddp")
        return self.dir("ddp")


@pytest.fixture(scope="module")
def ariel(family_root: Path) -> FamilyRuns:
    return FamilyRuns(family_root, "ariel_v50", [*ARIEL, *_ariel(family_root)])


@pytest.fixture(scope="module")
def video(family_root: Path) -> FamilyRuns:
    return FamilyRuns(family_root, "video_postfilter", VIDEO)


def assert_ddp_run_like_single(runs: FamilyRuns) -> tuple[dict, dict]:
    """The checks every family shares; returns (single metrics, ddp metrics)."""
    ddp_dir, single_dir = runs.ddp(), runs.single()
    single, ddp = read_metrics(single_dir), read_metrics(ddp_dir)
    assert json.loads((ddp_dir / "manifest.json").read_text())["world_size"] == 2
    assert len(mlflow_runs(runs.root, "ddp", runs.experiment)) == 1  # rank zero alone talks to MLflow
    assert listing(ddp_dir) == listing(single_dir) | {RANK1_LOG}  # rank 1: its job log, nothing else
    # Every validation sample counted once over both processes: no padding repeats, none left out.
    assert ddp["val/samples"] == single["val/samples"] > 1
    assert ddp["global_step"] == single["global_step"]
    return single, ddp


@pytest.mark.slow
def test_ariel_ddp_sim_covers_every_planet(ariel: FamilyRuns) -> None:
    single, _ = assert_ddp_run_like_single(ariel)
    for name in ("predictions/val.csv", "physics_planets.csv"):
        planets = {d: pd.read_csv(d / name)["planet_id"] for d in (ariel.single(), ariel.ddp())}
        one, two = planets.values()
        assert len(one) == len(two) == single["val/samples"] == 3, name
        assert sorted(one) == sorted(two) and two.is_unique, name
    assert (ariel.ddp() / "report.html").stat().st_size > 0  # written by rank 0 without hanging
    conformal = json.loads((ariel.ddp() / "conformal.json").read_text())
    assert len(conformal["quantiles"]["68"]) == 283


def assert_same_seed_same_metrics(family: FamilyRuns) -> None:
    """The family's command again (same seed) gives identical metrics; another seed changes the loss."""
    first = read_metrics(family.single())
    assert in_process(family.root, *family.args, "logger=csv", "run_name=again") == first
    other = in_process(family.root, *family.args, "logger=csv", "run_name=seed7", "seed=7")
    assert other["train/loss"] != first["train/loss"]


@pytest.mark.slow
def test_ariel_same_seed_same_metrics_other_seed_other_loss(ariel: FamilyRuns) -> None:
    assert_same_seed_same_metrics(ariel)


@pytest.mark.slow
def test_video_ddp_sim_passes_qat_and_scores_every_frame(video: FamilyRuns) -> None:
    single, ddp = assert_ddp_run_like_single(video)
    assert ddp["qat/active"] == single["qat/active"] == 1.0  # trained through the QAT switch
    reports = [json.loads((d / "postfilter_report.json").read_text()) for d in (video.single(), video.ddp())]
    assert reports[0]["quantization"] == reports[1]["quantization"] == "qat"
    assert reports[0]["test_frames"] == reports[1]["test_frames"]
    assert len(reports[1]["per_frame"]["int8"]["psnr"]) == len(reports[1]["test_frames"]) > 1
    assert ddp["export/max_abs_diff"] == 0.0 and "rd/bd_rate" in ddp


@pytest.mark.slow
def test_video_same_seed_same_metrics_other_seed_other_loss(video: FamilyRuns) -> None:
    assert_same_seed_same_metrics(video)


def test_ariel_polyfit_refuses_ddp_with_a_clear_error(family_root: Path) -> None:
    """The polynomial fit has no trainable weights: DDP has nothing to sync, and says how to run it."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from src.core.errors import ConfigError

    cfg = compose_cfg(["experiment=ariel_polyfit", *_ariel(family_root), "trainer=ddp_sim"], family_root)
    model = instantiate(cfg.model)
    assert not model.trainable
    model.trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # not launched
    with pytest.raises(ConfigError, match=r"(?s)PolyFitNet has no trainable parameters.*fix: .*trainer=cpu"):
        model.setup("fit")


def test_ensemble_same_inputs_same_metrics(tmp_path: Path) -> None:
    from src.ensemble.pipeline import run_ensemble
    from tests.ensemble.synthetic import write_member
    from tests.ensemble.test_ensemble_entry import FAST, MEMBERS, compose_ensemble

    for name, seed in (("cv_a", 1), ("cv_b", 2)):
        write_member(tmp_path / "outputs" / "digits", name, seed=seed, n=200, n_test=20)
    results = []
    for run_name in ("first", "second"):
        run_ensemble(compose_ensemble(tmp_path, MEMBERS, f"run_name={run_name}", "log_mlflow=false", *FAST))
        results.append(read_metrics(tmp_path / "outputs" / "ensemble" / run_name))
    assert results[0] == results[1] and "oof/acc" in results[0]


@pytest.mark.parametrize("size", [5, 1])
def test_eval_sampler_gives_every_sample_to_one_process(size: int) -> None:
    """Validation under DDP: no repeated samples (Lightning's padding), each process runs a batch."""
    from types import SimpleNamespace

    from src.datamodules.base import PodiumDataModule

    dm, dataset = PodiumDataModule(), list(range(size))
    shares = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        shares.append(list(dm.eval_sampler(dataset)))
    dm.trainer = None
    assert dm.eval_sampler(dataset) is None  # one process: the loader's plain order
    if size >= 2:
        assert sorted(shares[0] + shares[1]) == dataset
    else:  # fewer samples than processes: padded, so that no process waits on an empty one
        assert shares == [[0], [0]]
