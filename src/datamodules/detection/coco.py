"""Detection datasets on disk: COCO folders and artifact-contract record files, read into one table.

Two layouts of a dataset folder ``root`` are read:

``coco`` (the interchange format)::

    root/images/<file_name>
    root/annotations.json        {"images": [{"id", "file_name", "width", "height", "group"?}],
                                  "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h],
                                                   "iscrowd"?, "area"?, "segmentation"?}],
                                  "categories": [{"id", "name"}]}
    root/annotations_test.json   optional test split, same format, same images/ folder

``records`` (podium's artifact contract, one JSON object per line)::

    root/records.jsonl           {"sample_id", "image": "<path relative to root>", "width", "height",
                                  "gt": [{"type": "bbox_2d", "points": [x1, y1, x2, y2], "desc": "<class>"}
                                         | {"type": "poly", "points": [x1, y1, x2, y2, ...], "desc"}],
                                  "group"?}
    root/records_test.jsonl      optional test split

Both become a :class:`DetectionTable`: per image its file, ``sample_id`` (the COCO ``file_name``, or
the record's ``sample_id``), size, group, boxes ``[x1, y1, x2, y2]`` in float pixels and labels as
1-based class indices (0 is the background of torchvision's detectors). Classes are the COCO
categories in category-id order (label ``k + 1`` is the ``k``-th smallest id), or the sorted set of
``desc`` values of the records' train file; a test split uses the train split's classes. A polygon
becomes its bounding box. Boxes refer to the pixels as stored: an EXIF orientation tag is not applied,
as in COCO's own tools.

What is refused, with a DataError naming the file, the item (image / annotation id, line number) and
the value: a missing or unparsable file, missing keys, repeated image, annotation or sample ids, an
annotation of an unknown image or category, a box of negative width or height, a number that is not
finite, an image file that is missing, unreadable or of another size than declared (read from the
file's header). What is repaired, counted in ``DetectionTable.counts`` and logged once per file on
the ``podium`` logger: a box partly outside its image is clipped to it (``clipped``); a box of zero
area once clipped is dropped (``dropped``); ``iscrowd=1`` annotations are left out of the targets
(``crowd``).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, UnidentifiedImageError

from src.core.errors import ConfigError, DataError

log = logging.getLogger("podium")

FORMATS = ("auto", "coco", "records")
#: Annotation file of each split, per layout.
FILES = {
    "coco": {"train": "annotations.json", "test": "annotations_test.json"},
    "records": {"train": "records.jsonl", "test": "records_test.jsonl"},
}
#: Stratification label of an image without boxes.
NO_BOXES = "none"
BOX_TYPES = ("bbox_2d", "poly")


@dataclass(frozen=True)
class DetectionTable:
    """One split of a detection dataset, checked and resolved to files.

    Attributes:
        source: The annotation file it was read from.
        paths: Image files, one per image.
        sample_ids: Unique image ids (COCO ``file_name`` / record ``sample_id``).
        sizes: ``(width, height)`` in pixels.
        groups: Group keys for grouped folds, or None.
        boxes: Per image a float32 ``(N, 4)`` array of ``[x1, y1, x2, y2]`` pixel boxes.
        labels: Per image an int64 ``(N,)`` array of 1-based class indices.
        classes: Class names; label ``k + 1`` is ``classes[k]``.
        counts: ``clipped``, ``dropped`` and ``crowd`` boxes (see the module docstring).
    """

    source: Path
    paths: list[Path]
    sample_ids: list[str]
    sizes: list[tuple[int, int]]
    groups: list[str] | None
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    classes: list[str]
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def head(self, n: int | None) -> DetectionTable:
        """The first ``n`` images (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return replace(
            self,
            paths=self.paths[:n],
            sample_ids=self.sample_ids[:n],
            sizes=self.sizes[:n],
            groups=None if self.groups is None else self.groups[:n],
            boxes=self.boxes[:n],
            labels=self.labels[:n],
        )

    def strata(self) -> list[str]:
        """Per image its most frequent class name (the lowest label on ties), ``"none"`` without boxes."""
        out = []
        for labels in self.labels:
            if len(labels) == 0:
                out.append(NO_BOXES)
                continue
            counts = np.bincount(labels)
            out.append(self.classes[int(np.argmax(counts)) - 1])
        return out


# ---- shared checks ---------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value: Any, where: str, name: str) -> float:
    """``value`` as a float; a DataError naming ``where`` and ``name`` unless it is a finite number."""
    if not _is_number(value) or not math.isfinite(value):
        raise DataError(f"{where}: {name}={value!r} is not a finite number", f"write {name} as a finite number")
    return float(value)


def _size(value: Any, where: str, name: str) -> int:
    """``value`` as an int; a DataError unless it is a whole number >= 1."""
    number = _finite(value, where, name)
    if number < 1 or not number.is_integer():
        raise DataError(f"{where}: {name}={value!r} is not a whole number of pixels >= 1", f"fix {name}")
    return int(number)


def _shown(values: list[Any], n: int = 20) -> str:
    """``values`` as a list literal, cut after ``n`` items."""
    return str(values) if len(values) <= n else f"{str(values[:n])[:-1]}, ... ({len(values)} in all)]"


def _require(obj: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(obj, Mapping):
        raise DataError(f"{where} is a {type(obj).__name__}, not a JSON object", "write it as a JSON object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{where} lacks key(s) {missing}; it has {sorted(obj)}", f"add {', '.join(map(repr, missing))}")


def _id(value: Any, where: str, name: str) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DataError(f"{where}: {name}={value!r} is not an integer or a string", f"write {name} as an integer")
    return value


def _group(obj: Mapping[str, Any], group_field: str | None, where: str, source: Path) -> str | None:
    if group_field is None:
        return None
    value = obj.get(group_field)
    if value is None or isinstance(value, bool) or not isinstance(value, int | str):
        raise DataError(
            f"{where} has no usable group (key {group_field!r}: {value!r})",
            f"give every image of {source.name} a string or integer {group_field!r} (the photo, scene or "
            "patient it comes from), or pass data.group_field=null for ungrouped folds",
        )
    return str(value)


def check_image(path: Path, width: int, height: int, where: str) -> None:
    """Refuse an image file that is missing, unreadable or not ``width`` x ``height`` (header only).

    Raises:
        DataError: naming ``where``, the file and both sizes.
    """
    if not path.is_file():
        raise DataError(f"{where}: image file {path} does not exist", "put the image there or remove its entry")
    try:
        with Image.open(path) as img:
            real = img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{where}: cannot read image {path}: {exc}", "replace the file or remove its entry") from exc
    if real != (width, height):
        raise DataError(
            f"{where}: image {path} is {real[0]}x{real[1]} pixels but is declared width={width}, height={height}",
            f"set width={real[0]}, height={real[1]} (and check its boxes) or replace the image",
        )


class _Boxes:
    """Boxes of one image, clipped to it; counts what was clipped and dropped."""

    def __init__(self, counts: Counter) -> None:
        self.counts = counts
        self.boxes: list[list[float]] = []
        self.labels: list[int] = []

    def add(self, box: tuple[float, float, float, float], label: int, width: int, height: int) -> None:
        x1, y1, x2, y2 = box
        clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                   min(max(x2, 0.0), width), min(max(y2, 0.0), height))  # fmt: skip
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            self.counts["dropped"] += 1
            return
        if clipped != box:
            self.counts["clipped"] += 1
        self.boxes.append(list(clipped))
        self.labels.append(label)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        return boxes, np.asarray(self.labels, dtype=np.int64)


def _report(source: Path, counts: Counter) -> None:
    """One warning per file with what was repaired."""
    parts = []
    if counts["clipped"]:
        parts.append(f"{counts['clipped']} box(es) partly outside their image clipped to it")
    if counts["dropped"]:
        parts.append(f"{counts['dropped']} box(es) of zero area once clipped dropped")
    if counts["crowd"]:
        parts.append(f"{counts['crowd']} iscrowd=1 annotation(s) left out of the targets")
    if parts:
        rank_zero_only(log.warning)(f"{source}: {'; '.join(parts)}")


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"missing annotation file {path}", "write it or point data.root at the dataset folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", "fix the file's syntax"
        ) from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}", "write it as UTF-8 JSON") from exc


