"""COCO AP of detection records (src/metrics/detection_coco.py): hand-computed values, torchmetrics, backends."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from src.core.errors import ConfigError
from src.metrics.detection import ParsedRecord, parse_record
from src.metrics.detection_coco import (
    AUTO_BACKEND,
    BACKENDS,
    COUNTER_NAMES,
    STAT_NAMES,
    CocoData,
    coco_files,
    coco_metrics,
    to_coco,
)


def _box(points: list[float], desc: str, score: float | None = None, kind: str = "bbox_2d") -> dict[str, Any]:
    box: dict[str, Any] = {"type": kind, "points": points, "desc": desc}
    if score is not None:
        box["score"] = score
    return box


def _record(gt: list[dict], pred: list[dict], width: float = 200, height: float = 200) -> dict[str, Any]:
    return {"width": width, "height": height, "gt": gt, "pred": pred}


def _parse(records: list[dict[str, Any]]) -> list[tuple[str, ParsedRecord]]:
    parsed = []
    for i, record in enumerate(records):
        result, _ = parse_record(record, strict=False, where=f"records[{i}]")
        assert result is not None
        parsed.append((f"s{i}", result))
    return parsed


# Two images, classes "cat" and "dog" (COCO areas: small < 32² = 1024 <= medium <= 96² = 9216 < large).
#   cat: image 1 gt C1 [0,0,20,20] (area 400, small), pred P1 = C1 score 0.9 (IoU 1);
#        image 2 gt C2 [100,100,140,140] (1600, medium), pred P2 [150,150,160,160] score 0.8 (IoU 0, area
#        100), pred P3 = C2 score 0.7 (IoU 1).
#   dog: image 1 gt D1 [50,50,150,150] (10000, large), pred Q1 [50,50,150,122] score 0.95 (IoU 7200/10000
#        = 0.72: a TP at the IoU thresholds 0.50..0.70, a FP at 0.75..0.95);
#        image 2 gts D2a [10,10,50,50] and D2b [60,10,100,50] (1600 each, medium), preds equal to them,
#        scores 0.9 and 0.85.
#   a "bird" prediction in image 1 (no such category) is left out.
HAND = [
    _record(
        gt=[_box([0, 0, 20, 20], "cat"), _box([50, 50, 150, 150], "dog")],
        pred=[
            _box([0, 0, 20, 20], "cat", 0.9),
            _box([50, 50, 150, 122], "Dog", 0.95),
            _box([0, 0, 200, 200], "bird", 0.99),
        ],
    ),
    _record(
        gt=[_box([100, 100, 140, 140], "cat"), _box([10, 10, 50, 50], "dog"), _box([60, 10, 100, 50], " dog")],
        pred=[
            _box([150, 150, 160, 160], "cat", 0.8),
            _box([100, 100, 140, 140], "cat", 0.7),
            _box([10, 10, 50, 50], "dog", 0.9),
            _box([60, 10, 100, 50], "dog", 0.85),
        ],
    ),
]
# COCO's AP at one IoU threshold: rank the predictions by score, recall rc and precision pr after each,
# pr made non-increasing from the right, then the mean over the 101 recall points r = 0, 0.01, ..., 1 of
# pr at the first rank with rc >= r (0 past the last recall).
# cat, every threshold: TP(0.9) FP(0.8) TP(0.7), rc = [1/2, 1/2, 1], pr = [1, 1/2, 2/3] -> [1, 2/3, 2/3]:
#   r <= 0.50 (51 points) -> 1, r > 0.50 (50 points) -> 2/3: AP = (51 + 50 * 2/3) / 101 = 253/303.
CAT_AP = 253 / 303
# dog, thresholds 0.50..0.70: TP TP TP -> AP 1; thresholds 0.75..0.95: FP(0.95) TP TP, rc = [0, 1/3, 2/3],
#   pr = [0, 1/2, 2/3] -> [2/3, 2/3, 2/3]: r <= 0.66 (67 points) -> 2/3, r > 2/3 -> 0: AP = 67 * 2/3 / 101
#   = 134/303. Over the ten thresholds: (1 + 134/303) / 2 = 437/606.
DOG_AP75 = 134 / 303
DOG_AP = (1 + DOG_AP75) / 2
# APs: only C1 is small; P1 TP, P2 (area 100, small) FP below it, P3 matches the ignored C2: AP 1 (dog has
#   no small gt: -1, left out of the mean).
# APm: cat: P1 matches the ignored C1, P2 (area 100) is outside the range: ignored; P3 TP -> 1. dog: at
#   0.50..0.70 Q1 matches the ignored D1, AP 1; at 0.75..0.95 Q1 (area 7200, medium) is a FP above two TPs
#   of 2 gts, rc = [0, 1/2, 1], pr -> [2/3, 2/3, 2/3] -> AP 2/3; dog APm = 5/6, APm = (1 + 5/6) / 2 = 11/12.
# APl: only D1: AP 1 at 0.50..0.70, 0 at 0.75..0.95 (Q1 unmatched, outside the range, ignored) -> 1/2.
# AR at 100 (and 10) detections: cat 1; dog 1 at 0.50..0.70, 2/3 above -> 5/6; AR100 = (1 + 5/6) / 2.
# AR1 (one prediction per image and class): cat keeps P1 (TP) and P2 (FP) -> 1/2; dog keeps Q1 and D2a's
#   -> 2/3 at 0.50..0.70, 1/3 above -> 1/2; AR1 = 1/2. ARs = 1, ARm = 1 (every medium gt found at every
#   threshold), ARl = 1/2.
HAND_STATS = {
    "AP": (CAT_AP + DOG_AP) / 2,
    "AP50": (CAT_AP + 1) / 2,
    "AP75": (CAT_AP + DOG_AP75) / 2,
    "APs": 1.0,
    "APm": 11 / 12,
    "APl": 0.5,
    "AR1": 0.5,
    "AR10": 11 / 12,
    "AR100": 11 / 12,
    "ARs": 1.0,
    "ARm": 1.0,
    "ARl": 0.5,
}
HAND_PER_CLASS = [
    {"category": "cat", "AP": CAT_AP, "AP50": CAT_AP, "AP75": CAT_AP, "gt": 2, "pred": 3},
    {"category": "dog", "AP": DOG_AP, "AP50": 1.0, "AP75": DOG_AP75, "gt": 3, "pred": 3},
]


@pytest.fixture(scope="module")
def hand() -> CocoData:
    return to_coco(_parse(HAND))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_stats(hand: CocoData, backend: str) -> None:
    result = coco_metrics(hand, "bbox", backend)
    assert result["backend"] == backend
    assert list(result["stats"]) == list(STAT_NAMES)
    for name, value in HAND_STATS.items():
        assert result["stats"][name] == pytest.approx(value, abs=1e-12), name
    assert len(result["per_class"]) == len(HAND_PER_CLASS)
    for got, expected in zip(result["per_class"], HAND_PER_CLASS, strict=True):
        assert got == pytest.approx(expected, abs=1e-12)


def test_conversion(hand: CocoData) -> None:
    assert hand.categories == ["cat", "dog"]
    assert hand.iou_types == ("bbox",)
    assert hand.counters == {"unknown_labels": 1, "unknown_gt_labels": 0, "scored_as_one": 0}
    gt = hand.gt["bbox"]
    assert [i["id"] for i in gt["images"]] == [1, 2]
    assert [i["file_name"] for i in gt["images"]] == ["s0", "s1"]
    assert gt["categories"] == [
        {"id": 1, "name": "cat", "supercategory": ""},
        {"id": 2, "name": "dog", "supercategory": ""},
    ]
    first = gt["annotations"][1]
    assert first == {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 100, 100], "area": 10000, "iscrowd": 0}
    assert [d["bbox"] for d in hand.dt["bbox"]][:2] == [[0, 0, 20, 20], [50, 50, 100, 72]]
    assert [d["score"] for d in hand.dt["bbox"]] == [0.9, 0.95, 0.8, 0.7, 0.9, 0.85]


def test_all_true_positives_ranked_first_give_ap50_one() -> None:
    records = [
        _record(
            gt=[_box([0, 0, 50, 50], "a")], pred=[_box([0, 0, 50, 50], "a", 0.9), _box([100, 100, 150, 150], "a", 0.2)]
        ),
        _record(gt=[_box([0, 0, 50, 50], "a")], pred=[_box([0, 0, 50, 41], "a", 0.8)]),  # IoU 2050/2500 = 0.82
    ]
    stats = coco_metrics(to_coco(_parse(records)))["stats"]
    assert stats["AP50"] == pytest.approx(1.0)
    # IoU 0.82: a TP at the thresholds 0.50..0.80 (7 of 10); above, one TP of two: rc [1/2, 1/2], pr [1, 1/2]
    # -> r <= 0.5 (51 points) at precision 1: AP = 51/101. AP = (7 + 3 * 51/101) / 10.
    assert stats["AP"] == pytest.approx((7 + 3 * 51 / 101) / 10, abs=1e-12)
    assert stats["AP75"] == pytest.approx(1.0)


def test_prediction_on_an_image_without_gt_is_a_false_positive() -> None:
    # FP(0.9) on the image without gt above the TP(0.5): rc [0, 1], pr [0, 1/2] -> 1/2 at every recall point.
    records = [_record(gt=[_box([0, 0, 50, 50], "a")], pred=[_box([0, 0, 50, 50], "a", 0.5)]),
               _record(gt=[], pred=[_box([0, 0, 50, 50], "a", 0.9)])]  # fmt: skip
    for backend in BACKENDS:
        result = coco_metrics(to_coco(_parse(records)), backend=backend)
        assert result["stats"]["AP"] == pytest.approx(0.5, abs=1e-12)
        assert result["per_class"][0]["pred"] == 2


def test_no_predictions_give_zero_not_a_crash() -> None:
    records = [_record(gt=[_box([0, 0, 50, 50], "a")], pred=[]), _record(gt=[], pred=[])]
    data = to_coco(_parse(records))
    assert data.dt["bbox"] == []
    for backend in BACKENDS:
        result = coco_metrics(data, backend=backend)
        assert result["stats"]["AP"] == 0.0 and result["stats"]["AR100"] == 0.0
        assert math.isnan(result["stats"]["APs"])  # no small gt
        assert result["per_class"] == [{"category": "a", "AP": 0.0, "AP50": 0.0, "AP75": 0.0, "gt": 1, "pred": 0}]


def test_category_without_predictions_or_without_gt() -> None:
    gt = [_box([0, 0, 50, 50], "a"), _box([100, 100, 150, 150], "b")]
    records = [_record(gt=gt, pred=[_box([0, 0, 50, 50], "a", 0.9), _box([0, 0, 9, 9], "c", 0.8)])]
    data = to_coco(_parse(records), categories=["a", "b", "c"])
    for backend in BACKENDS:
        rows = {r["category"]: r for r in coco_metrics(data, backend=backend)["per_class"]}
        assert rows["a"]["AP"] == pytest.approx(1.0) and rows["b"]["AP"] == 0.0
        assert math.isnan(rows["c"]["AP"]) and rows["c"]["gt"] == 0 and rows["c"]["pred"] == 1
        assert coco_metrics(data, backend=backend)["stats"]["AP"] == pytest.approx(0.5)  # mean over a and b


def test_no_gt_at_all_gives_nan() -> None:
    data = to_coco(_parse([_record(gt=[], pred=[_box([0, 0, 9, 9], "a", 0.5)])]))
    assert data.categories == [] and data.counters["unknown_labels"] == 1
    for backend in BACKENDS:
        result = coco_metrics(data, backend=backend)
        assert all(math.isnan(v) for v in result["stats"].values()) and result["per_class"] == []


def test_unknown_labels_and_explicit_categories() -> None:
    records = [_record(gt=[_box([0, 0, 50, 50], "Cat"), _box([60, 60, 90, 90], "zebra")],
                       pred=[_box([0, 0, 50, 50], "cat", 0.9), _box([60, 60, 90, 90], "zebra", 0.8),
                             _box([1, 1, 5, 5], "bird", 0.7)])]  # fmt: skip
    derived = to_coco(_parse(records))
    assert derived.categories == ["cat", "zebra"]
    assert derived.counters == {"unknown_labels": 1, "unknown_gt_labels": 0, "scored_as_one": 0}
    explicit = to_coco(_parse(records), categories=["  DOG", "cat"])
    assert explicit.categories == ["dog", "cat"]
    assert explicit.counters == {"unknown_labels": 2, "unknown_gt_labels": 1, "scored_as_one": 0}
    assert [a["category_id"] for a in explicit.gt["bbox"]["annotations"]] == [2]
    assert [d["category_id"] for d in explicit.dt["bbox"]] == [2]
    with pytest.raises(ConfigError, match="repeat"):
        to_coco(_parse(records), categories=["cat", " CAT "])
    assert set(COUNTER_NAMES) == set(derived.counters)


def test_unscored_predictions_raise_unless_allowed() -> None:
    records = [_record(gt=[_box([0, 0, 50, 50], "a")],
                       pred=[_box([0, 0, 50, 50], "a"), _box([60, 60, 90, 90], "a"), _box([1, 1, 5, 5], "x"),
                             _box([100, 100, 150, 150], "a", 0.5)])]  # fmt: skip
    with pytest.raises(ConfigError, match=r"2 prediction\(s\) have no score") as info:
        to_coco(_parse(records))
    assert "allow_unscored=true" in str(info.value) and "metrics=f1" in str(info.value)
    data = to_coco(_parse(records), allow_unscored=True)
    assert data.counters["scored_as_one"] == 2
    assert [d["score"] for d in data.dt["bbox"]] == [1.0, 1.0, 0.5]
    # The TP and one FP tie at 1.0 (COCO keeps their order: TP first), then a FP: AP 1 at every threshold.
    assert coco_metrics(data)["stats"]["AP"] == pytest.approx(1.0)


def test_segm_on_polygons() -> None:
    triangle = [10, 10, 90, 10, 50, 80]
    records = [
        _record(
            gt=[_box(triangle, "a", kind="poly"), _box([100, 100, 140, 140], "a")],
            pred=[_box(triangle, "a", 0.9, kind="poly"), _box([100, 100, 140, 140], "a", 0.8),
                  _box([0, 150, 30, 180], "a", 0.1, kind="poly")],
        ),
        _record(gt=[_box([0, 0, 40, 0, 40, 40, 0, 40], "a", kind="poly")], pred=[]),
    ]  # fmt: skip
    data = to_coco(_parse(records))
    assert data.iou_types == ("bbox", "segm")
    segm_gt = data.gt["segm"]["annotations"]
    assert segm_gt[0]["segmentation"] == [triangle]
    assert segm_gt[1]["segmentation"] == [[100, 100, 140, 100, 140, 140, 100, 140]]
    # mask areas: a whole-pixel rectangle rasterises to exactly w * h
    assert segm_gt[1]["area"] == 1600 and segm_gt[2]["area"] == 1600
    # the triangle's rasterised area: its geometric area 80 * 70 / 2, not its bounding box's 5600
    assert segm_gt[0]["area"] == pytest.approx(2800, rel=0.02)
    assert all(set(d) == {"image_id", "category_id", "segmentation", "score"} for d in data.dt["segm"])
    for backend in BACKENDS:
        result = coco_metrics(data, "segm", backend)
        # TP(0.9) TP(0.8) then FP(0.1); the third gt (image 2) is never found: rc [1/3, 2/3, 2/3], pr [1, 1, 2/3]
        # -> r <= 0.66 (67 points) at precision 1, AP = 67/101 at every threshold.
        assert result["stats"]["AP"] == pytest.approx(67 / 101, abs=1e-12)
        assert result["stats"]["AR100"] == pytest.approx(2 / 3, abs=1e-12)
    same = to_coco(
        _parse([_record(gt=[_box(triangle, "a", kind="poly")], pred=[_box(triangle, "a", 0.3, kind="poly")])])
    )
    assert coco_metrics(same, "segm")["stats"]["AP"] == pytest.approx(1.0)


def test_segm_needs_polygons_and_backends_are_checked(hand: CocoData) -> None:
    with pytest.raises(ConfigError, match="segm"):
        coco_metrics(hand, "segm")
    with pytest.raises(ConfigError, match="backend"):
        coco_metrics(hand, "bbox", "detectron")
    assert coco_metrics(hand, "bbox", "auto")["backend"] == AUTO_BACKEND


def test_evaluation_leaves_the_data_unchanged(hand: CocoData) -> None:
    before = json.dumps(coco_files(hand), sort_keys=True)
    for backend in BACKENDS:
        coco_metrics(hand, "bbox", backend)
    assert json.dumps(coco_files(hand), sort_keys=True) == before


def test_files_read_back_by_pycocotools_give_the_same_stats(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = to_coco(_parse(random_records(seed=3, n_images=8, polygons=True)))
    files = coco_files(data)
    assert set(files) == {"coco_gt.json", "coco_preds.json", "coco_gt_segm.json", "coco_preds_segm.json"}
    for name, obj in files.items():
        (tmp_path / name).write_text(json.dumps(obj, allow_nan=False))
    for iou_type, suffix in (("bbox", ""), ("segm", "_segm")):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(tmp_path / f"coco_gt{suffix}.json"))
            evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / f"coco_preds{suffix}.json")), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        expected = [math.nan if s == -1 else float(s) for s in evaluator.stats[:12]]
        got = list(coco_metrics(data, iou_type)["stats"].values())
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


# ---- random data: the two backends and torchmetrics --------------------------------------------------


def random_records(seed: int, n_images: int = 20, polygons: bool = False) -> list[dict[str, Any]]:
    """Jittered gt as predictions (labels sometimes wrong) plus random false positives, 3 classes."""
    rng = np.random.default_rng(seed)
    classes = ("a", "b", "c")
    records = []
    for _ in range(n_images):
        width, height = int(rng.integers(100, 400)), int(rng.integers(100, 400))
        n_gt = int(rng.integers(0, 6))
        xy = rng.uniform(0, [width * 0.8, height * 0.8], size=(n_gt, 2))
        wh = np.exp(rng.uniform(np.log(4), np.log(150), size=(n_gt, 2)))
        gt_boxes = np.round(np.column_stack([xy, xy + wh]), 1)  # may extend outside: parse clips
        gt_labels = rng.integers(0, 3, n_gt)
        kept = rng.random(n_gt) < 0.8
        sides = np.tile(gt_boxes[kept, 2:] - gt_boxes[kept, :2], 2)
        jitter = np.round(gt_boxes[kept] + rng.normal(0, 0.06, size=(kept.sum(), 4)) * sides, 1)
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        labels = np.where(rng.random(kept.sum()) < 0.85, gt_labels[kept], rng.integers(0, 3, kept.sum()))
        n_fp = int(rng.integers(0, 8))
        fp_xy = rng.uniform(0, [width, height], size=(n_fp, 2))
        fp = np.round(np.column_stack([fp_xy, fp_xy + rng.uniform(3, 80, size=(n_fp, 2))]), 1)
        boxes = np.concatenate([jitter, fp])
        scores = np.round(np.concatenate([rng.uniform(0.3, 1, kept.sum()), rng.uniform(0, 0.7, n_fp)]), 3)
        all_labels = np.concatenate([labels, rng.integers(0, 3, n_fp)])

        def as_box(b: list[float], label: int, score: float | None) -> dict[str, Any]:
            if polygons and rng.random() < 0.5:
                x1, y1, x2, y2 = b
                return _box([x1, y1, x2, y1, (x1 + x2) / 2, y2], classes[label], score, kind="poly")
            return _box(b, classes[label], score)

        records.append(
            _record(
                gt=[as_box(b, c, None) for b, c in zip(gt_boxes.tolist(), gt_labels, strict=True)],
                pred=[as_box(b, c, s) for b, c, s in zip(boxes.tolist(), all_labels, scores.tolist(), strict=True)],
                width=width,
                height=height,
            )
        )
    return records


@pytest.fixture(scope="module")
def random_parsed() -> list[tuple[str, ParsedRecord]]:
    return _parse(random_records(seed=0))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_backends_agree(iou_type: str) -> None:
    data = to_coco(_parse(random_records(seed=1, polygons=True)))
    a, b = (coco_metrics(data, iou_type, backend) for backend in BACKENDS)
    np.testing.assert_allclose(list(a["stats"].values()), list(b["stats"].values()), rtol=0, atol=1e-12)
    for row_a, row_b in zip(a["per_class"], b["per_class"], strict=True):
        assert row_a == pytest.approx(row_b, abs=1e-12, nan_ok=True)
    assert 0.1 < a["stats"]["AP"] < 0.9  # a data set that tests something (segm: 0.17, bbox: 0.31)


# torchmetrics' names of the twelve statistics.
TM_NAMES = dict(zip(STAT_NAMES, ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10",
                                 "mar_100", "mar_small", "mar_medium", "mar_large"], strict=True))  # fmt: skip


@pytest.mark.parametrize("tm_backend", BACKENDS)
def test_agrees_with_torchmetrics(random_parsed: list[tuple[str, ParsedRecord]], tm_backend: str) -> None:
    """torchmetrics returns float32: the values agree to float32 rounding (< 1e-7 on [0, 1]), within 1e-6."""
    torch = pytest.importorskip("torch")
    from torchmetrics.detection import MeanAveragePrecision

    data = to_coco(random_parsed)
    index = {name: i for i, name in enumerate(data.categories)}
    preds, target = [], []
    for _, record in random_parsed:
        # float64 boxes: torchmetrics hands them to COCO as Python floats, the same numbers as ours
        preds.append({"boxes": torch.tensor(record.pred.boxes, dtype=torch.float64).reshape(-1, 4),
                      "scores": torch.tensor(record.pred.scores, dtype=torch.float64),
                      "labels": torch.tensor([index[x] for x in record.pred.labels], dtype=torch.long)})  # fmt: skip
        target.append({"boxes": torch.tensor(record.gt.boxes, dtype=torch.float64).reshape(-1, 4),
                       "labels": torch.tensor([index[x] for x in record.gt.labels], dtype=torch.long)})  # fmt: skip
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", class_metrics=True, backend=tm_backend)
    metric.update(preds, target)
    with contextlib.redirect_stdout(io.StringIO()):
        expected = metric.compute()
    ours = coco_metrics(data, "bbox")
    for name, tm_name in TM_NAMES.items():
        want = float(expected[tm_name])
        got = ours["stats"][name]
        assert (math.isnan(got) and want == -1) or got == pytest.approx(want, abs=1e-6), name
    assert expected["classes"].tolist() == [0, 1, 2]
    per_class = [row["AP"] for row in ours["per_class"]]
    np.testing.assert_allclose(per_class, expected["map_per_class"].double().numpy(), rtol=0, atol=1e-6)
    assert 0.2 < ours["stats"]["AP"] < 0.9
