"""The Brown–Conrady lens model of the lens-correction task, in OpenCV (inference) and torch (training).

A :class:`Camera` holds the radial coefficients ``k1``, ``k2`` (``k3 = p1 = p2 = 0``), the focal
length as a fraction of the image width and the principal point as an offset from the image centre
(fractions of the width and height). Every quantity is relative to the image size, so one camera
describes an image at any resolution.

Correcting an image is OpenCV's recipe the competition's heuristics used: the camera matrix
``K`` (``fx = fy = focal * width``, centre ``(width / 2 + cx * width, height / 2 + cy * height)``),
the new camera matrix of ``cv2.getOptimalNewCameraMatrix`` with ``alpha = 0`` (every output pixel
comes from inside the input, same size) and ``cv2.initUndistortRectifyMap`` + ``cv2.remap``.

* :func:`undistort_maps` / :func:`undistort`: the OpenCV path, maps cached per (size, camera);
* :func:`torch_undistort`: the same correction, differentiable in the camera parameters (the new
  camera matrix follows OpenCV's algorithm step for step: 9 x 9 border points, 5 fixed-point
  iterations of the inverse distortion, the inscribed rectangle), for training through the warp;
* :func:`distortion_maps`: the inverse (where each pixel of the distorted photo lies in the
  corrected one), for the simulator.

A camera whose correction would read outside the photo, fold it over itself (a distortion that is
not monotonic over the frame) or leave no inscribed rectangle raises :class:`FrameError`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Points per side of the border grid of ``cv2.getOptimalNewCameraMatrix``.
GRID_POINTS = 9
#: Fixed-point iterations of ``cv2.undistortPoints``' inverse distortion (its default criteria).
INVERSE_ITERATIONS = 5
#: A correction may read this fraction of its pixels outside the photo (border pixels) at most.
MAX_OUTSIDE = 0.01
#: Maps kept by :func:`undistort_maps` (two float32 planes per entry: 22 MB at 2048 x 1367).
MAP_CACHE_SIZE = 16


class FrameError(ValueError):
    """A camera whose correction reads outside the photo or folds it over itself."""


@dataclass(frozen=True)
class Camera:
    """A Brown–Conrady camera relative to the image size.

    Attributes:
        k1: First radial coefficient (negative: barrel correction).
        k2: Second radial coefficient.
        cx: Principal point's horizontal offset from the image centre, as a fraction of the width.
        cy: Principal point's vertical offset from the image centre, as a fraction of the height.
        focal: Focal length as a fraction of the image width.
    """

    k1: float = 0.0
    k2: float = 0.0
    cx: float = 0.0
    cy: float = 0.0
    focal: float = 1.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise FrameError(f"camera {name}={value!r} is not a finite number")
        if self.focal <= 0:
            raise FrameError(f"camera focal={self.focal!r} must be positive")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Camera:
        """A camera from a dict with any of ``k1``, ``k2``, ``cx``, ``cy``, ``focal`` (others ignored)."""
        return cls(**{k: float(values[k]) for k in ("k1", "k2", "cx", "cy", "focal") if k in values})

    def as_dict(self) -> dict[str, float]:
        """``{"k1", "k2", "cx", "cy", "focal"}`` as plain floats."""
        return {k: float(v) for k, v in asdict(self).items()}

    def is_identity(self) -> bool:
        """Whether the correction changes nothing (no distortion)."""
        return self.k1 == 0.0 and self.k2 == 0.0

    def key(self) -> tuple[float, ...]:
        """The parameters rounded to 1e-6: cameras equal to that precision share cached maps."""
        return tuple(round(v, 6) for v in asdict(self).values())

    def matrix(self, width: int, height: int) -> np.ndarray:
        """The 3 x 3 camera matrix for an image of ``width`` x ``height`` pixels."""
        f = self.focal * width
        return np.array(
            [[f, 0.0, width / 2 + self.cx * width], [0.0, f, height / 2 + self.cy * height], [0.0, 0.0, 1.0]]
        )

    def coefficients(self) -> np.ndarray:
        """OpenCV's distortion vector ``(k1, k2, p1, p2, k3)``."""
        return np.array([self.k1, self.k2, 0.0, 0.0, 0.0])


