"""Set-matching F1 of detection records: parsing with counters, box IoU, greedy matching, P/R/F1.

A record is one image of the artifact contract: a dict with ``width`` and ``height`` (pixels) and
``gt`` and ``pred`` lists of boxes ``{type, points, desc, score}`` in pixel coordinates. ``bbox_2d``
points are ``[x1, y1, x2, y2]``; ``poly`` points are a flat ``[x1, y1, x2, y2, ...]`` list of at
least three vertices. For F1 a polygon is scored by its axis-aligned bounding box.

Parsing never raises unless ``strict`` is set: every box or record it cannot use is counted in
:class:`ParseCounters` and left out. Rules, in order:

* a record that is not a dict, or whose ``gt`` / ``pred`` is not a list, is skipped
  (``invalid_record``); a record without ``width`` / ``height`` is skipped (``missing_size``); a
  size that is not a finite number > 0 skips the record (``invalid_size``);
* a record whose optional ``pred_size`` (``[w, h]`` of the image the predictor saw) differs from
  its ``width`` / ``height`` is skipped (``size_mismatch``): its predicted boxes are in another
  image's coordinates;
* a box of unknown type, with the wrong number of points, a non-finite value or ``x2 < x1`` /
  ``y2 < y1`` is dropped (``invalid_geometry``); a ``score`` that is present but not a finite
  number drops the box (``invalid_score``); a prediction without ``score`` is kept and counted
  (``unscored_predictions``; COCO AP needs scores, see :mod:`src.metrics.detection_coco`);
* a box partly outside the image is clipped to ``[0, width] × [0, height]`` (``boxes_clipped``),
  as the part outside can hold no object; a box of positive area that lies wholly outside (zero
  area once clipped) is dropped (``boxes_outside``);
* an empty ``pred`` list is counted (``empty_predictions``) and scored: an image where the model
  found nothing is valid data, so strict mode does not stop on it, nor on an unscored prediction;
  every other counted case, clipping included, stops strict mode.

``score`` is read by nobody here: set-matching F1 scores every prediction it is given, so filter
by score before calling it.

Matching at an IoU threshold ``t`` is greedy and one-to-one: all (pred, gt) pairs with
``IoU >= t`` are taken in the order (−IoU, pred index, gt index), a pair being kept when neither
box is already matched. The matching ignores labels ("localisation" counts); a matched pair whose
labels agree is a true positive of the "full" counts, and a mismatched pair is then one false
positive and one false negative. Labels agree when equal after :func:`normalize_label` unless a
similarity callable ``(pred_desc, gt_desc) -> bool`` is given, which receives the raw ``desc``
strings.

Precision, recall and F1 follow the conventions P = 1 when nothing was predicted, R = 1 when
nothing was there and F1 = 0 when P + R = 0. Micro values sum TP/FP/FN over images; macro values
are the means of the per-image P, R and F1. Box indices everywhere are positions in the record's
original ``gt`` / ``pred`` lists, so dropped boxes do not shift them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from src.core.errors import ConfigError

Similarity = Callable[[str, str], bool]
BOX_TYPES = ("bbox_2d", "poly")


@dataclass
class ParseCounters:
    """Counts of what parsing saw and could not use; the names are stable output keys."""

    records: int = 0
    records_used: int = 0
    invalid_record: int = 0
    missing_size: int = 0
    invalid_size: int = 0
    size_mismatch: int = 0
    invalid_geometry: int = 0
    invalid_score: int = 0
    unscored_predictions: int = 0
    boxes_clipped: int = 0
    boxes_outside: int = 0
    empty_predictions: int = 0

    def add(self, other: ParseCounters) -> None:
        """Add another counter set into this one, field by field."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for ``metrics.json``)."""
        return asdict(self)