# ---- COCO ------------------------------------------------------------------------------------------


def _coco_classes(categories: list[Any], path: Path) -> tuple[list[str], dict[int, str]]:
    """Class names in category-id order, and id -> name."""
    names: dict[int, str] = {}
    for k, cat in enumerate(categories):
        where = f"{path}: categories[{k}]"
        _require(cat, ("id", "name"), where)
        cid = cat["id"]
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise DataError(f"{where}: id={cid!r} is not an integer", "give each category an integer id")
        if not isinstance(cat["name"], str) or not cat["name"]:
            raise DataError(f"{where}: name={cat['name']!r} is not a non-empty string", "name each category")
        if cid in names:
            raise DataError(f"{where}: category id {cid} appears twice", "give each category its own id")
        if cat["name"] in names.values():
            raise DataError(f"{where}: category name {cat['name']!r} appears twice", "give each category its own name")
        names[cid] = cat["name"]
    if not names:
        raise DataError(f"{path} has no categories", "list the classes under 'categories'")
    return [names[cid] for cid in sorted(names)], names


def read_coco(
    path: Path,
    images_dir: Path,
    classes: list[str] | None = None,
    group_field: str | None = "group",
    max_images: int | None = None,
) -> DetectionTable:
    """Read and check a COCO annotation file.

    Args:
        path: The annotation file.
        images_dir: The folder ``file_name`` is relative to.
        classes: The train split's classes (for a test file: its categories are matched by name);
            None to take them from this file's categories in id order.
        group_field: Image key holding the group, or None for no groups.
        max_images: Keep only the first images (files and sizes are checked for those only).

    Returns:
        The split, images in file order.

    Raises:
        DataError: See the module docstring.
    """
    coco = _load_json(path)
    _require(coco, ("images", "annotations", "categories"), str(path))
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco[key], list):
            raise DataError(f"{path}: {key!r} is a {type(coco[key]).__name__}, not a list", f"write {key} as a list")
    own, names = _coco_classes(coco["categories"], path)
    if classes is None:
        classes = own
    index = {name: k + 1 for k, name in enumerate(classes)}
    unknown = sorted(set(names.values()) - set(index))
    if unknown:
        raise DataError(
            f"{path}: categor(ies) {_shown(unknown)} are not among the training classes {_shown(classes)}",
            "use the training file's categories in every split",
        )
    label_of = {cid: index[name] for cid, name in names.items()}

    images: list[Mapping[str, Any]] = []
    position: dict[int | str, int] = {}
    seen_names: dict[str, int | str] = {}
    for k, image in enumerate(coco["images"]):
        where = f"{path}: images[{k}]"
        _require(image, ("id", "file_name", "width", "height"), where)
        iid = _id(image["id"], where, "id")
        where = f"{path}: image id {iid!r}"
        if iid in position:
            raise DataError(
                f"{where} appears twice (images[{position[iid]}] and images[{k}])", "give each image its own id"
            )
        name = image["file_name"]
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: file_name={name!r} is not a file name", "set file_name to the image's file")
        if name in seen_names:
            raise DataError(
                f"{where}: file_name {name!r} is also image id {seen_names[name]!r}", "list each image file once"
            )
        _size(image["width"], where, "width"), _size(image["height"], where, "height")
        position[iid], seen_names[name] = k, iid
        images.append(image)
    if not images:
        raise DataError(f"{path} has no images", "list the images under 'images'")

    counts: Counter = Counter({"clipped": 0, "dropped": 0, "crowd": 0})
    per_image = [_Boxes(counts) for _ in images]
    seen_ann: set[int | str] = set()
    for k, ann in enumerate(coco["annotations"]):
        _require(ann, ("id", "image_id", "category_id", "bbox"), f"{path}: annotations[{k}]")
        aid = _id(ann["id"], f"{path}: annotations[{k}]", "id")
        where = f"{path}: annotation id {aid!r}"
        if aid in seen_ann:
            raise DataError(f"{where} appears twice (annotations[{k}])", "give each annotation its own id")
        seen_ann.add(aid)
        image_id = ann["image_id"]
        if isinstance(image_id, bool) or image_id not in position:
            raise DataError(
                f"{where}: image_id {image_id!r} is not the id of any image", "fix image_id or add the image"
            )
        cid = ann["category_id"]
        if isinstance(cid, bool) or cid not in label_of:
            raise DataError(
                f"{where}: category_id {cid!r} is not a category (known ids: {_shown(sorted(names))})",
                "fix category_id or add the category",
            )
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{where}: bbox={bbox!r} is not [x, y, width, height]", "write bbox as 4 numbers")
        x, y, w, h = (_finite(v, where, f"bbox[{i}]") for i, v in enumerate(bbox))
        if w < 0 or h < 0:
            raise DataError(
                f"{where}: bbox={bbox!r} has a negative width or height", "write bbox as [x, y, w, h], w, h >= 0"
            )
        crowd = ann.get("iscrowd", 0)
        if isinstance(crowd, bool) or not isinstance(crowd, int) or crowd not in (0, 1):
            raise DataError(f"{where}: iscrowd={crowd!r} is not 0 or 1", "set iscrowd to 0 or 1")
        if crowd == 1:
            counts["crowd"] += 1
            continue
        k_image = position[image_id]
        image = images[k_image]
        per_image[k_image].add((x, y, x + w, y + h), label_of[cid], int(image["width"]), int(image["height"]))

    keep = len(images) if max_images is None else min(max_images, len(images))
    groups = [] if group_field is not None else None
    paths, sizes = [], []
    for image in images[:keep]:
        where = f"{path}: image id {image['id']!r}"
        size = (int(image["width"]), int(image["height"]))
        file = images_dir / image["file_name"]
        check_image(file, *size, where)
        paths.append(file)
        sizes.append(size)
        if groups is not None:
            groups.append(_group(image, group_field, where, path))
    arrays = [b.arrays() for b in per_image[:keep]]
    _report(path, counts)
    return DetectionTable(
        source=path,
        paths=paths,
        sample_ids=[str(image["file_name"]) for image in images[:keep]],
        sizes=sizes,
        groups=groups,
        boxes=[b for b, _ in arrays],
        labels=[lab for _, lab in arrays],
        classes=list(classes),
        counts=dict(counts),
    )


