"""The lens-correction competition's folder layout, read into tables of checked image pairs.

```
<root>/lens-correction-train-cleaned/<id>_original.jpg    distorted input
<root>/lens-correction-train-cleaned/<id>_generated.jpg   corrected target (same size)
<root>/test-originals/<id>.jpg                            test inputs (no targets in the real set)
<root>/test-targets/<id>.jpg                              optional: test targets
<root>/metadata.csv                                       optional: image_id plus any of group, camera,
                                                          k1, k2, cx, cy, focal (other columns ignored)
```

:func:`read_layout` returns a :class:`LensTable` per split (``train``, and ``test`` when
``test-originals/`` exists). Extensions ``.jpg``, ``.jpeg`` and ``.png`` count in any letter case;
hidden files and other extensions are ignored. Ids are sorted. Sizes and colour modes come from the
file headers (``PIL.Image.open(...).size``, no decode), so listing the real set's 23k pairs is quick;
whether every file decodes is checked through the dataset's decode cache
(:mod:`~src.datamodules.integrity`: every file is decoded once, verdicts kept in
``<root>/image_check.json``).

What is refused, with a DataError naming the file(s) and the fix: a file PIL cannot decode
(truncated, not an image); an ``_original`` without its ``_generated`` or the reverse, or a file of
the train folder that is neither; a pair (train, or test input and its target) whose two images
differ in size; a grey-scale (``1``, ``L``, ``LA``, a palette without colour) or 16/32-bit
(``I;16``, ``I``, ``F``) file. With ``bad_images="quarantine"`` such a pair or test input is left out
instead, listed in ``LensTable.quarantined`` and logged once with the count. Always refused: two
names of one folder that are the same id after case folding (``A.jpg`` / ``a.JPG``: the predictions
would overwrite each other), a ``metadata.csv`` without an ``image_id`` column, with a repeated or
unknown image id or a coefficient that is not a finite number, and a train folder without pairs.

Buckets group images of one size: a size named in the config's table gets that name, any other
size ``"<width>x<height>"``; its parent is the orientation (``landscape``, ``portrait``,
``square``), which the heuristics fall back to when a bucket has too few images.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from src.core.errors import ConfigError, DataError
from src.datamodules.integrity import BAD_IMAGE_POLICIES, DECODE_ERRORS, undecodable
from src.datamodules.lens.geometry import Camera, FrameError

log = logging.getLogger("podium")

#: The train folder of image pairs.
TRAIN_DIR = "lens-correction-train-cleaned"
#: The folder of test inputs.
TEST_DIR = "test-originals"
#: The optional folder of test targets (same names as the inputs).
TEST_TARGET_DIR = "test-targets"
#: The optional per-image metadata file.
METADATA = "metadata.csv"
#: Name endings (before the extension) of a train pair's input and target.
INPUT_SUFFIX, TARGET_SUFFIX = "_original", "_generated"
#: Image extensions read (compared in lower case).
EXTENSIONS = (".jpg", ".jpeg", ".png")
#: Camera coefficients a metadata file may hold, in :class:`Camera`'s order.
COEFFICIENTS = ("k1", "k2", "cx", "cy", "focal")
#: Colour modes without colour.
GREY_MODES = ("1", "L", "LA", "La")
#: Problems named in an error or warning; the rest are counted.
SHOWN_PROBLEMS = 5
#: Orientations (bucket parents).
PARENTS = ("landscape", "portrait", "square")
#: A decoded side is at least this many pixels.
MIN_SIDE = 8


@dataclass(frozen=True)
class LensTable:
    """One split of the lens-correction layout, checked and resolved to files.

    Attributes:
        source: The folder the inputs were read from.
        sample_ids: Unique ids (``<id>`` of ``<id>_original.jpg``, or a test file's stem), sorted.
        inputs: Distorted input files.
        targets: Corrected target files, None where there is none (unlabelled test inputs).
        sizes: ``(width, height)`` of each input (its target has the same size).
        buckets: Size bucket of each image (:func:`bucket_of`).
        parents: Orientation of each image (:func:`parent_of`).
        groups: Group keys from ``metadata.csv`` for grouped folds, or None.
        cameras: Per image the :class:`Camera` of ``metadata.csv`` (when it has ``k1`` and ``k2``), else None.
        quarantined: ``(path, reason)`` of the files left out by ``bad_images="quarantine"``.
    """

    source: Path
    sample_ids: list[str]
    inputs: list[Path]
    targets: list[Path | None]
    sizes: list[tuple[int, int]]
    buckets: list[str]
    parents: list[str]
    groups: list[str] | None
    cameras: list[Camera | None]
    quarantined: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def strata(self) -> list[str]:
        """The bucket of each image (stratification labels of the folds)."""
        return list(self.buckets)

    def subset(self, indices: Sequence[int]) -> LensTable:
        """The images at ``indices``, in that order (``quarantined`` is kept whole)."""
        idx = [int(i) for i in indices]
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return replace(
            self,
            sample_ids=pick(self.sample_ids),
            inputs=pick(self.inputs),
            targets=pick(self.targets),
            sizes=pick(self.sizes),
            buckets=pick(self.buckets),
            parents=pick(self.parents),
            groups=None if self.groups is None else pick(self.groups),
            cameras=pick(self.cameras),
        )


# ---- buckets and sizes -----------------------------------------------------------------------------


def check_buckets(table: Mapping[str, Any] | None) -> dict[str, tuple[int, int]]:
    """The config's bucket table as ``{name: (width, height)}``.

    Raises:
        ConfigError: naming ``data.buckets.<name>`` when a size is not two whole numbers >= 1 or two
            names share a size.
    """
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ConfigError(
            f"data.buckets={table!r} is not a mapping of bucket names to sizes",
            "write data.buckets as {name: [width, height], ...} or leave it null",
        )
    out: dict[str, tuple[int, int]] = {}
    for name, size in table.items():
        values = list(size) if isinstance(size, Sequence) and not isinstance(size, str) else None
        if (
            values is None
            or len(values) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values)
        ):
            raise ConfigError(
                f"data.buckets.{name}={size!r} is not a size [width, height] in whole pixels >= 1",
                f"write data.buckets.{name}=[<width>, <height>]",
            )
        pair = (int(values[0]), int(values[1]))
        other = next((k for k, v in out.items() if v == pair), None)
        if other is not None:
            raise ConfigError(
                f"data.buckets.{name} and data.buckets.{other} are both {pair[0]}x{pair[1]}",
                "give each size one bucket name",
            )
        out[str(name)] = pair
    return out


def bucket_of(width: int, height: int, table: Mapping[str, Sequence[int]] | None = None) -> str:
    """The size bucket of a ``width`` x ``height`` image.

    Args:
        width: Image width in pixels.
        height: Image height in pixels.
        table: Optional ``{name: [width, height]}``: listed sizes get that name.

    Returns:
        The table's name for the size, else ``"<width>x<height>"``.
    """
    for name, size in (table or {}).items():
        if (int(size[0]), int(size[1])) == (int(width), int(height)):
            return str(name)
    return f"{int(width)}x{int(height)}"


def parent_of(width: int, height: int) -> str:
    """The orientation of a ``width`` x ``height`` image: ``landscape``, ``portrait`` or ``square``."""
    if width > height:
        return "landscape"
    return "portrait" if height > width else "square"


def work_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """``(width, height)`` resized so the long side is ``long_side``, the aspect kept (each side rounded
    to a whole pixel, at least :data:`MIN_SIDE`)."""
    scale = long_side / max(width, height)
    return max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))


# ---- decoding ------------------------------------------------------------------------------------------

#: OpenCV's reduced JPEG decodes (DCT scaling) by their factor.
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def _reduction(width: int, height: int, long_side: int) -> int:
    """The largest JPEG reduction factor (1, 2, 4, 8) whose decode is still at least ``long_side`` long."""
    factor = 1
    for f in (2, 4, 8):
        if math.ceil(max(width, height) / f) >= long_side:
            factor = f
    return factor


def decode_image(path: Path, long_side: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB, at its own size or resized to a long side.

    OpenCV decodes (``cv2.imread``, EXIF orientation ignored so the pixels are those of the file's
    header size); a JPEG wanted smaller is decoded at 1/2, 1/4 or 1/8 of its size by DCT scaling
    (``IMREAD_REDUCED_COLOR_*``, the largest factor that keeps the long side asked for) and then
    resized (``INTER_AREA``; ``INTER_LINEAR`` when enlarging). Median of 25 decodes of a 2048 x 1367
    JPEG (quality 92, an upscaled ``skimage.data.coffee``) on one core of a busy two-core machine
    (``cv2.setNumThreads(1)``, ``OMP_NUM_THREADS=1``; repeated runs vary by about 30 %):

    =================================================  =========  ================
    decoder                                            full size  long side 384
    =================================================  =========  ================
    PIL: ``np.asarray(Image.open(p).convert("RGB"))``  43 ms      50 ms (+ resize)
    PIL: ``Image.draft`` (DCT scaling) + resize        --         9.4 ms
    OpenCV: ``cv2.imread`` + ``cv2.cvtColor``          9.8 ms     21 ms (+ resize)
    OpenCV: ``IMREAD_REDUCED_COLOR_4`` + resize        --         10 ms
    this function (header read included)               12.5 ms    9.9 ms
    =================================================  =========  ================

    PIL's decode itself takes 12 ms; the copy of ``np.asarray`` costs the rest. Reduced decodes tie
    (6.7 and 7.1 ms in a quieter run), so OpenCV serves both sizes.

    Args:
        path: The image file.
        long_side: The long side wanted (aspect kept, see :func:`work_size`); None: the file's size.
        size: The file's ``(width, height)`` if known (read from its header otherwise).

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        DataError: The file cannot be read or decoded, or its pixels are not of the size its header
            (or ``size``) says.
    """
    fix = "replace or remove the file, or pass data.bad_images=quarantine to leave it out"
    if size is None:
        try:
            with Image.open(path) as img:
                size = img.size
        except (*DECODE_ERRORS, FileNotFoundError) as exc:
            raise DataError(f"cannot read image {path}: {exc}", fix) from exc
    width, height = int(size[0]), int(size[1])
    factor = 1
    if long_side is not None and Path(path).suffix.lower() in (".jpg", ".jpeg"):
        factor = _reduction(width, height, long_side)
    flags = (_REDUCED[factor] if factor > 1 else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imread(str(path), flags)
    if pixels is None:
        reason = "no such file" if not Path(path).is_file() else "OpenCV cannot decode it"
        raise DataError(f"cannot read image {path}: {reason}", fix)
    expected = (math.ceil(height / factor), math.ceil(width / factor))
    if pixels.shape[:2] != expected:
        raise DataError(
            f"cannot read image {path}: it decodes to {pixels.shape[1]}x{pixels.shape[0]} pixels, not "
            f"{expected[1]}x{expected[0]} ({width}x{height} / {factor})",
            "the file changed since the dataset was read: restore it, or start again",
        )
    if long_side is not None:
        out = work_size(width, height, long_side)
        if out != (pixels.shape[1], pixels.shape[0]):
            enlarge = out[0] > pixels.shape[1] or out[1] > pixels.shape[0]
            pixels = cv2.resize(pixels, out, interpolation=cv2.INTER_LINEAR if enlarge else cv2.INTER_AREA)
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


# ---- listing ---------------------------------------------------------------------------------------------


@dataclass
class _Problems:
    """Per sample the problems found; the first of each sample is the one reported."""

    found: dict[tuple[str, str], tuple[Path, str, str]] = field(default_factory=dict)

    def add(self, split: str, sample_id: str, path: Path, reason: str, fix: str) -> None:
        self.found.setdefault((split, sample_id), (path, reason, fix))

    def has(self, split: str, sample_id: str) -> bool:
        return (split, sample_id) in self.found


def _images(folder: Path) -> list[Path]:
    """The image files of ``folder`` (by extension, any case; hidden files left out), sorted by name."""
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() in EXTENSIONS and p.is_file()
    )


def _check_unique(paths: Sequence[Path], ids: Sequence[str]) -> None:
    """Refuse two files whose ids are equal after case folding (``A.jpg`` / ``a.JPG``, ``a.jpg`` / ``a.png``)."""
    seen: dict[str, Path] = {}
    for path, sample_id in zip(paths, ids, strict=True):
        key = sample_id.casefold()
        if key in seen:
            raise DataError(
                f"{seen[key]} and {path} are the same image id {key!r} once letter case and "
                "extension are ignored: their predictions would overwrite each other",
                "rename or remove one of them",
            )
        seen[key] = path


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _train_pairs(root: Path, problems: _Problems) -> dict[str, list[Path | None]]:
    """``{id: [input, target]}`` of the train folder (None for a missing partner, flagged in ``problems``)."""
    folder = root / TRAIN_DIR
    if not folder.is_dir():
        raise DataError(
            f"missing folder {folder}",
            f"point data.root at the competition folder (it holds {TRAIN_DIR}/ and {TEST_DIR}/)",
        )
    paths, ids, roles = [], [], []
    for path in _images(folder):
        stem = path.stem
        for role, suffix in enumerate((INPUT_SUFFIX, TARGET_SUFFIX)):
            if stem.casefold().endswith(suffix) and len(stem) > len(suffix):
                paths.append(path)
                ids.append(stem[: -len(suffix)])
                roles.append(role)
                break
        else:
            problems.add(
                "train", f"\0{path.name}", path,
                f"{_relative(path, root)} is neither <id>{INPUT_SUFFIX} nor <id>{TARGET_SUFFIX}",
                "rename it to its pair's name or move it out of the train folder",
            )  # fmt: skip
    _check_unique(paths, [f"{i}{(INPUT_SUFFIX, TARGET_SUFFIX)[r]}" for i, r in zip(ids, roles, strict=True)])
    by_key: dict[str, list[Path | None]] = {}
    names: dict[str, str] = {}
    for path, sample_id, role in zip(paths, ids, roles, strict=True):
        key = sample_id.casefold()
        other = names.setdefault(key, sample_id)
        if other != sample_id:
            raise DataError(
                f"{by_key[key][0] or by_key[key][1]} and {path} spell the image id {sample_id!r} in different cases",
                f"rename both to one spelling ({other!r})",
            )
        by_key.setdefault(key, [None, None])[role] = path
    pairs = {names[key]: value for key, value in by_key.items()}
    for sample_id, (inp, tgt) in pairs.items():
        if inp is None or tgt is None:
            have, want = (tgt, INPUT_SUFFIX) if inp is None else (inp, TARGET_SUFFIX)
            missing = folder / f"{sample_id}{want}{have.suffix}"
            problems.add(
                "train", sample_id, have,
                f"{_relative(have, root)} has no partner {_relative(missing, root)} (any of {', '.join(EXTENSIONS)})",
                "add the missing image of the pair or remove this one",
            )  # fmt: skip
    return dict(sorted(pairs.items()))


def _test_pairs(root: Path, problems: _Problems) -> dict[str, list[Path | None]] | None:
    """``{id: [input, target or None]}`` of the test folders; None without ``test-originals/``."""
    folder = root / TEST_DIR
    if not folder.is_dir():
        return None
    inputs = _images(folder)
    _check_unique(inputs, [p.stem for p in inputs])
    pairs: dict[str, list[Path | None]] = {p.stem: [p, None] for p in inputs}
    target_folder = root / TEST_TARGET_DIR
    if target_folder.is_dir():
        targets = _images(target_folder)
        _check_unique(targets, [p.stem for p in targets])
        for path in targets:
            if path.stem in pairs:
                pairs[path.stem][1] = path
            else:
                problems.add(
                    "test", f"\0{path.name}", path,
                    f"{_relative(path, root)} has no input {TEST_DIR}/{path.stem}.* (same name, same case)",
                    f"add its input to {TEST_DIR}/ or remove the target",
                )  # fmt: skip
    return dict(sorted(pairs.items()))


# ---- metadata --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Metadata:
    groups: dict[str, str] | None
    cameras: dict[str, Camera]


def _read_metadata(root: Path, known: set[str], group_field: str | None) -> _Metadata | None:
    """The groups and cameras of ``metadata.csv``; None when there is no such file.

    Raises:
        DataError: The file cannot be parsed, lacks ``image_id`` or ``group_field``, repeats or names an
            unknown image id, or holds a coefficient that is not a finite number.
    """
    path = root / METADATA
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {path}: {exc}", "write it as a comma-separated CSV with a header") from exc
    columns = list(frame.columns)
    if "image_id" not in columns:
        raise DataError(
            f"{path} has no image_id column; it has {columns}",
            "name the column of image ids image_id (the <id> of <id>_original.jpg, or a test file's stem)",
        )
    if group_field is not None and group_field not in columns:
        raise DataError(
            f"{path} has no column {group_field!r} (data.group_field); it has {columns}",
            f"add a {group_field!r} column (the scene or shoot each image comes from), or pass data.group_field=null "
            "for ungrouped folds",
        )
    ids = frame["image_id"].str.strip()
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise DataError(f"{path}: image_id {repeated.iloc[0]!r} appears more than once", "keep one row per image")
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise DataError(
            f"{path}: image_id {unknown[0]!r} is not an image of {TRAIN_DIR}/ or {TEST_DIR}/"
            + (f" ({len(unknown)} such ids)" if len(unknown) > 1 else ""),
            "use the <id> of <id>_original.jpg or a test file's stem, or remove the row",
        )
    present = [c for c in COEFFICIENTS if c in columns]
    values: dict[str, list[float | None]] = {}
    for column in present:
        parsed: list[float | None] = []
        for row, text in enumerate(frame[column].str.strip()):
            if text == "":
                parsed.append(None)
                continue
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise DataError(
                    f"{path} line {row + 2} (image_id {ids.iloc[row]!r}): {column}={text!r} is not a finite number",
                    f"write {column} as a number, or leave the cell empty when it is unknown",
                )
            parsed.append(number)
        values[column] = parsed
    cameras: dict[str, Camera] = {}
    if "k1" in values and "k2" in values:
        for row, sample_id in enumerate(ids):
            given = {c: values[c][row] for c in present if values[c][row] is not None}
            if "k1" not in given or "k2" not in given:
                continue
            try:
                cameras[sample_id] = Camera.from_mapping(given)
            except FrameError as exc:
                raise DataError(f"{path} line {row + 2} (image_id {sample_id!r}): {exc}", "fix the camera") from exc
    groups = None
    if group_field is not None:
        groups = {i: g.strip() for i, g in zip(ids, frame[group_field], strict=True) if g.strip()}
    return _Metadata(groups, cameras)


# ---- checks -------------------------------------------------------------------------------------------------


def _header(path: Path) -> tuple[tuple[int, int], str | None]:
    """``((width, height), problem)`` from the file's header: the problem names a grey or 16-bit file."""
    with Image.open(path) as img:
        mode, size = img.mode, img.size
        palette = img.getpalette() if mode == "P" else None
    problem = None
    if mode in GREY_MODES or (palette is not None and palette[0::3] == palette[1::3] == palette[2::3]):
        problem = f"grey-scale (mode {mode})"
    elif mode.startswith("I;16") or mode in ("I", "F"):
        problem = f"16/32-bit (mode {mode})"
    return size, problem


def _check_files(
    root: Path, split: str, pairs: dict[str, list[Path | None]], problems: _Problems
) -> dict[str, tuple[int, int]]:
    """Decode, colour and size checks of a split's files; returns each sample's ``(width, height)``."""
    order = [(sample_id, path) for sample_id, files in pairs.items() for path in files if path is not None]
    bad = set(undecodable([path for _, path in order], root))
    for k, (sample_id, path) in enumerate(order):
        if k in bad:
            problems.add(split, sample_id, path, f"{_relative(path, root)} cannot be decoded (truncated or not an "
                         "image)", "replace or remove the file")  # fmt: skip
    sizes: dict[str, tuple[int, int]] = {}
    for sample_id, files in pairs.items():
        if problems.has(split, sample_id):
            continue
        found = []
        for path in files:
            if path is None:
                continue
            try:
                size, problem = _header(path)
            except DECODE_ERRORS as exc:  # changed since the decode check
                problems.add(split, sample_id, path, f"{_relative(path, root)} cannot be read: {exc}", "replace it")
                break
            if problem is not None:
                problems.add(split, sample_id, path, f"{_relative(path, root)} is {problem}",
                             "convert to 8-bit RGB (e.g. PIL: Image.open(p).convert('RGB').save(p))")  # fmt: skip
                break
            found.append((path, size))
        if problems.has(split, sample_id):
            continue
        (first, size), *rest = found
        for other, other_size in rest:
            if other_size != size:
                problems.add(
                    split, sample_id, first,
                    f"{_relative(first, root)} is {size[0]}x{size[1]} but its partner {_relative(other, root)} is "
                    f"{other_size[0]}x{other_size[1]}",
                    "a target must have its input's size: replace the wrong one or remove the pair",
                )  # fmt: skip
        sizes[sample_id] = size
    return sizes


def _resolve(problems: _Problems, root: Path, bad_images: str) -> list[tuple[str, str, Path, str]]:
    """Raise for the first problem, or return ``(split, id, path, reason)`` of each sample to leave out."""
    if not problems.found:
        return []
    items = list(problems.found.items())
    if bad_images == "raise":
        _, (_, reason, fix) = items[0]
        more = f" (and {len(items) - 1} more problem(s))" if len(items) > 1 else ""
        raise DataError(f"{reason}{more}", f"{fix}, or pass data.bad_images=quarantine to leave such files out")
    shown = "; ".join(reason for _, (_, reason, _) in items[:SHOWN_PROBLEMS])
    more = f"; and {len(items) - SHOWN_PROBLEMS} more" if len(items) > SHOWN_PROBLEMS else ""
    rank_zero_only(log.warning)(
        f"data.bad_images=quarantine: leaving {len(items)} image pair(s) / file(s) under {root} out: {shown}{more}"
    )
    return [(split, sample_id, path, reason) for (split, sample_id), (path, reason, _) in items]


def read_layout(
    root: str | Path,
    buckets: Mapping[str, Sequence[int]] | None = None,
    max_images: int | None = None,
    bad_images: str = "raise",
    group_field: str | None = "group",
) -> dict[str, LensTable]:
    """Read and check the competition folder ``root``.

    Args:
        root: The dataset folder (holding ``lens-correction-train-cleaned/``).
        buckets: Optional ``{name: [width, height]}`` naming sizes (see :func:`bucket_of`).
        max_images: Only the first (sorted) ids of each split, for a quick run; None for all.
        bad_images: ``raise`` (a DataError for the first bad file) or ``quarantine`` (leave the pair or
            test input out, listed in ``quarantined``, one warning with the count).
        group_field: The ``metadata.csv`` column of group keys; None for no groups. Images without a
            row or with an empty cell form a group of their own.

    Returns:
        ``{"train": ..., "test": ...}`` (``test`` only when ``test-originals/`` exists).

    Raises:
        ConfigError: ``bad_images``, ``buckets`` or ``max_images`` is not valid.
        DataError: A file, name or ``metadata.csv`` is wrong (see the module docstring).
    """
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ConfigError(
            f"data.bad_images={bad_images!r} is not a policy for bad image files",
            "use 'raise' (stop and name them) or 'quarantine' (leave them out)",
        )
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise ConfigError(f"data.max_images={max_images!r} is not a whole number >= 1", "pass data.max_images=<n>")
    table = check_buckets(buckets)
    root = Path(root)
    problems = _Problems()
    splits = {"train": _train_pairs(root, problems)}
    test = _test_pairs(root, problems)
    if test is not None:
        splits["test"] = test
    if not splits["train"]:
        raise DataError(
            f"{root / TRAIN_DIR} holds no <id>{INPUT_SUFFIX} / <id>{TARGET_SUFFIX} image pairs",
            "put the competition's training pairs there or point data.root at the dataset folder",
        )
    metadata = _read_metadata(root, {i for pairs in splits.values() for i in pairs}, group_field)
    if max_images is not None:
        splits = {name: dict(list(pairs.items())[:max_images]) for name, pairs in splits.items()}
    sizes = {name: _check_files(root, name, pairs, problems) for name, pairs in splits.items()}
    left_out: dict[str, list[tuple[Path, str]]] = {name: [] for name in splits}
    dropped = set()
    for split, sample_id, path, reason in _resolve(problems, root, bad_images):
        left_out[split].append((path, reason))
        dropped.add((split, sample_id))
    tables = {}
    for name, pairs in splits.items():
        ids = [i for i in pairs if (name, i) not in dropped]
        if name == "train" and not ids:
            raise DataError(
                f"every image pair of {root / TRAIN_DIR} was left out (data.bad_images=quarantine)",
                "replace the bad files (the warning above names them)",
            )
        wh = [sizes[name][i] for i in ids]
        groups = None
        if metadata is not None and metadata.groups is not None:
            groups = [metadata.groups.get(i, i) for i in ids]
            alone = sum(i not in metadata.groups for i in ids)
            if alone and name == "train":
                rank_zero_only(log.warning)(
                    f"{root / METADATA}: {alone} training image(s) have no {group_field!r}: each is a group of its own"
                )
        tables[name] = LensTable(
            source=root / (TRAIN_DIR if name == "train" else TEST_DIR),
            sample_ids=ids,
            inputs=[pairs[i][0] for i in ids],
            targets=[pairs[i][1] for i in ids],
            sizes=wh,
            buckets=[bucket_of(w, h, table) for w, h in wh],
            parents=[parent_of(w, h) for w, h in wh],
            groups=groups,
            cameras=[None if metadata is None else metadata.cameras.get(i) for i in ids],
            quarantined=left_out[name],
        )
    return tables