@dataclass
class ParsedBoxes:
    """The usable boxes of one side (gt or pred) of a record.

    Attributes:
        boxes: ``(n, 4)`` float array of ``[x1, y1, x2, y2]`` in pixels, clipped to the image.
        index: ``(n,)`` positions of these boxes in the record's original list.
        labels: The ``desc`` of each box ("" when absent).
        scores: ``(n,)`` the ``score`` of each box, NaN where it has none.
        polys: The flat ``[x1, y1, x2, y2, ...]`` points of each ``poly`` box as given (not
            clipped), None for a ``bbox_2d``.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    labels: list[str] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    polys: list[list[float] | None] = field(default_factory=list)


@dataclass
class ParsedRecord:
    """The usable content of one record: its size and both box sets."""

    width: float
    height: float
    gt: ParsedBoxes
    pred: ParsedBoxes


def normalize_label(text: str) -> str:
    """Normalise a label for exact comparison: strip, collapse inner whitespace, casefold."""
    return " ".join(str(text).split()).casefold()


def _problem(strict: bool, where: str, what: str) -> None:
    if strict:
        raise ValueError(f"{where}: {what}")


def _finite_number(value: Any) -> bool:
    kind = type(value)
    if kind is float:  # the JSON cases first: this runs once per coordinate
        return math.isfinite(value)
    if kind is int:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_) and math.isfinite(value)


def box_geometry(box: Any) -> tuple[tuple[float, float, float, float] | None, str]:
    """Axis-aligned ``(x1, y1, x2, y2)`` of one box dict, or ``None`` with the reason.

    Plain Python floats, no array per box: a predictions file holds hundreds of thousands of boxes.

    Args:
        box: A ``{type, points, ...}`` dict; a ``poly`` yields its bounding box.

    Returns:
        ``(xyxy, "")`` when usable, else ``(None, reason)`` naming the field and value.
    """
    if not isinstance(box, Mapping):
        return None, f"box is {type(box).__name__}, expected a dict"
    kind, points = box.get("type"), box.get("points")
    if kind not in BOX_TYPES:
        return None, f"type={kind!r}, expected one of {BOX_TYPES}"
    if not isinstance(points, list | tuple) or not all(_finite_number(p) for p in points):
        return None, f"points={points!r}, expected a list of finite numbers"
    if kind == "bbox_2d":
        if len(points) != 4:
            return None, f"points has {len(points)} values, bbox_2d needs 4"
        x1, y1, x2, y2 = (float(p) for p in points)
        if x2 < x1 or y2 < y1:
            return None, f"points={list(points)!r} has x2 < x1 or y2 < y1"
        return (x1, y1, x2, y2), ""
    if len(points) < 6 or len(points) % 2:
        return None, f"points has {len(points)} values, poly needs an even count >= 6"
    xs, ys = points[0::2], points[1::2]
    return (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))), ""


def _record_size(record: Any, strict: bool, where: str, counters: ParseCounters) -> tuple[float, float] | None:
    if not isinstance(record, Mapping):
        counters.invalid_record += 1
        _problem(strict, where, f"record is {type(record).__name__}, expected a dict")
        return None
    for side in ("gt", "pred"):
        if not isinstance(record.get(side), list):
            counters.invalid_record += 1
            _problem(strict, where, f"{side}={record.get(side)!r}, expected a list of boxes")
            return None
    for name in ("width", "height"):
        if record.get(name) is None:
            counters.missing_size += 1
            _problem(strict, where, f"{name} is missing, expected the image size in pixels")
            return None
    width, height = record["width"], record["height"]
    for name, value in (("width", width), ("height", height)):
        if not _finite_number(value) or value <= 0:
            counters.invalid_size += 1
            _problem(strict, where, f"{name}={value!r}, expected a finite number > 0")
            return None
    seen = record.get("pred_size")
    if seen is not None and (
        not isinstance(seen, list | tuple)
        or not all(_finite_number(v) for v in seen)
        or [float(v) for v in seen] != [width, height]
    ):
        counters.size_mismatch += 1
        _problem(
            strict,
            where,
            f"pred_size={seen!r} differs from width x height = {width}x{height}: the predictions are in the "
            "coordinates of another image size (rescale them to width x height)",
        )
        return None
    return float(width), float(height)


def _clip(xyxy: tuple[float, ...], width: float, height: float) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = xyxy
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def _area(xyxy: tuple[float, ...]) -> float:
    return (xyxy[2] - xyxy[0]) * (xyxy[3] - xyxy[1])


def _parse_side(
    boxes: list, side: str, size: tuple[float, float], strict: bool, where: str, counters: ParseCounters
) -> ParsedBoxes:
    kept, index, labels, scores, polys = [], [], [], [], []
    for i, box in enumerate(boxes):
        xyxy, reason = box_geometry(box)
        if xyxy is None:
            counters.invalid_geometry += 1
            _problem(strict, where, f"{side}[{i}]: {reason}")
            continue
        score = box.get("score")
        if score is not None and not _finite_number(score):
            counters.invalid_score += 1
            _problem(strict, where, f"{side}[{i}]: score={score!r}, expected a finite number or no score")
            continue
        clipped = _clip(xyxy, *size)
        if _area(xyxy) > 0 and _area(clipped) <= 0:
            counters.boxes_outside += 1
            _problem(
                strict, where, f"{side}[{i}]: points={box['points']!r} lie outside the {size[0]:g}x{size[1]:g} image"
            )
            continue
        if clipped != xyxy:
            counters.boxes_clipped += 1
            _problem(
                strict, where, f"{side}[{i}]: points={box['points']!r} extend outside the {size[0]:g}x{size[1]:g} image"
            )
        kept.append(clipped)
        index.append(i)
        labels.append(str(box.get("desc") or ""))
        scores.append(math.nan if score is None else float(score))
        polys.append([float(v) for v in box["points"]] if box["type"] == "poly" else None)
        counters.unscored_predictions += int(side == "pred" and score is None)
    return ParsedBoxes(
        np.asarray(kept, dtype=float).reshape(-1, 4),
        np.asarray(index, dtype=int),
        labels,
        np.asarray(scores, dtype=float),
        polys,
    )


def parse_record(record: Any, strict: bool = False, where: str = "record") -> tuple[ParsedRecord | None, ParseCounters]:
    """Validate one record and return its usable boxes plus the counter increments.

    Args:
        record: One ``gt_vs_pred.jsonl`` record (see the module docstring for the format).
        strict: Raise at the first problem instead of counting it.
        where: Prefix of error messages (e.g. ``"preds.jsonl:12"``).

    Returns:
        ``(parsed, counters)``; ``parsed`` is ``None`` when the whole record was skipped.

    Raises:
        ValueError: In strict mode, at the first problem, naming the field and value.
    """
    counters = ParseCounters(records=1)
    size = _record_size(record, strict, where, counters)
    if size is None:
        return None, counters
    gt = _parse_side(record["gt"], "gt", size, strict, where, counters)
    pred = _parse_side(record["pred"], "pred", size, strict, where, counters)
    counters.empty_predictions += int(len(record["pred"]) == 0)
    counters.records_used = 1
    return ParsedRecord(size[0], size[1], gt, pred), counters


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of axis-aligned boxes.

    Args:
        a: ``(n, 4)`` boxes ``[x1, y1, x2, y2]``.
        b: ``(m, 4)`` boxes ``[x1, y1, x2, y2]``.

    Returns:
        ``(n, m)`` IoU matrix; a pair whose union has zero area has IoU 0.
    """
    a, b = np.asarray(a, dtype=float).reshape(-1, 4), np.asarray(b, dtype=float).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of predictions to ground truth.

    Args:
        iou: ``(n_pred, n_gt)`` IoU matrix.
        threshold: Minimum IoU of a matched pair.

    Returns:
        Matched ``(pred row, gt column)`` pairs, in the order they were taken: pairs with
        ``IoU >= threshold`` sorted by (−IoU, pred row, gt column).
    """
    rows, cols = np.nonzero(iou >= threshold)
    order = np.lexsort((cols, rows, -iou[rows, cols]))
    used_pred, used_gt, pairs = set(), set(), []
    for k in order:
        p, g = int(rows[k]), int(cols[k])
        if p not in used_pred and g not in used_gt:
            used_pred.add(p)
            used_gt.add(g)
            pairs.append((p, g))
    return pairs


def precision_recall_f1(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall and F1 with the empty-set conventions.

    P = 1 when nothing was predicted (tp + fp = 0), R = 1 when nothing was there (tp + fn = 0),
    F1 = 0 when P + R = 0.
    """
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _labels_agree(pred: str, gt: str, similarity: Similarity | None) -> bool:
    if similarity is None:
        return normalize_label(pred) == normalize_label(gt)
    return bool(similarity(pred, gt))