# ---- records ---------------------------------------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, object)`` for every non-blank line of a JSON-lines file."""
    if not path.is_file():
        raise DataError(f"missing record file {path}", "write it or point data.root at the dataset folder")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}", "write it as UTF-8 JSON lines") from exc
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} line {n}: invalid JSON at column {exc.colno}: {exc.msg}", "write one JSON object per line"
            ) from exc


def _record_box(item: Any, where: str) -> tuple[tuple[float, float, float, float], str]:
    """A ``gt`` entry as a pixel box and its class name."""
    _require(item, ("type", "points", "desc"), where)
    kind, points, desc = item["type"], item["points"], item["desc"]
    if kind not in BOX_TYPES:
        raise DataError(f"{where}: type={kind!r} is not one of {list(BOX_TYPES)}", "use bbox_2d or poly")
    if not isinstance(desc, str) or not desc:
        raise DataError(f"{where}: desc={desc!r} is not a class name", "set desc to the object's class name")
    if not isinstance(points, list):
        raise DataError(f"{where}: points={points!r} is not a list", "write points as a list of numbers")
    values = [_finite(v, where, f"points[{i}]") for i, v in enumerate(points)]
    if kind == "bbox_2d":
        if len(values) != 4:
            raise DataError(f"{where}: bbox_2d has {len(values)} points values, not 4", "write [x1, y1, x2, y2]")
        x1, y1, x2, y2 = values
        if x2 < x1 or y2 < y1:
            raise DataError(
                f"{where}: points={points!r} has a negative width or height (x2 < x1 or y2 < y1)",
                "write bbox_2d points as [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1",
            )
        return (x1, y1, x2, y2), desc
    if len(values) < 6 or len(values) % 2:
        raise DataError(
            f"{where}: poly has {len(values)} points values; it needs x, y pairs of at least 3 vertices",
            "write poly points as [x1, y1, x2, y2, x3, y3, ...]",
        )
    xs, ys = values[0::2], values[1::2]
    return (min(xs), min(ys), max(xs), max(ys)), desc


