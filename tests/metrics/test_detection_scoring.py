"""The detection evaluator (src/metrics/detection_scoring.py) as ``evaluate.py`` runs it.

Hand-computed F1 and COCO tables of a two-image artifact and the files of ``eval/``, the metric
families, the counters of everything the evaluator cannot use, unscored predictions, strict mode,
label similarity and bad input. ``evaluate.py`` runs in-process (tests/entry_harness.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from src.core.artifacts import RecordError, json_line
from src.core.errors import ConfigError, DataError
from src.core.evaluating import Evaluation, evaluate
from src.metrics.detection_coco import BACKENDS
from src.metrics.detection_scoring import resolve_similarity, score_records, word_overlap
from tests.conftest import CONFIG_DIR
from tests.entry_harness import EntryResult, run_entry_point
from tests.hostile_cases import classification_records

RECORDS = "gt_vs_pred.jsonl"


def _box(points: list[Any], desc: str, score: Any = None, kind: str = "bbox_2d") -> dict[str, Any]:
    box: dict[str, Any] = {"type": kind, "points": points, "desc": desc}
    if score is not None:
        box["score"] = score
    return box


def _record(sample_id: str, gt: list[dict] | None, pred: list[dict], **extra: Any) -> dict[str, Any]:
    """A labelled 100x100 detection record of the artifact contract."""
    return {"sample_id": sample_id, "split": "val", "width": 100, "height": 100, "gt": gt, "pred": pred,
            "errors": [], **extra}  # fmt: skip


def write_lines(folder: Path, rows: list[dict | str]) -> Path:
    """``<folder>/gt_vs_pred.jsonl``: dicts as JSON lines (NaN as the bare token), strings as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join((row if isinstance(row, str) else json.dumps(row, sort_keys=True)) + "\n" for row in rows)
    (folder / RECORDS).write_text(text)
    return folder


def eval_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "eval").iterdir())}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def staging_left(folder: Path) -> list[Path]:
    return sorted(folder.glob(".eval*"))