def match_image(
    parsed: ParsedRecord, iou: np.ndarray, threshold: float, similarity: Similarity | None = None
) -> dict[str, Any]:
    """Match one image at one threshold and count localisation and full TP/FP/FN.

    Args:
        parsed: The record's usable boxes.
        iou: ``(n_pred, n_gt)`` IoU of its usable boxes.
        threshold: IoU threshold.
        similarity: Label agreement callable; exact match after normalisation when ``None``.

    Returns:
        ``{matched, unmatched_pred, unmatched_gt, localisation, full}``: matched pairs as
        ``{pred, gt, iou, labels_agree}`` with original indices, the unmatched original indices,
        and ``{tp, fp, fn}`` for each count kind.
    """
    pred, gt = parsed.pred, parsed.gt
    matched = []
    for p, g in greedy_match(iou, threshold):
        agree = _labels_agree(pred.labels[p], gt.labels[g], similarity)
        matched.append(
            {"pred": int(pred.index[p]), "gt": int(gt.index[g]), "iou": float(iou[p, g]), "labels_agree": agree}
        )
    n_pred, n_gt = len(pred.labels), len(gt.labels)
    tp_loc = len(matched)
    tp_full = sum(m["labels_agree"] for m in matched)
    return {
        "matched": matched,
        "unmatched_pred": sorted(set(pred.index.tolist()) - {m["pred"] for m in matched}),
        "unmatched_gt": sorted(set(gt.index.tolist()) - {m["gt"] for m in matched}),
        "localisation": {"tp": tp_loc, "fp": n_pred - tp_loc, "fn": n_gt - tp_loc},
        "full": {"tp": tp_full, "fp": n_pred - tp_full, "fn": n_gt - tp_full},
    }