def read_records(
    path: Path,
    root: Path,
    classes: list[str] | None = None,
    group_field: str | None = "group",
    max_images: int | None = None,
) -> DetectionTable:
    """Read and check a record file (one artifact-contract record per line).

    Args:
        path: The ``.jsonl`` file.
        root: The folder each record's ``image`` is relative to.
        classes: The train split's classes; None to take the sorted set of this file's ``desc`` values.
        group_field: Record key holding the group, or None for no groups.
        max_images: Keep only the first records (files and sizes are checked for those only).

    Returns:
        The split, images in line order.

    Raises:
        DataError: See the module docstring.
    """
    rows: list[tuple[int, Mapping[str, Any], list[tuple[tuple[float, float, float, float], str]]]] = []
    first_line: dict[str, int] = {}
    for n, record in _lines(path):
        where = f"{path} line {n}"
        _require(record, ("sample_id", "image", "width", "height", "gt"), where)
        sid = _id(record["sample_id"], where, "sample_id")
        if str(sid) in first_line:
            raise DataError(
                f"{where}: sample_id {sid!r} already appears on line {first_line[str(sid)]}",
                "give each image its own sample_id",
            )
        first_line[str(sid)] = n
        if not isinstance(record["image"], str) or not record["image"]:
            raise DataError(f"{where}: image={record['image']!r} is not a path", "set image to a path relative to root")
        _size(record["width"], where, "width"), _size(record["height"], where, "height")
        if not isinstance(record["gt"], list):
            raise DataError(f"{where}: gt={record['gt']!r} is not a list of boxes", "write gt as a list ([] if none)")
        boxes = [_record_box(item, f"{where}: gt[{i}]") for i, item in enumerate(record["gt"])]
        rows.append((n, record, boxes))
    if not rows:
        raise DataError(f"{path} has no records", "write one JSON object per image")
    if classes is None:
        classes = sorted({desc for _, _, boxes in rows for _, desc in boxes})
    index = {name: k + 1 for k, name in enumerate(classes)}

    counts: Counter = Counter({"clipped": 0, "dropped": 0, "crowd": 0})
    keep = len(rows) if max_images is None else min(max_images, len(rows))
    groups = [] if group_field is not None else None
    paths, sizes, all_boxes, all_labels = [], [], [], []
    for k, (n, record, boxes) in enumerate(rows):
        where = f"{path} line {n}"
        size = (int(record["width"]), int(record["height"]))
        out = _Boxes(counts)
        for i, (box, desc) in enumerate(boxes):
            if desc not in index:
                raise DataError(
                    f"{where}: gt[{i}] desc={desc!r} is not among the training classes {_shown(classes)}",
                    "use the training file's class names in every split",
                )
            out.add(box, index[desc], *size)
        if k >= keep:
            continue
        file = root / record["image"]
        check_image(file, *size, where)
        paths.append(file)
        sizes.append(size)
        if groups is not None:
            groups.append(_group(record, group_field, where, path))
        box_array, label_array = out.arrays()
        all_boxes.append(box_array)
        all_labels.append(label_array)
    _report(path, counts)
    return DetectionTable(
        source=path,
        paths=paths,
        sample_ids=[str(record["sample_id"]) for _, record, _ in rows[:keep]],
        sizes=sizes,
        groups=groups,
        boxes=all_boxes,
        labels=all_labels,
        classes=list(classes),
        counts=dict(counts),
    )


