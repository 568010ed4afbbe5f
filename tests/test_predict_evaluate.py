"""predict.py and evaluate.py for every experiment family (classification, Ariel, post-filter, detection, lens).

Each family trains one toy run in-process and predicts its validation split once (module-scoped
fixture). The tests then check that predicting again writes byte-identical records, that a copy of
the predictions folder moved elsewhere evaluates (without model or data) to the metrics training
logged for the same checkpoint (``last.ckpt``: the final validation pass), and that data the run
never saw lands in ``predictions/<split>-<fingerprint>/``. Evaluating files written by other tools,
malformed lines and the MLflow hook need no training.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.core.artifacts import RECORDS_FILE, SCHEMA_VERSION
from src.core.errors import ConfigError
from src.core.predicting import predict
from src.core.training import train
from tests.conftest import TINY_MODEL, compose_cfg, mlflow_runs, read_metrics
from tests.entry_harness import EntryResult, run_entry_point
from tests.test_experiments import _ariel, _lens, _shapes

QUIET = ["extras.print_config=false", "callbacks.rich_progress_bar=null", "run_name=toy"]


def digits_elsewhere(root: Path) -> list[str]:
    """Another image folder: 300 of the digits as train.csv (every 6th, so all 13 groups), 12 unlabelled
    test images."""
    digits, other = root / "data" / "digits", root / "data" / "digits_other"
    (other / "test").mkdir(parents=True)
    (other / "train").symlink_to(digits / "train", target_is_directory=True)
    table = pd.read_csv(digits / "train.csv", dtype=str)
    table.iloc[0::6].to_csv(other / "train.csv", index=False)
    tests = table.iloc[1::6].iloc[:12]
    for image_id, label in zip(tests.image_id, tests.label, strict=True):
        shutil.copy(digits / "train" / label / f"{image_id}.png", other / "test" / f"{image_id}.png")
    tests[["image_id"]].to_csv(other / "test.csv", index=False)
    return [f"data.root={other}", "data.prepare=null"]


def ariel_elsewhere(root: Path) -> list[str]:
    """Another simulated Ariel set (other seed), made on first use."""
    return [f"data.root={root / 'data' / 'ariel_other'}", "data.simulate.seed=5"]


def video_elsewhere(root: Path) -> list[str]:
    """Another clip: carphone's first 40 frames, re-encoded nearly losslessly."""
    from src.datamodules.video.codec import CodecSettings, encode, read_source
    from src.datamodules.video.sources import resolve_source

    source = read_source(resolve_source("carphone"))
    source.frames = source.frames[:40]
    clip = root / "clips" / "short.mkv"
    clip.parent.mkdir()
    encode(source, CodecSettings(name="libx264", crf=4, preset="ultrafast"), clip)
    return [f"data.source={clip}"]


def detection_elsewhere(root: Path) -> list[str]:
    """Another shapes set (other data seed), written on first use."""
    return [f"data.root={root / 'data' / 'shapes_other'}", "data.prepare.seed=5"]


def lens_elsewhere(root: Path) -> list[str]:
    """Another simulated lens set (other data seed), written on first use."""
    return [f"data.root={root / 'data' / 'lens_other'}", "data.prepare.seed=5"]


@dataclass(frozen=True)
class Family:
    """One experiment family's toy run.

    Attributes:
        overrides: Of both train.py and predict.py.
        metrics: evaluate.py's metric -> the metrics.json key logged in training for ``last.ckpt``.
        export: The file or folder the module's export writes into the predictions folder.
        elsewhere: Writes other data under the root; returns the overrides pointing at it.
        mlflow: Train with the MLflow logger (the others log to CSV only).
    """

    overrides: tuple[str, ...]
    metrics: dict[str, str]
    export: str
    elsewhere: Callable[[Path], list[str]]
    mlflow: bool = False