def threshold_key(threshold: float) -> str:
    """The output key of an IoU threshold, e.g. ``"iou_0.5"``."""
    return f"iou_{threshold:g}"


def check_thresholds(thresholds: Iterable[float]) -> list[float]:
    """The IoU thresholds as floats, each once, refused unless each is in (0, 1]."""
    values = list(thresholds)
    bad = [t for t in values if not _finite_number(t) or not 0 < t <= 1]
    if not values or bad:
        raise ConfigError(f"F1 thresholds={values!r}: each must be an IoU in (0, 1]", fix="e.g. thresholds=[0.3,0.5]")
    return list(dict.fromkeys(float(t) for t in values))


def _aggregate(per_image: list[dict[str, int]]) -> dict[str, dict[str, float]]:
    totals = {k: sum(c[k] for c in per_image) for k in ("tp", "fp", "fn")}
    micro = {**precision_recall_f1(**totals), **totals}
    scores = [precision_recall_f1(**c) for c in per_image]
    macro = {
        k: float(np.mean([s[k] for s in scores])) if scores else float("nan") for k in ("precision", "recall", "f1")
    }
    return {"micro": micro, "macro": macro}


def f1_scores(
    records: Iterable[Any],
    thresholds: Sequence[float] = (0.3, 0.5),
    similarity: Similarity | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Set-matching precision / recall / F1 of detection records at each IoU threshold.

    Args:
        records: ``gt_vs_pred.jsonl`` records (dicts; see the module docstring).
        thresholds: IoU thresholds in (0, 1].
        similarity: Label agreement callable ``(pred_desc, gt_desc) -> bool``; exact match after
            :func:`normalize_label` when ``None``.
        strict: Raise ``ValueError`` at the first unusable record or box instead of counting it.

    Returns:
        ``{"metrics", "counters", "matches"}``: ``metrics[threshold_key(t)][kind][avg]`` with kind
        ``localisation`` / ``full`` and avg ``micro`` (precision, recall, f1, tp, fp, fn) /
        ``macro`` (precision, recall, f1; NaN when no record was usable); ``counters`` from
        :class:`ParseCounters`; ``matches`` one entry per usable record (``record``: its position
        in ``records``, ``sample_id`` when present, and per threshold key the output of
        :func:`match_image` without its counts), ready for ``matches.jsonl``.

    Raises:
        ConfigError: A threshold outside (0, 1].
        ValueError: In strict mode, at the first problem in the records.
    """
    values = check_thresholds(thresholds)
    counters = ParseCounters()
    entries = []
    for position, record in enumerate(records):
        parsed, increments = parse_record(record, strict=strict, where=f"records[{position}]")
        counters.add(increments)
        if parsed is not None:
            entries.append((position, record.get("sample_id"), parsed))
    return {**f1_of_parsed(entries, values, similarity), "counters": counters.as_dict()}


def f1_of_parsed(
    entries: Sequence[tuple[int, Any, ParsedRecord]], thresholds: Sequence[float], similarity: Similarity | None
) -> dict[str, Any]:
    """:func:`f1_scores` of records already parsed: ``(position, sample_id, parsed)`` each.

    Returns:
        ``{"metrics", "matches", "counts"}`` (``counts[threshold_key][kind]``: the per-image
        ``{tp, fp, fn}`` in the order of ``entries``).
    """
    values = check_thresholds(thresholds)
    counts = {threshold_key(t): {"localisation": [], "full": []} for t in values}
    matches = []
    for position, sample_id, parsed in entries:
        iou = box_iou(parsed.pred.boxes, parsed.gt.boxes)
        entry: dict[str, Any] = {"record": position}
        if sample_id is not None:
            entry["sample_id"] = sample_id
        for t in values:
            result = match_image(parsed, iou, t, similarity)
            for kind in ("localisation", "full"):
                counts[threshold_key(t)][kind].append(result.pop(kind))
            entry[threshold_key(t)] = result
        matches.append(entry)
    metrics = {key: {kind: _aggregate(c) for kind, c in by_kind.items()} for key, by_kind in counts.items()}
    return {"metrics": metrics, "matches": matches, "counts": counts}
