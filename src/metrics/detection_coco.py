"""COCO average precision of detection records: conversion to COCO data, evaluation, per-class AP.

:func:`to_coco` turns parsed records (:func:`src.metrics.detection.parse_record`) into COCO data:
the ground truth as a COCO dataset dict (``images``, ``annotations``, ``categories``) and the
predictions as a COCO results list, for the ``bbox`` evaluation and, when a ground-truth box kept
in the data is a polygon, also for the ``segm`` evaluation. :func:`coco_metrics` runs the COCO
evaluation (pycocotools or faster-coco-eval, same numbers) and returns the twelve summary
statistics and a per-class table; :func:`coco_files` gives the JSON objects of ``coco_gt.json`` and
``coco_preds.json`` that any COCO tool reads.

Conventions:

* images are numbered 1..n in the order given (``file_name`` is the sample id, ``width`` and
  ``height`` the record's size rounded up to whole pixels); categories are numbered 1..C in the
  order of the category names, and a box's ``desc`` names its category after
  :func:`~src.metrics.detection.normalize_label`;
* ``bbox`` evaluation: a box is ``[x, y, w, h]`` of its clipped ``[x1, y1, x2, y2]`` (a polygon: of
  its clipped bounding box). The area of a ground-truth box, which puts it in the small / medium /
  large range (32² and 96² px²), is ``w * h``: records carry no masks. COCO's own annotation files
  give the mask area instead, which is smaller than the box area for anything not rectangular, so
  APs/APm/APl of the same boxes can differ from those of a COCO file with masks; AP, AP50, AP75
  and the AR at 1/10/100 detections do not depend on areas. Predictions get ``w * h`` as COCO's
  ``loadRes`` gives them. Every ground truth has ``iscrowd`` 0;
* ``segm`` evaluation: a polygon is its points as given (COCO rasterises it to the image, which
  clips it); a ``bbox_2d`` box, ground truth or prediction, is its clipped rectangle as a
  four-vertex polygon, so a rectangle predicted for a rectangle matches it exactly. Ground-truth
  areas are mask areas (pixels of the rasterised polygon, as in COCO's files), predictions are
  compressed RLE masks (COCO's results format; their areas are mask areas too). A polygon
  prediction is scored by its ``score`` like any other;
* a prediction whose label is no category is left out (counter ``unknown_labels``): it could be no
  category's true positive, and COCO ignores the predictions of a category without ground truth
  anyway. A ground-truth box whose label is not among explicitly given categories is left out too
  (``unknown_gt_labels``); without explicit categories they are the ground-truth labels seen;
* COCO ranks predictions by score, so a prediction without ``score`` is refused unless
  ``allow_unscored`` scores it 1.0 (``scored_as_one``).

Both backends give the same numbers (equal to 1e-12 in the tests, identical on the benchmark's
500,000 predictions); ``"auto"`` runs faster-coco-eval, about seven times faster here (see
:data:`AUTO_BACKEND` for the measurement).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_api

from src.core.errors import ConfigError
from src.metrics.detection import ParsedRecord, normalize_label

#: COCO evaluation types: ``bbox`` always, ``segm`` when a ground-truth box is a polygon.
IOU_TYPES = ("bbox", "segm")
#: The evaluation libraries :func:`coco_metrics` can run.
BACKENDS = ("pycocotools", "faster_coco_eval")
#: What ``backend="auto"`` runs. Measured by ``OMP_NUM_THREADS=1 python benchmarks/detection_eval.py``
#: (benchmarks/results/detection_eval.json: 5,000 images x 100 predictions, 2 data seeds, 2-core
#: CPU): :func:`coco_metrics` took 6.0 s with faster-coco-eval and 43.6 s with pycocotools on the
#: same in-memory data; the libraries alone from COCO JSON files 9.8 s and 46.9 s.
AUTO_BACKEND = "faster_coco_eval"
#: Names of the twelve COCO summary statistics, in ``COCOeval.stats`` order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: The counters of :func:`to_coco` (stable output keys).
COUNTER_NAMES = ("unknown_labels", "unknown_gt_labels", "scored_as_one")
#: File names of the COCO JSON of the ``bbox`` evaluation; ``segm`` adds a ``_segm`` suffix.
GT_FILE = "coco_gt.json"
PREDS_FILE = "coco_preds.json"
#: The fix of a prediction without score.
UNSCORED_FIX = "pass allow_unscored=true to score them as 1.0 for COCO, or metrics=f1"


@dataclass
class CocoData:
    """Parsed records as COCO data.

    Attributes:
        categories: Category names; category ``i + 1`` is ``categories[i]``.
        gt: Per evaluation type (``bbox``, and ``segm`` when a ground truth is a polygon), the
            COCO ground-truth dataset ``{"images", "annotations", "categories"}``.
        dt: Per evaluation type, the COCO results list (``image_id``, ``category_id``, ``score``
            and ``bbox`` or an RLE ``segmentation``).
        counters: :data:`COUNTER_NAMES` -> count.
    """

    categories: list[str]
    gt: dict[str, dict[str, Any]]
    dt: dict[str, list[dict[str, Any]]]
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))

    @property
    def iou_types(self) -> tuple[str, ...]:
        """The evaluation types this data holds, ``bbox`` first."""
        return tuple(t for t in IOU_TYPES if t in self.gt)


def category_names(parsed: list[tuple[str, ParsedRecord]], categories: Sequence[str] | None) -> list[str]:
    """The normalised category names: ``categories`` (checked), or the ground-truth labels seen."""
    if categories is None:
        return sorted({normalize_label(label) for _, record in parsed for label in record.gt.labels})
    if isinstance(categories, str):
        raise ConfigError(f"categories={categories!r} is a string", fix="give a list of category names")
    names = [normalize_label(c) for c in categories]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"categories repeat {repeated} (after normalising case and whitespace)",
            fix="give each category once",
        )
    return names


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    return np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).tolist()


def _rectangle(xyxy: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def _rles(polygons: list[list[float]], height: int, width: int) -> list[dict[str, Any]]:
    """Compressed RLE masks of polygons in an image, ``counts`` as text (JSON-ready)."""
    if not polygons:
        return []
    rles = mask_api.frPyObjects(polygons, height, width)
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def _count_unscored(parsed: list[tuple[str, ParsedRecord]], cat_ids: dict[str, int]) -> int:
    unscored = 0
    for _, record in parsed:
        missing = np.isnan(record.pred.scores)
        if missing.any():
            unscored += sum(normalize_label(record.pred.labels[i]) in cat_ids for i in np.flatnonzero(missing))
    return int(unscored)


def to_coco(
    parsed: Iterable[tuple[str, ParsedRecord]], categories: Sequence[str] | None = None, allow_unscored: bool = False
) -> CocoData:
    """COCO ground truth and results of parsed records (see the module docstring for the conventions).

    Args:
        parsed: ``(sample_id, parsed record)`` of each record that parsed, in order; image ``i + 1``
            is the ``i``-th.
        categories: Category names (normalised with :func:`~src.metrics.detection.normalize_label`),
            category ``i + 1`` being the ``i``-th; None: the sorted ground-truth labels seen.
        allow_unscored: Score predictions without ``score`` as 1.0 instead of refusing them.

    Returns:
        The :class:`CocoData`, with ``segm`` next to ``bbox`` when a ground-truth box kept in the
        data is a polygon.

    Raises:
        ConfigError: A prediction of a known category has no score and ``allow_unscored`` is
            false (naming how many), or ``categories`` repeats a name.
    """
    parsed = list(parsed)
    names = category_names(parsed, categories)
    cat_ids = {name: i + 1 for i, name in enumerate(names)}
    counters = dict.fromkeys(COUNTER_NAMES, 0)
    unscored = _count_unscored(parsed, cat_ids)
    if unscored and not allow_unscored:
        raise ConfigError(
            f"{unscored} prediction(s) have no score: COCO AP ranks predictions by score", fix=UNSCORED_FIX
        )
    counters["scored_as_one"] = unscored
    segm = any(
        poly is not None and normalize_label(label) in cat_ids
        for _, record in parsed
        for poly, label in zip(record.gt.polys, record.gt.labels, strict=True)
    )
    images, gt_bbox, gt_segm, dt_bbox, dt_segm = [], [], [], [], []
    for image_id, (sample_id, record) in enumerate(parsed, start=1):
        width, height = math.ceil(record.width), math.ceil(record.height)
        images.append({"id": image_id, "file_name": str(sample_id), "width": width, "height": height})
        gt, pred = record.gt, record.pred
        gt_cats = [cat_ids.get(normalize_label(label), 0) for label in gt.labels]
        counters["unknown_gt_labels"] += gt_cats.count(0)
        gt_xywh = _xywh(gt.boxes)
        for k, cat in enumerate(gt_cats):
            if cat:
                box = gt_xywh[k]
                gt_bbox.append(
                    {"id": len(gt_bbox) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                     "area": box[2] * box[3], "iscrowd": 0}
                )  # fmt: skip
        pred_cats = [cat_ids.get(normalize_label(label), 0) for label in pred.labels]
        counters["unknown_labels"] += pred_cats.count(0)
        scores = np.where(np.isnan(pred.scores), 1.0, pred.scores).tolist()
        pred_xywh = _xywh(pred.boxes)
        kept_pred = [k for k, cat in enumerate(pred_cats) if cat]
        dt_bbox += [
            {"image_id": image_id, "category_id": pred_cats[k], "bbox": pred_xywh[k], "score": scores[k]}
            for k in kept_pred
        ]
        if segm:
            kept_gt = [k for k, cat in enumerate(gt_cats) if cat]
            polygons = [gt.polys[k] or _rectangle(gt.boxes[k]) for k in kept_gt]
            areas = mask_api.area(_rles(polygons, height, width)).tolist() if polygons else []
            first = len(gt_segm) + 1
            gt_segm += [
                {"id": first + j, "image_id": image_id, "category_id": gt_cats[k], "bbox": gt_xywh[k],
                 "segmentation": [polygons[j]], "area": float(areas[j]), "iscrowd": 0}
                for j, k in enumerate(kept_gt)
            ]  # fmt: skip
            masks = _rles([pred.polys[k] or _rectangle(pred.boxes[k]) for k in kept_pred], height, width)
            dt_segm += [
                {"image_id": image_id, "category_id": pred_cats[k], "segmentation": rle, "score": scores[k]}
                for k, rle in zip(kept_pred, masks, strict=True)
            ]
    cats = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(names)]
    data = CocoData(names, {"bbox": {"images": images, "annotations": gt_bbox, "categories": cats}}, {"bbox": dt_bbox})
    if segm:
        data.gt["segm"] = {"images": images, "annotations": gt_segm, "categories": cats}
        data.dt["segm"] = dt_segm
    data.counters = counters
    return data


def coco_files(coco_data: CocoData) -> dict[str, Any]:
    """The JSON objects of the COCO files, by file name.

    Returns:
        ``{"coco_gt.json": <gt dataset>, "coco_preds.json": <results list>}`` of the ``bbox``
        evaluation, plus ``coco_gt_segm.json`` / ``coco_preds_segm.json`` when the data holds
        ``segm``. Each pair is what pycocotools' ``COCO(gt).loadRes(preds)`` reads.
    """
    files: dict[str, Any] = {}
    for iou_type in coco_data.iou_types:
        suffix = "" if iou_type == "bbox" else f"_{iou_type}"
        files[GT_FILE.replace(".json", f"{suffix}.json")] = coco_data.gt[iou_type]
        files[PREDS_FILE.replace(".json", f"{suffix}.json")] = coco_data.dt[iou_type]
    return files


def check_backend(backend: str) -> str:
    """The backend ``backend`` runs (``auto`` resolved), refused unless known."""
    if backend == "auto":
        return AUTO_BACKEND
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not a COCO backend", fix=f"use one of auto, {', '.join(BACKENDS)}")
    return backend


def _results_annotations(dets: list[dict[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """Copies of the results with what ``COCO.loadRes`` adds: ``id``, ``area``, ``iscrowd`` (and a segm's ``bbox``)."""
    anns = [{**d, "id": i, "iscrowd": 0} for i, d in enumerate(dets, start=1)]
    if iou_type == "bbox":
        for ann in anns:
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    elif anns:
        rles = [ann["segmentation"] for ann in anns]
        for ann, area, box in zip(anns, mask_api.area(rles).tolist(), mask_api.toBbox(rles).tolist(), strict=True):
            ann["area"], ann["bbox"] = float(area), box
    return anns


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    return None


def _evaluate(backend: str, gt: dict[str, Any], dets: list[dict[str, Any]], iou_type: str) -> Any:
    """Run COCO's evaluate / accumulate / summarize; the evaluator object (its output silenced)."""
    # the evaluators write into the annotations (ignore flags, masks): they get copies
    gt_copy = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
    dt_anns = _results_annotations(dets, iou_type)
    dt_data = {"images": gt["images"], "categories": gt["categories"], "annotations": dt_anns}
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt, coco_dt = COCO(), COCO()
            coco_gt.dataset, coco_dt.dataset = gt_copy, dt_data
            coco_gt.createIndex()
            coco_dt.createIndex()
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        else:
            from faster_coco_eval import COCO as FasterCOCO
            from faster_coco_eval import COCOeval_faster

            coco_gt = FasterCOCO(gt_copy, print_function=_quiet)
            coco_dt = FasterCOCO(dt_data, print_function=_quiet)
            evaluator = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=_quiet)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else math.nan


