"""A toy lens-correction set rendered from real photographs, in the competition's layout.

``write_lens_set(root)`` writes exactly what :func:`~src.datamodules.lens.layout.read_layout` reads::

    root/lens-correction-train-cleaned/<id>_original.jpg   distorted input
    root/lens-correction-train-cleaned/<id>_generated.jpg  corrected target
    root/test-originals/<id>.jpg, root/test-targets/<id>.jpg
    root/metadata.csv     image_id, split, camera, group, k1, k2, cx, cy, focal
    root/simulation.json  the settings (written last)

Photographs. The colour photos bundled inside scikit-image's package folder (:data:`PHOTOS`:
astronaut, chelsea, coffee, the Hubble deep field, immunohistochemistry, both views of the stereo
motorcycle, retina, rocket) and scikit-learn's two sample images (china, flower), read from the
installed packages: nothing is downloaded. An image's ``group`` is its photo's scene (the two
motorcycle views are one scene, ``motorcycle``), so grouped folds hold out whole scenes.

Cameras. Each image draws one of :data:`CAMERAS` by weight. Their frames are the real set's shapes
scaled down about 5x so the set trains on a CPU; ``frame`` is the sensor's full image, which a crop
then cuts (a crop keeps the lens, so its principal point moves off the output's centre and its
focal length grows relative to the output's width). The image's ``k1`` and ``k2`` are the camera's
plus N(0, 0.01) each (drawn again while the correction would read outside the photo).

Rendering. The photo, mirrored left to right with p = 0.5, is resized by a resolution drawn
uniformly in [0.5, 1] of its own (at least what leaves room for the output frame; ``INTER_AREA``, so
nothing aliases) and softened by the lens (Gaussian, :data:`OPTICS_BLUR` pixels), and an origin is
drawn where the frame fits (with the distorted view's overhang inside the photo where it fits too).
The target is the photo's pixels in that frame; the input is the photo sampled at ``origin +
distortion_maps(camera, w, h)`` (``cv2.remap``, bicubic, ``BORDER_REFLECT``): the distorted photo
the camera would have taken, whose corners show content beyond the target's frame. The camera
stored in ``metadata.csv`` is relative to the output image, so ``undistort(input, camera)``
recovers the target up to interpolation and JPEG (the lens blur and the bicubic sampling keep that
error small: the tests check it against the distorted input's).
Each file is a JPEG of a quality drawn in ``quality``; ids are 12 hex characters.

Determinism. Image ``i`` of a split depends on (``seed``, split, ``i``) alone: the same call writes
the same bytes, and more images leave the first ones unchanged. The set is written into a hidden
folder beside ``root`` and moved into place whole (:func:`~src.core.io.staged_folder`); a complete
set with the same settings (``simulation.json``, checked first) is left alone. Writing 240 + 80
images takes about 10 s on one core (see :func:`write_lens_set`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from src.core.errors import ConfigError, DataError
from src.core.io import staged_folder, write_json_atomic
from src.datamodules.lens.geometry import Camera, FrameError, distortion_maps, undistort_maps
from src.datamodules.lens.layout import (
    INPUT_SUFFIX,
    METADATA,
    TARGET_SUFFIX,
    TEST_DIR,
    TEST_TARGET_DIR,
    TRAIN_DIR,
)

#: The stamp of a complete set, written last.
STAMP = "simulation.json"
#: Changes whenever the rendering changes, so older sets are written again.
GENERATOR_VERSION = 1
GENERATOR = "src.datamodules.lens.simulate.write_lens_set"
SPLIT_CODES = {"train": 0, "test": 1}
#: Standard deviation of the jitter added to each image's ``k1`` and ``k2``.
JITTER = 0.01
#: Jitters drawn before a camera is given up (a draw whose correction reads outside the photo).
JITTER_ATTEMPTS = 20
#: Range of the output's resolution relative to the photo's.
RESOLUTION = (0.5, 1.0)
#: Standard deviation (output pixels) of the Gaussian softness of the lens, applied to the resized photo.
OPTICS_BLUR = 0.7
#: Characters of an image id (hex).
ID_LENGTH = 12
#: ``metadata.csv``'s columns.
METADATA_COLUMNS = ("image_id", "split", "camera", "group", "k1", "k2", "cx", "cy", "focal")
#: Photos: ``name -> (package, file, group)``; ``skimage`` files lie in ``skimage/data``, ``sklearn``
#: ones are ``sklearn.datasets.load_sample_image`` names.
PHOTOS: dict[str, tuple[str, str, str]] = {
    "astronaut": ("skimage", "astronaut.png", "astronaut"),
    "chelsea": ("skimage", "chelsea.png", "chelsea"),
    "coffee": ("skimage", "coffee.png", "coffee"),
    "hubble_deep_field": ("skimage", "hubble_deep_field.jpg", "hubble_deep_field"),
    "immunohistochemistry": ("skimage", "ihc.png", "immunohistochemistry"),
    "motorcycle_left": ("skimage", "motorcycle_left.png", "motorcycle"),
    "motorcycle_right": ("skimage", "motorcycle_right.png", "motorcycle"),
    "retina": ("skimage", "retina.jpg", "retina"),
    "rocket": ("skimage", "rocket.jpg", "rocket"),
    "china": ("sklearn", "china.jpg", "china"),
    "flower": ("sklearn", "flower.jpg", "flower"),
}


@dataclass(frozen=True)
class SimCamera:
    """A simulated camera: a lens on a sensor frame, optionally cropped.

    Attributes:
        name: The ``camera`` column of ``metadata.csv``.
        k1: First radial coefficient.
        k2: Second radial coefficient.
        frame: ``(width, height)`` of the sensor's full image in pixels.
        focal_px: Focal length in pixels; the principal point is the frame's centre.
        crop: ``(x, y, width, height)`` of the frame that is kept, or None for the whole frame.
        weight: Probability of the camera.
    """

    name: str
    k1: float
    k2: float
    frame: tuple[int, int]
    focal_px: float
    crop: tuple[int, int, int, int] | None
    weight: float

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the output image."""
        return (self.crop[2], self.crop[3]) if self.crop is not None else self.frame

    def camera(self, k1: float | None = None, k2: float | None = None) -> Camera:
        """The :class:`Camera` relative to the output image, with ``k1`` / ``k2`` in place of the camera's."""
        width, height = self.size
        x0, y0 = (self.crop[0], self.crop[1]) if self.crop is not None else (0, 0)
        px, py = self.frame[0] / 2 - x0, self.frame[1] / 2 - y0  # the principal point in the output's pixels
        return Camera(
            k1=self.k1 if k1 is None else float(k1),
            k2=self.k2 if k2 is None else float(k2),
            cx=(px - width / 2) / width,
            cy=(py - height / 2) / height,
            focal=self.focal_px / width,
        )