ARIEL_CAL = ("score2024", "score2025", "gll", "mae_ppm", "cov68", "cov95")
FAMILIES = {
    "digits": Family(
        ("experiment=digits", *TINY_MODEL, "trainer.max_epochs=1", "+trainer.limit_train_batches=4",
         "callbacks.oof=null"),
        {"acc": "val/acc", "log_loss": "val/loss"},
        "submission.csv",
        digits_elsewhere,
        mlflow=True,
    ),
    "ariel": Family(
        ("experiment=ariel_mlp", *_ariel(Path()), "trainer.max_epochs=2", "callbacks.report=null", "logger=csv"),
        {name: f"val/cal/{name}" for name in ARIEL_CAL},  # sigma after temperature scaling
        "submission.csv",
        ariel_elsewhere,
    ),
    "video": Family(
        ("experiment=video_postfilter", "data=video_toy", "data.patches_per_epoch=32", "data.patch_size=32",
         "trainer.max_epochs=2", "callbacks.qat.start_epoch=1", "callbacks.ema.update_starting_at_step=0",
         "callbacks.export=null", "callbacks.rd_report=null", "logger=csv", "keep_frames=true"),
        {"psnr": "val/psnr", "ssim": "val/ssim", "psnr_gain": "val/psnr_gain", "psnr_decoded": "val/psnr_decoded"},
        "frames",
        video_elsewhere,
    ),
    "detection": Family(
        ("experiment=shapes_det", *_shapes(Path()), "trainer.max_epochs=1", "logger=csv"),
        {"bbox/AP50": "val/map_50", "bbox/AP": "val/map", "bbox/AP75": "val/map_75", "bbox/AR100": "val/mar_100"},
        "detections.csv",
        detection_elsewhere,
    ),
    # Validation scores photos at the working size, predict.py at their own: only the counts agree.
    "lens": Family(
        ("experiment=lens_bucket", *_lens(Path()), "logger=csv"),
        {},
        "submission.zip",
        lens_elsewhere,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Trained:
    """A family's toy run and its validation predictions."""

    name: str
    family: Family
    root: Path
    run_dir: Path
    folder: Path

    def predict(self, *extra: str) -> Path:
        """``python predict.py <family overrides> <extra>`` in this process."""
        return predict(compose_cfg([*self.family.overrides, *QUIET, *extra], self.root, config_name="predict"))


def _train_overrides(family: Family) -> list[str]:
    return [o for o in family.overrides if not o.startswith("keep_frames=")]


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Trained:
    name, family = request.param, FAMILIES[request.param]
    root = tmp_path_factory.mktemp(name)
    (root / "data").mkdir()
    (root / "data" / "digits").symlink_to(data_dir / "digits", target_is_directory=True)
    cfg = compose_cfg([*_train_overrides(family), *QUIET], root)
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    made = Trained(name, family, root, run_dir, run_dir / "predictions" / "val")
    assert made.predict("split=val") == made.folder
    return made


@pytest.fixture
def run(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> Callable[..., EntryResult]:
    """Run an entry point in-process (``python <name>.py <overrides>``)."""
    return lambda name, *overrides: run_entry_point(name, list(overrides), tmp_path, monkeypatch, capfd)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_predicting_again_writes_identical_records_and_the_artifact_contract(trained: Trained) -> None:
    first = (trained.folder / RECORDS_FILE).read_bytes()
    assert trained.predict("split=val") == trained.folder
    assert (trained.folder / RECORDS_FILE).read_bytes() == first
    records = lines_of(trained.folder / RECORDS_FILE)
    assert all(set(r) >= {"sample_id", "split", "gt", "pred", "errors"} for r in records)
    assert all(r["split"] == "val" and r["gt"] is not None and r["errors"] == [] for r in records)
    summary = json.loads((trained.folder / "summary.json").read_text())
    resolved = json.loads((trained.folder / "resolved_config.json").read_text())
    assert summary["counts"]["records"] == len(records) == read_metrics(trained.run_dir)["val/samples"]
    assert summary["checkpoint"]["path"] == "checkpoints/last.ckpt"
    assert resolved["schema_version"] == SCHEMA_VERSION and resolved["task"] == summary["task"]
    assert resolved["stages"][0] == "predict" and "gt_vs_pred.jsonl" in resolved["artifacts"].values()
    assert (trained.folder / trained.family.export).exists()
    assert (resolved["mlflow"] is not None) == trained.family.mlflow
    assert not list(trained.folder.parent.glob(".*"))  # no staging folder left behind


@pytest.mark.slow
def test_a_moved_copy_evaluates_to_the_in_training_metrics(trained: Trained, tmp_path: Path, run) -> None:
    copy = Path(shutil.copytree(trained.folder, tmp_path / "moved" / "val"))
    result = run("evaluate", f"path={copy}")
    assert result.code == 0, result.output[-3000:]
    written = json.loads((copy / "eval" / "metrics.json").read_text())
    logged = read_metrics(trained.run_dir)
    for metric, key in trained.family.metrics.items():
        # Training logs float32 figures (a PSNR gain is a difference of two float32 means near 30 dB).
        assert written["metrics"][metric] == pytest.approx(logged[key], rel=1e-5, abs=1e-5), metric
    counters = written["counters"]
    assert counters["scored"] == counters["records"] == logged["val/samples"]
    assert len((copy / "eval" / "per_sample.jsonl").read_text().splitlines()) == counters["scored"]
    assert not (trained.folder / "eval").exists()  # the copy was evaluated, not the original
    if trained.family.mlflow:  # the artifact names the training run: the metrics land in it
        assert counters["mlflow_logged"] == 1
        logged_run = mlflow_runs(trained.root, "toy", "digits")[0]
        assert logged_run.data.metrics["eval/val/acc"] == pytest.approx(written["metrics"]["acc"])
    else:
        assert counters["mlflow_none"] == 1


@pytest.mark.slow
def test_data_the_run_never_saw_lands_in_split_fingerprint(trained: Trained, run) -> None:
    if trained.name == "digits":  # the digits have no test split of their own
        with pytest.raises(ConfigError, match=r"split='test' is not a split of ImageFolderDataModule \(it has: val\)"):
            trained.predict("split=test")
    folder = trained.predict(*trained.family.elsewhere(trained.root), "split=test")
    summary = json.loads((folder / "summary.json").read_text())
    fingerprint = summary["data_fingerprint"]
    assert folder == trained.run_dir / "predictions" / f"test-{fingerprint}"
    assert fingerprint != json.loads((trained.run_dir / "manifest.json").read_text())["data_fingerprint"]
    records = lines_of(folder / RECORDS_FILE)
    assert records and all(r["split"] == "test" for r in records)
    assert summary["counts"]["records"] == len(records)
    result = run("evaluate", f"path={folder}", "log_mlflow=false")
    assert result.code == 0, result.output[-3000:]
    counters = json.loads((folder / "eval" / "metrics.json").read_text())["counters"]
    assert counters["records"] == len(records) == counters["scored"] + counters["unlabelled"]


@pytest.mark.slow
def test_a_model_override_is_refused_naming_the_key(trained: Trained) -> None:
    """Data locations may change at predict time, the model may not: every family's model has
    ``nonfinite_loss``."""
    with pytest.raises(
        ConfigError, match=r"was not trained with this command's model .*model.nonfinite_loss: run raise, command skip"
    ):
        trained.predict("split=val", "model.nonfinite_loss=skip")
    assert (trained.folder / RECORDS_FILE).is_file()  # the earlier prediction is untouched


# ---- evaluate.py without training -------------------------------------------------------------------


def foreign_records() -> list[dict]:
    """Classification records as another tool might write them: own key order, extra keys."""
    rows = [("a", [0.9, 0.1], 0, []), ("b", [0.2, 0.8], 0, []), ("c", [0.4, 0.6], 1, []),
            ("d", [0.5, 0.5], None, []), ("e", [None, 0.5], 1, ["nonfinite_pred"])]  # fmt: skip
    return [
        {"pred": {"probs": p}, "gt": None if y is None else {"label": y}, "sample_id": i, "split": "val",
         "errors": e, "model": "theirs"}
        for i, p, y, e in rows
    ]  # fmt: skip


def test_evaluate_scores_a_file_written_by_another_tool(tmp_path: Path, run) -> None:
    path = tmp_path / "theirs" / "preds.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(json.dumps(r, indent=None) for r in foreign_records()) + "\n" + "{broken\n")
    unnamed = run("evaluate", f"path={path}")
    assert (
        unnamed.code == 2
        and "podium: error: the task of" in unnamed.err
        and "has no resolved_config.json" in unnamed.err
    )
    assert "task=<one of classification, ariel, postfilter, detection, lens>" in unnamed.err
    assert "Traceback" not in unnamed.err
    assert not (path.parent / "eval").exists()

    result = run("evaluate", f"path={path}", "task=classification")
    assert result.code == 0, result.output[-3000:]
    written = json.loads((path.parent / "eval" / "metrics.json").read_text())
    assert written["metrics"]["acc"] == pytest.approx(2 / 3)
    assert written["metrics"]["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.2) + np.log(0.6)) / 3)
    assert written["counters"] == {"records": 5, "labelled": 4, "unlabelled": 1, "with_errors": 1, "scored": 3,
                                   "invalid_json": 1, "mlflow_none": 1}  # fmt: skip
    per_sample = lines_of(path.parent / "eval" / "per_sample.jsonl")
    assert [(r["sample_id"], r["correct"]) for r in per_sample] == [("a", True), ("b", False), ("c", True)]

    strict = run("evaluate", f"path={path}", "task=classification", "strict=true")
    assert strict.code == 2 and f"podium: error: {path}:6: invalid_json (" in strict.err and ": {broken" in strict.err


def test_evaluate_says_when_the_mlflow_store_is_not_here(tmp_path: Path, run) -> None:
    from src.core.artifacts import build_resolved_config, write_json, write_records

    folder = tmp_path / "val"
    write_records(folder / RECORDS_FILE, foreign_records()[:3])
    store = tmp_path / "gone" / "mlflow.db"
    mlflow = {"tracking_uri": f"sqlite:///{store}", "run_id": "0123abcd"}
    write_json(
        folder / "resolved_config.json", build_resolved_config("classification", ["predict"], {}, None, mlflow, {})
    )
    result = run("evaluate", f"path={folder}")
    assert result.code == 0, result.output[-3000:]
    counters = json.loads((folder / "eval" / "metrics.json").read_text())["counters"]
    assert counters["mlflow_store_missing"] == 1 and "mlflow_store_missing=1" in result.out
    assert not store.parent.exists()  # nothing is created where the store used to be
