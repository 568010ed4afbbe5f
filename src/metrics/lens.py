"""The lens-correction score: how well a corrected photo matches the geometrically correct one.

A lens-distortion correction takes a distorted wide-angle photo and returns the corrected photo, same
size. Its per-image score, 0-100, is a weighted sum of five agreements with the target photo, each in
[0, 1] (:data:`WEIGHTS`):

* ``edge_f1``: Canny edges matched within a few pixels, at several scales;
* ``line_orientation``: length-weighted orientation histograms of the straight line segments (LSD);
* ``gradient_orientation``: magnitude-weighted orientation histograms of the Sobel gradients, per tile;
* ``ssim``: structural similarity of the grey images;
* ``pixel_accuracy``: one minus the mean absolute pixel difference.

A hard fail scores 0 (:data:`HARD_FAILS`, checked in that order): an output of another size, with
non-finite values or empty (constant), a block of the image that differs wholesale from the target
(synthesised or missing content), edges that match almost nowhere, and texture collapse (an output
far smoother than its target, the failure of networks that synthesise over-smoothed pixels).

:class:`LensScore` holds the settings (built from YAML with ``_target_: src.metrics.lens.LensScore``)
and :func:`score_image` scores one image; :func:`score_records` is the offline evaluator of
``evaluate.py`` and ``cv.py`` over prediction records, with per-bucket tables (:func:`bucket_table`)
and the acceptance gates (:class:`Gates`, :func:`check_gates`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from src.core.artifacts import RecordError
from src.core.errors import ConfigError, DataError
from src.core.evaluating import Evaluation

#: The components of the score and their weights (the competition's).
WEIGHTS: dict[str, float] = {
    "edge_f1": 0.40,
    "line_orientation": 0.22,
    "gradient_orientation": 0.18,
    "ssim": 0.15,
    "pixel_accuracy": 0.05,
}
#: Hard fails (score 0), in the order they are checked.
HARD_FAILS = (
    "size_mismatch",
    "nonfinite_output",
    "empty_output",
    "region_difference",
    "edge_f1_floor",
    "texture_collapse",
)

#: Gaussian blur before Canny: kernel size and sigma (pixels of the scale Canny runs at).
_EDGE_BLUR_KSIZE = 5
_EDGE_BLUR_SIGMA = 1.0
#: Canny thresholds: these factors times the target's median grey, clamped to the ranges below.
_CANNY_LOW_FACTOR = 0.66
_CANNY_HIGH_FACTOR = 1.33
_CANNY_LOW_RANGE = (20.0, 100.0)
_CANNY_HIGH_RANGE = (40.0, 200.0)
#: LSD's own Gaussian down-scaling before it looks for segments (its default, 0.8, is 3x slower).
_LSD_SCALE = 0.5
#: SSIM as skimage's ``structural_similarity(gaussian_weights=True, sigma=1.5,
#: use_sample_covariance=False, data_range=255)``: window radius int(3.5 * sigma + 0.5), constants K1, K2.
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = int(3.5 * _SSIM_SIGMA + 0.5)
_SSIM_C1 = np.float32((0.01 * 255.0) ** 2)
_SSIM_C2 = np.float32((0.03 * 255.0) ** 2)
#: Name of the table row over every bucket.
ALL_BUCKETS = "all"


def _number(value: Any) -> bool:
    """Whether ``value`` is a real, finite number (not a boolean)."""
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool | np.bool_)
        and (math.isfinite(float(value)))
    )


def _integer(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


@dataclass(frozen=True)
class LensScore:
    """The settings of the lens-correction score; calling it scores one image (:func:`score_image`).

    The default thresholds were chosen on natural photographs (256x384 crops of ``skimage.data``'s
    astronaut, coffee and chelsea; ``tests/metrics/test_lens_score.py`` keeps them there): the
    target itself scores 100; a copy shifted by 1-2 px scores 88-95 and one re-encoded as JPEG
    quality 90 scores 95-98, with no hard fail; the target bent by a mild barrel (``k1 = -0.1``,
    corners moved by about 23 px) scores 81-83, no hard fail; a Gaussian blur with sigma 3 is a
    texture collapse; a 64x64 block replaced by noise or black is a region difference.

    Attributes:
        weights: Component name -> weight (>= 0, not all 0); missing components weigh 0. Stored
            normalised to sum 1.
        canny_scales: Resize factors in (0, 1] at which the edges are found and matched (INTER_AREA);
            ``edge_f1`` is the mean over those at which either image has edges. The half scale
            forgives sub-pixel and JPEG jitter.
        edge_tolerance: An edge matches an edge of the other image within this many pixels (of the
            scale it was found at).
        min_line_fraction: Line segments shorter than this fraction of the image diagonal are
            ignored (LSD finds many short segments in texture, which say nothing of geometry).
        orientation_bins: Bins of the orientation histograms over [0, 180) degrees; each
            orientation is split linearly between its two nearest bins (circularly), so a small
            rotation changes the histograms smoothly.
        tiles: The gradient-orientation histograms are compared per tile of a ``tiles x tiles``
            grid, so that a correction right in one part and wrong in another is not averaged away.
        region: Side (pixels) of the non-overlapping blocks of the region-difference check; the
            partial blocks at the right and bottom borders are checked too.
        region_max_difference: A block whose mean absolute grey difference exceeds this (grey levels
            0-255) fails the image. 35 by default: on the photos above a block of colour noise
            differs by 46-60, a black block by its brightness (98-160 there), while a 1-2 px shift
            differs by at most 25 and a sigma-3 blur by at most 19.
        region_search: Before failing a block, the check looks for the target content that matches
            it best (least squared difference) within this fraction of the image diagonal and
            measures the difference there, so that content a correction moved is not taken for
            content it made up. 0.05 by default, the largest displacement of a barrel with
            ``|k1| <= 0.1``: without it, the mild barrel above differs by up to 72 in a corner block
            (where a high-contrast edge moved), with it by at most 23. Dense high-contrast structure
            still fails under that barrel (a dark-on-light grid of 2-px lines every 32 px differs by 40
            after the search: the corners are also scaled, by up to 30 %). 0 compares blocks in
            place only.
        edge_f1_floor: An edge F1 below this fails the image. 0.15 by default: a mild barrel keeps
            0.80-0.84 and a sigma-3 blur 0.28-0.64 (so that a blurred output fails as a texture
            collapse); two unrelated photos score 0.13-0.41 (and fail on region difference first),
            stripes against the same stripes moved by half their spacing 0.
        texture_min: Texture collapse is checked only on targets whose mean Sobel gradient magnitude
            (3x3 kernels on grey 0-255; a ramp of one grey level per pixel has magnitude 8) exceeds
            this; 8 by default, so that near-flat photos are never called collapsed.
        texture_ratio: An output whose mean gradient magnitude is below this times the target's has
            collapsed. 0.6 by default: a sigma-3 blur keeps 0.40-0.50 of it and a sigma-1 blur
            0.70-0.79, the mild barrel (whose resampling smooths) 0.88-0.91, JPEG quality 90 1.00.

    Raises:
        ConfigError: A setting out of range, naming it and its value.
    """

    weights: Mapping[str, float] = field(default_factory=lambda: dict(WEIGHTS))
    canny_scales: tuple[float, ...] = (1.0, 0.5)
    edge_tolerance: int = 2
    min_line_fraction: float = 0.05
    orientation_bins: int = 36
    tiles: int = 4
    region: int = 64
    region_max_difference: float = 35.0
    region_search: float = 0.05
    edge_f1_floor: float = 0.15
    texture_min: float = 8.0
    texture_ratio: float = 0.6

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", _normalised_weights(self.weights))
        scales = self.canny_scales
        if isinstance(scales, str | bytes) or not isinstance(scales, Sequence) or not scales:
            raise ConfigError(
                f"canny_scales={scales!r} is not a non-empty list of resize factors",
                "give factors in (0, 1], e.g. canny_scales: [1.0, 0.5]",
            )
        if not all(_number(s) and 0 < float(s) <= 1 for s in scales):
            raise ConfigError(f"canny_scales={list(scales)!r} holds a factor outside (0, 1]", "e.g. [1.0, 0.5]")
        object.__setattr__(self, "canny_scales", tuple(float(s) for s in scales))
        _check_int("edge_tolerance", self.edge_tolerance, 0, "e.g. 2 (pixels)")
        _check_int("orientation_bins", self.orientation_bins, 2, "e.g. 36 (5-degree bins)")
        _check_int("tiles", self.tiles, 1, "e.g. 4 (a 4x4 grid)")
        _check_int("region", self.region, 1, "e.g. 64 (pixels)")
        _check_range("min_line_fraction", self.min_line_fraction, 0.0, 1.0, "e.g. 0.05")
        _check_range("edge_f1_floor", self.edge_f1_floor, 0.0, 1.0, "e.g. 0.15")
        _check_range("texture_ratio", self.texture_ratio, 0.0, 1.0, "e.g. 0.6")
        _check_range("texture_min", self.texture_min, 0.0, math.inf, "e.g. 8 (mean Sobel magnitude)")
        _check_range("region_search", self.region_search, 0.0, 1.0, "e.g. 0.05 (of the image diagonal)")
        _check_range("region_max_difference", self.region_max_difference, 0.0, math.inf, "e.g. 35 (grey levels)")
        if float(self.region_max_difference) <= 0:
            raise ConfigError(
                f"region_max_difference={self.region_max_difference!r} is not above 0",
                "set region_max_difference: a grey-level difference above 0, e.g. 35",
            )

    def __hash__(self) -> int:
        values = [tuple(self.weights.items()) if f.name == "weights" else getattr(self, f.name) for f in fields(self)]
        return hash(tuple(values))

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> ImageScore:
        """Score ``pred`` against ``target`` (:func:`score_image`)."""
        return score_image(pred, target, self)


def _check_int(name: str, value: Any, low: int, fix: str) -> None:
    if not _integer(value) or value < low:
        raise ConfigError(f"{name}={value!r} is not an integer >= {low}", f"set {name}: {fix}")


def _check_range(name: str, value: Any, low: float, high: float, fix: str) -> None:
    if not (_number(value) or value == math.inf) or not low <= float(value) <= high:
        raise ConfigError(f"{name}={value!r} is not a number in [{low:g}, {high:g}]", f"set {name}: {fix}")


def _normalised_weights(weights: Any) -> dict[str, float]:
    """``weights`` checked (known names, finite, >= 0, sum > 0) and normalised to sum 1, in WEIGHTS order.

    Raises:
        ConfigError: Not a mapping, an unknown name, a bad value, or all zero.
    """
    if not isinstance(weights, Mapping):
        raise ConfigError(f"weights={weights!r} is not a mapping", f"give name: weight for {', '.join(WEIGHTS)}")
    unknown = [str(k) for k in weights if k not in WEIGHTS]
    if unknown:
        raise ConfigError(f"weights names unknown component(s) {', '.join(unknown)}", f"use only {', '.join(WEIGHTS)}")
    for name, value in weights.items():
        if not _number(value) or float(value) < 0:
            raise ConfigError(f"weights.{name}={value!r} is not a finite number >= 0", f"set weights.{name}: 0.2, say")
    total = sum(float(v) for v in weights.values())
    if total <= 0:
        raise ConfigError(f"weights={dict(weights)!r} sum to 0", "give at least one component a positive weight")
    return {name: float(weights.get(name, 0.0)) / total for name in WEIGHTS}


@dataclass
class ImageScore:
    """The score of one image.

    Attributes:
        score: 0-100; 0.0 on a hard fail.
        components: Component name -> agreement in [0, 1], every name of :data:`WEIGHTS`; computed
            on a hard fail too when the images allow it, ``{}`` when not (size mismatch,
            non-finite or zero-size output).
        hard_fail: One of :data:`HARD_FAILS`, or None.
    """

    score: float
    components: dict[str, float]
    hard_fail: str | None

    def as_dict(self) -> dict[str, Any]:
        """``{"score", "components", "hard_fail"}`` as JSON types, numbers rounded to 4 decimals."""
        return {
            "score": round(float(self.score), 4),
            "components": {k: round(float(v), 4) for k, v in self.components.items()},
            "hard_fail": self.hard_fail,
        }


def _as_image(array: Any, name: str) -> np.ndarray:
    """``array`` as ``(H, W)`` or ``(H, W, 3)``, numeric (a trailing channel axis of 1 is dropped).

    Raises:
        DataError: Not numeric.
    """
    image = np.asarray(array)
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_) or np.iscomplexobj(image):
        raise DataError(
            f"the {name} image is an array of {image.dtype}, not of numbers",
            "pass uint8 (H, W, 3) RGB or (H, W) grey, or floats in 0-255",
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return image


def _check_target(target: np.ndarray) -> None:
    """Raises DataError when the target is no image: wrong shape or non-finite values."""
    if not (target.ndim == 2 or (target.ndim == 3 and target.shape[2] == 3)):
        raise DataError(
            f"the target image has shape {target.shape}, not (H, W) grey or (H, W, 3) RGB",
            "pass the target photo as uint8 (H, W, 3) RGB or (H, W) grey",
        )
    if target.dtype.kind == "f" and not np.isfinite(target).all():
        raise DataError("the target image holds non-finite values", "pass the target photo's pixels (0-255)")


def _float_pixels(image: np.ndarray) -> np.ndarray:
    """float32 pixels, clipped to 0-255."""
    pixels = image.astype(np.float32, copy=False) if image.dtype != np.bool_ else image.astype(np.float32) * 255
    if image.dtype != np.uint8:
        pixels = np.clip(pixels, 0.0, 255.0)
    return np.ascontiguousarray(pixels)


@dataclass
class _Image:
    """One image as the components see it."""

    pixels: np.ndarray  # float32, (H, W) or (H, W, 3), 0-255
    grey: np.ndarray  # float32 (H, W), luma
    grey8: np.ndarray  # uint8 (H, W), luma rounded
    lines: np.ndarray  # (bins,) length-weighted line-segment orientation histogram
    tiles: np.ndarray  # (tiles * tiles, bins) magnitude-weighted gradient-orientation histograms
    texture: float  # mean 3x3 Sobel gradient magnitude

    @property
    def constant(self) -> bool:
        """Whether every channel holds one value."""
        low, high, _, _ = cv2.minMaxLoc(self.grey)
        if low != high:  # a constant image has a constant grey
            return False
        return bool((self.pixels == self.pixels[0, 0]).all())


def _image(pixels: np.ndarray, config: LensScore) -> _Image:
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if pixels.ndim == 3 else pixels
    grey8 = cv2.convertScaleAbs(grey)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    magnitude, angle = cv2.cartToPolar(gx, gy, angleInDegrees=True)
    bins, tiles = config.orientation_bins, config.tiles
    base = _tile_index(*grey.shape, tiles, 2 * bins + 2)
    tile_histograms = _soft_histogram(angle, magnitude, bins, base, tiles * tiles)
    return _Image(pixels, grey, grey8, _line_histogram(grey8, config), tile_histograms, cv2.mean(magnitude)[0])


@functools.lru_cache(maxsize=16)
def _tile_index(height: int, width: int, tiles: int, slots: int) -> np.ndarray:
    """Per pixel, the first histogram slot of its tile of the ``tiles x tiles`` grid (read-only)."""
    rows = (np.arange(height) * tiles // height)[:, None]
    cols = (np.arange(width) * tiles // width)[None, :]
    index = ((rows * tiles + cols) * slots).astype(np.intp)
    index.setflags(write=False)
    return index


def _soft_histogram(
    angle: np.ndarray, weight: np.ndarray, bins: int, base: np.ndarray | int = 0, groups: int = 1
) -> np.ndarray:
    """Weighted orientation histograms, orientations taken mod 180 degrees, each value split linearly
    between its two nearest bin centres (circularly).

    Args:
        angle: Orientations in degrees, in [0, 360].
        weight: Their weights, same shape.
        bins: Bins over [0, 180).
        base: Per value (same shape) or for all, the first slot of its histogram: the histogram
            index times ``2 * bins + 2`` (:func:`_tile_index`).
        groups: The number of histograms.

    Returns:
        ``(groups, bins)`` float64 sums of ``weight``.
    """
    # Bins over [0, 360) are twice as many and then folded onto [0, 180): no modulo per value.
    # Slot 0 and slot 2 * bins + 1 catch the neighbours past either end (wrapped circularly).
    slots = 2 * bins + 2
    position = angle * np.float32(bins / 180.0) + np.float32(0.5)  # in [0.5, 2 * bins + 0.5]
    lower = np.floor(position)  # the slot of the lower neighbour
    upper = weight * (position - lower)  # float32 throughout
    index = lower.astype(np.intp)
    index += base
    size = groups * slots
    extended = np.bincount(index.ravel(), (weight - upper).ravel(), size)
    index += 1
    extended += np.bincount(index.ravel(), upper.ravel(), size)
    extended = extended.reshape(groups, slots)
    full = extended[:, 1 : 2 * bins + 1].copy()
    full[:, -1] += extended[:, 0]
    full[:, 0] += extended[:, -1]
    return full[:, :bins] + full[:, bins:]


def _canny_thresholds(target_grey8: np.ndarray) -> tuple[float, float]:
    """Canny's (low, high) thresholds from the target's median grey, clamped."""
    counts = np.bincount(target_grey8.ravel(), minlength=256).cumsum()
    median = float(np.searchsorted(counts, (counts[-1] + 1) // 2))
    low = min(max(_CANNY_LOW_FACTOR * median, _CANNY_LOW_RANGE[0]), _CANNY_LOW_RANGE[1])
    high = min(max(_CANNY_HIGH_FACTOR * median, _CANNY_HIGH_RANGE[0]), _CANNY_HIGH_RANGE[1])
    return low, high


def _edges(grey8: np.ndarray, scale: float, thresholds: tuple[float, float]) -> np.ndarray:
    if scale != 1.0:
        height, width = grey8.shape
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey8 = cv2.resize(grey8, size, interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(grey8, (_EDGE_BLUR_KSIZE, _EDGE_BLUR_KSIZE), _EDGE_BLUR_SIGMA)
    return cv2.Canny(blurred, thresholds[0], thresholds[1])


def _disk(tolerance: int) -> np.ndarray:
    size = 2 * tolerance + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _edge_f1(pred8: np.ndarray, reference: _Reference, config: LensScore) -> float:
    """Edge F1: Canny edges (the target's thresholds for both images) matched within
    ``edge_tolerance`` pixels, averaged over the ``canny_scales`` at which either image has edges.

    Precision is the fraction of the prediction's edge pixels within the tolerance of a target edge,
    recall the reverse; edges in only one image score 0. No edges in either image at any scale:
    1.0 (a scale at which neither has edges, where fine lines vanish, says nothing and is skipped).
    """
    disk = _disk(config.edge_tolerance)
    scores = []
    for scale, (theirs, theirs_near, n_theirs) in zip(config.canny_scales, reference.edges, strict=True):
        ours = _edges(pred8, scale, reference.thresholds)
        n_ours = cv2.countNonZero(ours)
        if n_ours == 0 or n_theirs == 0:
            if n_ours or n_theirs:
                scores.append(0.0)
            continue
        precision = cv2.countNonZero(cv2.bitwise_and(ours, theirs_near)) / n_ours
        recall = cv2.countNonZero(cv2.bitwise_and(theirs, cv2.dilate(ours, disk))) / n_theirs
        scores.append(2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
    return float(np.mean(scores)) if scores else 1.0


def _line_histogram(grey8: np.ndarray, config: LensScore) -> np.ndarray:
    """Length-weighted orientation histogram of the LSD segments at least ``min_line_fraction`` of
    the diagonal long (all zeros when there are none)."""
    bins = config.orientation_bins
    if min(grey8.shape) < 2:
        return np.zeros(bins)
    lines = cv2.createLineSegmentDetector(cv2.LSD_REFINE_NONE, _LSD_SCALE).detect(grey8)[0]
    if lines is None:
        return np.zeros(bins)
    x1, y1, x2, y2 = lines.reshape(-1, 4).astype(np.float64).T
    length = np.hypot(x2 - x1, y2 - y1)
    keep = length >= config.min_line_fraction * math.hypot(*grey8.shape)
    if not keep.any():
        return np.zeros(bins)
    angle = np.mod(np.degrees(np.arctan2(y2[keep] - y1[keep], x2[keep] - x1[keep])), 180.0)
    return _soft_histogram(angle.astype(np.float32), length[keep], bins)[0]


def _intersection(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Histogram intersection of two unnormalised histograms: 1.0 when both are empty, 0.0 when one is."""
    total_ours, total_theirs = float(ours.sum()), float(theirs.sum())
    if total_ours <= 0 or total_theirs <= 0:
        return 1.0 if total_ours <= 0 and total_theirs <= 0 else 0.0
    return min(1.0, float(np.minimum(ours / total_ours, theirs / total_theirs).sum()))


def _gradient_orientation(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Agreement of per-tile gradient-orientation histograms: per tile the intersection of the
    normalised histograms, averaged with the target tile's total magnitude as weight (flat tiles
    weigh nothing; all flat: 1.0)."""
    weight = theirs.sum(axis=1)
    total = weight.sum()
    if total <= 0:
        return 1.0
    agreement = [_intersection(ours[k], theirs[k]) if weight[k] > 0 else 0.0 for k in range(len(weight))]
    return min(1.0, float(np.dot(agreement, weight) / total))


def _ssim_window(height: int, width: int) -> int:
    """SSIM's window size, checked against the image size.

    Raises:
        DataError: The image is smaller than the window.
    """
    size = 2 * _SSIM_RADIUS + 1
    if height < size or width < size:
        raise DataError(
            f"the images are {height}x{width} pixels, smaller than the {size}x{size} SSIM window",
            f"score images of at least {size}x{size} pixels",
        )
    return size


def _ssim_blur(image: np.ndarray) -> np.ndarray:
    """SSIM's Gaussian window over ``image``, the window's radius cropped from each border."""
    size = _ssim_window(*image.shape)
    out = cv2.GaussianBlur(image, (size, size), _SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)
    return out[_SSIM_RADIUS:-_SSIM_RADIUS, _SSIM_RADIUS:-_SSIM_RADIUS]


def _ssim_stats(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local mean, squared mean and variance of one image under SSIM's window."""
    mean = _ssim_blur(grey)
    square = mean * mean
    return mean, square, _ssim_blur(grey * grey) - square


def _ssim(pred: np.ndarray, reference: _Reference) -> float:
    """SSIM of a float32 grey image (0-255) against the target's, clipped to [0, 1].

    The number ``skimage.metrics.structural_similarity(pred, target, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255)`` gives (a Gaussian window of radius 5; the borders
    of that width left out), computed with OpenCV filters in float32 (the variances lose about 0.004
    to cancellation, next to C2 = 58.5), about 10x faster.
    """
    mu_x, mu_xx, var_x = _ssim_stats(pred)
    mu_y, mu_yy, var_y = reference.ssim_stats
    mu_xy = mu_x * mu_y
    cov = _ssim_blur(pred * reference.image.grey) - mu_xy
    numerator = (2 * mu_xy + _SSIM_C1) * (2 * cov + _SSIM_C2)
    denominator = (mu_xx + mu_yy + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    return float(np.clip(cv2.mean(numerator / denominator)[0], 0.0, 1.0))


def _block_differences(pred: np.ndarray, target: np.ndarray, config: LensScore) -> np.ndarray:
    """Mean absolute difference of two float32 grey images per ``region x region`` block (the partial
    blocks at the right and bottom borders included), ``(block rows, block columns)``.

    A block whose difference exceeds ``region_max_difference`` is measured again against the target
    content that matches it best (least squared difference) within ``region_search`` of the image
    diagonal, so that content a correction moved a little is not mistaken for content it made up.
    """
    difference = cv2.absdiff(pred, target)
    height, width = difference.shape
    rows, cols = np.arange(0, height, config.region), np.arange(0, width, config.region)
    sums = np.add.reduceat(np.add.reduceat(difference, rows, axis=0, dtype=np.float64), cols, axis=1)
    blocks = sums / np.outer(np.diff(np.append(rows, height)), np.diff(np.append(cols, width)))
    reach = round(config.region_search * math.hypot(height, width))
    if reach < 1:
        return blocks
    for i, j in zip(*np.nonzero(blocks > config.region_max_difference), strict=True):
        top, left = int(rows[i]), int(cols[j])
        bottom, right = min(top + config.region, height), min(left + config.region, width)
        block = pred[top:bottom, left:right]
        y0, x0 = max(0, top - reach), max(0, left - reach)
        window = target[y0 : min(height, bottom + reach), x0 : min(width, right + reach)]
        squared = cv2.matchTemplate(window, block, cv2.TM_SQDIFF)
        y, x = np.unravel_index(int(np.argmin(squared)), squared.shape)
        matched = window[y : y + block.shape[0], x : x + block.shape[1]]
        blocks[i, j] = min(blocks[i, j], float(cv2.absdiff(block, matched).mean()))
    return blocks


@dataclass
class _Reference:
    """What the components need of the target, kept for the next call with the same target."""

    image: _Image
    thresholds: tuple[float, float]  # Canny's, from the target's median grey
    edges: list[tuple[np.ndarray, np.ndarray, int]]  # per scale: edges, edges dilated by the tolerance, count
    ssim_stats: tuple[np.ndarray, np.ndarray, np.ndarray]


#: Targets of recent calls: a grid search scores many outputs against one target.
_REFERENCES: OrderedDict[tuple[Any, ...], _Reference] = OrderedDict()
_REFERENCES_LOCK = threading.Lock()
#: How many targets are kept, and the largest one kept (array values; about 10 bytes are kept per value,
#: so at most about 120 MB in all).
_REFERENCES_KEPT = 4
_REFERENCE_MAX_VALUES = 3_000_000


def _reference(target: np.ndarray, config: LensScore) -> _Reference:
    """The target's part of the components, from the cache when this target was seen with these settings."""
    target = np.ascontiguousarray(target)
    digest = hashlib.blake2b(memoryview(target).cast("B"), digest_size=16).digest()
    key = (
        digest, target.shape, target.dtype.str, config.canny_scales, config.edge_tolerance,
        config.min_line_fraction, config.orientation_bins, config.tiles,
    )  # fmt: skip
    with _REFERENCES_LOCK:
        found = _REFERENCES.get(key)
        if found is not None:
            _REFERENCES.move_to_end(key)
            return found
    image = _image(_float_pixels(target), config)
    thresholds = _canny_thresholds(image.grey8)
    disk = _disk(config.edge_tolerance)
    edges = []
    for scale in config.canny_scales:
        found_edges = _edges(image.grey8, scale, thresholds)
        edges.append((found_edges, cv2.dilate(found_edges, disk), cv2.countNonZero(found_edges)))
    reference = _Reference(image, thresholds, edges, _ssim_stats(image.grey))
    if target.size <= _REFERENCE_MAX_VALUES:
        with _REFERENCES_LOCK:
            _REFERENCES[key] = reference
            while len(_REFERENCES) > _REFERENCES_KEPT:
                _REFERENCES.popitem(last=False)
    return reference


def score_image(pred: np.ndarray, target: np.ndarray, config: LensScore | None = None) -> ImageScore:
    """Score a corrected photo against the target photo.

    Args:
        pred: The corrected photo: uint8 ``(H, W, 3)`` RGB or ``(H, W)`` grey, or floats in 0-255
            (clipped to it), any size.
        target: The target photo, in the same form.
        config: The settings; None for the defaults.

    The target's share of the work (its edges, lines, histograms and SSIM statistics) is kept for
    the next calls with the same target pixels and settings (the last 4 targets of up to 3 million
    values, found by a hash of their pixels), so that a search over correction coefficients pays it
    once: about 11 ms a call at 256x384 on one core, 16 ms with a new target.

    Returns:
        The score, its components and the hard fail. An output of another shape than the target (a
        grey output of a colour target included), with non-finite values, zero-size or constant
        where the target is not, is a hard fail, not an exception.

    Raises:
        DataError: An input that is no array of numbers, a target that is no image (shape, non-finite
            values), or images smaller than SSIM's 11x11 window.
    """
    config = config or LensScore()
    ours, theirs = _as_image(pred, "predicted"), _as_image(target, "target")
    _check_target(theirs)
    if ours.shape != theirs.shape:
        return ImageScore(0.0, {}, "size_mismatch")
    if ours.dtype.kind == "f" and not np.isfinite(ours).all():
        return ImageScore(0.0, {}, "nonfinite_output")
    if ours.size == 0:
        return ImageScore(0.0, {}, "empty_output")
    reference = _reference(theirs, config)
    image = _image(_float_pixels(ours), config)
    components = {
        "edge_f1": _edge_f1(image.grey8, reference, config),
        "line_orientation": _intersection(image.lines, reference.image.lines),
        "gradient_orientation": _gradient_orientation(image.tiles, reference.image.tiles),
        "ssim": _ssim(image.grey, reference),
        "pixel_accuracy": _pixel_accuracy(image.pixels, reference.image.pixels),
    }
    hard_fail = _hard_fail(image, reference.image, components["edge_f1"], config)
    if hard_fail is not None:
        return ImageScore(0.0, components, hard_fail)
    total = 100.0 * sum(config.weights[name] * value for name, value in components.items())
    return ImageScore(min(max(total, 0.0), 100.0), components, None)


def _pixel_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """1 - mean absolute difference / 255, over every channel."""
    means = cv2.mean(cv2.absdiff(pred, target))[: pred.shape[2] if pred.ndim == 3 else 1]
    return float(np.clip(1.0 - float(np.mean(means)) / 255.0, 0.0, 1.0))


def _hard_fail(pred: _Image, target: _Image, edge_score: float, config: LensScore) -> str | None:
    """The first hard fail after the shape and value checks: empty output, region difference,
    edge-F1 floor, texture collapse; None when there is none."""
    if pred.constant and not target.constant:
        return "empty_output"
    if _block_differences(pred.grey, target.grey, config).max() > config.region_max_difference:
        return "region_difference"
    if edge_score < config.edge_f1_floor:
        return "edge_f1_floor"
    if target.texture > config.texture_min and pred.texture < config.texture_ratio * target.texture:
        return "texture_collapse"
    return None


# ---- the evaluator --------------------------------------------------------------------------------


def _zero(score: float, hard_fail: str | None) -> bool:
    """Whether an image scored 0 (a hard fail, or nothing right at all)."""
    return hard_fail is not None or score <= 0.0


def _bucket_row(name: str, entries: list[tuple[float, bool]]) -> dict[str, Any]:
    count = len(entries)
    return {
        "bucket": name,
        "count": count,
        "mean": sum(s for s, _ in entries) / count if count else math.nan,
        "zero_rate": sum(z for _, z in entries) / count if count else math.nan,
    }


def bucket_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Score, count and zero rate per bucket (image size group).

    Args:
        rows: Scored images, each with ``bucket``, ``score`` (0-100) and ``hard_fail`` (None or a code).
            An image scored 0 or with a hard fail counts as a zero.

    Returns:
        One row ``{"bucket", "count", "mean", "zero_rate"}`` per bucket sorted by name, then the row of
        every image, bucket ``"all"`` (mean and zero rate NaN when there are no rows).

    Raises:
        ValueError: A bucket named ``"all"``.
    """
    groups: dict[str, list[tuple[float, bool]]] = {}
    for row in rows:
        name = str(row["bucket"])
        if name == ALL_BUCKETS:
            raise ValueError(f"bucket name {ALL_BUCKETS!r} is reserved for the row of every image")
        score = float(row["score"])
        groups.setdefault(name, []).append((score, _zero(score, row.get("hard_fail"))))
    table = [_bucket_row(name, groups[name]) for name in sorted(groups)]
    table.append(_bucket_row(ALL_BUCKETS, [entry for name in sorted(groups) for entry in groups[name]]))
    return table


@dataclass(frozen=True)
class Gates:
    """What a lens-correction model must reach to be accepted.

    Attributes:
        zero_rate_max: The largest fraction of images scored 0 (the competition's winners had about 0.15).
        bucket_min_count: Buckets with fewer images are too small to judge and are left out of the
            bucket gates.
        bucket_mean_min: Every judged bucket's mean score must reach this.
        bucket_zero_rate_max: Every judged bucket's zero rate must stay at or below this.
        learned_margin: A learned model must beat the heuristic it starts from (``pred.baseline``)
            by at least this many points of mean paired score.

    Raises:
        ConfigError: A value out of range, naming it.
    """

    zero_rate_max: float = 0.12
    bucket_min_count: int = 20
    bucket_mean_min: float = 15.0
    bucket_zero_rate_max: float = 0.30
    learned_margin: float = 1.5

    def __post_init__(self) -> None:
        for name in ("zero_rate_max", "bucket_zero_rate_max"):
            _check_range(name, getattr(self, name), 0.0, 1.0, "a fraction of images, e.g. 0.12")
        _check_int("bucket_min_count", self.bucket_min_count, 0, "e.g. 20 (images)")
        _check_range("bucket_mean_min", self.bucket_mean_min, 0.0, 100.0, "a score 0-100, e.g. 15")
        if not _number(self.learned_margin):
            raise ConfigError(
                f"learned_margin={self.learned_margin!r} is not a finite number", "set learned_margin: 1.5 (points)"
            )


def check_gates(table: Sequence[Mapping[str, Any]], gates: Gates, gain: float | None = None) -> dict[str, bool | None]:
    """The verdict of each gate on a :func:`bucket_table`.

    Args:
        table: Rows of :func:`bucket_table`, the ``"all"`` row among them.
        gates: The limits.
        gain: Mean paired score of the model minus that of its baseline; None when there is none.

    Returns:
        ``zero_rate`` (the all row's zero rate <= ``zero_rate_max``), ``buckets`` (every bucket of
        at least ``bucket_min_count`` images has mean >= ``bucket_mean_min`` and zero rate <=
        ``bucket_zero_rate_max``; true when no bucket is that large), ``bucket/<name>`` for each such
        bucket, and ``learned_margin`` (gain >= ``learned_margin``, None without a gain).

    Raises:
        ValueError: The table has no ``"all"`` row.
    """
    every = [row for row in table if row["bucket"] == ALL_BUCKETS]
    if not every:
        raise ValueError(f"the bucket table has no {ALL_BUCKETS!r} row (build it with bucket_table)")
    verdicts: dict[str, bool | None] = {"zero_rate": bool(every[0]["zero_rate"] <= gates.zero_rate_max)}
    judged = {
        f"bucket/{row['bucket']}": bool(
            row["mean"] >= gates.bucket_mean_min and row["zero_rate"] <= gates.bucket_zero_rate_max
        )
        for row in table
        if row["bucket"] != ALL_BUCKETS and row["count"] >= gates.bucket_min_count
    }
    verdicts["buckets"] = all(judged.values())
    verdicts.update(judged)
    verdicts["learned_margin"] = None if gain is None else bool(gain >= gates.learned_margin)
    return verdicts


def _settings(value: Any, kind: type, name: str) -> Any:
    """``value`` as a ``kind`` (Gates or LensScore): itself, built from a mapping, or the defaults for None.

    Raises:
        ConfigError: Neither, or a mapping with a key ``kind`` does not take.
    """
    if value is None:
        return kind()
    if isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        accepted = [f.name for f in fields(kind)]
        unknown = [str(k) for k in value if k not in accepted]
        if unknown:
            raise ConfigError(
                f"{name} has no setting {', '.join(unknown)}", f"use only {', '.join(accepted)} under {name}"
            )
        return kind(**value)
    raise ConfigError(
        f"{name}={value!r} is neither a mapping nor a {kind.__name__}",
        f"give {name} as a mapping of {', '.join(f.name for f in fields(kind))}",
    )


@dataclass
class _Scored:
    """One record's score, as aggregated."""

    sample_id: Any
    bucket: str
    score: float
    hard_fail: str | None
    components: dict[str, float]
    baseline: float | None


class _Malformed(Exception):
    """A record field the evaluator cannot use: ``field`` and what is wrong with it."""

    def __init__(self, field_name: str, problem: str) -> None:
        self.field_name = field_name
        self.problem = problem
        super().__init__(f"{field_name} {problem}")


class _Unreadable(Exception):
    """An image file that cannot be read: which one (``output`` or ``target``) and its path."""

    def __init__(self, role: str, path: Path) -> None:
        self.role = role
        self.path = path
        super().__init__(f"{role} {path}")


#: Fix of a malformed record.
_RECORD_FIX = (
    "write pred.score (0-100), pred.hard_fail (null or a code of src.metrics.lens.HARD_FAILS) and a bucket, "
    "or pred.output (the corrected image) with gt.target; or pass strict=false to count such records"
)


def _score_value(value: Any, where: str) -> float:
    if not _number(value) or not 0.0 <= float(value) <= 100.0:
        raise _Malformed(where, f"is {value!r}, not a number in 0-100")
    return float(value)


def _hard_fail_value(value: Any, where: str) -> str | None:
    if value is not None and value not in HARD_FAILS:
        raise _Malformed(where, f"is {value!r}, not null or one of {', '.join(HARD_FAILS)}")
    return value


def _components_value(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Malformed("pred.components", f"is {value!r}, not an object")
    out = {}
    for name, number in value.items():
        if name not in WEIGHTS:
            raise _Malformed(f"pred.components.{name}", f"is no component ({', '.join(WEIGHTS)})")
        if not _number(number) or not 0.0 <= float(number) <= 1.0:
            raise _Malformed(f"pred.components.{name}", f"is {number!r}, not a number in [0, 1]")
        out[name] = float(number)
    return out


def _resolve(path: str, root: str | None) -> Path:
    found = Path(path).expanduser()
    return found if found.is_absolute() or root is None else Path(root).expanduser() / found


def _read_rgb(path: Path) -> np.ndarray | None:
    """The image at ``path`` as uint8 RGB (H, W, 3), or None when it cannot be read or decoded."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _path_value(holder: Any, key: str, where: str) -> str:
    value = holder.get(key) if isinstance(holder, Mapping) else None
    if not isinstance(value, str) or not value:
        raise _Malformed(where, f"is {value!r}, not a path")
    return value


def _score_record(record: Mapping[str, Any], config: LensScore, root: str | None) -> tuple[_Scored, bool]:
    """The score of one labelled record, and whether it was scored from its image files.

    Raises:
        _Malformed: A field the evaluator cannot use.
        _Unreadable: An image file that cannot be read.
    """
    pred = record.get("pred")
    if not isinstance(pred, Mapping):
        raise _Malformed("pred", f"is {pred!r}, not an object")
    bucket = record.get("bucket")
    if not isinstance(bucket, str) or not bucket or bucket == ALL_BUCKETS:
        raise _Malformed("bucket", f"is {bucket!r}, not the name of an image-size group (e.g. '384x256')")
    baseline = None
    if pred.get("baseline") is not None:
        given = pred["baseline"]
        if not isinstance(given, Mapping):
            raise _Malformed("pred.baseline", f"is {given!r}, not an object with a score")
        baseline = _score_value(given.get("score"), "pred.baseline.score")
        _hard_fail_value(given.get("hard_fail"), "pred.baseline.hard_fail")
    if "score" in pred:
        score = _score_value(pred["score"], "pred.score")
        hard_fail = _hard_fail_value(pred.get("hard_fail"), "pred.hard_fail")
        if hard_fail is not None and score != 0.0:
            raise _Malformed("pred.score", f"is {score!r} with hard_fail {hard_fail!r} (a hard fail scores 0)")
        scored = _Scored(
            record.get("sample_id"), bucket, score, hard_fail, _components_value(pred.get("components")), baseline
        )
        return scored, False
    if pred.get("output") is None:
        raise _Malformed("pred", "has neither score nor output (the corrected image)")
    output = _resolve(_path_value(pred, "output", "pred.output"), root)
    target = _resolve(_path_value(record.get("gt"), "target", "gt.target"), root)
    ours = _read_rgb(output)
    if ours is None:
        raise _Unreadable("output", output)
    theirs = _read_rgb(target)
    if theirs is None:
        raise _Unreadable("target", target)
    result = score_image(ours, theirs, config)
    return _Scored(record.get("sample_id"), bucket, result.score, result.hard_fail, result.components, baseline), True


def _format(value: float, digits: int) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _report(table: list[dict[str, Any]], verdicts: Mapping[str, bool | None], gates: Gates, gain: float | None) -> str:
    """The bucket table and the gate verdicts as printed text."""
    width = max(8, *(len(row["bucket"]) for row in table))
    lines = [f"  {'bucket':<{width}} {'count':>7} {'mean':>7} {'zero rate':>10}"]
    lines += [
        f"  {row['bucket']:<{width}} {row['count']:>7} {_format(row['mean'], 2):>7} {_format(row['zero_rate'], 3):>10}"
        for row in table
    ]
    every = table[-1]
    judged = [key.removeprefix("bucket/") for key in verdicts if key.startswith("bucket/")]
    failed = [name for name in judged if not verdicts[f"bucket/{name}"]]

    def word(ok: bool | None) -> str:
        return "n/a" if ok is None else ("pass" if ok else "FAIL")

    lines.append(
        f"  gate zero_rate: {word(verdicts['zero_rate'])} "
        f"(zero rate {_format(every['zero_rate'], 3)}, at most {gates.zero_rate_max:g})"
    )
    lines.append(
        f"  gate buckets: {word(verdicts['buckets'])} ({len(judged)} bucket(s) of >= {gates.bucket_min_count} images "
        f"judged: mean >= {gates.bucket_mean_min:g}, zero rate <= {gates.bucket_zero_rate_max:g}"
        + (f"; failed: {', '.join(failed)})" if failed else ")")
    )
    lines.append(
        f"  gate learned_margin: {word(verdicts['learned_margin'])} "
        + (
            "(no record has pred.baseline)"
            if gain is None
            else f"(gain over the baseline {gain:+.2f} points, at least {gates.learned_margin:g})"
        )
    )
    return "\n".join(lines)


def score_records(
    records: Sequence[Mapping[str, Any]],
    gates: Gates | Mapping[str, Any] | None = None,
    score: LensScore | Mapping[str, Any] | None = None,
    root: str | None = None,
    strict: bool = False,
) -> Evaluation:
    """The lens-correction evaluator of ``evaluate.py`` and ``cv.py``: scores, bucket table and gates.

    A record is ``{"sample_id", "split", "bucket", "width", "height", "input", "gt": {"target": path}
    or null, "pred": {..., "score", "components", "hard_fail", "output", "baseline"}, "errors"}``.
    Records with ``gt`` null are counted (``unlabelled``), not scored. A ``pred.score`` is taken as
    it is (with ``pred.components`` and ``pred.hard_fail``); a labelled record without one is
    scored from its image files, ``pred.output`` against ``gt.target`` (relative paths are relative to
    ``root``, or to the working folder without one). ``pred.baseline.score``, when present, is the
    score of the heuristic a learned model starts from: the gain is the mean paired difference.

    Args:
        records: The records.
        gates: The acceptance gates (:class:`Gates` or a mapping of its fields); None: the defaults.
        score: The scorer for records scored from files (:class:`LensScore` or a mapping of its
            fields); None: the defaults.
        root: Folder that relative image paths are relative to.
        strict: Stop at the first malformed record or unreadable image instead of counting it.

    Returns:
        An :class:`~src.core.evaluating.Evaluation`: metrics ``score/mean``, ``score/zero_rate``,
        ``score/count``, ``component/<name>`` (means over the records that have it), ``fail/<code>``
        (rates), ``bucket/<name>/mean|zero_rate|count``, ``gate/zero_rate`` and ``gate/buckets``
        (1.0 pass, 0.0 fail), and with baselines ``baseline/mean``, ``baseline/count``, ``gain/mean``
        and ``gate/learned_margin``; per record ``sample_id``, ``bucket``, ``score``, ``hard_fail``
        and the components; counters ``unlabelled``, ``malformed_pred``, ``unreadable_output``,
        ``unreadable_target``, ``scored_from_files``; the file ``buckets.json`` (table, gates and
        verdicts) and the printed table.

    Raises:
        ConfigError: Bad gates or scorer settings.
        RecordError: With ``strict``, the first malformed record or unreadable image (naming the
            sample and the field or file); without, when records were given but none could be scored.
    """
    gates = _settings(gates, Gates, "gates")
    config = _settings(score, LensScore, "score")
    counters = {"unlabelled": 0, "malformed_pred": 0, "unreadable_output": 0, "unreadable_target": 0,
                "scored_from_files": 0}  # fmt: skip
    scored: list[_Scored] = []
    first_problem: str | None = None
    for index, record in enumerate(records):
        sample_id = record.get("sample_id") if isinstance(record, Mapping) else None
        if isinstance(record, Mapping) and record.get("gt") is None:
            counters["unlabelled"] += 1
            continue
        try:
            if not isinstance(record, Mapping):
                raise _Malformed("record", f"is {type(record).__name__}, not an object")
            entry, from_files = _score_record(record, config, root)
        except _Malformed as exc:
            what = f"record {sample_id!r}: {exc.field_name} {exc.problem}"
            if strict:
                raise RecordError(index, what, _RECORD_FIX) from exc
            counters["malformed_pred"] += 1
            first_problem = first_problem or what
            continue
        except _Unreadable as exc:
            what = f"record {sample_id!r}: the {exc.role} image {exc.path} cannot be read"
            if strict:
                raise RecordError(
                    index, what, "check that the file exists and is an image, or pass strict=false to count it"
                ) from exc
            counters[f"unreadable_{exc.role}"] += 1
            first_problem = first_problem or what
            continue
        counters["scored_from_files"] += from_files
        scored.append(entry)
    if not scored and first_problem is not None:
        raise RecordError(
            0,
            f"none of the {len(records)} records could be scored "
            f"({', '.join(f'{k}={v}' for k, v in counters.items() if v)}); the first: {first_problem}",
            _RECORD_FIX,
        )
    return _evaluation(scored, counters, gates)


def _evaluation(scored: list[_Scored], counters: dict[str, int], gates: Gates) -> Evaluation:
    """Metrics, per-record rows, bucket table, gate verdicts and report of the scored records."""
    count = len(scored)
    if not count:
        notes = ["no labelled record to score: every record has gt null"] if counters["unlabelled"] else []
        return Evaluation({"score/count": 0.0}, [], counters, notes=notes)
    rows = [{"bucket": s.bucket, "score": s.score, "hard_fail": s.hard_fail} for s in scored]
    table = bucket_table(rows)
    paired = [s for s in scored if s.baseline is not None]
    gain = sum(s.score - s.baseline for s in paired) / len(paired) if paired else None
    verdicts = check_gates(table, gates, gain)
    every = table[-1]
    metrics: dict[str, float] = {
        "score/mean": every["mean"],
        "score/zero_rate": every["zero_rate"],
        "score/count": float(count),
    }
    for name in WEIGHTS:
        values = [s.components[name] for s in scored if name in s.components]
        if values:
            metrics[f"component/{name}"] = sum(values) / len(values)
    for code in HARD_FAILS:
        metrics[f"fail/{code}"] = sum(s.hard_fail == code for s in scored) / count
    for row in table[:-1]:
        for key in ("mean", "zero_rate", "count"):
            metrics[f"bucket/{row['bucket']}/{key}"] = float(row[key])
    metrics["gate/zero_rate"] = float(bool(verdicts["zero_rate"]))
    metrics["gate/buckets"] = float(bool(verdicts["buckets"]))
    notes = []
    if gain is not None:
        metrics["baseline/mean"] = sum(s.baseline for s in paired) / len(paired)
        metrics["baseline/count"] = float(len(paired))
        metrics["gain/mean"] = gain
        metrics["gate/learned_margin"] = float(bool(verdicts["learned_margin"]))
        if len(paired) < count:
            notes.append(f"the gain is over the {len(paired)} of {count} scored records that have pred.baseline")
    per_sample = [
        {"sample_id": s.sample_id, "bucket": s.bucket, "score": s.score, "hard_fail": s.hard_fail, **s.components}
        for s in scored
    ]
    files = {"buckets.json": {"table": table, "gates": asdict(gates), "verdicts": verdicts, "gain": gain}}
    return Evaluation(metrics, per_sample, counters, files, notes, _report(table, verdicts, gates, gain))