#: The simulated cameras, drawn by weight:
#:
#: * ``wide_a``: k1 = -0.30, k2 = 0.10 on a 384 x 256 frame, focal 384 px;
#: * ``wide_b``: a stronger barrel (k1 = -0.40, k2 = 0.20) on the same frame (a size bucket then
#:   mixes two lenses);
#: * ``compact``: a mild lens (k1 = -0.20, k2 = 0.05) on a 320 x 240 frame;
#: * ``portrait``: ``wide_a`` turned upright, 256 x 384 (focal 384 px = 1.5 x the width);
#: * ``crop_left``: ``wide_a``'s frame cut to its left 288 x 256 pixels (cx = +1/6, focal = 4/3);
#: * ``square``: k1 = -0.35, k2 = 0.15 on a 384 x 256 frame cut to its centre 256 x 256 (focal 1.5).
#:
#: The coefficients are stronger than the real set's global fit (k1 = -0.17, k2 = 0.35) on purpose:
#: distortion moves pixels in proportion to the image width, and at 2048 pixels that fit moves them
#: about 3 pixels on average (6 at most); these cameras move the toy set's pixels 2.5 to 6 pixels on
#: average (7 to 15 at most), so the score's few-pixel edge tolerance separates the methods at toy
#: size as it does at full size.
CAMERAS: tuple[SimCamera, ...] = (
    SimCamera("wide_a", -0.30, 0.10, (384, 256), 384.0, None, 0.30),
    SimCamera("wide_b", -0.40, 0.20, (384, 256), 384.0, None, 0.15),
    SimCamera("compact", -0.20, 0.05, (320, 240), 320.0, None, 0.15),
    SimCamera("portrait", -0.30, 0.10, (256, 384), 384.0, None, 0.15),
    SimCamera("crop_left", -0.30, 0.10, (384, 256), 384.0, (0, 0, 288, 256), 0.15),
    SimCamera("square", -0.35, 0.15, (384, 256), 384.0, (64, 0, 256, 256), 0.10),
)


