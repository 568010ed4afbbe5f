"""Hostile input to every entry point fails fast and cleanly.

One table of cases across every experiment family (digits, image_folder, ariel_*, video_postfilter)
and entry point (train.py, cv.py, ensemble.py, predict.py, evaluate.py): bad overrides and damaged
files. Each rejected command must exit non-zero with a message naming the file, field or value and
the fix, print no traceback, and leave nothing under ``<root>/outputs`` (no stray run directory, no
run marked finished). Entry points run in-process (tests/entry_harness.py): a subprocess per case
would spend ~8 s on imports alone.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra.core.hydra_config import HydraConfig
from PIL import Image

from src.datamodules.ariel.simulate import simulate_dataset
from tests import hostile_cases as hc
from tests.datamodules.ariel.conftest import TINY
from tests.datamodules.images.test_layout import fruit_dm, make_fruit_set
from tests.entry_harness import EntryResult, run_entry_point

Recipe = Callable[[hc.Workspace], list[str]]


def fixed(*overrides: str) -> Recipe:
    """A recipe that builds nothing: the overrides alone are the hostile input."""
    return lambda ws: list(overrides)


@dataclass(frozen=True)
class Case:
    """One hostile command.

    Attributes:
        entry: ``train``, ``cv``, ``ensemble``, ``predict`` or ``evaluate``.
        build: Makes the bad input under the test root and returns the overrides.
        expected: Fragments the output must contain (``<root>`` stands for the test root): the
            file, field or value at fault, and the fix.
        continues: The documented exception: the input is handled (skipped with a warning that
            ``expected`` matches) and the run finishes with exit code 0.
    """

    entry: str
    build: Recipe
    expected: tuple[str, ...]
    continues: bool = False


DIGITS = "experiment=digits"
FIX = "fix:"

CASES: dict[str, Case] = {
    # ---- train.py, digits: overrides ------------------------------------------------------------
    "digits-unknown-experiment": Case(
        "train", fixed("experiment=nope"), ("Could not find 'experiment/nope'", "Available options", "digits")
    ),
    "digits-no-experiment": Case("train", fixed(), ("no experiment chosen", "experiment=<name>", "digits", FIX)),
    "digits-wrong-type": Case(
        "train", fixed(DIGITS, "trainer.max_epochs=abc"), ("trainer.max_epochs expects int", "'abc'", FIX)
    ),
    "digits-float-for-int": Case(
        "train", fixed(DIGITS, "data.batch_size=1.5"), ("data.batch_size expects int", "1.5", "data.batch_size=<int>")
    ),
    "digits-unknown-key": Case(
        "train", fixed(DIGITS, "trainer.max_epoch=3"), ("'trainer.max_epoch'", "+trainer.max_epoch=3")
    ),
    "digits-fold-out-of-range": Case("train", fixed(DIGITS, "data.fold=7"), ("data.fold=7", "data.n_folds=5", "0..4")),
    "digits-one-fold": Case("train", fixed(DIGITS, "data.n_folds=1"), ("data.n_folds=1", "2 or more")),
    "digits-unknown-timm-model": Case(
        "train", fixed(DIGITS, "model.net.model_name=resnet999"), ("resnet999", "timm.list_models", FIX)
    ),
    "digits-unknown-augment": Case(
        "train", fixed(DIGITS, "data.augment=heavy"), ("data.augment='heavy'", "use one of", "light")
    ),
    "digits-unknown-bad-images-policy": Case(
        "train", fixed(DIGITS, "data.bad_images=ignore"), ("data.bad_images='ignore'", "quarantine", FIX)
    ),
    # ---- train.py, digits: files ----------------------------------------------------------------
    "digits-missing-data": Case(
        "train",
        lambda ws: [DIGITS, f"data.root={ws.root / 'nowhere'}", "data.prepare=null"],
        ("<root>/nowhere/train.csv", "point data.root at the dataset folder"),
    ),
    "digits-empty-csv": Case(
        "train", lambda ws: hc.image_csv(ws, b""), ("cannot parse <root>/data/bad_csv/train.csv", "comma-separated")
    ),
    "digits-binary-csv": Case(
        "train", hc.binary_csv, ("cannot parse <root>/data/bad_csv/train.csv", "write it as a comma-separated CSV")
    ),
    "digits-wrong-csv-columns": Case(
        "train",
        lambda ws: hc.image_csv(ws, "file,class\na.png,1\n"),
        ("<root>/data/bad_csv/train.csv lacks column(s) ['image_id', 'label']", "add the column(s)"),
    ),
    "digits-image-file-missing": Case(
        "train", hc.missing_image, ("no image file for image_id 'img1'", "missing_image/train/cat", "remove its row")
    ),
    # ---- train.py, image_folder -----------------------------------------------------------------
    "image-folder-no-dataset-name": Case(
        "train",
        fixed("experiment=image_folder"),
        ("data.name, data.num_classes have no value", "pass data.name=<value> data.num_classes=<value>"),
    ),
    "image-folder-wrong-num-classes": Case(
        "train",
        hc.fruits_with(**{"data.num_classes": 14}),
        ("has 15 classes", "data.num_classes=14", "set data.num_classes=15"),
    ),
    "image-folder-duplicated-image-id": Case(
        "train", hc.duplicated_image_id, ("<root>/data/fruits/train.csv", "'fruit00_3' appears 2 times", FIX)
    ),
    "image-folder-unknown-test-label": Case(
        "train", hc.unknown_test_label, ("<root>/data/fruits/test.csv", "['kiwi']", "training classes", FIX)
    ),
    "image-folder-unreadable-image": Case(
        "train",
        hc.text_as_jpeg,
        (
            "1 of 95 images",
            "train/fruit03/fruit03_2.jpg",
            "data.bad_images=quarantine",
            "src.datamodules.images.cleaning",
        ),
    ),
    "image-folder-unreadable-image-quarantined": Case(
        "train",
        hc.quarantined_jpeg,
        (
            "data.bad_images=quarantine: dropping 1 undecodable image(s)",
            "from every split: train/fruit03/fruit03_2.jpg",
        ),
        continues=True,
    ),
    "image-folder-truncated-test-image": Case(
        "train", hc.truncated_test_png, ("cannot be decoded: test/t4.png", "data.bad_images=quarantine")
    ),
    # ---- train.py, lens_* -----------------------------------------------------------------------
    "lens-truncated-input": Case(
        "train",
        hc.lens_case(hc.lens_truncate_input),
        ("_original.jpg cannot be decoded", "data.bad_images=quarantine"),
    ),
    "lens-pair-sizes-differ": Case(
        "train",
        hc.lens_case(hc.lens_shrink_target),
        ("_generated.jpg is", "but its partner", "_original.jpg is"),
    ),
    "lens-grey-input": Case(
        "train",
        hc.lens_case(hc.lens_grey_input),
        ("_original.jpg is grey-scale (mode L)", "8-bit RGB"),
    ),
    "lens-test-names-collide-after-case-folding": Case(
        "train",
        hc.lens_case(hc.lens_case_collision),
        ("once letter case", "test-originals"),
    ),
    "lens-every-camera-leaves-the-frame": Case(
        "train",
        hc.lens_case(lambda root: None, "model.search.k1=[-3.0,-2.0,1.0]"),
        ("every candidate of model.search", "leaves the frame", "model.search.k1"),
    ),
    # ---- train.py, ariel_* ----------------------------------------------------------------------
    "ariel-fold-out-of-range": Case(
        "train",
        fixed("experiment=ariel_v50", "data=ariel_toy", "data.fold=4"),
        ("data.fold=4", "data.n_folds=4", "0..3"),
    ),
    "ariel-unknown-calibration-step": Case(
        "train",
        fixed("experiment=ariel_mlp", "data=ariel_toy", "data.calibration.steps=[adc,mask,darkk]"),
        ("data.calibration.steps[2]: unknown calibration step 'darkk'", "use one of", "'dark'"),
    ),
    "ariel-impossible-step-order": Case(
        "train",
        hc.ariel_clean("ariel_polyfit", "data.calibration.steps=[adc,cds,linearity,bin,extract]"),
        ("step 'linearity' works on individual reads but 'cds' ran before it", "put 'linearity' before 'cds'"),
    ),
    "ariel-missing-dataset": Case(
        "train", fixed("experiment=ariel_mlp"), ("ariel-data-challenge-2025 does not exist", "simulate.if_missing=true")
    ),
    "ariel-fold-count-above-planets": Case(
        "train",
        hc.ariel_clean("ariel_v50", "data.n_folds=3"),
        ("data.n_folds=3 is out of range for 2 samples", "set data.n_folds to an integer in 2..2"),
    ),
    "ariel-labels-wrong-columns": Case(
        "train",
        hc.ariel_case("ariel_v50", hc.labels_first_columns),
        ("labels file <root>/data/ariel_bad/train.csv has 100 columns", "wl_1..wl_283"),
    ),
    "ariel-labels-duplicated-planet": Case(
        "train",
        hc.ariel_case("ariel_mlp", hc.labels_duplicate_planet),
        ("<root>/data/ariel_bad/train.csv: planet_id", "appears on 2 rows", "keep one row per planet"),
    ),
    "ariel-labels-empty-file": Case(
        "train",
        hc.ariel_case("ariel_polyfit", hc.labels_empty),
        ("cannot parse labels file <root>/data/ariel_bad/train.csv", FIX),
    ),
    "ariel-signal-wrong-column-count": Case(
        "train",
        hc.ariel_case("ariel_v50", hc.signal_drop_columns),
        ("FGS1 signal file", "FGS1_signal_0.parquet has 1000 columns", "expected 1024 columns", FIX),
    ),
    "ariel-signal-wrong-dtype": Case(
        "train",
        hc.ariel_case("ariel_mlp", hc.signal_as_strings),
        ("FGS1_signal_0.parquet column '0' holds string values", "expected integers or floats", FIX),
    ),
    "ariel-signal-nan-filled": Case(
        "train",
        hc.ariel_case("ariel_polyfit", hc.signal_all_nan),
        ("FGS1 signal file", "FGS1_signal_0.parquet holds 98304 NaN", "must be finite"),
    ),
    "ariel-calibration-truncated": Case(
        "train",
        hc.ariel_case("ariel_v50", hc.calibration_truncated),
        ("cannot read FGS1 flat calibration file", "FGS1_calibration_0/flat.parquet", "restore flat.parquet"),
    ),
    "ariel-calibration-missing": Case(
        "train",
        hc.ariel_case("ariel_mlp", hc.calibration_missing),
        ("missing raw file", "FGS1_calibration_0/dark.parquet", "from the competition data"),
    ),
    # ---- train.py, video_postfilter -------------------------------------------------------------
    "video-unknown-codec": Case(
        "train", fixed(*hc.VIDEO, "data.codec.name=libx999"), ("data.codec.name='libx999'", "libx264, libx265")
    ),
    "video-crf-out-of-range": Case(
        "train", fixed(*hc.VIDEO, "data.codec.crf=99"), ("data.codec.crf=99", "[0, 51]", "set data.codec.crf")
    ),
    "video-missing-source": Case(
        "train",
        lambda ws: [*hc.VIDEO, f"data.source={ws.root / 'clips' / 'nope.mp4'}"],
        ("data.source='<root>/clips/nope.mp4': no such video file", "bundled clip name"),
    ),
    "video-source-not-a-video": Case(
        "train", hc.garbage_video, ("cannot decode <root>/clips/clip.mp4 as a video", "ffprobe")
    ),
    "video-bad-split-shares": Case(
        "train",
        fixed(*hc.VIDEO, "data.split=[0.5,0.5,0.5]"),
        ("data.split=[0.5, 0.5, 0.5]", "data.split=[0.7,0.15,0.15]"),
    ),
    # ---- a value refused before anything is written, for every config node (the run lifecycle) ---
    "refused-negative-batch-size": Case(
        "train", fixed(DIGITS, "data.batch_size=-1"), ("podium: error: data.batch_size=-1", "data.batch_size=<n>", FIX)
    ),
    "refused-nan-learning-rate": Case(
        "train", fixed(DIGITS, "model.optimizer.lr=nan"), ("podium: error: model.optimizer: ", "nan", FIX)
    ),
    "refused-callback-without-its-hook": Case(
        "train",
        fixed(DIGITS, "callbacks=[default,ariel]"),
        ("podium: error: callbacks.temperature_scaling", "GaussianPredictor", "ImageClassifier", FIX),
    ),
    "refused-unknown-model-name": Case(
        "train",
        fixed(DIGITS, "model.net.model_name=not_a_model"),
        ("podium: error: model.net.model_name='not_a_model'", "timm.list_models", FIX),
    ),
    "refused-target-not-importable": Case(
        "train",
        fixed(DIGITS, "model.net._target_=src.modules.nope.Net"),
        ("podium: error: model.net: cannot import _target_ 'src.modules.nope.Net'", "No module named", FIX),
    ),
    "refused-trainer-value": Case(
        "train",
        fixed(DIGITS, "trainer.precision=banana"),
        (
            "podium: error: trainer: ValueError: Precision 'banana' is invalid",
            "change or drop trainer.precision=banana",
        ),
    ),
    "refused-cv-negative-batch-size": Case(
        "cv", fixed(DIGITS, "data.batch_size=-1"), ("podium: error: data.batch_size=-1", FIX)
    ),
    "refused-ensemble-blend-not-importable": Case(
        "ensemble",
        lambda ws: [f"members=[{hc.member(ws)}]", "blends=[mean]", "blend_defs.mean._target_=src.ensemble.nope.Mean"],
        ("podium: error: blend_defs.mean: cannot import _target_ 'src.ensemble.nope.Mean'", FIX),
    ),
    # ---- cv.py ----------------------------------------------------------------------------------
    "cv-no-experiment": Case("cv", fixed(), ("no experiment chosen", "experiment=<name>", FIX)),
    "cv-folds-out-of-range": Case(
        "cv", fixed(DIGITS, "cv.folds=[0,7]"), ("cv.folds=[0, 7] has fold(s) [7] outside 0..4", "cv.folds=null")
    ),
    "cv-missing-data": Case(
        "cv",
        lambda ws: [DIGITS, f"data.root={ws.root / 'nowhere'}", "data.prepare=null", "logger=csv"],
        ("missing data file <root>/nowhere/train.csv", FIX),
    ),
    "cv-data-without-folds": Case(
        "cv", fixed("experiment=video_postfilter"), ("has no folds (data.n_folds)", "python train.py", FIX)
    ),
    "cv-unknown-fold-checkpoint": Case(
        "cv", fixed(DIGITS, "cv.ckpt=newest"), ("cv.ckpt='newest' is not a fold checkpoint", "cv.ckpt=last")
    ),
    # ---- ensemble.py ----------------------------------------------------------------------------
    "ensemble-no-members": Case("ensemble", fixed(), ("members is empty", "members=[outputs/<experiment>/<cv run>")),
    "ensemble-missing-member": Case(
        "ensemble", fixed("members=[members/gone]"), ("member directory <root>/members/gone does not exist", FIX)
    ),
    "ensemble-member-without-oof": Case(
        "ensemble",
        hc.member_without_oof,
        ("<root>/members/single_run holds no out-of-fold predictions", "point members at cv.py run directories"),
    ),
    "ensemble-truncated-oof": Case(
        "ensemble", hc.member_truncated_oof, ("cannot read <root>/members/cv_a/oof/oof.parquet as parquet", "cv.py")
    ),
    "ensemble-nan-oof": Case(
        "ensemble",
        hc.member_nan_probs,
        ("<root>/members/cv_a/oof/oof.parquet: sample", "NaN or inf probabilities (3 rows)", FIX),
    ),
    "ensemble-unknown-select-by": Case(
        "ensemble",
        lambda ws: [f"members=[{hc.member(ws)}]", "select_by=f1"],
        ("select_by='f1' is not a ranking metric", "['acc', 'log_loss']"),
    ),
    "ensemble-missing-train-csv": Case(
        "ensemble",
        lambda ws: [f"members=[{hc.member(ws)}]", "train_csv=data/none/train.csv"],
        ("train_csv <root>/data/none/train.csv does not exist", "train_csv=null"),
    ),
    # ---- predict.py -----------------------------------------------------------------------------
    "predict-ckpt-does-not-exist": Case(
        "predict",
        lambda ws: ["experiment=ariel_v50", "data=ariel_toy", f"ckpt={ws.root / 'ckpts' / 'nope.ckpt'}"],
        ("checkpoint ckpt=<root>/ckpts/nope.ckpt does not exist", "pass last, best or the path"),
    ),
    "predict-run-never-trained": Case(
        "predict",
        fixed("experiment=ariel_polyfit", "data=ariel_toy", "run_name=never"),
        ("no last checkpoint in <root>/outputs/ariel_polyfit/never/checkpoints", "train the run first"),
    ),
    "predict-unknown-split": Case(
        "predict",
        hc.digits_split("holdout"),
        ("split='holdout' is not a split of ImageFolderDataModule (it has: val)", "pass split=<one of val>"),
    ),
    "predict-checkpoint-of-another-experiment": Case(
        "predict",
        hc.foreign_checkpoint,
        (
            "checkpoint <root>/ckpts/postfilter.ckpt was not trained with this command's model (ImageClassifier)",
            "its hyper-parameters are another model's",
            "predict with the experiment and model overrides the checkpoint was trained with",
        ),
    ),
    "predict-torn-checkpoint": Case(
        "predict",
        hc.torn_checkpoint,
        ("checkpoint <root>/ckpts/torn.ckpt cannot be read", "pass ckpt=<another checkpoint>"),
    ),
    # ---- evaluate.py ----------------------------------------------------------------------------
    "evaluate-no-path": Case("evaluate", fixed(), ("path has no value", "pass path=<value>")),
    "evaluate-missing-artifact": Case(
        "evaluate",
        lambda ws: [f"path={ws.root / 'preds' / 'gone'}"],
        ("path=<root>/preds/gone does not exist", "point path at a predictions folder"),
    ),
    "evaluate-foreign-folder": Case(
        "evaluate",
        hc.not_a_predictions_folder,
        ("<root>/members/cv_a holds no gt_vs_pred.jsonl: it is not a predictions folder", "python predict.py"),
    ),
    "evaluate-records-without-task": Case(
        "evaluate",
        hc.records_without_task,
        ("the task of <root>/preds/val is unknown: it has no resolved_config.json", "task=<one of classification"),
    ),
    "evaluate-truncated-records-strict": Case(
        "evaluate",
        hc.truncated_records(strict=True),
        ("<root>/preds/val/gt_vs_pred.jsonl:4: invalid_json (", ': {"errors":[],"gt":{"label":0}', "strict=false"),
    ),
    "evaluate-truncated-records-counted": Case(
        "evaluate",
        hc.truncated_records(strict=False, where="outputs/digits/run/predictions"),
        ("evaluated 3 of 3 classification records", "invalid_json=1"),
        continues=True,
    ),
    "evaluate-record-of-another-task": Case(
        "evaluate",
        hc.record_of_another_task,
        (
            "<root>/preds/val/gt_vs_pred.jsonl:2: record '1234' has no pred.probs (a record of another task?)",
            "keep one task's records per file",
        ),
    ),
    "evaluate-schema-version-not-int": Case(
        "evaluate",
        hc.schema_version("1"),
        ('schema_version "1" is a str, not an int (supported schema versions: 1)', "write it as an integer"),
    ),
    "evaluate-schema-version-unsupported": Case(
        "evaluate",
        hc.schema_version(2),
        ("<root>/preds/val/resolved_config.json: schema_version 2 is not supported (supported schema versions: 1)",),
    ),
    # ---- evaluate.py, the detection evaluator -----------------------------------------------------
    "evaluate-detection-records-of-another-task": Case(
        "evaluate",
        lambda ws: [f"path={hc.predictions(ws, hc.classification_records(), None)}", "task=detection"],
        (
            "<root>/preds/val/gt_vs_pred.jsonl:1: none of the 4 records is a usable detection record "
            "(invalid_record=4)",
            "name the right task with task=<name>",
        ),
    ),
    "evaluate-detection-empty-file": Case(
        "evaluate", hc.detection_lines([]), ("<root>/preds/val/gt_vs_pred.jsonl holds no valid record", FIX)
    ),
    "evaluate-detection-negative-size-strict": Case(
        "evaluate",
        hc.detection_lines([hc.detection_record("img0"), hc.detection_record("img1", width=-100)], "strict=true"),
        (
            "<root>/preds/val/gt_vs_pred.jsonl:2: record 'img1': width=-100, expected a finite number > 0",
            "strict=false",
        ),
    ),
    "evaluate-detection-negative-size-counted": Case(
        "evaluate",
        hc.detection_lines(
            [hc.detection_record("img0"), hc.detection_record("img1", height=-1)], where="outputs/det/run/predictions"
        ),
        ("evaluated 2 of 2 detection records", "invalid_size=1"),
        continues=True,
    ),
    "evaluate-detection-box-outside-strict": Case(
        "evaluate",
        hc.detection_lines(
            [hc.detection_record("img0", pred=[{"type": "bbox_2d", "points": [120, 120, 130, 130], "score": 0.5}])],
            "strict=true",
        ),
        ("<root>/preds/val/gt_vs_pred.jsonl:1: record 'img0': pred[0]: points=[120, 120, 130, 130] lie outside",),
    ),
    "evaluate-detection-nan-geometry-strict": Case(
        "evaluate",
        hc.detection_lines(
            [
                '{"errors": [], "gt": [{"type": "bbox_2d", "points": [0, 0, NaN, 10]}], "height": 100, '
                '"pred": [], "sample_id": "nan", "split": "val", "width": 100}'
            ],
            "strict=true",
        ),
        ("<root>/preds/val/gt_vs_pred.jsonl:1: record 'nan': gt[0]: points=[0, 0, nan, 10]", "strict=false"),
    ),
    "evaluate-detection-unknown-metric-family": Case(
        "evaluate",
        hc.detection_lines([hc.detection_record("img0")], "metrics=map"),
        ("metrics='map' is not a metric family", "metrics=<one of both|coco|f1>"),
    ),
    "evaluate-detection-similarity-not-callable": Case(
        "evaluate",
        hc.detection_lines([hc.detection_record("img0")], "similarity=src.metrics.nope.similar"),
        ("similarity='src.metrics.nope.similar' does not name a callable", FIX),
    ),
    "evaluate-detection-similarity-target-missing": Case(
        "evaluate",
        hc.detection_lines([hc.detection_record("img0")], "similarity={_target_:src.metrics.nope.similar}"),
        ("podium: error: options.detection:", "src.metrics.nope.similar", FIX),
    ),
    "evaluate-detection-bad-iou-threshold": Case(
        "evaluate",
        hc.detection_lines([hc.detection_record("img0")], "iou_thresholds=[0.5,1.5]"),
        ("F1 thresholds=[0.5, 1.5]: each must be an IoU in (0, 1]", FIX),
    ),
    "evaluate-detection-unknown-coco-backend": Case(
        "evaluate",
        hc.detection_lines([hc.detection_record("img0")], "coco_backend=detectron"),
        ("backend='detectron' is not a COCO backend", "auto, pycocotools, faster_coco_eval"),
    ),
}


@pytest.fixture(scope="session")
def ariel_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 training + 1 test simulated planets with few reads (read-only: cases copy it)."""
    return simulate_dataset(
        tmp_path_factory.mktemp("hostile_ariel") / "tiny", planets=2, seed=3, test_planets=1, cfg=TINY
    )