@pytest.fixture
def run(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> Callable[..., EntryResult]:
    """``python evaluate.py task=detection log_mlflow=false <overrides>`` in this process."""

    def _run(*overrides: str) -> EntryResult:
        return run_entry_point(
            "evaluate", ["task=detection", "log_mlflow=false", *overrides], tmp_path, monkeypatch, capfd
        )

    return _run


def compose_evaluate(*overrides: str) -> DictConfig:
    """configs/evaluate.yaml composed with ``overrides`` (no command-line type checks)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(config_name="evaluate", overrides=["task=detection", "log_mlflow=false", *overrides])


# ---- the hand-computed artifact ---------------------------------------------------------------------
#
# Two 100x100 images, every box small for COCO (area < 32² = 1024).
# Image "a": gt A0 cat [0,0,10,10], A1 dog [20,0,30,10], A2 cat [70,0,80,10];
#            pred p0 cat [0,0,10,10] 0.9 (IoU 1 with A0), p1 dog [20,0,30,4] 0.8 (IoU 40/100 = 0.4 with A1).
# Image "b": gt B0 cat [0,0,10,10], B1 dog [40,40,60,60];
#            pred q0 dog [0,0,10,8] 0.7 (IoU 80/100 = 0.8 with B0, labels differ),
#                 q1 dog [44,40,64,60] 0.95 (IoU 320 / (400 + 400 - 320) = 2/3 with B1),
#                 q2 cat [80,80,90,90] 0.3 (overlaps nothing; below f1_min_score = 0.5, so COCO only).
HAND = [
    _record(
        "a",
        gt=[_box([0, 0, 10, 10], "cat"), _box([20, 0, 30, 10], "dog"), _box([70, 0, 80, 10], "cat")],
        pred=[_box([0, 0, 10, 10], "cat", 0.9), _box([20, 0, 30, 4], "dog", 0.8)],
    ),
    _record(
        "b",
        gt=[_box([0, 0, 10, 10], "cat"), _box([40, 40, 60, 60], "dog")],
        pred=[_box([0, 0, 10, 8], "dog", 0.7), _box([44, 40, 64, 60], "dog", 0.95), _box([80, 80, 90, 90], "cat", 0.3)],
    ),
]
# F1 (q2 left out). Greedy one-to-one matching by IoU, labels ignored (localisation); a matched pair whose
# labels agree is a TP of "full", else one FP and one FN.
#   a @0.3: p0-A0, p1-A1 (both agree): loc = full = tp2 fp0 fn1 (P 1, R 2/3, F1 0.8)
#   a @0.5: p0-A0 only:                loc = full = tp1 fp1 fn2 (P 1/2, R 1/3, F1 0.4)
#   b @0.3 and @0.5: q0-B0 (cat vs dog), q1-B1 (agree): loc tp2 fp0 fn0 (1, 1, 1), full tp1 fp1 fn1 (1/2 each)
# micro sums the counts, macro averages the per-image P, R, F1:
#   @0.3 loc  tp4 fp0 fn1: P 1,   R 4/5, F1 8/9;  macro P (1 + 1)/2 = 1,       R (2/3 + 1)/2 = 5/6,   F1 0.9
#   @0.3 full tp3 fp1 fn2: P 3/4, R 3/5, F1 2/3;  macro P (1 + 1/2)/2 = 3/4,   R (2/3 + 1/2)/2 = 7/12, F1 0.65
#   @0.5 loc  tp3 fp1 fn2: P 3/4, R 3/5, F1 2/3;  macro P (1/2 + 1)/2 = 3/4,   R (1/3 + 1)/2 = 2/3,   F1 0.7
#   @0.5 full tp2 fp2 fn3: P 1/2, R 2/5, F1 4/9;  macro P (1/2 + 1/2)/2 = 1/2, R (1/3 + 1/2)/2 = 5/12, F1 0.45
HAND_F1 = {
    "iou_0.3": {
        "localisation": {
            "micro": {"tp": 4, "fp": 0, "fn": 1, "precision": 1.0, "recall": 4 / 5, "f1": 8 / 9},
            "macro": {"precision": 1.0, "recall": 5 / 6, "f1": 0.9},
        },
        "full": {
            "micro": {"tp": 3, "fp": 1, "fn": 2, "precision": 3 / 4, "recall": 3 / 5, "f1": 2 / 3},
            "macro": {"precision": 3 / 4, "recall": 7 / 12, "f1": 0.65},
        },
    },
    "iou_0.5": {
        "localisation": {
            "micro": {"tp": 3, "fp": 1, "fn": 2, "precision": 3 / 4, "recall": 3 / 5, "f1": 2 / 3},
            "macro": {"precision": 3 / 4, "recall": 2 / 3, "f1": 0.7},
        },
        "full": {
            "micro": {"tp": 2, "fp": 2, "fn": 3, "precision": 1 / 2, "recall": 2 / 5, "f1": 4 / 9},
            "macro": {"precision": 1 / 2, "recall": 5 / 12, "f1": 0.45},
        },
    },
}
# COCO bbox (all predictions; categories cat = 1, dog = 2). AP at one IoU threshold: predictions ranked by
# score, precision made non-increasing from the right, averaged over the 101 recall points 0, 0.01, ..., 1
# (0 past the last recall reached).
#   cat, 3 gt: p0 TP (0.9), q2 FP (0.3) at every threshold: rc [1/3, 1/3], pr [1, 1/2]: the 34 recall points
#       r <= 0.33 get precision 1: AP = AP50 = AP75 = 34/101.
#   dog, 2 gt: q1 (0.95), p1 (0.8, IoU 0.4: never a TP), q0 (0.7, overlaps no dog). At the thresholds
#       0.50, 0.55, 0.60, 0.65 (<= 2/3) q1 is a TP: rc [1/2, 1/2, 1/2], pr [1, 1/2, 1/3]: 51 points r <= 0.5
#       at precision 1: AP 51/101; at 0.70..0.95 nothing matches: 0. AP = 4/10 * 51/101 = 102/505,
#       AP50 = 51/101, AP75 = 0.
#   bbox/AP = (34/101 + 102/505)/2 = 136/505, AP50 = (34/101 + 51/101)/2 = 85/202, AP75 = (34/101)/2 = 17/101.
# Every gt is small: APs = AP, APm and APl have no gt (NaN, written as null).
# Recall (AR100 = AR10 = AR1, one TP per image and class at most): cat 1/3 at every threshold, dog 1/2 at 4
# of 10 thresholds = 1/5: (1/3 + 1/5)/2 = 4/15.
CAT_AP, DOG_AP, DOG_AP50 = 34 / 101, 102 / 505, 51 / 101
HAND_COCO = {
    "bbox/AP": 136 / 505,
    "bbox/AP50": 85 / 202,
    "bbox/AP75": 17 / 101,
    "bbox/APs": 136 / 505,
    "bbox/AR1": 4 / 15,
    "bbox/AR10": 4 / 15,
    "bbox/AR100": 4 / 15,
    "bbox/ARs": 4 / 15,
}
HAND_PER_CLASS = [
    {"category": "cat", "AP": CAT_AP, "AP50": CAT_AP, "AP75": CAT_AP, "gt": 3, "pred": 2},
    {"category": "dog", "AP": DOG_AP, "AP50": DOG_AP50, "AP75": 0.0, "gt": 2, "pred": 3},
]
PARSE_COUNTERS = (
    "invalid_record",
    "missing_size",
    "invalid_size",
    "size_mismatch",
    "invalid_geometry",
    "invalid_score",
    "unscored_predictions",
    "boxes_clipped",
    "boxes_outside",
    "empty_predictions",
)
COCO_COUNTERS = ("unknown_labels", "unknown_gt_labels", "scored_as_one")
COCO_FILES = {"coco_gt.json", "coco_preds.json", "per_class_ap.json"}
F1_FILES = {"f1.json", "matches.jsonl"}
SPINE_FILES = {"metrics.json", "per_sample.jsonl"}


def flat_f1(table: dict[str, Any]) -> dict[str, float]:
    """``metrics.json``'s F1 keys of a nested table: ``f1/<threshold>/<kind>/<avg>_<stat>``."""
    return {
        f"f1/{key}/{kind}/{avg}_{stat}": value
        for key, kinds in table.items()
        for kind, avgs in kinds.items()
        for avg, stats in avgs.items()
        for stat, value in stats.items()
    }


def test_hand_computed_artifact_through_evaluate_py(tmp_path: Path, run) -> None:
    folder = write_lines(tmp_path / "val", HAND)
    result = run(f"path={folder}")
    assert result.code == 0, result.output[-3000:]
    assert set(eval_files(folder)) == SPINE_FILES | COCO_FILES | F1_FILES
    written = json.loads((folder / "eval" / "metrics.json").read_text())

    metrics = written["metrics"]
    for key, value in {**flat_f1(HAND_F1), **HAND_COCO}.items():
        assert metrics[key] == pytest.approx(value, abs=1e-8), key
    assert metrics["bbox/APm"] is None and metrics["bbox/APl"] is None  # NaN: no medium or large gt
    assert {k.split("/")[0] for k in metrics} == {"bbox", "f1"}  # no segm: no polygon gt
    assert written["counters"] == {
        "records": 2, "labelled": 2, "unlabelled": 0, "with_errors": 0, "scored": 2, "records_used": 2,
        **dict.fromkeys(PARSE_COUNTERS, 0), **dict.fromkeys(COCO_COUNTERS, 0),
    }  # fmt: skip
    assert "notes" not in written

    per_class = json.loads((folder / "eval" / "per_class_ap.json").read_text())
    assert list(per_class) == ["bbox"]
    for got, expected in zip(per_class["bbox"], HAND_PER_CLASS, strict=True):
        assert got == pytest.approx(expected, abs=1e-8)

    f1 = json.loads((folder / "eval" / "f1.json").read_text())
    assert f1["thresholds"] == ["iou_0.3", "iou_0.5"] and f1["min_score"] == 0.5
    assert flat_f1(f1["metrics"]) == pytest.approx(flat_f1(HAND_F1), abs=1e-8)

    # Indices are positions in the record's gt / pred lists; q2 (below f1_min_score) is in no F1 list.
    b_matches = {"matched": [{"pred": 0, "gt": 0, "iou": 0.8, "labels_agree": False},
                             {"pred": 1, "gt": 1, "iou": pytest.approx(2 / 3), "labels_agree": True}],
                 "unmatched_pred": [], "unmatched_gt": []}  # fmt: skip
    assert jsonl(folder / "eval" / "matches.jsonl") == [
        {"record": 0, "sample_id": "a",
         "iou_0.3": {"matched": [{"pred": 0, "gt": 0, "iou": 1.0, "labels_agree": True},
                                 {"pred": 1, "gt": 1, "iou": 0.4, "labels_agree": True}],
                     "unmatched_pred": [], "unmatched_gt": [2]},
         "iou_0.5": {"matched": [{"pred": 0, "gt": 0, "iou": 1.0, "labels_agree": True}],
                     "unmatched_pred": [1], "unmatched_gt": [1, 2]}},
        {"record": 1, "sample_id": "b", "iou_0.3": b_matches, "iou_0.5": b_matches},
    ]  # fmt: skip
    # One row per image: its box counts (pred_f1: those scored >= f1_min_score, b's third is 0.3) and
    # the full counts with their F1 at each threshold.
    assert jsonl(folder / "eval" / "per_sample.jsonl") == [
        {"sample_id": "a", "gt": 3, "pred": 2, "pred_f1": 2,
         "iou_0.3": {"tp": 2, "fp": 0, "fn": 1, "f1": pytest.approx(0.8)},
         "iou_0.5": {"tp": 1, "fp": 1, "fn": 2, "f1": pytest.approx(0.4)}},
        {"sample_id": "b", "gt": 2, "pred": 3, "pred_f1": 2,
         "iou_0.3": {"tp": 1, "fp": 1, "fn": 1, "f1": 0.5},
         "iou_0.5": {"tp": 1, "fp": 1, "fn": 1, "f1": 0.5}},
    ]  # fmt: skip

    # COCO files: what pycocotools' COCO(gt).loadRes(preds) reads, boxes as [x, y, w, h].
    gt = json.loads((folder / "eval" / "coco_gt.json").read_text())
    assert gt["images"] == [{"id": 1, "file_name": "a", "width": 100, "height": 100},
                            {"id": 2, "file_name": "b", "width": 100, "height": 100}]  # fmt: skip
    assert gt["categories"] == [{"id": 1, "name": "cat", "supercategory": ""},
                                {"id": 2, "name": "dog", "supercategory": ""}]  # fmt: skip
    assert [(a["id"], a["image_id"], a["category_id"], a["bbox"], a["area"]) for a in gt["annotations"]] == [
        (1, 1, 1, [0, 0, 10, 10], 100), (2, 1, 2, [20, 0, 10, 10], 100), (3, 1, 1, [70, 0, 10, 10], 100),
        (4, 2, 1, [0, 0, 10, 10], 100), (5, 2, 2, [40, 40, 20, 20], 400),
    ]  # fmt: skip
    preds = json.loads((folder / "eval" / "coco_preds.json").read_text())
    assert [(d["image_id"], d["category_id"], d["bbox"], d["score"]) for d in preds] == [
        (1, 1, [0, 0, 10, 10], 0.9), (1, 2, [20, 0, 10, 4], 0.8),
        (2, 2, [0, 0, 10, 8], 0.7), (2, 2, [44, 40, 20, 20], 0.95), (2, 1, [80, 80, 10, 10], 0.3),
    ]  # fmt: skip

    printed = [" ".join(line.split()) for line in result.out.splitlines()]
    assert f"podium: evaluated 2 of 2 detection records in {folder}" in printed
    assert "COCO bbox (faster_coco_eval): AP 0.269 AP50 0.421 AP75 0.168 APs 0.269 APm n/a APl n/a" in printed
    assert "cat 0.337 0.337 0.337 3 2" in printed and "dog 0.202 0.505 0.000 2 3" in printed
    assert "localisation micro 1.000 0.800 0.889 0.750 0.600 0.667" in printed
    assert "full macro 0.750 0.583 0.650 0.500 0.417 0.450" in printed
    assert f"written: {folder / 'eval' / 'metrics.json'}" in printed
    assert not staging_left(folder)


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_coco_backends_give_the_hand_computed_table(backend: str) -> None:
    evaluation = score_records(HAND, metrics="coco", backend=backend)
    assert evaluation.report.startswith(f"  COCO bbox ({backend}):")
    for key, value in HAND_COCO.items():
        assert evaluation.metrics[key] == pytest.approx(value, abs=1e-12), key
    for got, expected in zip(evaluation.files["per_class_ap.json"]["bbox"], HAND_PER_CLASS, strict=True):
        assert got == pytest.approx(expected, abs=1e-12)


def test_headline_metrics_come_first() -> None:
    keys = list(score_records(HAND).metrics)
    assert keys[:5] == ["bbox/AP", "bbox/AP50", "bbox/AP75", "f1/iou_0.3/full/micro_f1", "f1/iou_0.5/full/micro_f1"]


def test_metric_families(tmp_path: Path, run) -> None:
    coco = write_lines(tmp_path / "coco", HAND)
    assert run(f"path={coco}", "metrics=coco").code == 0
    assert set(eval_files(coco)) == SPINE_FILES | COCO_FILES
    written = json.loads((coco / "eval" / "metrics.json").read_text())
    assert all(k.startswith("bbox/") for k in written["metrics"])
    assert written["metrics"]["bbox/AP"] == pytest.approx(136 / 505, abs=1e-8)
    assert jsonl(coco / "eval" / "per_sample.jsonl") == [{"sample_id": "a", "gt": 3, "pred": 2},
                                                         {"sample_id": "b", "gt": 2, "pred": 3}]  # fmt: skip

    # metrics=f1 needs no scores: the same images with every score removed.
    unscored = [{**r, "pred": [{k: v for k, v in b.items() if k != "score"} for b in r["pred"]]} for r in HAND]
    f1 = write_lines(tmp_path / "f1", unscored)
    result = run(f"path={f1}", "metrics=f1")
    assert result.code == 0, result.output[-3000:]
    assert set(eval_files(f1)) == SPINE_FILES | F1_FILES
    written = json.loads((f1 / "eval" / "metrics.json").read_text())
    assert all(k.startswith("f1/") for k in written["metrics"])
    assert "notes" not in written and "scored_as_one" not in written["counters"]
    assert written["counters"]["unscored_predictions"] == 5
    # Unscored predictions pass f1_min_score, so q2 is now a FP of image b: @0.3 full tp3 fp2 fn2 ->
    # P 3/5, R 3/5, F1 3/5; @0.3 localisation tp4 fp1 fn1 -> 4/5 each.
    assert written["metrics"]["f1/iou_0.3/full/micro_f1"] == pytest.approx(3 / 5)
    assert written["metrics"]["f1/iou_0.3/localisation/micro_precision"] == pytest.approx(4 / 5)


def test_f1_thresholds_and_min_score_are_options(tmp_path: Path, run) -> None:
    folder = write_lines(tmp_path / "val", HAND)
    result = run(f"path={folder}", "metrics=f1", "iou_thresholds=[0.7]", "f1_min_score=null")
    assert result.code == 0, result.output[-3000:]
    f1 = json.loads((folder / "eval" / "f1.json").read_text())
    assert f1["thresholds"] == ["iou_0.7"] and f1["min_score"] is None
    # @0.7, every prediction: a p0-A0 (tp1 fp1 fn2); b q0-B0 only (2/3 < 0.7), labels differ: full tp0 fp3 fn2,
    # localisation tp1 fp2 fn1. Full micro tp1 fp4 fn4: F1 = 2 * (1/5) * (1/5) / (2/5) = 1/5.
    assert f1["metrics"]["iou_0.7"]["full"]["micro"] == pytest.approx(
        {"tp": 1, "fp": 4, "fn": 4, "precision": 1 / 5, "recall": 1 / 5, "f1": 1 / 5}
    )
    assert f1["metrics"]["iou_0.7"]["localisation"]["micro"]["tp"] == 2


# ---- counters -----------------------------------------------------------------------------------------

GOOD = _record("ok", gt=[_box([0, 0, 10, 10], "cat")], pred=[_box([0, 0, 10, 10], "cat", 0.9)])


def _with(sample_id: str, **changes: Any) -> dict[str, Any]:
    return {**GOOD, "sample_id": sample_id, **changes}


def _without(sample_id: str, key: str) -> dict[str, Any]:
    return {k: v for k, v in _with(sample_id).items() if k != key}


def _pred(*points: Any, score: Any = 0.9, desc: str = "cat", kind: str = "bbox_2d") -> list[dict[str, Any]]:
    return [_box(list(points), desc, score, kind)]


# One line per problem; the comment says what each is counted as.
COUNTED_LINES: list[dict | str] = [
    GOOD,
    "{broken",  # invalid_json (the reader)
    _with("geom", pred=[_box([0, 0, 10], "cat", 0.9),  # invalid_geometry: 3 points
                        _box([10, 0, 5, 10], "cat", 0.9),  # invalid_geometry: x2 < x1
                        _box([0, 0, "NaN", 10], "cat", 0.9),  # invalid_geometry: NaN as a string
                        _box([0, 0, None, 10], "cat", 0.9)]),  # invalid_geometry: NaN written as null
    _without("nosize", "width"),  # missing_size
    _with("mismatch", pred_size=[200, 200]),  # size_mismatch
    _with("empty", pred=[]),  # empty_predictions
    _with("unknown", pred=_pred(0, 0, 10, 10, desc="zebra")),  # unknown_labels (no zebra gt)
    _with("clipped", gt=[_box([90, 90, 110, 110], "cat")], pred=_pred(120, 120, 130, 130)),  # clipped, outside
    _with("unscored", pred=_pred(0, 0, 10, 10, score=None)),  # unscored_predictions (scored_as_one)
    _with("negative", width=-100),  # invalid_size
    _with("nanscore", pred=_pred(0, 0, 10, 10, score=math.nan)),  # invalid_score (the bare NaN token)
    _with("unlabelled", gt=None),  # unlabelled: not scored
    _with("failed", errors=["nonfinite_pred"]),  # with_errors: not scored
]  # fmt: skip


def test_every_unusable_thing_is_counted(tmp_path: Path, run) -> None:
    folder = write_lines(tmp_path / "val", COUNTED_LINES)
    assert "NaN" in (folder / RECORDS).read_text().splitlines()[10]
    result = run(f"path={folder}", "allow_unscored=true")
    assert result.code == 0, result.output[-3000:]
    written = json.loads((folder / "eval" / "metrics.json").read_text())
    # 12 records (the broken line is none); 10 labelled without error codes are scored; 7 of them usable
    # (nosize, mismatch and negative are skipped whole).
    assert written["counters"] == {
        "records": 12, "labelled": 11, "unlabelled": 1, "with_errors": 1, "scored": 10, "invalid_json": 1,
        "records_used": 7, "invalid_record": 0, "missing_size": 1, "invalid_size": 1, "size_mismatch": 1,
        "invalid_geometry": 4, "invalid_score": 1, "unscored_predictions": 1, "boxes_clipped": 1, "boxes_outside": 1,
        "empty_predictions": 1, "unknown_labels": 1, "unknown_gt_labels": 0, "scored_as_one": 1,
    }  # fmt: skip
    assert [row["sample_id"] for row in jsonl(folder / "eval" / "per_sample.jsonl")] == [
        "ok", "geom", "empty", "unknown", "clipped", "unscored", "nanscore"
    ]  # fmt: skip
    assert "invalid_geometry=4" in result.out and "boxes_outside=1" in result.out and "invalid_json=1" in result.out
    notes = written["notes"]
    assert len(notes) == 2 and notes[0].startswith("allow_unscored=true: 1 predictions without score were scored")
    assert notes[1].startswith("1 predictions name no category (cat)")
    for note in notes:
        assert f"note: {note}" in result.out


# (record, counter, what strict mode says after "record '<id>': ")
PROBLEMS: dict[str, tuple[dict[str, Any], str, str]] = {
    "wrong-point-count": (_with("p", pred=_pred(0, 0, 10)), "invalid_geometry",
                          "pred[0]: points has 3 values, bbox_2d needs 4"),
    "x2-below-x1": (_with("p", pred=_pred(10, 0, 5, 10)), "invalid_geometry",
                    "pred[0]: points=[10, 0, 5, 10] has x2 < x1 or y2 < y1"),
    "nan-as-string": (_with("p", pred=_pred(0, 0, "NaN", 10)), "invalid_geometry",
                      "pred[0]: points=[0, 0, 'NaN', 10], expected a list of finite numbers"),
    "nan-as-null": (_with("p", pred=_pred(0, 0, None, 10)), "invalid_geometry",
                    "pred[0]: points=[0, 0, None, 10], expected a list of finite numbers"),
    "nan-token": (_with("p", gt=[_box([0, 0, math.nan, 10], "cat")]), "invalid_geometry",
                  "gt[0]: points=[0, 0, nan, 10], expected a list of finite numbers"),
    "unknown-box-type": (_with("p", pred=_pred(5, 5, 3, kind="circle")), "invalid_geometry",
                         "pred[0]: type='circle', expected one of ('bbox_2d', 'poly')"),
    "two-vertex-poly": (_with("p", pred=_pred(0, 0, 10, 10, kind="poly")), "invalid_geometry",
                        "pred[0]: points has 4 values, poly needs an even count >= 6"),
    "missing-size": (_without("p", "height"), "missing_size", "height is missing, expected the image size in pixels"),
    "negative-size": (_with("p", width=-100), "invalid_size", "width=-100, expected a finite number > 0"),
    "string-size": (_with("p", height="100"), "invalid_size", "height='100', expected a finite number > 0"),
    "size-mismatch": (_with("p", pred_size=[200, 100]), "size_mismatch",
                      "pred_size=[200, 100] differs from width x height = 100x100"),
    "box-outside": (_with("p", pred=_pred(120, 120, 130, 130)), "boxes_outside",
                    "pred[0]: points=[120, 120, 130, 130] lie outside the 100x100 image"),
    "box-clipped": (_with("p", gt=[_box([-5, 90, 10, 110], "cat")]), "boxes_clipped",
                    "gt[0]: points=[-5, 90, 10, 110] extend outside the 100x100 image"),
    "nan-score": (_with("p", pred=_pred(0, 0, 10, 10, score=math.nan)), "invalid_score",
                  "pred[0]: score=nan, expected a finite number or no score"),
    "string-score": (_with("p", pred=_pred(0, 0, 10, 10, score="high")), "invalid_score",
                     "pred[0]: score='high', expected a finite number or no score"),
    "classification-record": (classification_records(1)[0] | {"sample_id": "p"}, "invalid_record",
                              "gt={'label': 0}, expected a list of boxes"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_each_problem_is_counted_or_stops_strict_mode(name: str) -> None:
    record, counter, what = PROBLEMS[name]
    evaluation = score_records([GOOD, record], metrics="f1")
    assert evaluation.counters[counter] == 1
    assert sum(evaluation.counters[c] for c in PARSE_COUNTERS) == 1, evaluation.counters
    with pytest.raises(RecordError) as info:
        score_records([GOOD, record], metrics="f1", strict=True)
    assert info.value.index == 1
    assert info.value.what.startswith(f"record 'p': {what}"), info.value.what
    assert "strict=false" in info.value.fix


def test_strict_mode_scores_empty_and_unscored_predictions() -> None:
    """Neither is a defect of the file: an image where nothing was found, a tool that writes no scores."""
    records = [GOOD, _with("empty", pred=[]), _with("unscored", pred=_pred(0, 0, 10, 10, score=None))]
    evaluation = score_records(records, allow_unscored=True, strict=True)
    assert evaluation.counters["empty_predictions"] == 1 and evaluation.counters["unscored_predictions"] == 1
    # cat: 3 gt, two TPs tied at 0.9 / 1.0 (IoU 1): rc reaches 2/3 at precision 1 -> 67 of 101 points.
    assert evaluation.metrics["bbox/AP"] == pytest.approx(67 / 101)
    assert evaluation.metrics["f1/iou_0.5/full/micro_recall"] == pytest.approx(2 / 3)


def test_categories_decide_unknown_labels() -> None:
    records = [_record("a", gt=[_box([0, 0, 10, 10], "cat"), _box([20, 20, 30, 30], "bird")],
                       pred=[_box([0, 0, 10, 10], "Cat", 0.9), _box([20, 20, 30, 30], "bird", 0.8)])]  # fmt: skip
    derived = score_records(records, metrics="coco")
    assert derived.counters["unknown_labels"] == 0 and derived.metrics["bbox/AP"] == pytest.approx(1.0)
    named = score_records(records, metrics="coco", categories=["cat", "dog"])
    assert named.counters["unknown_labels"] == 1 and named.counters["unknown_gt_labels"] == 1
    assert [row["category"] for row in named.files["per_class_ap.json"]["bbox"]] == ["cat", "dog"]
    assert named.notes == [
        "1 predictions name no category (cat, dog) and are left out of COCO AP; F1 counts them as label mismatches"
    ]


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"allow_unscored='yes' is not a boolean"):
        score_records(HAND, allow_unscored="yes")
    with pytest.raises(ConfigError, match=r"f1_min_score=True is not a number"):
        score_records(HAND, f1_min_score=True)
    with pytest.raises(ConfigError, match=r"backend='detectron' is not a COCO backend"):
        score_records(HAND, metrics="coco", backend="detectron")


# ---- unscored predictions ----------------------------------------------------------------------------

# Two images, one cat each, both found exactly (IoU 1); the second prediction has no score.
UNSCORED = [GOOD, _with("u", pred=_pred(0, 0, 10, 10, score=None))]


def test_unscored_predictions_are_refused_naming_the_fix(tmp_path: Path, run) -> None:
    folder = write_lines(tmp_path / "val", UNSCORED)
    result = run(f"path={folder}")
    assert result.code == 2 and "Traceback" not in result.err
    assert "podium: error: 1 prediction(s) have no score: COCO AP ranks predictions by score" in result.err
    assert "fix: pass allow_unscored=true to score them as 1.0 for COCO, or metrics=f1" in result.err
    assert not (folder / "eval").exists() and not staging_left(folder)


def test_allow_unscored_scores_them_as_one_and_says_so(tmp_path: Path, run) -> None:
    folder = write_lines(tmp_path / "val", UNSCORED)
    result = run(f"path={folder}", "allow_unscored=true")
    assert result.code == 0, result.output[-3000:]
    written = json.loads((folder / "eval" / "metrics.json").read_text())
    note = (
        "allow_unscored=true: 1 predictions without score were scored as 1.0 for COCO AP (their order among "
        "themselves is arbitrary)"
    )
    assert written["notes"] == [note] and f"  note: {note}" in result.out
    assert written["counters"]["scored_as_one"] == 1 and written["counters"]["unscored_predictions"] == 1
    # Both predictions are TPs (IoU 1) of the two cats: AP 1 at every threshold.
    assert written["metrics"]["bbox/AP"] == pytest.approx(1.0)
    preds = json.loads((folder / "eval" / "coco_preds.json").read_text())
    assert [d["score"] for d in preds] == [0.9, 1.0]


# ---- strict mode --------------------------------------------------------------------------------------


def test_strict_stops_at_the_first_problem_naming_path_line_and_snippet(tmp_path: Path, run) -> None:
    lines: list[dict | str] = [GOOD, _with("unlabelled", gt=None), _with("bad", width=100, pred=_pred(10, 0, 5, 10)),
                               _with("outside", pred=_pred(120, 120, 130, 130))]  # fmt: skip
    folder = write_lines(tmp_path / "val", lines)
    text = (folder / RECORDS).read_text().splitlines()[2]
    result = run(f"path={folder}", "strict=true")
    assert result.code == 2 and "Traceback" not in result.err
    # Line 3 (the unlabelled line 2 is not scored, so the record is the scorer's second).
    assert (
        f"podium: error: {folder / RECORDS}:3: record 'bad': pred[0]: points=[10, 0, 5, 10] has x2 < x1 or y2 < y1: "
        f"{text[:80]}..." in result.err
    )
    assert "fix: repair the record, or pass strict=false" in result.err
    assert not (folder / "eval").exists() and not staging_left(folder)

    counted = run(f"path={folder}")
    assert counted.code == 0 and "invalid_geometry=1" in counted.out and "boxes_outside=1" in counted.out


def test_strict_stops_at_a_malformed_line_before_scoring(tmp_path: Path, run) -> None:
    folder = write_lines(tmp_path / "val", [GOOD, '{"sample_id": "x", "gt": [', _with("bad", width=-1)])
    result = run(f"path={folder}", "strict=true")
    assert result.code == 2
    assert f"{folder / RECORDS}:2: invalid_json (" in result.err and ': {"sample_id": "x", "gt": [' in result.err
    assert not (folder / "eval").exists()


# ---- label similarity ---------------------------------------------------------------------------------


def labels_always_agree(pred_desc: str, gt_desc: str) -> bool:
    """A label similarity for the tests: every label agrees with every other."""
    return True


# Four exact localisations (IoU 1); label agreement decides the full counts.
#   "car" vs "red car":         exact no, word overlap 1/2
#   "small cat" vs "big dog":   exact no, word overlap 0
#   "Red  Bus" vs "a red bus":  exact no (normalised "red bus" != "a red bus"), word overlap 2/3
#   " TRUCK " vs "truck":       exact yes, word overlap 1
# Full micro TP at 0.5: exact 1; word_overlap(0.5) 3; word_overlap(0.6) 2 (1/2 < 0.6 <= 2/3); always 4.
FREE_TEXT = [
    _record(
        "s",
        gt=[_box([0, 0, 10, 10], "red car"), _box([20, 0, 30, 10], "big dog"), _box([40, 0, 50, 10], "a red bus"),
            _box([60, 0, 70, 10], "truck")],
        pred=[_box([0, 0, 10, 10], "car", 0.9), _box([20, 0, 30, 10], "small cat", 0.9),
              _box([40, 0, 50, 10], "Red  Bus", 0.9), _box([60, 0, 70, 10], " TRUCK ", 0.9)],
    )
]  # fmt: skip
WORD_OVERLAP = "src.metrics.detection_scoring.word_overlap"


@pytest.mark.parametrize(
    ("similarity", "full_tp"),
    [
        (None, 1),
        (f"{{_target_:{WORD_OVERLAP},threshold:0.5}}", 3),
        (f"{{_target_:{WORD_OVERLAP},threshold:0.6}}", 2),
        (f"{__name__}.labels_always_agree", 4),
    ],
    ids=["exact", "word-overlap-0.5", "word-overlap-0.6", "dotted-path"],
)
def test_similarity_decides_the_full_counts(similarity: str | None, full_tp: int, tmp_path: Path, run) -> None:
    folder = write_lines(tmp_path / "val", FREE_TEXT)
    result = run(f"path={folder}", "metrics=f1", *([f"similarity={similarity}"] if similarity else []))
    assert result.code == 0, result.output[-3000:]
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())["metrics"]
    for key in ("iou_0.3", "iou_0.5"):
        assert metrics[f"f1/{key}/localisation/micro_tp"] == 4
        assert metrics[f"f1/{key}/full/micro_tp"] == full_tp
        assert metrics[f"f1/{key}/full/micro_f1"] == pytest.approx(full_tp / 4)
    agree = [m["labels_agree"] for m in jsonl(folder / "eval" / "matches.jsonl")[0]["iou_0.5"]["matched"]]
    assert sum(agree) == full_tp


@pytest.mark.parametrize(
    ("similarity", "expected"),
    [
        (f"{__name__}.no_such_function", (f"similarity='{__name__}.no_such_function' does not name a callable",)),
        (
            f"{{_target_:{WORD_OVERLAP},threshold:2}}",
            ("options.detection:", WORD_OVERLAP, "word_overlap threshold=2 is not in (0, 1]"),
        ),
    ],
    ids=["missing-function", "threshold-out-of-range"],
)
def test_a_bad_similarity_is_refused_naming_it(similarity: str, expected: tuple[str, ...], tmp_path: Path, run) -> None:
    """(A missing ``_target_`` and a path into a missing module: tests/test_hostile_input.py.)"""
    folder = write_lines(tmp_path / "val", FREE_TEXT)
    result = run(f"path={folder}", "metrics=f1", f"similarity={similarity}")
    assert result.code == 2 and "Traceback" not in result.err, result.output[-3000:]
    for fragment in expected:
        assert fragment in result.err, result.err[-3000:]
    assert not (folder / "eval").exists()


def test_a_similarity_factory_given_as_a_path_is_refused_cleanly(tmp_path: Path, run) -> None:
    """``similarity=<path of word_overlap>`` names a factory, not a ``(pred, gt) -> bool`` function."""
    folder = write_lines(tmp_path / "val", FREE_TEXT)
    result = run(f"path={folder}", "metrics=f1", f"similarity={WORD_OVERLAP}")
    assert result.code == 2 and "Traceback" not in result.err, result.err[-3000:]
    assert f"similarity='{WORD_OVERLAP}'" in result.err
    assert not (folder / "eval").exists()


def test_word_overlap_and_resolve_similarity() -> None:
    half = word_overlap(0.5)
    assert half("car", "red car") and half("Red  Bus", "a red bus") and not half("small cat", "big dog")
    assert half("", "  ")  # two empty labels agree
    assert not word_overlap(0.7)("a red bus", "red bus") and word_overlap(2 / 3)("a red bus", "red bus")
    for bad in (0, 1.5, -0.1, "0.5"):
        with pytest.raises(ConfigError, match="word_overlap threshold="):
            word_overlap(bad)
    assert resolve_similarity(None) is None and resolve_similarity(half) is half
    assert resolve_similarity(f"{__name__}.labels_always_agree") is labels_always_agree
    for missing in ("nowhere.similar", "similar", "src.metrics.detection.ParseCounters.x"):
        with pytest.raises(ConfigError, match=rf"similarity='{missing}' does not name a callable"):
            resolve_similarity(missing)


# ---- bad input ----------------------------------------------------------------------------------------


def test_records_of_another_task_are_refused(tmp_path: Path, run) -> None:
    folder = write_lines(tmp_path / "val", [json.loads(json_line(r)) for r in classification_records(4)])
    result = run(f"path={folder}")
    assert result.code == 2 and "Traceback" not in result.err
    assert (
        f"{folder / RECORDS}:1: none of the 4 records is a usable detection record (invalid_record=4): each needs "
        "width, height and gt / pred lists" in result.err
    )
    assert "name the right task with task=<name>" in result.err
    assert not (folder / "eval").exists() and not staging_left(folder)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], "holds no valid record (the file is empty)"),
        (["", "   "], "holds no valid record (the file is empty)"),
        (["{broken", "[1, 2]"], "holds no valid record (invalid_json=1, not_an_object=1)"),
    ],
    ids=["empty", "blank-lines", "no-valid-line"],
)
def test_a_file_without_records_is_refused(lines: list[str], expected: str, tmp_path: Path, run) -> None:
    folder = write_lines(tmp_path / "val", lines)
    result = run(f"path={folder}")
    assert result.code == 2 and f"{folder / RECORDS} {expected}" in result.err and "Traceback" not in result.err
    assert not (folder / "eval").exists()