@dataclass(frozen=True)
class Rendered:
    """One simulated image pair.

    Attributes:
        image_id: 12 hex characters.
        camera_name: The :class:`SimCamera`'s name.
        camera: The camera relative to the output image (jittered coefficients).
        group: The photo's scene.
        input: ``(H, W, 3)`` uint8 RGB distorted image.
        target: ``(H, W, 3)`` uint8 RGB corrected image.
        qualities: JPEG quality of the input and of the target.
    """

    image_id: str
    camera_name: str
    camera: Camera
    group: str
    input: np.ndarray
    target: np.ndarray
    qualities: tuple[int, int]


def load_photos() -> dict[str, np.ndarray]:
    """The :data:`PHOTOS` as ``(H, W, 3)`` uint8 RGB arrays.

    Raises:
        DataError: A photo is not in the installed package.
    """
    import skimage.data
    from sklearn.datasets import load_sample_image

    folder = Path(skimage.data.__file__).parent
    photos = {}
    for name, (package, file, _group) in PHOTOS.items():
        if package == "skimage":
            path = folder / file
            if not path.is_file():
                raise DataError(
                    f"photo {path} is not in the installed scikit-image package",
                    "install scikit-image>=0.24 (its wheel bundles the photo) into the environment",
                )
            with Image.open(path) as img:
                photos[name] = np.asarray(img.convert("RGB"), dtype=np.uint8)
        else:
            try:
                photos[name] = np.asarray(load_sample_image(file), dtype=np.uint8)
            except (OSError, AttributeError) as exc:
                raise DataError(
                    f"photo {file} is not in the installed scikit-learn package ({exc})",
                    "install scikit-learn>=1.3 (it bundles its two sample images) into the environment",
                ) from exc
    return photos


def _draw_camera(rng: np.random.Generator) -> tuple[SimCamera, Camera]:
    """A camera by weight and its jittered coefficients (redrawn while the correction is invalid)."""
    weights = np.array([c.weight for c in CAMERAS])
    sim = CAMERAS[int(rng.choice(len(CAMERAS), p=weights / weights.sum()))]
    width, height = sim.size
    for _ in range(JITTER_ATTEMPTS):
        k1, k2 = sim.k1 + rng.normal(0.0, JITTER), sim.k2 + rng.normal(0.0, JITTER)
        camera = sim.camera(k1, k2)
        try:
            undistort_maps(camera, width, height)
        except FrameError:
            continue
        return sim, camera
    raise FrameError(f"camera {sim.name}: no jitter of k1={sim.k1}, k2={sim.k2} gives a valid correction")


def _origin(rng: np.random.Generator, room: int, before: int, after: int) -> int:
    """An origin in ``[0, room]`` leaving ``before`` / ``after`` pixels of overhang inside where they fit."""
    if room >= before + after:
        return int(rng.integers(before, room - after + 1))
    return int(rng.integers(0, room + 1))