def _check_size(width: int, height: int) -> None:
    if width < 2 or height < 2:
        raise FrameError(f"image size {width}x{height} is too small to correct (at least 2x2 pixels)")


def new_camera_matrix(camera: Camera, width: int, height: int) -> np.ndarray:
    """``cv2.getOptimalNewCameraMatrix`` with ``alpha = 0`` and the same output size.

    Raises:
        FrameError: The inscribed rectangle of valid pixels is empty or not finite.
    """
    _check_size(width, height)
    new, roi = cv2.getOptimalNewCameraMatrix(
        camera.matrix(width, height), camera.coefficients(), (width, height), 0, (width, height)
    )
    if not np.isfinite(new).all() or new[0, 0] <= 0 or new[1, 1] <= 0 or roi[2] <= 0 or roi[3] <= 0:
        raise FrameError(f"camera {camera.as_dict()} leaves no valid pixels in a {width}x{height} image")
    return new


@functools.lru_cache(maxsize=MAP_CACHE_SIZE)
def _maps(key: tuple[float, ...], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    camera = Camera(*key)
    new = new_camera_matrix(camera, width, height)
    map_x, map_y = cv2.initUndistortRectifyMap(
        camera.matrix(width, height), camera.coefficients(), None, new, (width, height), cv2.CV_32FC1
    )
    finite = np.isfinite(map_x) & np.isfinite(map_y)
    inside = finite & (map_x >= -0.5) & (map_x <= width - 0.5) & (map_y >= -0.5) & (map_y <= height - 0.5)
    outside = 1.0 - float(inside.mean())
    if not finite.all() or (np.diff(map_x, axis=1) <= 0).any() or (np.diff(map_y, axis=0) <= 0).any():
        raise FrameError(
            f"camera {camera.as_dict()} folds a {width}x{height} image over itself (its distortion is not "
            "monotonic over the frame)"
        )
    if outside > MAX_OUTSIDE:
        raise FrameError(
            f"camera {camera.as_dict()} reads {outside:.1%} of a {width}x{height} correction from outside the "
            f"photo (at most {MAX_OUTSIDE:.0%} allowed)"
        )
    map_x.setflags(write=False)
    map_y.setflags(write=False)
    return map_x, map_y


def undistort_maps(camera: Camera, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap``'s float32 maps correcting a ``width`` x ``height`` image (read-only, cached).

    Raises:
        FrameError: The correction would read outside the photo.
    """
    _check_size(width, height)
    return _maps(camera.key(), int(width), int(height))


def undistort(image: np.ndarray, camera: Camera) -> np.ndarray:
    """The corrected image: same size and dtype, bilinear, border pixels replicated.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array.
        camera: The camera that took it.

    Raises:
        FrameError: The correction would read outside the photo.
    """
    if camera.is_identity() and camera.cx == 0 and camera.cy == 0:
        return image.copy()
    height, width = image.shape[:2]
    map_x, map_y = undistort_maps(camera, width, height)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def distortion_maps(camera: Camera, width: int, height: int, iterations: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of a distorted ``width`` x ``height`` photo lies in its correction.

    The inverse of :func:`undistort_maps`: ``corrected[v, u]`` is ``distorted[map_y[v, u],
    map_x[v, u]]``, and ``distorted[y, x]`` is ``corrected`` at ``distortion_maps(...)[.][y, x]``
    (which may fall outside the corrected frame near the corners: the correction crops them).

    Returns:
        ``(x, y)`` float32 arrays of shape ``(height, width)`` in the corrected image's pixels.
    """
    new = new_camera_matrix(camera, width, height)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).reshape(-1, 1, 2)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, 1e-10)
    out = cv2.undistortPointsIter(
        points, camera.matrix(width, height), camera.coefficients(), None, new, criteria
    ).reshape(height, width, 2)
    return out[..., 0].astype(np.float32), out[..., 1].astype(np.float32)


