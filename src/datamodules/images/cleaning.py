"""Dataset hygiene for the generic image layout: a manifest of what to keep, drop or review.

``clean_dataset`` reads ``<root>/train.csv``, resolves every row to its image file the way the
datamodule does (:mod:`src.datamodules.images.layout`) and writes one manifest row per image:

```
image_id, path, action, reason, width, height, sha256, new_label
action   keep | drop | quarantine | relabel
reason   ""                        nothing wrong                               (keep)
         unreadable                missing file, or bytes PIL cannot decode     (drop)
         exact_duplicate_of:<id>   same bytes (sha256) as an earlier row; drop when both rows
                                   carry the same label, quarantine when the labels disagree
         too_small                 shorter side below ``min_side`` pixels       (quarantine)
         review:keep|trash|relabel a person's decision in the label review      (keep, drop, relabel)
new_label  the class name a ``relabel`` row gives the image (empty otherwise)
```

The datamodule applies the manifest (``data.manifest``, by default this file in the dataset
folder, when it exists): ``drop`` rows leave every split, ``relabel`` rows train with their
``new_label``; the image files and ``train.csv`` are never touched. ``review.py ... export``
merges a review's decisions into it (:func:`merge_decisions`).

The first occurrence of a duplicated file is kept. ``quarantine`` means "look at it before
training": a conflicting duplicate or a thumbnail may be a labelling error or may be fine.
The user's files are only read: nothing is deleted, moved or rewritten; the manifest is a new
file (written atomically).

CLI: ``python -m src.datamodules.images.cleaning --root data/<name> [--min-side N] [--out F]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from src.core.errors import DataError, PodiumError
from src.core.io import atomic_path
from src.datamodules.images.layout import _read_csv, _resolve

MANIFEST_NAME = "cleaning_manifest.csv"
MANIFEST_COLUMNS = ("image_id", "path", "action", "reason", "width", "height", "sha256", "new_label")
#: Manifest actions and what the datamodule does with them.
APPLIED_ACTIONS = ("drop", "relabel")
REVIEW_PREFIX = "review:"
# Anything under 8 px on a side carries no class evidence; the bundled 8x8 digits pass.
DEFAULT_MIN_SIDE = 8


@dataclass(frozen=True)
class ImageCheck:
    """What reading one file found: its content hash and pixel size (None if undecodable)."""

    sha256: str
    size: tuple[int, int] | None


def inspect_image(path: Path) -> ImageCheck:
    """Hash the file's bytes and decode it fully (truncated files fail here, not in training)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return ImageCheck(digest, img.size)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return ImageCheck(digest, None)


def _verdict(
    image_id: str, label: str, check: ImageCheck | None, seen: dict[str, tuple[str, str]], min_side: int
) -> tuple[str, str]:
    """``(action, reason)`` of one image; records first occurrences of each hash in ``seen``."""
    if check is None or check.size is None:
        return "drop", "unreadable"
    first = seen.setdefault(check.sha256, (image_id, label))
    if first[0] != image_id:
        return ("drop" if first[1] == label else "quarantine"), f"exact_duplicate_of:{first[0]}"
    if min(check.size) < min_side:
        return "quarantine", "too_small"
    return "keep", ""


def clean_dataset(
    root: str | Path,
    min_side: int = DEFAULT_MIN_SIDE,
    out: str | Path | None = None,
    label_column: str = "label",
) -> pd.DataFrame:
    """Inspect every training image of ``root`` and write the cleaning manifest.

    Args:
        root: Dataset folder in the generic layout (``data/<name>``).
        min_side: Images whose shorter side is below this many pixels are quarantined.
        out: Manifest path; default ``<root>/cleaning_manifest.csv``.
        label_column: Column of ``train.csv`` holding class names.

    Returns:
        The manifest, one row per ``train.csv`` row, in its order.

    Raises:
        DataError: ``train.csv`` is missing, unparsable, lacks columns or repeats an image_id.
    """
    root = Path(root)
    csv_path = root / "train.csv"
    table = _read_csv(csv_path, ("image_id", label_column))
    seen: dict[str, tuple[str, str]] = {}
    rows = []
    for image_id, label in zip(table["image_id"], table[label_column], strict=True):
        try:
            path = _resolve(root / "train", image_id, label, csv_path)
        except DataError:
            path, check = None, None
        else:
            check = inspect_image(path)
        action, reason = _verdict(image_id, label, check, seen, min_side)
        size = check.size if check is not None and check.size is not None else (None, None)
        rows.append(
            (
                image_id,
                path.relative_to(root).as_posix() if path else "",
                action,
                reason,
                *size,
                check.sha256 if check else "",
                "",
            )
        )
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).astype({"width": "Int64", "height": "Int64"})
    with atomic_path(Path(out) if out else root / MANIFEST_NAME) as tmp:
        manifest.to_csv(tmp, index=False)
    return manifest