def render(rng: np.random.Generator, photos: dict[str, np.ndarray], quality: tuple[int, int]) -> Rendered:
    """Render one image pair (see the module docstring).

    Args:
        rng: The image's generator; everything the image depends on is drawn from it, in a fixed order.
        photos: The photos by name (:func:`load_photos`).
        quality: Smallest and largest JPEG quality.

    Returns:
        The rendered pair.
    """
    image_id = rng.bytes(ID_LENGTH // 2).hex()
    sim, camera = _draw_camera(rng)
    width, height = sim.size
    names = [n for n in sorted(photos) if photos[n].shape[1] >= width and photos[n].shape[0] >= height]
    name = names[int(rng.integers(len(names)))]
    photo = photos[name]
    if rng.random() < 0.5:
        photo = photo[:, ::-1]
    least = max(RESOLUTION[0], width / photo.shape[1], height / photo.shape[0])
    resolution = float(rng.uniform(least, RESOLUTION[1]))
    size = (max(width, round(photo.shape[1] * resolution)), max(height, round(photo.shape[0] * resolution)))
    scaled = cv2.resize(np.ascontiguousarray(photo), size, interpolation=cv2.INTER_AREA)
    scaled = cv2.GaussianBlur(scaled, (0, 0), OPTICS_BLUR)
    map_x, map_y = distortion_maps(camera, width, height)
    left, right = max(0, -math.floor(map_x.min())), max(0, math.ceil(map_x.max()) - (width - 1))
    top, bottom = max(0, -math.floor(map_y.min())), max(0, math.ceil(map_y.max()) - (height - 1))
    ox = _origin(rng, size[0] - width, left, right)
    oy = _origin(rng, size[1] - height, top, bottom)
    target = scaled[oy : oy + height, ox : ox + width].copy()
    distorted = cv2.remap(scaled, map_x + ox, map_y + oy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    qualities = (int(rng.integers(quality[0], quality[1] + 1)), int(rng.integers(quality[0], quality[1] + 1)))
    return Rendered(image_id, sim.name, camera, PHOTOS[name][2], distorted, target, qualities)


def _save_jpeg(pixels: np.ndarray, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path, format="JPEG", quality=quality)


def _settings(n_train: int, n_test: int, seed: int, quality: tuple[int, int]) -> dict[str, Any]:
    return {"n_train": n_train, "n_test": n_test, "seed": seed, "quality": [int(quality[0]), int(quality[1])]}


def _check(n_train: int, n_test: int, quality: Sequence[int]) -> tuple[int, int]:
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if not whole(n_train) or n_train < 1:
        raise ConfigError(f"write_lens_set: n_train={n_train!r} is not a whole number >= 1", "pass n_train >= 1")
    if not whole(n_test) or n_test < 0:
        raise ConfigError(f"write_lens_set: n_test={n_test!r} is not a whole number >= 0", "pass n_test >= 0")
    pair = tuple(quality) if isinstance(quality, Sequence) and not isinstance(quality, str) else ()
    if len(pair) != 2 or not all(whole(q) and 1 <= q <= 100 for q in pair) or pair[0] > pair[1]:
        raise ConfigError(
            f"write_lens_set: quality={quality!r} is not a range (low, high) of JPEG qualities",
            "pass quality=[low, high] with 1 <= low <= high <= 100",
        )
    return int(pair[0]), int(pair[1])


def _counts(n_train: int, n_test: int) -> dict[str, int]:
    counts = {TRAIN_DIR: 2 * n_train}
    if n_test:
        counts.update({TEST_DIR: n_test, TEST_TARGET_DIR: n_test})
    return counts


def _read_stamp(root: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("generator") == GENERATOR else None


def is_complete(root: Path, settings: dict[str, Any]) -> bool:
    """Whether ``root`` holds a whole set written with ``settings`` by this version of the simulator."""
    stamp = _read_stamp(root)
    if stamp is None or stamp.get("version") != GENERATOR_VERSION or stamp.get("settings") != settings:
        return False
    if not (root / METADATA).is_file():
        return False
    for folder, n in _counts(settings["n_train"], settings["n_test"]).items():
        path = root / folder
        if not path.is_dir() or sum(1 for p in path.iterdir() if p.suffix == ".jpg") != n:
            return False
    return True


def write_lens_set(
    root: str | Path,
    n_train: int = 240,
    n_test: int = 80,
    seed: int = 0,
    quality: Sequence[int] = (88, 95),
) -> Path:
    """Write the simulated set under ``root`` unless a complete set with these settings is there.

    Writing 240 + 80 images takes about 10 s on one core (``python -m src.datamodules.lens.simulate
    --out /tmp/lens --images 320``).

    Args:
        root: Dataset folder, e.g. ``data/lens_sim``.
        n_train: Training pairs.
        n_test: Test inputs (with their targets in ``test-targets/``); 0 for no test split.
        seed: Seed of everything drawn.
        quality: Smallest and largest JPEG quality, drawn per file.

    Returns:
        ``root``.

    Raises:
        ConfigError: A setting is out of range.
        DataError: ``root`` holds files this simulator did not write, or a photo is missing from the
            installed packages.
    """
    quality = _check(n_train, n_test, quality)
    root = Path(root)
    settings = _settings(n_train, n_test, seed, quality)
    if is_complete(root, settings):
        return root
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and _read_stamp(root) is None)):
        raise DataError(
            f"{root} holds files the lens simulator did not write; writing the simulated set there would replace them",
            "point data.root (or --out) at an empty or new folder",
        )
    photos = load_photos()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    with staged_folder(root) as staging:
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                image = render(np.random.default_rng([seed, SPLIT_CODES[split], i]), photos, quality)
                if image.image_id in seen:
                    raise DataError(
                        f"write_lens_set: image id {image.image_id} drawn twice (seed={seed})",
                        "pass another seed",
                    )
                seen.add(image.image_id)
                if split == "train":
                    paths = (
                        staging / TRAIN_DIR / f"{image.image_id}{INPUT_SUFFIX}.jpg",
                        staging / TRAIN_DIR / f"{image.image_id}{TARGET_SUFFIX}.jpg",
                    )
                else:
                    paths = (
                        staging / TEST_DIR / f"{image.image_id}.jpg",
                        staging / TEST_TARGET_DIR / f"{image.image_id}.jpg",
                    )
                _save_jpeg(image.input, paths[0], image.qualities[0])
                _save_jpeg(image.target, paths[1], image.qualities[1])
                cam = image.camera.as_dict()
                rows.append({"image_id": image.image_id, "split": split, "camera": image.camera_name,
                             "group": image.group, **{k: repr(v) for k, v in cam.items()}})  # fmt: skip
        rows.sort(key=lambda r: (SPLIT_CODES[r["split"]], r["image_id"]))
        with open(staging / METADATA, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METADATA_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        write_json_atomic(
            staging / STAMP,
            {"generator": GENERATOR, "version": GENERATOR_VERSION, "settings": settings,
             "files": _counts(n_train, n_test)},
        )  # fmt: skip
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m src.datamodules.lens.simulate --out D --images N --seed S [--test-fraction F]``."""
    parser = argparse.ArgumentParser(
        prog="python -m src.datamodules.lens.simulate",
        description="Write a simulated lens-correction set (the competition's layout) from bundled photos.",
    )
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--images", type=int, default=320, help="images in all (train pairs + test inputs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything drawn")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="share of the images in the test split")
    parser.add_argument("--quality", type=int, nargs=2, default=(88, 95), metavar=("LOW", "HIGH"),
                        help="range of the JPEG qualities")  # fmt: skip
    args = parser.parse_args(argv)
    if not 0.0 <= args.test_fraction < 1.0:
        parser.error(f"--test-fraction={args.test_fraction} is not in [0, 1)")
    n_test = round(args.images * args.test_fraction)
    n_train = args.images - n_test
    if n_train < 1:
        parser.error(f"--images={args.images} leaves no training pair")
    start = time.perf_counter()
    try:
        settings = _settings(n_train, n_test, args.seed, _check(n_train, n_test, args.quality))
        if is_complete(args.out, settings):
            print(f"{args.out} already holds this set ({n_train} training pairs, {n_test} test images, "
                  f"seed {args.seed}): nothing written")  # fmt: skip
            return 0
        write_lens_set(args.out, n_train, n_test, args.seed, tuple(args.quality))
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        f"wrote {n_train} training pairs and {n_test} test images (seed {args.seed}) to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
