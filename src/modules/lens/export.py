"""The lens-correction export of a predicted split, derived from its records.

``corrected/<input file name>``  every corrected photo: the input's name and size, JPEG
``submission.zip``               those files at the top level, ready to upload
``scores.csv``                   ``image_id,score`` (photos with a target)
``buckets.csv``                  per size bucket: count, mean score, zero rate, and the "all" row
``coefficients.json``            the heuristic's fitted cameras (global, per orientation, per bucket)
``report.html``                  self-contained: the worst photos side by side (input, output,
                                 target, edge overlay), the bucket table and the gates

A record holds the camera each photo was corrected with, so the corrected photo is made again from
the input file here (OpenCV's remap with cached maps) rather than kept in memory for a whole split.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from src.core.errors import DataError
from src.core.io import atomic_path, write_json_atomic, write_text_atomic
from src.datamodules.lens.geometry import Camera, undistort
from src.datamodules.lens.layout import decode_image
from src.metrics.lens import Gates, bucket_table, check_gates

CORRECTED_DIR = "corrected"
ZIP_FILE = "submission.zip"
SCORES_FILE = "scores.csv"
BUCKETS_FILE = "buckets.csv"
COEFFICIENTS_FILE = "coefficients.json"
REPORT_FILE = "report.html"
#: Long side, in pixels, of the pictures in ``report.html``.
REPORT_SIDE = 360


def _write_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=quality)


def _corrected(record: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, Path]:
    """``(input, corrected, input path)`` of a record: the input file read once."""
    source = Path(record["input"])
    try:
        image = decode_image(source)
    except OSError as exc:
        raise DataError(f"cannot read {source} to export its correction: {exc}", "restore the file") from exc
    return image, undistort(image, Camera.from_mapping(record["pred"])), source


def _thumb(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    scale = REPORT_SIDE / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def edge_overlay(output: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Canny edges of the output in red and of the target in green (yellow where they agree)."""
    overlay = np.zeros_like(target)
    for channel, image in ((0, output), (1, target)):
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        overlay[..., channel] = cv2.Canny(cv2.GaussianBlur(grey, (3, 3), 0), 50, 150)
    return overlay


def _table_html(table: Sequence[Mapping[str, Any]], gates: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(r['bucket']))}</td><td>{r['count']}</td><td>{r['mean']:.2f}</td>"
        f"<td>{r['zero_rate']:.1%}</td></tr>"
        for r in table
    )
    verdicts = "".join(
        f"<li>{html.escape(name)}: {'n/a' if ok is None else ('pass' if ok else 'FAIL')}</li>"
        for name, ok in gates.items()
    )
    return (
        "<table><tr><th>bucket</th><th>images</th><th>mean score</th><th>zero rate</th></tr>"
        f"{rows}</table><h2>Gates</h2><ul>{verdicts}</ul>"
    )


def _report(worst: list[tuple[Mapping[str, Any], list[np.ndarray]]], table: list, gates: dict) -> str:
    cards = []
    for record, pictures in worst:
        pred = record["pred"]
        fail = pred.get("hard_fail") or "none"
        caption = (
            f"{html.escape(record['sample_id'])} · bucket {html.escape(str(record['bucket']))} · score "
            f"{pred['score']:.2f} · hard fail: {html.escape(fail)} · k1={pred['k1']:.3f} k2={pred['k2']:.3f} "
            f"cx={pred['cx']:.3f} cy={pred['cy']:.3f}"
        )
        figures = "".join(
            f'<figure><img src="{_png(p)}"><figcaption>{name}</figcaption></figure>'
            for name, p in zip(("input", "output", "target", "edges: output red, target green"), pictures, strict=True)
        )
        cards.append(f"<section><p>{caption}</p><div class=row>{figures}</div></section>")
    style = (
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:right}.row{display:flex;gap:6px;flex-wrap:wrap}figure{margin:0}"
        "figcaption{font-size:12px;color:#555}"
    )
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>lens correction</title><style>{style}</style>"
        f"</head><body><h1>Lens correction: per-bucket scores</h1>{_table_html(table, gates)}"
        f"<h1>The {len(worst)} lowest scores</h1>{''.join(cards)}</body></html>"
    )


def export_lens(
    records: Sequence[Mapping[str, Any]],
    out_dir: Path,
    quality: int = 95,
    report_worst: int = 8,
    coefficients: Mapping[str, Any] | None = None,
    gates: Gates | None = None,
) -> dict[str, Path]:
    """Write the export of a split into ``out_dir`` (the module's ``export_predictions``).

    Returns:
        Artifact name -> written path.

    Raises:
        DataError: An input file can no longer be read.
    """
    corrected_dir = out_dir / CORRECTED_DIR
    corrected_dir.mkdir(parents=True, exist_ok=True)
    labelled = [r for r in records if r.get("gt") and isinstance(r["pred"].get("score"), int | float)]
    ranked = sorted(labelled, key=lambda r: (r["pred"]["score"], r["sample_id"]))
    worst_ids = {r["sample_id"] for r in ranked[:report_worst]}
    worst: list[tuple[Mapping[str, Any], list[np.ndarray]]] = []
    names: list[str] = []
    for record in records:
        original, image, source = _corrected(record)
        _write_jpeg(corrected_dir / source.name, image, quality)
        names.append(source.name)
        if record["sample_id"] in worst_ids:
            target = decode_image(Path(record["gt"]["target"]))
            pictures = [_thumb(original), _thumb(image), _thumb(target)]
            pictures.append(edge_overlay(pictures[1], pictures[2]))
            worst.append((record, pictures))
    artifacts = {"corrected": corrected_dir}
    zip_path = out_dir / ZIP_FILE
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(names):
            archive.write(corrected_dir / name, arcname=name)
    artifacts["submission"] = zip_path
    if coefficients is not None:
        artifacts["coefficients"] = write_json_atomic(out_dir / COEFFICIENTS_FILE, coefficients)
    if labelled:
        scores_path = out_dir / SCORES_FILE
        with atomic_path(scores_path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["image_id", "score"])
            for record in labelled:
                writer.writerow([record["sample_id"], f"{record['pred']['score']:.4f}"])
        artifacts["scores"] = scores_path
        rows = [{"bucket": r["bucket"], "score": r["pred"]["score"], "hard_fail": r["pred"].get("hard_fail")}
                for r in labelled]  # fmt: skip
        table = bucket_table(rows)
        buckets_path = out_dir / BUCKETS_FILE
        with atomic_path(buckets_path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["bucket", "count", "mean", "zero_rate"])
            for row in table:
                writer.writerow([row["bucket"], row["count"], f"{row['mean']:.4f}", f"{row['zero_rate']:.4f}"])
        artifacts["buckets"] = buckets_path
        verdicts = check_gates(table, gates or Gates())
        worst.sort(key=lambda item: (item[0]["pred"]["score"], item[0]["sample_id"]))
        artifacts["report"] = write_text_atomic(out_dir / REPORT_FILE, _report(worst, table, verdicts))
    return artifacts