@pytest.fixture
def run(root: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> Callable[..., EntryResult]:
    """Run an entry point in-process, rooted at the test's root."""

    def _run(entry: str, overrides: list[str]) -> EntryResult:
        return run_entry_point(entry, [*overrides, "extras.print_config=false"], root, monkeypatch, capfd)

    return _run


def outputs_files(root: Path) -> list[Path]:
    outputs = root / "outputs"
    return sorted(p for p in outputs.rglob("*") if p.is_file()) if outputs.exists() else []


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_rejected_cleanly(name: str, root: Path, run, request: pytest.FixtureRequest) -> None:
    case = CASES[name]
    workspace = hc.Workspace(root, lambda: request.getfixturevalue("ariel_tiny"))
    result = run(case.entry, case.build(workspace))

    output = result.output
    for fragment in case.expected:
        fragment = fragment.replace("<root>", str(root))
        assert fragment in output, f"{name}: {fragment!r} not in:\n{output[-3000:]}"
    assert "Traceback" not in result.err, result.err[-4000:]
    finished = list((root / "outputs").rglob("metrics.json"))
    if case.continues:
        assert result.code == 0 and len(finished) == 1, f"{name}: exit {result.code}:\n{output[-3000:]}"
        return
    assert result.code != 0, f"{name}: exited 0:\n{output[-3000:]}"
    assert not finished, f"{name}: a run was marked finished"
    assert not outputs_files(root), f"{name}: stray files {outputs_files(root)}"


def test_quarantined_image_is_dropped_and_the_run_continues(tmp_path: Path, caplog) -> None:
    """``bad_images=quarantine``: setup succeeds, the image is in no split, the folds file is unchanged."""
    root = make_fruit_set(tmp_path / "fruits")
    clean = fruit_dm(root)
    clean.setup("fit")
    folds_files = {p.name: p.read_bytes() for p in root.glob("folds_*.csv")}
    bad = root / "train" / "fruit03" / "fruit03_2.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a torn download: the header parses, the pixels do not

    dm = fruit_dm(root, bad_images="quarantine")
    with caplog.at_level(logging.WARNING, logger="podium"):
        dm.prepare_data()
        dm.setup("fit")
    assert "fruit03/fruit03_2.jpg" in caplog.text and "quarantine" in caplog.text
    kept = set(dm.train_set.sample_ids) | set(dm.val_set.sample_ids)
    assert "fruit03_2" not in kept and len(kept) == 89
    assert set(dm.train_set.sample_ids) == set(clean.train_set.sample_ids) - {"fruit03_2"}
    assert set(dm.val_set.sample_ids) == set(clean.val_set.sample_ids) - {"fruit03_2"}
    assert {p.name: p.read_bytes() for p in root.glob("folds_*.csv")} == folds_files
    assert len(dm.test_set) == 5
    batch = next(iter(dm.train_dataloader()))  # the run goes on: every remaining image loads
    assert batch["image"].shape[1:] == (3, 16, 16)


def test_decode_verdicts_are_cached_until_a_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Later setups skip decoding unchanged files; a rewritten file is decoded again."""
    from src.datamodules import integrity

    root = make_fruit_set(tmp_path / "fruits", with_test=False)
    fruit_dm(root).prepare_data()
    assert (root / integrity.CHECK_CACHE_NAME).is_file()
    calls: list[Path] = []
    real = integrity.decodes
    monkeypatch.setattr(integrity, "decodes", lambda p: calls.append(p) or real(p))
    fruit_dm(root).prepare_data()
    assert calls == []
    changed = root / "train" / "fruit00" / "fruit00_0.jpg"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))
    fruit_dm(root).prepare_data()
    assert calls == [changed]


def _process_state() -> tuple:
    root_logger = logging.getLogger()
    return list(root_logger.handlers), root_logger.level, os.getcwd(), list(warnings.filters), dict(os.environ)


def test_harness_restores_process_state(run, root: Path) -> None:
    """A command run in-process leaves logging, Hydra, cwd, warning filters and env as they were."""
    before, hydra_was_set = _process_state(), HydraConfig.initialized()  # set by an earlier compose_cfg
    result = run("train", ["experiment=digits", "data.fold=9"])
    assert result.code == 2 and "data.fold=9" in result.err
    assert _process_state() == before
    assert HydraConfig.initialized() == hydra_was_set
    run_logs = [h for h in logging.getLogger().handlers if str(root) in getattr(h, "baseFilename", "")]
    assert not run_logs  # Hydra's per-run log file is closed and detached
