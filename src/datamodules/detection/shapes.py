"""A toy detection set: circles, rectangles and triangles on crops of real photos, in the COCO layout.

``write_shapes(root)`` writes ``root/images/{train,test}_<n>.png``, ``root/annotations.json`` and
``root/annotations_test.json``, exactly the layout a user's own COCO folder uses (see
:mod:`src.datamodules.detection.coco`).

Backgrounds. Each image is a random square crop (side 1 to 3 times the image size where the photo
allows, resized to the image size) of one of the photos scikit-image ships inside its package
(:data:`BACKGROUNDS`; grey ones become RGB). They are read from the package folder: nothing is
downloaded. The image's ``group`` is the photo's name, so grouped folds hold out whole photos.

Shapes. Each shape's pixels are the mask of one ``skimage.draw.random_shapes`` call drawing that
single shape (its white background marks the pixels the shape does not cover). A shape that would
be cut by the image border, or come within :data:`GAP` pixels of an earlier shape's box, is drawn
again elsewhere (up to :data:`ATTEMPTS` times, then left out), so every shape is whole and no two
touch. Each shape is painted in one flat saturated colour, chosen among a few random ones as the
farthest (mean RGB distance) from the background pixels it covers, so the shapes stand out of any
texture; colour says nothing about the class.

Boxes are exact: the tight bounding box of the shape's pixels, ``[x1, y1, x2, y2]`` with ``x1`` /
``y1`` the first column / row and ``x2`` / ``y2`` the last column / row + 1 (COCO ``bbox`` =
``[x1, y1, x2 - x1, y2 - y1]``), so a box's width is its number of pixel columns. Each annotation's
``area`` is the shape's pixel count and ``color`` its RGB value.

Determinism. Image ``i`` of a split depends on (``seed``, split, ``i``) and the drawing parameters
alone, so the same call writes the same bytes, and a larger ``n_train`` adds images without changing
the first ones. The parameters are stored in each annotation file's ``info``; a complete copy with
the same parameters is kept, anything else is written again: the old annotation files are removed,
then the images are written, then the annotation files (atomically, the train file last), so a
half-written folder is never taken for a complete one. Writing 400 + 100 images of 128 pixels takes
4 to 5.5 s on one core of a busy two-core machine (a quarter of it writing the files).
"""

from __future__ import annotations

import colorsys
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from src.core.errors import ConfigError, DataError
from src.core.io import atomic_path

#: Category names; category id ``k + 1`` is ``SHAPES[k]`` (the names in sorted order).
SHAPES = ("circle", "rectangle", "triangle")
#: Photos bundled inside scikit-image's package folder (``skimage/data``) used as backgrounds.
BACKGROUNDS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "rocket.jpg",
)
#: Pixels kept free around every shape's box.
GAP = 2
#: Placements tried per shape before it is left out.
ATTEMPTS = 30
#: Random colours a shape's colour is chosen from.
COLOUR_CANDIDATES = 8
#: Background pixels (about) a colour is compared with.
COLOUR_SAMPLE = 256
#: Changes whenever the drawing changes, so older copies are written again.
GENERATOR_VERSION = 1
GENERATOR = "src.datamodules.detection.shapes.write_shapes"
SPLIT_CODES = {"train": 0, "test": 1}


@dataclass(frozen=True)
class Shape:
    """One drawn shape.

    Attributes:
        category: One of :data:`SHAPES`.
        box: ``(x1, y1, x2, y2)`` tight pixel box, ``x2``/``y2`` exclusive.
        color: RGB value of its pixels.
        mask: ``(H, W)`` bool, the pixels it covers.
    """

    category: str
    box: tuple[int, int, int, int]
    color: tuple[int, int, int]
    mask: np.ndarray

    @property
    def area(self) -> int:
        """Number of pixels the shape covers."""
        return int(self.mask.sum())


def photo_folder() -> Path:
    """scikit-image's bundled data folder (inside the installed package)."""
    import skimage.data

    return Path(skimage.data.__file__).parent


def load_backgrounds(names: tuple[str, ...] = BACKGROUNDS) -> dict[str, Image.Image]:
    """The background photos as RGB PIL images, keyed by name without suffix.

    Raises:
        DataError: A photo is not in the installed scikit-image package.
    """
    folder = photo_folder()
    photos = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(
                f"background photo {path} is not in the installed scikit-image package",
                "install scikit-image>=0.24 (its wheel bundles the photo) into the environment",
            )
        with Image.open(path) as img:
            photos[Path(name).stem] = img.convert("RGB")
    return photos