# ---- a dataset folder ------------------------------------------------------------------------------


def resolve_format(root: Path, format: str = "auto") -> str:
    """``coco`` or ``records``: the layout of ``root`` (``auto``: whichever train file exists).

    Raises:
        ConfigError: ``format`` is not one of :data:`FORMATS`.
        DataError: ``auto`` finds both train files or neither.
    """
    if format not in FORMATS:
        raise ConfigError(f"data.format={format!r} is not a detection layout", f"use one of {list(FORMATS)}")
    if format != "auto":
        return format
    found = [fmt for fmt, files in FILES.items() if (root / files["train"]).is_file()]
    if len(found) == 1:
        return found[0]
    coco, records = root / FILES["coco"]["train"], root / FILES["records"]["train"]
    if found:
        raise DataError(
            f"{root} holds both {coco.name} and {records.name}; data.format=auto cannot choose",
            "pass data.format=coco or data.format=records (or remove one of the files)",
        )
    raise DataError(
        f"neither {coco} nor {records} exists",
        "point data.root at a dataset folder holding annotations.json + images/ (COCO) or records.jsonl",
    )


def annotation_files(root: Path, fmt: str) -> dict[str, Path]:
    """The annotation files of ``fmt`` that exist under ``root``: ``train`` always, ``test`` if present."""
    files = FILES[fmt]
    out = {"train": root / files["train"]}
    if (root / files["test"]).is_file():
        out["test"] = root / files["test"]
    return out


def read_dataset(
    root: str | Path,
    format: str = "auto",
    group_field: str | None = "group",
    max_images: int | None = None,
) -> dict[str, DetectionTable]:
    """Read a dataset folder's ``train`` split (and ``test`` where its file exists).

    Args:
        root: The dataset folder.
        format: ``auto``, ``coco`` or ``records``.
        group_field: Key holding the train images' groups, or None (test images need none).
        max_images: Keep only the first images of each split (a quick smoke run).

    Returns:
        ``{"train": table, "test": table}`` (``test`` only where present), sharing the train classes.

    Raises:
        ConfigError: An unknown ``format``.
        DataError: See the module docstring and :func:`resolve_format`.
    """
    root = Path(root)
    fmt = resolve_format(root, format)
    files = annotation_files(root, fmt)
    if fmt == "coco":
        train = read_coco(files["train"], root / "images", None, group_field, max_images)
    else:
        train = read_records(files["train"], root, None, group_field, max_images)
    tables = {"train": train}
    if "test" in files:
        if fmt == "coco":
            tables["test"] = read_coco(files["test"], root / "images", train.classes, None, max_images)
        else:
            tables["test"] = read_records(files["test"], root, train.classes, None, max_images)
    return tables
