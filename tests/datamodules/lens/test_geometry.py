"""The Brown–Conrady geometry: OpenCV maps and the differentiable torch warp agree, and the
simulator's inverse maps invert the correction."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from src.datamodules.lens.geometry import (
    Camera,
    FrameError,
    distortion_maps,
    new_camera_matrix,
    torch_new_camera,
    torch_undistort,
    undistort,
    undistort_maps,
)

CAMERAS = [
    Camera(-0.17, 0.35),  # the competition's global correction
    Camera(-0.30, 0.10, cx=0.1, cy=-0.05, focal=0.8),  # off-centre, short focal
    Camera(0.10, -0.05),  # pincushion
    Camera(-0.17, 0.35, focal=1.5),  # a portrait frame of a landscape camera
]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[100:356, 64:448])  # 384 x 256, RGB


@pytest.mark.parametrize("camera", CAMERAS, ids=str)
def test_torch_new_camera_matrix_is_opencvs(camera: Camera) -> None:
    width, height = 384, 256
    expected = new_camera_matrix(camera, width, height)
    params = [
        torch.tensor([v], dtype=torch.float64) for v in (camera.k1, camera.k2, camera.cx, camera.cy, camera.focal)
    ]
    fx, _, px, py, nfx, nfy, npx, npy = torch_new_camera(*params, width, height)
    got = np.array([float(nfx), float(nfy), float(npx), float(npy)])
    np.testing.assert_allclose(got, expected[[0, 1, 0, 1], [0, 1, 2, 2]], rtol=1e-6)
    np.testing.assert_allclose([float(fx), float(px), float(py)], camera.matrix(width, height)[[0, 0, 1], [0, 2, 2]])


@pytest.mark.parametrize("camera", CAMERAS, ids=str)
def test_torch_warp_agrees_with_opencv_remap_within_half_a_grey_level(photo: np.ndarray, camera: Camera) -> None:
    expected = undistort(photo, camera).astype(np.float64)
    tensor = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    got = torch_undistort(tensor, camera.k1, camera.k2, camera.cx, camera.cy, camera.focal)[0]
    diff = np.abs(got.permute(1, 2, 0).numpy() - expected)
    assert diff.mean() < 0.5
    assert np.percentile(diff, 99) < 2.0
    assert np.abs(expected - photo).mean() > 5 * diff.mean()  # the correction did move pixels


def test_torch_warp_is_differentiable_in_the_coefficients(photo: np.ndarray) -> None:
    tensor = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    target = torch.from_numpy(undistort(photo, Camera(-0.17, 0.35))).permute(2, 0, 1)[None].float() / 255
    k1 = torch.tensor([-0.05], dtype=torch.float64, requires_grad=True)
    loss = (torch_undistort(tensor, k1, 0.35) - target).abs().mean()
    loss.backward()
    assert k1.grad is not None and float(k1.grad) > 0  # moving k1 towards -0.17 lowers the loss


def test_distortion_maps_invert_the_correction() -> None:
    camera, width, height = Camera(-0.26, 0.30, cx=1 / 6, focal=4 / 3), 288, 256
    map_x, map_y = undistort_maps(camera, width, height)
    back_x, back_y = distortion_maps(camera, width, height)
    # corrected pixel -> distorted pixel -> corrected pixel is the identity (away from the border)
    round_x = cv2.remap(back_x, map_x, map_y, cv2.INTER_LINEAR)[8:-8, 8:-8]
    round_y = cv2.remap(back_y, map_x, map_y, cv2.INTER_LINEAR)[8:-8, 8:-8]
    assert np.abs(round_x - np.arange(width)[None, 8:-8]).max() < 0.05
    assert np.abs(round_y - np.arange(height)[8:-8, None]).max() < 0.05


def test_maps_are_cached_and_read_only() -> None:
    first = undistort_maps(Camera(-0.17, 0.35), 96, 64)
    assert undistort_maps(Camera(-0.17 + 1e-9, 0.35), 96, 64)[0] is first[0]
    with pytest.raises(ValueError):
        first[0][0, 0] = 1.0


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"k1": -2.0, "k2": 0.0}, "folds a 96x64 image over itself"),
        ({"k1": 0.0, "k2": -3.0}, "folds|outside the photo|no valid pixels"),
        ({"k1": float("nan")}, "k1=nan is not a finite number"),
        ({"focal": 0.0}, "focal=0.0 must be positive"),
    ],
)
def test_cameras_that_leave_the_frame_are_refused(values: dict[str, float], match: str) -> None:
    with pytest.raises(FrameError, match=match):
        undistort(np.zeros((64, 96, 3), np.uint8), Camera(**values))
