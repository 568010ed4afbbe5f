"""The generic image-classification layout every image dataset uses.

```
data/<name>/train.csv            image_id,label[,group][, other columns]
data/<name>/train/<label>/<image_id>.<ext>
data/<name>/test.csv             image_id (optional; labels optional)
data/<name>/test/<image_id>.<ext>
```

``image_id`` may also be a path relative to the split folder (``apple/img_001.jpg``); a bare id is
looked up as ``<split>/<label>/<image_id>.*`` (train) or ``<split>/<image_id>.*`` (test). The group
column is configurable (``group`` for digits, ``plu`` for a fruit and vegetable set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src.core.errors import DataError
from src.core.io import file_fingerprint

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageTable:
    """One split of an image dataset, resolved to files.

    Attributes:
        paths: Absolute image paths, one per sample.
        sample_ids: ``image_id`` values as strings.
        labels: Integer class indices (``-1`` where unlabelled).
        groups: Group keys for grouped folds, or None.
        classes: Sorted class names; index ``i`` is label ``i``.
    """

    paths: list[Path]
    sample_ids: list[str]
    labels: list[int]
    groups: list[str] | None
    classes: list[str]


def _read_csv(csv_path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not csv_path.is_file():
        raise DataError(
            f"missing data file {csv_path}",
            "create it (columns: image_id,label,group) or point data.root at the dataset folder",
        )
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {csv_path}: {exc}", "write it as a comma-separated CSV") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{csv_path} lacks column(s) {missing}; it has {list(df.columns)}",
            "add the column(s) or set the matching data.*_column option",
        )
    if df.empty:
        raise DataError(f"{csv_path} has no rows", "add one row per image")
    _require_unique_ids(df, csv_path)
    return df


def _require_unique_ids(df: pd.DataFrame, csv_path: Path) -> None:
    """Raise a DataError naming the first repeated image_id, how often and on which lines."""
    repeated = df["image_id"][df["image_id"].duplicated(keep=False)]
    if repeated.empty:
        return
    first = repeated.iloc[0]
    lines = [int(i) + 2 for i in repeated.index[repeated == first][:5]]  # 1-based, after the header
    raise DataError(
        f"{csv_path}: image_id {first!r} appears {int((repeated == first).sum())} times (lines {lines}); "
        f"{repeated.nunique()} id(s) are repeated",
        f"keep one row per image in {csv_path.name} (rename the image if both are wanted); "
        f"python -m src.datamodules.images.cleaning --root {csv_path.parent} also finds duplicated files",
    )


def _resolve(split_dir: Path, image_id: str, label: str | None, csv_path: Path) -> Path:
    direct = split_dir / image_id
    if direct.suffix.lower() in IMAGE_SUFFIXES and direct.is_file():
        return direct
    folder = split_dir / label if label is not None else split_dir
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{csv_path}: no image file for image_id {image_id!r} (looked for {folder / image_id}.*)",
        f"put the image under {folder}/ or remove its row",
    )


def read_split(
    root: Path,
    split: str,
    label_column: str = "label",
    group_column: str | None = "group",
    classes: list[str] | None = None,
) -> ImageTable:
    """Read ``<root>/<split>.csv`` and resolve every row to its image file.

    Args:
        root: Dataset folder (``data/<name>``).
        split: ``train`` or ``test``.
        label_column: Column holding class names.
        group_column: Column holding group keys, or None for ungrouped data.
        classes: Class names of the training split; required to encode test labels.

    Returns:
        The resolved split.

    Raises:
        DataError: Missing CSV, missing columns, duplicated ids, unknown labels or missing files.
    """
    csv_path = Path(root) / f"{split}.csv"
    labelled = split == "train"
    df = _read_csv(csv_path, ("image_id", label_column) if labelled else ("image_id",))
    has_labels = label_column in df.columns
    if classes is None:
        classes = sorted(df[label_column].unique(), key=_natural_key)
    index = {c: i for i, c in enumerate(classes)}
    if has_labels:
        unknown = sorted(set(df[label_column]) - set(index))
        if unknown:
            raise DataError(
                f"{csv_path}: label(s) {unknown[:5]} are not among the training classes {classes}",
                "fix the labels or add those classes to train.csv",
            )
    groups = None
    if group_column and group_column in df.columns:
        groups = df[group_column].tolist()
    elif group_column and labelled:
        raise DataError(
            f"{csv_path} lacks the group column {group_column!r}; it has {list(df.columns)}",
            "add the column or set data.group_column=null for ungrouped folds",
        )
    split_dir = Path(root) / split
    labels = df[label_column].tolist() if has_labels else [None] * len(df)
    paths = [
        _resolve(split_dir, i, lab if labelled else None, csv_path)
        for i, lab in zip(df["image_id"], labels, strict=True)
    ]
    return ImageTable(
        paths=paths,
        sample_ids=df["image_id"].tolist(),
        labels=[index[lab] if lab is not None else -1 for lab in labels],
        groups=groups,
        classes=list(classes),
    )


def fingerprint(table: ImageTable, csv_path: Path) -> str:
    """Fingerprint of a split: its CSV plus every image file's name, size and mtime."""
    return file_fingerprint([csv_path, *table.paths])


def _natural_key(name: str) -> tuple:
    """Sort "2" before "10" while keeping non-numeric names alphabetical."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)
