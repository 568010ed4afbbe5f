"""The detection evaluator: ``score_records`` of ``evaluate.py`` and ``cv.py`` for detection records.

It scores ``gt_vs_pred.jsonl`` records written by ``predict.py experiment=shapes_det`` or by any
other tool (a vision-language model that writes boxes as text, say) in the record format of
:mod:`src.metrics.detection`: per image ``width``, ``height`` and ``gt`` / ``pred`` lists of
``{type: bbox_2d|poly, points, desc, score}`` in pixels.

``metrics`` picks the families:

* ``coco``: COCO AP / AR for ``bbox`` and, when a ground truth is a polygon, ``segm``
  (:mod:`src.metrics.detection_coco`), with a per-class AP table and the COCO files
  ``coco_gt.json`` / ``coco_preds.json`` for any COCO tool;
* ``f1``: set-matching precision / recall / F1 at each IoU threshold (:mod:`src.metrics.detection`),
  localisation (labels ignored) and full (labels agree), micro and macro, with ``matches.jsonl``;
* ``both`` (the default).

Everything it cannot use is counted, never raised: records that are not detection records
(``invalid_record``), without size (``missing_size``), of another image size (``size_mismatch``),
boxes with bad geometry or score, boxes clipped or outside the image (``strict`` stops at the
first of these with ``<path>:<line>``), and, never stopping ``strict``, empty predictions, labels
that are no category (``unknown_labels``) and unscored predictions (COCO refuses them unless
``allow_unscored`` scores them 1.0, which the output then says).

Categories are the ground-truth labels seen (normalised), unless ``categories`` names them.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from src.core.artifacts import RecordError
from src.core.errors import ConfigError
from src.core.evaluating import Evaluation
from src.metrics.detection import (
    ParseCounters,
    ParsedBoxes,
    ParsedRecord,
    Similarity,
    check_thresholds,
    f1_of_parsed,
    normalize_label,
    parse_record,
    precision_recall_f1,
)
from src.metrics.detection_coco import STAT_NAMES, category_names, check_backend, coco_files, coco_metrics, to_coco

#: Values of ``metrics=``.
METRIC_FAMILIES = ("both", "coco", "f1")
#: Fix of a problem that stops strict mode.
STRICT_FIX = "repair the record, or pass strict=false to count such problems and score the rest"
#: Parse counters not passed on: ``evaluate.py`` counts the records itself.
_SPINE_COUNTED = ("records",)


def word_overlap(threshold: float = 0.5) -> Similarity:
    """A label similarity for free-text labels: Jaccard overlap of their word sets >= ``threshold``.

    ``"red car"`` and ``"car"`` overlap 1/2; ``"a red car"`` and ``"red car"`` 2/3. Words are
    compared after :func:`~src.metrics.detection.normalize_label`. Give it in the config as
    ``similarity: {_target_: src.metrics.detection_scoring.word_overlap, threshold: 0.5}``.

    Raises:
        ConfigError: ``threshold`` outside (0, 1].
    """
    if not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise ConfigError(f"word_overlap threshold={threshold!r} is not in (0, 1]", "e.g. threshold: 0.5")

    def similar(pred: str, gt: str) -> bool:
        a, b = set(normalize_label(pred).split()), set(normalize_label(gt).split())
        if not a and not b:
            return True
        return len(a & b) / len(a | b) >= threshold

    return similar


def _takes_two(function: Any) -> bool:
    """Whether ``function`` can be called with two positional arguments."""
    try:
        inspect.signature(function).bind("pred", "gt")
    except TypeError:
        return False
    except ValueError:  # a builtin without a signature: let the call decide
        return True
    return True


def resolve_similarity(similarity: Similarity | str | None) -> Similarity | None:
    """The label similarity: a callable, a dotted path to one, or None (exact after normalisation).

    Raises:
        ConfigError: A path that does not name a callable.
    """
    if similarity is None:
        return None
    if callable(similarity):
        if not _takes_two(similarity):
            raise ConfigError(
                f"similarity={similarity!r} is not a callable (pred_desc, gt_desc) -> bool",
                "give such a function, or a factory's result as a _target_ node "
                "(similarity={_target_: src.metrics.detection_scoring.word_overlap, threshold: 0.5})",
            )
        return similarity
    module, _, name = str(similarity).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        found = None
    if not callable(found) or not _takes_two(found):
        raise ConfigError(
            f"similarity={similarity!r} does not name a callable (pred_desc, gt_desc) -> bool",
            "pass a dotted path to such a function, or a _target_ node "
            "(similarity={_target_: src.metrics.detection_scoring.word_overlap, threshold: 0.5})",
        )
    return found


def _check_options(
    metrics: str, allow_unscored: Any, f1_min_score: Any, thresholds: Any, categories: Any, backend: str
) -> None:
    """Refuse a bad option before any record is scored (a COCO pass over a large file takes seconds)."""
    check_thresholds(thresholds)
    check_backend(backend)
    category_names([], categories)
    if metrics not in METRIC_FAMILIES:
        raise ConfigError(
            f"metrics={metrics!r} is not a metric family", f"pass metrics=<one of {'|'.join(METRIC_FAMILIES)}>"
        )
    if not isinstance(allow_unscored, bool):
        raise ConfigError(f"allow_unscored={allow_unscored!r} is not a boolean", "pass allow_unscored=true or false")
    if f1_min_score is not None and (
        isinstance(f1_min_score, bool) or not isinstance(f1_min_score, int | float) or not math.isfinite(f1_min_score)
    ):
        raise ConfigError(f"f1_min_score={f1_min_score!r} is not a number", "pass f1_min_score=0.5, or null for all")


def _parse_all(records: Sequence[Any], strict: bool) -> tuple[list[tuple[int, Any, ParsedRecord]], ParseCounters]:
    counters, entries = ParseCounters(), []
    for position, record in enumerate(records):
        sample_id = record.get("sample_id") if isinstance(record, dict) else None
        try:
            parsed, increments = parse_record(record, strict=strict, where=f"record {sample_id!r}")
        except ValueError as exc:
            raise RecordError(position, str(exc), STRICT_FIX) from exc
        counters.add(increments)
        if parsed is not None:
            entries.append((position, sample_id, parsed))
    if not entries:
        seen = ", ".join(f"{k}={v}" for k, v in counters.as_dict().items() if v and k != "records")
        raise RecordError(
            0,
            f"none of the {len(records)} records is a usable detection record ({seen}): each needs width, height "
            "and gt / pred lists of {type, points, desc, score} boxes",
            "point path at detection predictions, or name the right task with task=<name>",
        )
    return entries, counters


def _confident(parsed: ParsedRecord, min_score: float | None) -> ParsedRecord:
    """The record with predictions scored below ``min_score`` left out (unscored ones kept)."""
    pred = parsed.pred
    if min_score is None or not len(pred.scores):
        return parsed
    keep = np.isnan(pred.scores) | (pred.scores >= min_score)
    if keep.all():
        return parsed
    rows = np.flatnonzero(keep)
    kept = ParsedBoxes(
        pred.boxes[rows],
        pred.index[rows],
        [pred.labels[i] for i in rows],
        pred.scores[rows],
        [pred.polys[i] for i in rows],
    )
    return ParsedRecord(parsed.width, parsed.height, parsed.gt, kept)


def _f1_part(
    entries: list[tuple[int, Any, ParsedRecord]],
    thresholds: Sequence[float],
    similarity: Similarity | None,
    min_score: float | None,
) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Flat F1 metrics, the nested table, matches.jsonl rows, and per-image counts."""
    result = f1_of_parsed([(p, s, _confident(r, min_score)) for p, s, r in entries], thresholds, similarity)
    flat: dict[str, float] = {}
    for key, by_kind in result["metrics"].items():
        for kind, by_avg in by_kind.items():
            for avg, values in by_avg.items():
                for stat in ("f1", "precision", "recall", "tp", "fp", "fn"):
                    if stat in values:
                        flat[f"f1/{key}/{kind}/{avg}_{stat}"] = float(values[stat])
    table = {"thresholds": list(result["metrics"]), "min_score": min_score, "metrics": result["metrics"]}
    return flat, table, result["matches"], result["counts"]