def test_only_unlabelled_records_write_empty_metrics(tmp_path: Path, run) -> None:
    folder = write_lines(tmp_path / "val", [_with("u1", gt=None), _with("u2", gt=None)])
    result = run(f"path={folder}")
    assert result.code == 0 and "metrics: none (no labelled record without errors)" in result.out
    written = json.loads((folder / "eval" / "metrics.json").read_text())
    assert written["metrics"] == {} and written["counters"]["unlabelled"] == 2 and written["counters"]["scored"] == 0


# A record padded to 5 kB; max_line_mb=0.001 is int(0.001 * 2**20) = 1048 bytes.
HUGE = _with("huge", pad="x" * 5000)


def test_a_line_over_max_line_mb_is_counted_or_stops_strict_mode(tmp_path: Path, capsys) -> None:
    folder = write_lines(tmp_path / "val", [GOOD, HUGE, _with("after")])
    size = len((folder / RECORDS).read_text().splitlines()[1])
    assert size > 5000

    metrics = evaluate(compose_evaluate(f"path={folder}", "max_line_mb=0.001"))
    counters = json.loads((folder / "eval" / "metrics.json").read_text())["counters"]
    assert counters["line_too_long"] == 1 and counters["records"] == 2 and counters["scored"] == 2
    assert metrics["bbox/AP"] == pytest.approx(1.0)
    assert "line_too_long=1" in capsys.readouterr().out

    before = eval_files(folder)
    with pytest.raises(DataError) as info:
        evaluate(compose_evaluate(f"path={folder}", "max_line_mb=0.001", "strict=true"))
    assert f"{folder / RECORDS}:2: line_too_long ({size + 1:,} bytes, over the limit of 1,048)" in str(info.value)
    assert eval_files(folder) == before and not staging_left(folder)