def _crop(photo: Image.Image, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop of ``photo`` resized to ``size`` pixels, ``(size, size, 3)`` uint8."""
    width, height = photo.size
    short = min(width, height)
    side = int(rng.integers(min(size, short), min(3 * size, short) + 1))
    x0 = int(rng.integers(0, width - side + 1))
    y0 = int(rng.integers(0, height - side + 1))
    crop = photo.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    return np.asarray(crop, dtype=np.uint8).copy()


def _colour(rng: np.random.Generator, covered: np.ndarray) -> tuple[int, int, int]:
    """The saturated random colour farthest (mean RGB distance) from the ``(n, 3)`` pixels it covers
    (every ``n // COLOUR_SAMPLE``-th of them)."""
    hsv = np.stack([rng.random(COLOUR_CANDIDATES), rng.uniform(0.75, 1.0, COLOUR_CANDIDATES),
                    rng.uniform(0.75, 1.0, COLOUR_CANDIDATES)], axis=1)  # fmt: skip
    rgb = np.round(np.array([colorsys.hsv_to_rgb(*c) for c in hsv]) * 255.0)
    sample = covered[:: max(1, len(covered) // COLOUR_SAMPLE)].astype(np.float64)
    distance = np.linalg.norm(sample[None, :, :] - rgb[:, None, :], axis=2).mean(axis=1)
    return tuple(int(v) for v in rgb[int(np.argmax(distance))])


def _shape_mask(rng: np.random.Generator, size: int, category: str, min_size: int, max_size: int) -> np.ndarray | None:
    """The pixels of one ``category`` shape drawn by ``random_shapes``, or None when it does not fit whole."""
    from skimage.draw import random_shapes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Could not fit any shapes": handled by the caller
        image, labels = random_shapes(
            (size, size), max_shapes=1, min_shapes=1, min_size=min_size, max_size=max_size, shape=category,
            num_trials=10, rng=rng,
        )  # fmt: skip
    if not labels:
        return None
    (r0, r1), (c0, c1) = labels[0][1]
    if r0 < 0 or c0 < 0 or r1 > size or c1 > size:
        return None  # cut by the image border (a triangle near the top edge)
    # random_shapes paints on white, shape colours have every channel <= 254.
    mask = (image != 255).any(axis=2)
    return mask if mask.any() else None


def draw_image(
    rng: np.random.Generator,
    background: np.ndarray,
    max_shapes: int,
    min_size: int,
    max_size: int,
) -> tuple[np.ndarray, list[Shape]]:
    """Paint 1 to ``max_shapes`` shapes of random categories on a copy of ``background``.

    Args:
        rng: The image's generator.
        background: ``(S, S, 3)`` uint8.
        max_shapes: Most shapes per image (fewer when they do not fit).
        min_size: Smallest shape dimension in pixels (``random_shapes``' ``min_size``).
        max_size: Largest shape dimension in pixels.

    Returns:
        The image and its shapes, in drawing order.
    """
    size = background.shape[0]
    canvas = background.copy()
    blocked = np.zeros((size, size), dtype=bool)
    shapes = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        category = SHAPES[int(rng.integers(len(SHAPES)))]
        for _attempt in range(ATTEMPTS):
            mask = _shape_mask(rng, size, category, min_size, max_size)
            if mask is None or (mask & blocked).any():
                continue
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
            color = _colour(rng, background[mask])
            canvas[mask] = color
            x1, y1, x2, y2 = box
            blocked[max(0, y1 - GAP) : y2 + GAP, max(0, x1 - GAP) : x2 + GAP] = True
            shapes.append(Shape(category, box, color, mask))
            break
    return canvas, shapes


def _parameters(**kwargs: Any) -> dict[str, Any]:
    return {"version": GENERATOR_VERSION, **kwargs}


def _check(n_train: int, n_test: int, image_size: int, max_shapes: int, min_size: int, max_size: int) -> None:
    checks = (
        (n_train >= 1, f"n_train={n_train}", "n_train >= 1"),
        (n_test >= 0, f"n_test={n_test}", "n_test >= 0"),
        (max_shapes >= 1, f"max_shapes={max_shapes}", "max_shapes >= 1"),
        (min_size >= 4, f"min_size={min_size}", "min_size >= 4"),
        (min_size <= max_size, f"min_size={min_size} > max_size={max_size}", "min_size <= max_size"),
        (max_size <= image_size // 2, f"max_size={max_size} with image_size={image_size}",
         "max_size <= image_size / 2 (shapes must fit whole, several to an image)"),
    )  # fmt: skip
    for ok, what, rule in checks:
        if not ok:
            raise ConfigError(f"write_shapes: {what} is out of range", f"pass data.prepare.* values with {rule}")


def _is_complete(root: Path, files: dict[str, str], params: dict[str, Any]) -> bool:
    """Whether every annotation file of ``files`` holds ``params`` and every image it names exists."""
    for name in files.values():
        path = root / name
        if not path.is_file():
            return False
        try:
            coco = json.loads(path.read_text())
            if coco["info"]["parameters"] != params:
                return False
            names = [image["file_name"] for image in coco["images"]]
        except (ValueError, KeyError, TypeError):
            return False
        if not all((root / "images" / n).is_file() for n in names):
            return False
    return True


def _written_here(path: Path) -> bool:
    """Whether the annotation file at ``path`` was written by :func:`write_shapes`."""
    try:
        return json.loads(path.read_text())["info"]["generator"] == GENERATOR
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _split(root: Path, split: str, n: int, photos: dict[str, Image.Image], params: dict[str, Any]) -> dict[str, Any]:
    """Write ``split``'s images and return its COCO annotations."""
    names = sorted(photos)
    width = max(4, len(str(n - 1)))
    images, annotations = [], []
    for i in range(n):
        rng = np.random.default_rng([params["seed"], SPLIT_CODES[split], i])
        group = names[int(rng.integers(len(names)))]
        background = _crop(photos[group], rng, params["image_size"])
        pixels, shapes = draw_image(rng, background, params["max_shapes"], params["min_size"], params["max_size"])
        file_name = f"{split}_{i:0{width}d}.png"
        with atomic_path(root / "images" / file_name) as tmp:
            Image.fromarray(pixels, mode="RGB").save(tmp, format="PNG", compress_level=1)
        size = params["image_size"]
        images.append({"id": i + 1, "file_name": file_name, "width": size, "height": size, "group": group})
        for shape in shapes:
            x1, y1, x2, y2 = shape.box
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": SHAPES.index(shape.category) + 1,
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": shape.area, "iscrowd": 0, "color": list(shape.color)}
            )  # fmt: skip
    return {
        "info": {
            "description": f"coloured shapes on scikit-image photos, {split} split",
            "generator": GENERATOR,
            "parameters": params,
            "box_convention": "bbox = [x1, y1, x2 - x1, y2 - y1], x2/y2 = last column/row + 1",
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(SHAPES)],
    }


def write_shapes(
    root: str | Path,
    n_train: int = 400,
    n_test: int = 100,
    image_size: int = 128,
    max_shapes: int = 4,
    min_size: int = 16,
    max_size: int = 48,
    seed: int = 0,
) -> Path:
    """Write the shapes dataset under ``root`` unless a complete copy with these parameters is there.

    Args:
        root: Dataset folder, e.g. ``data/shapes``.
        n_train: Images in ``annotations.json`` (the train pool, split into folds by the datamodule).
        n_test: Images in ``annotations_test.json`` (0: no test split).
        image_size: Side of the square images in pixels.
        max_shapes: Most shapes per image (each image has at least one).
        min_size: Smallest shape dimension in pixels.
        max_size: Largest shape dimension in pixels (at most ``image_size / 2``).
        seed: Seed of the backgrounds, shapes and colours.

    Returns:
        The path of ``annotations.json``.

    Raises:
        ConfigError: A parameter is out of range.
        DataError: ``root`` holds annotation files another tool wrote, or a background photo is missing
            from the scikit-image package.
    """
    _check(n_train, n_test, image_size, max_shapes, min_size, max_size)
    root = Path(root)
    params = _parameters(n_train=n_train, n_test=n_test, image_size=image_size, max_shapes=max_shapes,
                         min_size=min_size, max_size=max_size, seed=seed)  # fmt: skip
    files = {"train": "annotations.json", **({"test": "annotations_test.json"} if n_test else {})}
    existing = [root / name for name in ("annotations.json", "annotations_test.json") if (root / name).is_file()]
    foreign = [path for path in existing if not _written_here(path)]
    if foreign:
        raise DataError(
            f"{foreign[0]} was not written by write_shapes; writing the shapes set there would replace it",
            "point data.root at another folder for the shapes set",
        )
    stale = not n_test and root / "annotations_test.json" in existing
    if _is_complete(root, files, params) and not stale:
        return root / "annotations.json"
    for path in existing:  # an older copy must not pass for this one while its images are replaced
        path.unlink()
    photos = load_backgrounds()
    coco = {split: _split(root, split, n, photos, params) for split, n in (("train", n_train), ("test", n_test)) if n}
    for split in sorted(coco):  # test, then the train file
        with atomic_path(root / files[split]) as tmp:
            tmp.write_text(json.dumps(coco[split], indent=1) + "\n")
    return root / "annotations.json"
