"""Hand-computed tests of the set-matching F1 of detection records (src/metrics/detection.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src.core.errors import ConfigError
from src.metrics.detection import (
    box_iou,
    f1_scores,
    greedy_match,
    normalize_label,
    parse_record,
    precision_recall_f1,
)


def _box(points: list[float], desc: str = "x", kind: str = "bbox_2d") -> dict:
    return {"type": kind, "points": points, "desc": desc, "score": 0.9}


def _record(gt: list[dict], pred: list[dict], width: float = 100, height: float = 100) -> dict:
    return {"width": width, "height": height, "gt": gt, "pred": pred}


# Image A: pred0 vs gt0 IoU 50/100 = 0.5 (labels agree after normalisation), pred1 vs gt1 IoU
# 40/100 = 0.4 (labels differ), pred2 overlaps nothing.
IMAGE_A = _record(
    gt=[_box([0, 0, 10, 10], "cat"), _box([20, 0, 30, 10], "dog")],
    pred=[_box([0, 0, 10, 5], " Cat "), _box([20, 0, 30, 4], "bird"), _box([50, 50, 60, 60], "cat")],
)
# Image B: a polygon scored by its bounding box [0, 0, 10, 8] vs gt0: IoU 80/100 = 0.8; gt1 missed.
IMAGE_B = _record(
    gt=[_box([0, 0, 10, 10], "a"), _box([50, 50, 60, 60], "b")],
    pred=[_box([0, 0, 10, 0, 10, 8, 0, 8], "a", kind="poly")],
)

# Per image: A@0.3 loc (tp2 fp1 fn0) P 2/3 R 1 F1 0.8; A@0.3 full (tp1 fp2 fn1) P 1/3 R 1/2 F1 0.4;
# A@0.5 loc and full (tp1 fp2 fn1) P 1/3 R 1/2 F1 0.4; B everywhere (tp1 fp0 fn1) P 1 R 1/2 F1 2/3.
EXPECTED = {
    "iou_0.3": {
        "localisation": {
            "micro": {"tp": 3, "fp": 1, "fn": 1, "precision": 3 / 4, "recall": 3 / 4, "f1": 3 / 4},
            "macro": {"precision": 5 / 6, "recall": 3 / 4, "f1": 11 / 15},
        },
        "full": {
            "micro": {"tp": 2, "fp": 2, "fn": 2, "precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2},
            "macro": {"precision": 2 / 3, "recall": 1 / 2, "f1": 8 / 15},
        },
    },
    "iou_0.5": {
        "localisation": {
            "micro": {"tp": 2, "fp": 2, "fn": 2, "precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2},
            "macro": {"precision": 2 / 3, "recall": 1 / 2, "f1": 8 / 15},
        },
        "full": {
            "micro": {"tp": 2, "fp": 2, "fn": 2, "precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2},
            "macro": {"precision": 2 / 3, "recall": 1 / 2, "f1": 8 / 15},
        },
    },
}


def test_iou_of_known_boxes() -> None:
    iou = box_iou(np.array([[0, 0, 10, 5], [20, 0, 30, 4], [0, 0, 10, 8]]), np.array([[0, 0, 10, 10], [20, 0, 30, 10]]))
    np.testing.assert_allclose(iou, [[0.5, 0.0], [0.0, 0.4], [0.8, 0.0]])
    assert box_iou(np.array([[5, 5, 5, 5]]), np.array([[5, 5, 5, 5]]))[0, 0] == 0.0


def test_two_images_every_metric_by_hand() -> None:
    result = f1_scores([IMAGE_A, IMAGE_B])
    assert set(result["metrics"]) == set(EXPECTED)
    for key, by_kind in EXPECTED.items():
        for kind, by_avg in by_kind.items():
            for avg, values in by_avg.items():
                got = result["metrics"][key][kind][avg]
                for name, value in values.items():
                    assert got[name] == pytest.approx(value, abs=1e-12), (key, kind, avg, name)


def test_matches_per_image() -> None:
    a, b = f1_scores([IMAGE_A, IMAGE_B])["matches"]
    assert a["record"] == 0 and b["record"] == 1
    low = a["iou_0.3"]
    assert [(m["pred"], m["gt"], m["labels_agree"]) for m in low["matched"]] == [(0, 0, True), (1, 1, False)]
    assert [m["iou"] for m in low["matched"]] == pytest.approx([0.5, 0.4])
    assert low["unmatched_pred"] == [2] and low["unmatched_gt"] == []
    high = a["iou_0.5"]
    assert [(m["pred"], m["gt"]) for m in high["matched"]] == [(0, 0)]
    assert high["unmatched_pred"] == [1, 2] and high["unmatched_gt"] == [1]
    assert b["iou_0.5"]["matched"][0]["iou"] == pytest.approx(0.8)
    assert b["iou_0.5"]["unmatched_gt"] == [1]


def test_tie_break_lower_pred_then_lower_gt() -> None:
    assert greedy_match(np.full((2, 2), 0.5), 0.5) == [(0, 0), (1, 1)]
    assert greedy_match(np.array([[0.6, 0.6], [0.6, 0.9]]), 0.5) == [(1, 1), (0, 0)]
    assert greedy_match(np.array([[0.7, 0.7, 0.2]]), 0.3) == [(0, 0)]
    assert greedy_match(np.array([[0.7], [0.7]]), 0.3) == [(0, 0)]
    assert greedy_match(np.array([[0.0, 0.7], [0.7, 0.0]]), 0.3) == [(0, 1), (1, 0)]
    same = _box([0, 0, 10, 10])
    record = _record(gt=[same, same], pred=[same, same, same])
    matched = f1_scores([record], thresholds=(0.5,))["matches"][0]["iou_0.5"]
    assert [(m["pred"], m["gt"]) for m in matched["matched"]] == [(0, 0), (1, 1)]
    assert matched["unmatched_pred"] == [2]


def test_conventions() -> None:
    assert precision_recall_f1(0, 0, 3) == {"precision": 1.0, "recall": 0.0, "f1": 0.0}
    assert precision_recall_f1(0, 2, 0) == {"precision": 0.0, "recall": 1.0, "f1": 0.0}
    assert precision_recall_f1(0, 0, 0) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert precision_recall_f1(0, 2, 3) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_conventions_through_records() -> None:
    no_preds = _record(gt=[_box([0, 0, 10, 10])], pred=[])
    no_gts = _record(gt=[], pred=[_box([0, 0, 10, 10])])
    nothing = _record(gt=[], pred=[])
    disjoint = _record(gt=[_box([0, 0, 10, 10])], pred=[_box([50, 50, 60, 60])])
    result = f1_scores([no_preds, no_gts, nothing, disjoint], thresholds=(0.5,))
    loc = result["metrics"]["iou_0.5"]["localisation"]
    assert loc["micro"] == {"tp": 0, "fp": 2, "fn": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    # Per image (P, R, F1): (1, 0, 0), (0, 1, 0), (1, 1, 1), (0, 0, 0).
    assert loc["macro"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.25})
    assert result["counters"]["empty_predictions"] == 2


BAD_RECORDS = {
    "invalid_record": ["not a record", {"width": 10, "height": 10, "gt": None, "pred": []}],
    "missing_size": [{"height": 10, "gt": [], "pred": []}],
    "invalid_size": [_record([], [], width=0), _record([], [], height=-5), _record([], [], width=float("nan"))],
}
BAD_BOXES = {
    "invalid_geometry": [
        _box([0, 0, 10]),
        _box([10, 0, 5, 5]),
        _box([0, 9, 5, 5]),
        _box([0, 0, float("inf"), 5]),
        _box([0, 0, 5, 5], kind="poly"),
        _box([0, 0, 5, 5, 9], kind="poly"),
        _box([0, 0, 5, 5], kind="circle"),
        {"type": "bbox_2d", "points": "0 0 5 5"},
    ],
    "boxes_clipped": [_box([-5, 0, 10, 10]), _box([90, 90, 120, 100])],
    "boxes_outside": [_box([200, 0, 210, 10]), _box([0, -20, 10, -5])],
}


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_record_counters(name: str) -> None:
    result = f1_scores([*BAD_RECORDS[name], IMAGE_A])
    counters = result["counters"]
    n_bad = len(BAD_RECORDS[name])
    assert counters[name] == n_bad
    assert counters["records"] == n_bad + 1 and counters["records_used"] == 1
    assert [m["record"] for m in result["matches"]] == [n_bad]
    assert result["metrics"] == f1_scores([IMAGE_A])["metrics"]


@pytest.mark.parametrize("name", sorted(BAD_BOXES))
@pytest.mark.parametrize("side", ["gt", "pred"])
def test_box_counters(name: str, side: str) -> None:
    boxes = BAD_BOXES[name]
    record = _record(gt=boxes if side == "gt" else [], pred=boxes if side == "pred" else [])
    parsed, counters = parse_record(record)
    assert getattr(counters, name) == len(boxes)
    others = {
        k: v for k, v in counters.as_dict().items() if k not in (name, "records", "records_used", "empty_predictions")
    }
    assert set(others.values()) == {0}
    kept = getattr(parsed, side)
    if name == "boxes_clipped":
        np.testing.assert_array_equal(kept.boxes, [[0, 0, 10, 10], [90, 90, 100, 100]])
        assert kept.index.tolist() == [0, 1]
    else:
        assert kept.boxes.shape == (0, 4)


def test_dropped_boxes_keep_original_indices() -> None:
    record = _record(gt=[_box([0, 0, 10, 10])], pred=[_box([10, 0, 5, 5]), _box([0, 0, 10, 10])])
    result = f1_scores([record], thresholds=(0.5,))
    matched = result["matches"][0]["iou_0.5"]
    assert matched["matched"][0]["pred"] == 1 and matched["unmatched_pred"] == []
    assert result["counters"]["invalid_geometry"] == 1


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ("not a record", "record is str"),
        ({"width": 10, "height": 10, "gt": [], "pred": "boxes"}, "pred='boxes'"),
        ({"width": 10, "gt": [], "pred": []}, "height is missing"),
        (_record([], [], width=-3), "width=-3"),
        (_record([_box([10, 0, 5, 5])], []), "gt[0]: points=[10, 0, 5, 5] has x2 < x1"),
        (_record([], [_box([0, 0, 10])]), "pred[0]: points has 3 values"),
        (_record([], [_box([0, 0, 1, 1]), _box([0, 0, 1, 1], kind="mask")]), "pred[1]: type='mask'"),
        (_record([], [_box([-5, 0, 10, 10])]), "pred[0]: points=[-5, 0, 10, 10] extend outside"),
        (_record([_box([200, 0, 210, 10])], []), "gt[0]: points=[200, 0, 210, 10] lie outside"),
    ],
)
def test_strict_names_the_field(record: object, fragment: str) -> None:
    with pytest.raises(ValueError, match="records\\[1\\]") as info:
        f1_scores([IMAGE_A, record], strict=True)
    assert fragment in str(info.value)


def test_strict_accepts_clean_records_and_empty_predictions() -> None:
    strict = f1_scores([IMAGE_A, IMAGE_B, _record([_box([0, 0, 5, 5])], [])], strict=True)
    lenient = f1_scores([IMAGE_A, IMAGE_B, _record([_box([0, 0, 5, 5])], [])])
    assert strict == lenient


def test_label_normalisation() -> None:
    assert normalize_label("  Red\tCAR \n") == "red car"
    assert normalize_label("Straße") == normalize_label("STRASSE")
    record = _record(gt=[_box([0, 0, 10, 10], "red car")], pred=[_box([0, 0, 10, 10], "  Red \t CAR")])
    assert f1_scores([record])["metrics"]["iou_0.5"]["full"]["micro"]["tp"] == 1
    other = _record(gt=[_box([0, 0, 10, 10], "red car")], pred=[_box([0, 0, 10, 10], "redcar")])
    assert f1_scores([other])["metrics"]["iou_0.5"]["full"]["micro"]["tp"] == 0


def test_custom_similarity() -> None:
    calls = []

    def same_head_noun(pred: str, gt: str) -> bool:
        calls.append((pred, gt))
        return pred.split()[-1].lower() == gt.split()[-1].lower()

    record = _record(
        gt=[_box([0, 0, 10, 10], "red car"), _box([20, 0, 30, 10], "dog")],
        pred=[_box([0, 0, 10, 10], "blue Car"), _box([20, 0, 30, 10], "cat")],
    )
    full = f1_scores([record], thresholds=(0.5,), similarity=same_head_noun)["metrics"]["iou_0.5"]["full"]
    assert full["micro"]["tp"] == 1 and full["micro"]["fp"] == 1 and full["micro"]["fn"] == 1
    assert calls == [("blue Car", "red car"), ("cat", "dog")]
    default = f1_scores([record], thresholds=(0.5,))["metrics"]["iou_0.5"]["full"]
    assert default["micro"]["tp"] == 0


def test_sample_id_and_no_usable_records() -> None:
    result = f1_scores([{**IMAGE_B, "sample_id": "img_7"}])
    assert result["matches"][0]["sample_id"] == "img_7"
    empty = f1_scores([])
    macro = empty["metrics"]["iou_0.3"]["localisation"]["macro"]
    assert all(math.isnan(v) for v in macro.values())
    assert empty["metrics"]["iou_0.3"]["localisation"]["micro"]["f1"] == 1.0


@pytest.mark.parametrize("thresholds", [(), (0.0,), (1.5,), (0.5, float("nan"))])
def test_bad_thresholds_are_refused(thresholds: tuple) -> None:
    with pytest.raises(ConfigError, match="thresholds"):
        f1_scores([IMAGE_A], thresholds=thresholds)