def _per_sample(entries: list[tuple[int, Any, ParsedRecord]], counts: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for k, (_, sample_id, parsed) in enumerate(entries):
        row: dict[str, Any] = {"sample_id": sample_id, "gt": len(parsed.gt.labels), "pred": len(parsed.pred.labels)}
        if counts:  # the predictions F1 scored (f1_min_score leaves low-scored ones out)
            first = next(iter(counts.values()))["localisation"][k]
            row["pred_f1"] = first["tp"] + first["fp"]
        for key, by_kind in (counts or {}).items():
            full = by_kind["full"][k]
            row[key] = {**full, "f1": precision_recall_f1(**full)["f1"]}
        rows.append(row)
    return rows


def _fmt(value: float) -> str:
    return "  n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _coco_report(iou_type: str, result: dict[str, Any]) -> list[str]:
    stats = result["stats"]
    lines = [
        f"  COCO {iou_type} ({result['backend']}): "
        + "  ".join(f"{name} {_fmt(stats[name])}" for name in STAT_NAMES[:6]),
        "  "
        + " " * (len(f"COCO {iou_type} ({result['backend']}): "))
        + "  ".join(f"{name} {_fmt(stats[name])}" for name in STAT_NAMES[6:]),
        f"  {'per-class ' + iou_type + ' AP:':<20}{'class':<20} "
        f"{'AP':>6} {'AP50':>6} {'AP75':>6} {'gt':>7} {'pred':>7}",
    ]
    for row in result["per_class"]:
        lines.append(
            f"  {'':<20}{row['category'][:20]:<20} {_fmt(row['AP']):>6} {_fmt(row['AP50']):>6} "
            f"{_fmt(row['AP75']):>6} {row['gt']:>7} {row['pred']:>7}"
        )
    return lines


def _f1_report(table: dict[str, Any]) -> list[str]:
    keys = table["thresholds"]
    scope = "all predictions" if table["min_score"] is None else f"predictions scored >= {table['min_score']:g}"
    head = "".join(f"  {key:^23}" for key in keys)
    sub = "".join(f"  {'P':>7}{'R':>8}{'F1':>8}" for _ in keys)
    lines = [f"  {'F1, ' + scope:<30}{head}", f"  {'':<30}{sub}"]
    for kind in ("localisation", "full"):
        for avg in ("micro", "macro"):
            cells = "".join(
                "  "
                + "".join(f"{_fmt(table['metrics'][key][kind][avg][s]):>8}" for s in ("precision", "recall", "f1"))[1:]
                for key in keys
            )
            lines.append(f"  {kind + ' ' + avg:<30}{cells}")
    return lines


def score_records(
    records: Sequence[dict[str, Any]],
    metrics: str = "both",
    iou_thresholds: Sequence[float] = (0.3, 0.5),
    f1_min_score: float | None = 0.5,
    allow_unscored: bool = False,
    similarity: Similarity | str | None = None,
    categories: Sequence[str] | None = None,
    backend: str = "auto",
    strict: bool = False,
) -> Evaluation:
    """COCO AP and set-matching F1 of detection records.

    Args:
        records: Labelled detection records (``evaluate.py`` passes those with ``gt`` and no
            error code).
        metrics: ``coco``, ``f1`` or ``both``.
        iou_thresholds: IoU thresholds of F1.
        f1_min_score: F1 leaves out predictions scored below it (a detector writes low-scored
            boxes for AP's ranking); unscored ones are kept. None: every prediction.
        allow_unscored: Score predictions without ``score`` as 1.0 for COCO (said in the notes);
            otherwise they make ``metrics=coco|both`` fail with the fix.
        similarity: Label agreement for F1's full counts: a callable ``(pred_desc, gt_desc) ->
            bool`` or its dotted path; None compares labels exactly after normalisation.
        categories: The category names; None takes the ground-truth labels seen.
        backend: COCO library: ``auto``, ``pycocotools`` or ``faster_coco_eval``.
        strict: Stop at the first unusable record or box (a ``RecordError`` naming it).

    Returns:
        An :class:`~src.core.evaluating.Evaluation`: flat metrics (``bbox/AP``, ``bbox/AP50``, ...,
        ``segm/...``, ``f1/iou_0.5/full/micro_f1``, ...; headline first), per-image rows,
        counters, the files ``coco_gt.json``, ``coco_preds.json``, ``per_class_ap.json``,
        ``f1.json`` and ``matches.jsonl`` (those of the families asked for), notes and the
        printed tables.

    Raises:
        ConfigError: An option out of range, or unscored predictions without ``allow_unscored``.
        RecordError: No usable record at all, or (strict) the first unusable one.
    """
    _check_options(metrics, allow_unscored, f1_min_score, iou_thresholds, categories, backend)
    similar = resolve_similarity(similarity)
    entries, parse_counters = _parse_all(records, strict)
    counters = {k: v for k, v in parse_counters.as_dict().items() if k not in _SPINE_COUNTED}
    flat: dict[str, float] = {}
    files: dict[str, Any] = {}
    notes: list[str] = []
    report: list[str] = []
    counts = None
    if metrics in ("coco", "both"):
        data = to_coco([(str(s), r) for _, s, r in entries], categories, allow_unscored)
        counters.update(data.counters)
        per_class = {}
        for iou_type in data.iou_types:
            result = coco_metrics(data, iou_type, backend)
            flat.update({f"{iou_type}/{name}": result["stats"][name] for name in STAT_NAMES})
            per_class[iou_type] = result["per_class"]
            report += _coco_report(iou_type, result)
        files.update(coco_files(data))
        files["per_class_ap.json"] = per_class
        if data.counters.get("scored_as_one"):
            notes.append(
                f"allow_unscored=true: {data.counters['scored_as_one']} predictions without score were scored as 1.0 "
                "for COCO AP (their order among themselves is arbitrary)"
            )
        if data.counters.get("unknown_labels"):
            notes.append(
                f"{data.counters['unknown_labels']} predictions name no category ({', '.join(data.categories)}) and "
                "are left out of COCO AP; F1 counts them as label mismatches"
            )
    if metrics in ("f1", "both"):
        f1_flat, table, matches, counts = _f1_part(entries, iou_thresholds, similar, f1_min_score)
        flat.update(f1_flat)
        files["f1.json"] = table
        files["matches.jsonl"] = matches
        report += _f1_report(table)
    headline = [k for k in flat if k.split("/")[-1] in ("AP", "AP50", "AP75") or k.endswith("/full/micro_f1")]
    return Evaluation(
        metrics={**{k: flat[k] for k in headline}, **flat},
        per_sample=_per_sample(entries, counts),
        counters=counters,
        files=files,
        notes=notes,
        report="\n".join(report),
    )
