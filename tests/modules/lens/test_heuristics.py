"""The coefficient search and the bucket table's fallback (bucket -> orientation -> global)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from src.core.errors import ConfigError
from src.datamodules.lens.geometry import Camera, distortion_maps
from src.modules.lens.heuristics import CoefficientTable, SearchGrid, fit_table, grid_search


@dataclass
class FakePair:
    bucket: str
    parent: str
    input: np.ndarray
    target: np.ndarray


@dataclass
class Scored:
    score: float


def mae_scorer(pred: np.ndarray, target: np.ndarray) -> Scored:
    """A stand-in for the composite score: 100 - mean absolute difference (cheap, monotonic)."""
    return Scored(100.0 - float(np.abs(pred.astype(float) - target.astype(float)).mean()))


def grid_image(width: int, height: int) -> np.ndarray:
    image = np.full((height, width), 255, np.uint8)
    for x in range(0, width, 6):
        cv2.line(image, (x, 0), (x, height - 1), 0, 1)
    for y in range(0, height, 6):
        cv2.line(image, (0, y), (width - 1, y), 0, 1)
    return cv2.GaussianBlur(image, (0, 0), 1.5)  # smooth: the stand-in score varies smoothly with k1


def make_pair(bucket: str, parent: str, camera: Camera, width: int, height: int) -> FakePair:
    target = grid_image(width, height)
    map_x, map_y = distortion_maps(camera, width, height)
    distorted = cv2.remap(target, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return FakePair(bucket, parent, distorted, target)


GRID = SearchGrid(k1=(-0.4, 0.0, 0.1), k2=(0.0, 0.0, 0.1), micro_steps=0)


@pytest.fixture(scope="module")
def pairs() -> list[FakePair]:
    strong = [make_pair("96x64", "landscape", Camera(-0.4, 0.0), 96, 64) for _ in range(3)]
    mild = [make_pair("80x64", "landscape", Camera(-0.1, 0.0), 80, 64)]  # below min_support
    portrait = [make_pair("64x96", "portrait", Camera(-0.2, 0.0), 64, 96)]  # no parent fit either
    return strong + mild + portrait


def test_grid_search_finds_the_camera_that_made_the_pairs(pairs: list[FakePair]) -> None:
    fit = grid_search(pairs[:3], GRID, mae_scorer)
    assert fit.camera.k1 == pytest.approx(-0.4)
    assert fit.count == 3


def test_micro_grid_refines_between_coarse_steps() -> None:
    pair = make_pair("96x64", "landscape", Camera(-0.15, 0.0), 96, 64)
    coarse = grid_search([pair], SearchGrid(k1=(-0.4, 0.0, 0.2), k2=(0.0, 0.0, 0.01), micro_steps=0), mae_scorer)
    fine = grid_search([pair], SearchGrid(k1=(-0.4, 0.0, 0.2), k2=(0.0, 0.0, 0.01), micro_steps=2), mae_scorer)
    assert abs(fine.camera.k1 + 0.15) < abs(coarse.camera.k1 + 0.15)
    assert fine.score >= coarse.score


def test_bucket_table_falls_back_to_the_orientation_then_the_global_fit(pairs: list[FakePair]) -> None:
    table = fit_table(pairs, "bucket", GRID, mae_scorer, min_support=3)
    assert set(table.buckets) == {"96x64"}  # 3 pairs: a fit of its own
    assert set(table.parents) == {"landscape"}  # 4 landscape pairs; 1 portrait pair: none
    assert table.camera_for("96x64", "landscape") == (table.buckets["96x64"].camera, "bucket")
    assert table.camera_for("80x64", "landscape") == (table.parents["landscape"].camera, "parent")
    assert table.camera_for("64x96", "portrait") == (table.global_fit.camera, "global")
    assert table.buckets["96x64"].camera.k1 == pytest.approx(-0.4)
    again = CoefficientTable.from_dict(table.as_dict())
    assert again.camera_for("80x64", "landscape") == table.camera_for("80x64", "landscape")


def test_global_and_identity_tables(pairs: list[FakePair]) -> None:
    table = fit_table(pairs, "global", GRID, mae_scorer)
    assert not table.buckets and not table.parents
    assert table.camera_for("96x64", "landscape")[1] == "global"
    assert fit_table([], "identity", GRID, mae_scorer).camera_for("x", "y") == (Camera(), "global")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"k1": (0.1, -0.1, 0.05)}, r"model.search.k1=\[0.1, -0.1, 0.05\]"), ({"k2": (0.0, 0.5, 0.0)}, "step > 0")],
)
def test_bad_grids_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SearchGrid(**kwargs)


def test_a_grid_whose_every_camera_leaves_the_frame_is_refused_when_built() -> None:
    with pytest.raises(ConfigError, match=r"model.search \(k1=\[-3.0, -2.0, 1.0\].*mildest, k1=-2.0"):
        SearchGrid(k1=(-3.0, -2.0, 1.0), k2=(0.0, 0.0, 1.0), micro_steps=0)