def read_manifest(path: Path) -> pd.DataFrame:
    """A cleaning manifest (``new_label`` may be absent in one written before relabels existed).

    Raises:
        DataError: Unreadable, or without the ``image_id``/``action`` columns.
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the cleaning manifest {path}: {exc}", "fix or delete it") from exc
    missing = [c for c in ("image_id", "action") if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {missing}; it has {list(frame.columns)}",
            "write it with python -m src.datamodules.images.cleaning, or delete it",
        )
    for column in MANIFEST_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    return frame[list(MANIFEST_COLUMNS)]


def manifest_changes(path: Path, classes: list[str]) -> tuple[set[str], dict[str, int]]:
    """``(image ids to drop, image id -> new class index)`` of the manifest at ``path``.

    Raises:
        DataError: A relabel to a class the dataset does not have (naming the row and the classes).
    """
    frame = read_manifest(path)
    drop = set(frame.loc[frame["action"] == "drop", "image_id"])
    index = {c: i for i, c in enumerate(classes)}
    relabel = {}
    for image_id, name in frame.loc[frame["action"] == "relabel", ["image_id", "new_label"]].itertuples(index=False):
        if name not in index:
            raise DataError(
                f"{path}: image {image_id} is relabelled to {name!r}, which is not a class ({', '.join(classes)})",
                "fix new_label in that row, or delete the row",
            )
        relabel[image_id] = index[name]
    return drop, relabel


def merge_decisions(path: Path, decided: pd.DataFrame) -> pd.DataFrame:
    """Write ``decided`` (manifest rows of a review) into the manifest at ``path``: a reviewed
    image's row is replaced, the others are kept; written atomically. Returns the manifest."""
    base = read_manifest(path) if path.is_file() else pd.DataFrame(columns=list(MANIFEST_COLUMNS))
    kept = base[~base["image_id"].isin(set(decided["image_id"]))]
    merged = pd.concat([kept, decided[list(MANIFEST_COLUMNS)]], ignore_index=True)
    with atomic_path(path) as tmp:
        merged.to_csv(tmp, index=False)
    return merged


def main(argv: list[str] | None = None) -> int:
    """CLI: write the manifest and print how many images each action got."""
    parser = argparse.ArgumentParser(
        prog="python -m src.datamodules.images.cleaning", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--root", required=True, help="dataset folder in the generic layout (data/<name>)")
    parser.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE, help="quarantine images smaller than this")
    parser.add_argument("--out", default=None, help=f"manifest path (default <root>/{MANIFEST_NAME})")
    parser.add_argument("--label-column", default="label", help="class column of train.csv")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.root) / MANIFEST_NAME
    try:
        manifest = clean_dataset(args.root, min_side=args.min_side, out=out, label_column=args.label_column)
    except PodiumError as exc:
        print(f"podium: error: {exc}", file=sys.stderr)
        return exc.exit_code
    counts = manifest["action"].value_counts().reindex(["keep", "drop", "quarantine"], fill_value=0)
    print(f"podium: {len(manifest)} images: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for reason, n in manifest.loc[manifest.reason != "", "reason"].str.split(":").str[0].value_counts().items():
        print(f"  {reason}: {n}")
    print(f"  manifest: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