# ---- torch -------------------------------------------------------------------------------------------


def _as_batch(value: Tensor | float, like: Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).expand(like.shape[0]).reshape(-1)


def torch_new_camera(
    k1: Tensor, k2: Tensor, cx: Tensor, cy: Tensor, focal: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The camera matrix and ``cv2.getOptimalNewCameraMatrix(alpha=0)``'s new one, per batch item.

    Args:
        k1, k2, cx, cy, focal: ``(B,)`` camera parameters (see :class:`Camera`).
        width, height: The image size in pixels.

    Returns:
        ``(fx, fy, px, py, new_fx, new_fy, new_px, new_py)``, each ``(B,)``.
    """
    dtype = k1.dtype
    fx = focal * width
    px = width / 2 + cx * width
    py = height / 2 + cy * height
    steps = torch.arange(GRID_POINTS, dtype=dtype, device=k1.device)
    gx = (steps * (width - 1) / (GRID_POINTS - 1)).repeat(GRID_POINTS)  # row-major 9 x 9 grid
    gy = (steps * (height - 1) / (GRID_POINTS - 1)).repeat_interleave(GRID_POINTS)
    x0 = (gx[None] - px[:, None]) / fx[:, None]
    y0 = (gy[None] - py[:, None]) / fx[:, None]
    x, y = x0, y0
    for _ in range(INVERSE_ITERATIONS):
        r2 = x * x + y * y
        icdist = 1.0 / (1.0 + (k2[:, None] * r2 + k1[:, None]) * r2)
        x, y = x0 * icdist, y0 * icdist
    x = x.reshape(-1, GRID_POINTS, GRID_POINTS)  # [batch, row, column]
    y = y.reshape(-1, GRID_POINTS, GRID_POINTS)
    left, right = x[:, :, 0].amax(dim=1), x[:, :, -1].amin(dim=1)
    top, bottom = y[:, 0, :].amax(dim=1), y[:, -1, :].amin(dim=1)
    new_fx = (width - 1) / (right - left)
    new_fy = (height - 1) / (bottom - top)
    return fx, fx, px, py, new_fx, new_fy, -new_fx * left, -new_fy * top


def torch_undistort(
    images: Tensor,
    k1: Tensor | float,
    k2: Tensor | float,
    cx: Tensor | float = 0.0,
    cy: Tensor | float = 0.0,
    focal: Tensor | float = 1.0,
) -> Tensor:
    """The correction of :func:`undistort` as a differentiable warp (``grid_sample``, bilinear, border).

    Args:
        images: ``(B, C, H, W)`` float tensor.
        k1, k2, cx, cy, focal: ``(B,)`` tensors or floats (see :class:`Camera`).

    Returns:
        ``(B, C, H, W)``, differentiable in the images and the camera parameters.
    """
    batch, _, height, width = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    ref = torch.empty(batch, dtype=torch.float64, device=images.device)
    k1, k2, cx, cy, focal = (_as_batch(v, ref) for v in (k1, k2, cx, cy, focal))
    fx, fy, px, py, nfx, nfy, npx, npy = torch_new_camera(k1, k2, cx, cy, focal, width, height)
    u = torch.arange(width, dtype=torch.float64, device=images.device)
    v = torch.arange(height, dtype=torch.float64, device=images.device)
    x = (u[None, None, :] - npx[:, None, None]) / nfx[:, None, None]  # (B, 1, W)
    y = (v[None, :, None] - npy[:, None, None]) / nfy[:, None, None]  # (B, H, 1)
    r2 = x * x + y * y  # (B, H, W)
    kr = 1.0 + (k2[:, None, None] * r2 + k1[:, None, None]) * r2
    src_x = fx[:, None, None] * (x * kr) + px[:, None, None]
    src_y = fy[:, None, None] * (y * kr) + py[:, None, None]
    grid = torch.stack([2.0 * src_x / (width - 1) - 1.0, 2.0 * src_y / (height - 1) - 1.0], dim=-1)
    return F.grid_sample(images.to(dtype), grid.to(dtype), mode="bilinear", padding_mode="border", align_corners=True)