def test_max_line_mb_takes_a_fraction_on_the_command_line(tmp_path: Path, run) -> None:
    folder = write_lines(tmp_path / "val", [GOOD, HUGE])
    result = run(f"path={folder}", "max_line_mb=0.001")
    assert result.code == 0, result.output[-3000:]
    assert json.loads((folder / "eval" / "metrics.json").read_text())["counters"]["line_too_long"] == 1
    strict = run(f"path={folder}", "max_line_mb=0.001", "strict=true")
    assert strict.code == 2 and f"{folder / RECORDS}:2: line_too_long (" in strict.err


def test_a_failing_evaluation_leaves_the_previous_eval_unchanged(tmp_path: Path, run) -> None:
    folder = write_lines(tmp_path / "val", HAND)
    assert run(f"path={folder}").code == 0
    before = eval_files(folder)
    assert len(before) == 7

    with (folder / RECORDS).open("a") as fh:  # a prediction without score: COCO refuses it
        fh.write(json.dumps(_with("u", pred=_pred(0, 0, 10, 10, score=None))) + "\n")
    assert run(f"path={folder}").code == 2
    assert eval_files(folder) == before and not staging_left(folder)

    with (folder / RECORDS).open("a") as fh:
        fh.write("{broken\n")
    assert run(f"path={folder}", "strict=true", "allow_unscored=true").code == 2
    assert eval_files(folder) == before and not staging_left(folder)

    assert run(f"path={folder}", "allow_unscored=true").code == 0  # a successful one replaces it whole
    after = json.loads((folder / "eval" / "metrics.json").read_text())
    assert after["counters"]["records"] == 3 and after["counters"]["invalid_json"] == 1
    assert eval_files(folder) != before and not staging_left(folder)


def test_score_records_returns_an_evaluation() -> None:
    evaluation = score_records(HAND)
    assert isinstance(evaluation, Evaluation)
    assert set(evaluation.files) == COCO_FILES | F1_FILES
    assert "records" not in evaluation.counters  # evaluate.py counts the records itself