def coco_metrics(coco_data: CocoData, iou_type: str = "bbox", backend: str = "auto") -> dict[str, Any]:
    """COCO summary statistics and per-class AP of the data.

    Args:
        coco_data: :func:`to_coco`'s output.
        iou_type: ``bbox`` or ``segm`` (the latter when the data holds it).
        backend: ``pycocotools``, ``faster_coco_eval`` or ``auto`` (:data:`AUTO_BACKEND`, measured
            faster; both give the same numbers).

    Returns:
        ``{"stats", "per_class", "backend"}``: ``stats`` maps :data:`STAT_NAMES` (the twelve
        ``COCOeval.stats``: AP at IoU 0.50:0.95, 0.50, 0.75, for small / medium / large ground
        truth, AR at 1 / 10 / 100 detections per image and by area) to floats, NaN where COCO
        reports -1 (no ground truth in that range); ``per_class`` has one row per category
        ``{"category", "AP", "AP50", "AP75", "gt", "pred"}`` (AP from COCO's precision array as
        COCO averages it, over the entries > -1, area all, 100 detections; NaN for a category
        without ground truth; ``gt`` / ``pred`` the number of its boxes in the data);
        ``backend`` the library that ran. Without any prediction AP is 0 (with ground truth).

    Raises:
        ConfigError: An unknown backend, or an ``iou_type`` the data does not hold.
    """
    name = check_backend(backend)
    if iou_type not in coco_data.gt:
        held = ", ".join(coco_data.iou_types)
        fix = "use iou_type=bbox" if iou_type == "segm" else f"use one of {held}"
        raise ConfigError(
            f"iou_type={iou_type!r} is not in this COCO data (it holds {held}; segm needs polygon ground truth)", fix
        )
    gt, dets = coco_data.gt[iou_type], coco_data.dt[iou_type]
    evaluator = _evaluate(name, gt, dets, iou_type)
    raw = [float(s) for s in np.asarray(evaluator.stats)[: len(STAT_NAMES)]]
    stats = {k: math.nan if v == -1 else v for k, v in zip(STAT_NAMES, raw, strict=True)}
    precision = np.asarray(evaluator.eval["precision"])  # [iou thresholds, recall points, K, areas, max dets]
    params = evaluator.params
    thresholds = np.asarray(params.iouThrs)
    at50, at75 = (int(np.flatnonzero(np.isclose(thresholds, t))[0]) for t in (0.5, 0.75))
    area, max_dets = list(params.areaRngLbl).index("all"), len(params.maxDets) - 1
    position = {int(c): k for k, c in enumerate(params.catIds)}
    n_gt = np.bincount([a["category_id"] for a in gt["annotations"]], minlength=len(coco_data.categories) + 1)
    n_pred = np.bincount([d["category_id"] for d in dets], minlength=len(coco_data.categories) + 1)
    per_class = []
    for cat_id, category in enumerate(coco_data.categories, start=1):
        k = position.get(cat_id)
        block = precision[:, :, k, area, max_dets] if k is not None else np.full((len(thresholds), 1), -1.0)
        per_class.append(
            {
                "category": category,
                "AP": _mean_valid(block),
                "AP50": _mean_valid(block[at50]),
                "AP75": _mean_valid(block[at75]),
                "gt": int(n_gt[cat_id]),
                "pred": int(n_pred[cat_id]),
            }
        )
    return {"stats": stats, "per_class": per_class, "backend": name}
