"""The lens-correction score and its evaluator (src/metrics/lens.py).

Each component on a drawn grid bent by a known barrel, the default thresholds on natural photos
(skimage's astronaut, coffee and chelsea), every hard fail against a near-copy that must not trigger
it, the settings' validation, SSIM against skimage's, the target cache, the bucket table and gates
on hand-computed numbers, and ``score_records`` on hand-made records and JPEG files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from skimage.metrics import structural_similarity

from src.core.artifacts import RecordError
from src.core.errors import ConfigError, DataError
from src.core.evaluating import write_evaluation
from src.metrics import lens
from src.metrics.lens import (
    HARD_FAILS,
    WEIGHTS,
    Gates,
    ImageScore,
    LensScore,
    bucket_table,
    check_gates,
    score_image,
    score_records,
)

GEOMETRIC = ("edge_f1", "line_orientation", "gradient_orientation")


# ---- images ----------------------------------------------------------------------------------------


def barrel(image: np.ndarray, k1: float) -> np.ndarray:
    """``image`` resampled at ``x_d = x (1 + k1 r^2)`` (centred coordinates, r over half the diagonal)."""
    height, width = image.shape[:2]
    cx, cy, half = (width - 1) / 2, (height - 1) / 2, math.hypot(width, height) / 2
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    xn, yn = (x - cx) / half, (y - cy) / half
    factor = 1 + k1 * (xn**2 + yn**2)
    map_x, map_y = (xn * factor * half + cx).astype(np.float32), (yn * factor * half + cy).astype(np.float32)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def grid(seed: int, offset: int = 0, full: bool = True) -> np.ndarray:
    """A 256x256 RGB grid on a light canvas with a gentle shading and mild noise (seeded): grey 2-px
    lines every 32 px starting at ``offset`` + 16, vertical ones and, when ``full``, horizontal ones
    and two diagonals."""
    rng = np.random.default_rng(seed)
    shade = np.linspace(0, 30, 256, dtype=np.float32)
    canvas = 180 + shade[None, :] + rng.normal(0, 4, (256, 256)).astype(np.float32)
    image = np.repeat(np.clip(canvas, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    line = (110, 110, 110)
    for k in range(offset + 16, 256, 32):
        cv2.line(image, (k, 0), (k, 255), line, 2)
        if full:
            cv2.line(image, (0, k), (255, k), line, 2)
    if full:
        cv2.line(image, (0, 0), (255, 255), line, 2)
        cv2.line(image, (0, 200), (200, 0), line, 2)
    return image


def jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, image.shape[1::-1], borderMode=cv2.BORDER_REFLECT)


def replace_block(image: np.ndarray, kind: str) -> np.ndarray:
    """``image`` with the 64x64 block at rows 0-63, columns 128-191 replaced by colour noise or black."""
    out = image.copy()
    fill = np.random.default_rng(0).integers(0, 256, (64, 64, 3)) if kind == "noise" else 0
    out[0:64, 128:192] = fill
    return out


PHOTOS = {
    "astronaut": lambda: skimage.data.astronaut()[100:356, 64:448],
    "coffee": lambda: skimage.data.coffee()[72:328, 108:492],
    "chelsea": lambda: skimage.data.chelsea()[22:278, 33:417],
}
PHOTO_CASES = {
    "identity": lambda t: t.copy(),
    "shift_1px": lambda t: shift(t, 1, 0),
    "shift_2px": lambda t: shift(t, 2, 1),
    "jpeg_90": jpeg,
    "barrel": lambda t: barrel(t, -0.1),
    "blur_3": lambda t: cv2.GaussianBlur(t, (0, 0), 3),
    "noise_block": lambda t: replace_block(t, "noise"),
    "black_block": lambda t: replace_block(t, "black"),
}


@pytest.fixture(scope="module")
def photos() -> dict[str, dict[str, ImageScore]]:
    """photo -> case -> score with the default settings."""
    out = {}
    for name, make in PHOTOS.items():
        target = np.ascontiguousarray(make())
        assert target.shape == (256, 384, 3)
        out[name] = {case: score_image(change(target), target) for case, change in PHOTO_CASES.items()}
    return out


@pytest.fixture(scope="module")
def grids() -> dict[str, ImageScore]:
    """The straight grid scored against itself, against a redrawn (other noise) straight grid, and
    against that grid bent by k1 = -0.05 and -0.1."""
    target = grid(0)
    redrawn = grid(1)
    return {
        "identity": score_image(target.copy(), target),
        "straight": score_image(redrawn, target),
        "bent_05": score_image(barrel(redrawn, -0.05), target),
        "bent_10": score_image(barrel(redrawn, -0.1), target),
    }


# ---- the components on a grid ---------------------------------------------------------------------


def test_identity_scores_100_with_every_component_1(grids: dict[str, ImageScore]) -> None:
    result = grids["identity"]
    assert result.hard_fail is None
    assert result.score == pytest.approx(100.0, abs=1e-6)
    assert set(result.components) == set(WEIGHTS)
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in result.components.values())


def test_a_bent_grid_scores_lower_on_every_geometric_component(grids: dict[str, ImageScore]) -> None:
    straight, mild, strong = grids["straight"], grids["bent_05"], grids["bent_10"]
    for result in (straight, mild, strong):
        assert result.hard_fail is None, result
    for name in GEOMETRIC:
        assert straight.components[name] > mild.components[name] > strong.components[name], name
    assert straight.components["edge_f1"] > 0.95
    assert straight.score - mild.score > 5
    assert mild.score - strong.score > 3
    assert strong.score > 50


def test_components_stay_in_unit_range_and_score_is_their_weighted_sum(grids: dict[str, ImageScore]) -> None:
    for result in grids.values():
        assert all(0.0 <= v <= 1.0 for v in result.components.values())
        expected = 100 * sum(WEIGHTS[k] * v for k, v in result.components.items())
        assert result.score == pytest.approx(expected, rel=1e-9)


def test_custom_weights_are_normalised_and_missing_ones_weigh_zero() -> None:
    config = LensScore(weights={"edge_f1": 2.0, "ssim": 2.0})
    assert config.weights == {"edge_f1": 0.5, "line_orientation": 0.0, "gradient_orientation": 0.0, "ssim": 0.5,
                              "pixel_accuracy": 0.0}  # fmt: skip
    target = grid(0)
    result = config(barrel(grid(1), -0.05), target)
    assert result.score == pytest.approx(50 * (result.components["edge_f1"] + result.components["ssim"]))


# ---- the defaults on photographs ------------------------------------------------------------------


def test_photo_identity_scores_100(photos: dict[str, dict[str, ImageScore]]) -> None:
    for name, cases in photos.items():
        assert cases["identity"].score == pytest.approx(100.0, abs=1e-6), name
        assert cases["identity"].hard_fail is None


@pytest.mark.parametrize("case", ["shift_1px", "shift_2px", "jpeg_90"])
def test_photo_near_copies_score_high_without_hard_fail(photos: dict[str, dict[str, ImageScore]], case: str) -> None:
    for name, cases in photos.items():
        assert cases[case].hard_fail is None, (name, cases[case])
        assert cases[case].score > 85, (name, cases[case])


def test_photo_mild_barrel_scores_clearly_lower_but_no_hard_fail(photos: dict[str, dict[str, ImageScore]]) -> None:
    for name, cases in photos.items():
        bent = cases["barrel"]
        assert bent.hard_fail is None, (name, bent)
        assert 0 < bent.score < cases["identity"].score - 10, name
        assert bent.score < cases["shift_2px"].score, name
        for component in GEOMETRIC:
            assert bent.components[component] < cases["jpeg_90"].components[component], (name, component)


@pytest.mark.parametrize(
    ("case", "code"),
    [("blur_3", "texture_collapse"), ("noise_block", "region_difference"), ("black_block", "region_difference")],
)
def test_photo_hard_fails(photos: dict[str, dict[str, ImageScore]], case: str, code: str) -> None:
    for name, cases in photos.items():
        result = cases[case]
        assert result.hard_fail == code, (name, result)
        assert result.score == 0.0
        assert set(result.components) == set(WEIGHTS)  # still computed


# ---- every hard fail, and a near-copy that does not trigger it ------------------------------------


@pytest.fixture(scope="module")
def target() -> np.ndarray:
    return grid(0)


def test_size_mismatch(target: np.ndarray) -> None:
    for pred in (target[:-1], target[:, :, 0], np.zeros((0, 0, 3), np.uint8)):
        assert score_image(pred, target) == ImageScore(0.0, {}, "size_mismatch")
    assert score_image(grid(1), target).hard_fail is None


def test_nonfinite_output(target: np.ndarray) -> None:
    pred = target.astype(np.float32)
    pred[10, 20, 1] = np.nan
    assert score_image(pred, target) == ImageScore(0.0, {}, "nonfinite_output")
    pred[10, 20, 1] = np.inf
    assert score_image(pred, target).hard_fail == "nonfinite_output"
    near = target.astype(np.float64) + 0.3  # floats in 0-255 are fine
    assert score_image(near, target).hard_fail is None


def test_empty_output(target: np.ndarray) -> None:
    flat = np.full_like(target, 128)
    result = score_image(flat, target)
    assert result.hard_fail == "empty_output" and result.score == 0.0
    assert set(result.components) == set(WEIGHTS)
    empty = np.zeros((0, 5, 3), np.uint8)
    assert score_image(empty, empty) == ImageScore(0.0, {}, "empty_output")
    # a constant target with a constant output of about the same grey is no failure
    plain = np.full((64, 64, 3), 120, np.uint8)
    result = score_image(np.full_like(plain, 124), plain)
    assert result.hard_fail is None
    assert result.components["edge_f1"] == result.components["line_orientation"] == 1.0
    assert result.components["gradient_orientation"] == 1.0
    assert result.components["pixel_accuracy"] == pytest.approx(1 - 4 / 255)


def test_region_difference(target: np.ndarray) -> None:
    for kind in ("noise", "black"):
        assert score_image(replace_block(target, kind), target).hard_fail == "region_difference", kind
    # the partial block at a border counts too (the grid is 256 wide: make it 250 and break the last 58 columns)
    narrow = np.ascontiguousarray(target[:, :250])
    broken = narrow.copy()
    broken[64:128, 192:] = 0
    assert score_image(broken, narrow).hard_fail == "region_difference"
    assert score_image(jpeg(target), target).hard_fail is None


def test_region_search_forgives_moved_content_only() -> None:
    """A block whose content moved by 12 px passes with the search and fails without it."""
    photo = np.ascontiguousarray(PHOTOS["astronaut"]())
    moved = photo.copy()
    moved[128:192, 320:384] = photo[128:192, 308:372]
    assert score_image(moved, photo).hard_fail is None
    assert score_image(moved, photo, LensScore(region_search=0.0)).hard_fail == "region_difference"


def test_edge_f1_floor() -> None:
    stripes = grid(0, full=False)
    moved = grid(1, offset=16, full=False)  # every line half a spacing away
    result = score_image(moved, stripes)
    assert result.components["edge_f1"] < 0.05
    assert result.hard_fail == "edge_f1_floor"
    assert score_image(grid(1, full=False), stripes).hard_fail is None


def test_texture_collapse() -> None:
    photo = np.ascontiguousarray(PHOTOS["coffee"]())
    result = score_image(cv2.GaussianBlur(photo, (0, 0), 3), photo)
    assert result.hard_fail == "texture_collapse"
    assert result.components["edge_f1"] >= LensScore().edge_f1_floor  # it is not caught earlier
    assert score_image(cv2.GaussianBlur(photo, (0, 0), 0.7), photo).hard_fail is None
    # a target without texture is never collapsed
    calm = np.full((64, 64), 100, np.uint8)
    calm[:, 32:] = 110
    assert score_image(cv2.GaussianBlur(calm, (0, 0), 3), calm).hard_fail is None


def test_hard_fails_are_checked_in_order(target: np.ndarray) -> None:
    assert HARD_FAILS.index("region_difference") < HARD_FAILS.index("texture_collapse")
    smooth_and_holed = replace_block(cv2.GaussianBlur(target, (0, 0), 3), "black")
    assert score_image(smooth_and_holed, target).hard_fail == "region_difference"


# ---- inputs ---------------------------------------------------------------------------------------


def test_grey_and_float_inputs(target: np.ndarray) -> None:
    grey = cv2.cvtColor(target, cv2.COLOR_RGB2GRAY)
    assert score_image(grey, grey).score == pytest.approx(100.0)
    assert score_image(grey[:, :, None], grey).score == pytest.approx(100.0)
    as_float = score_image(target.astype(np.float64), target)
    assert as_float.score == pytest.approx(100.0)
    over = score_image(target.astype(np.float32) * 3 - 300, target)  # clipped to 0-255, no error
    assert 0.0 <= over.components["pixel_accuracy"] <= 1.0


def test_bad_inputs_raise_data_errors(target: np.ndarray) -> None:
    with pytest.raises(DataError, match="not of numbers"):
        score_image(np.array([["a"]]), target)
    with pytest.raises(DataError, match="target image has shape"):
        score_image(target, target[:, :, :2])
    bad = target.astype(np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        score_image(target, bad)
    tiny = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(DataError, match="smaller than the 11x11 SSIM window"):
        score_image(tiny, tiny)


def test_ssim_is_skimages(target: np.ndarray) -> None:
    photo = np.ascontiguousarray(PHOTOS["coffee"]())
    for pred, truth in ((jpeg(photo, 60), photo), (barrel(target, -0.1), target)):
        grey_pred = cv2.cvtColor(pred.astype(np.float32), cv2.COLOR_RGB2GRAY)
        grey_truth = cv2.cvtColor(truth.astype(np.float32), cv2.COLOR_RGB2GRAY)
        expected = structural_similarity(
            grey_pred.astype(np.float64), grey_truth.astype(np.float64), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=255,
        )  # fmt: skip
        assert score_image(pred, truth).components["ssim"] == pytest.approx(expected, abs=1e-5)


def test_the_target_cache_follows_the_pixels(target: np.ndarray) -> None:
    lens._REFERENCES.clear()
    pred = barrel(target, -0.05)
    first = score_image(pred, target)
    again = score_image(pred, target)
    assert len(lens._REFERENCES) == 1
    assert again == first
    changed = target.copy()
    changed[100:140, 100:140] = 255 - changed[100:140, 100:140]
    fresh = score_image(pred, changed)
    assert fresh.components != first.components
    lens._REFERENCES.clear()
    assert score_image(pred, changed) == fresh


def test_as_dict_is_rounded_json() -> None:
    result = ImageScore(27.123456, {"edge_f1": 0.123456789}, None)
    assert result.as_dict() == {"score": 27.1235, "components": {"edge_f1": 0.1235}, "hard_fail": None}
    json.dumps(score_image(grid(1), grid(0)).as_dict())


# ---- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"edge_f1": 1.0, "sharpness": 0.5}, "unknown component"),
        ({"edge_f1": -0.1, "ssim": 1.0}, "weights.edge_f1"),
        ({"edge_f1": float("nan")}, "weights.edge_f1"),
        ({"edge_f1": True}, "weights.edge_f1"),
        ({"edge_f1": 0.0, "ssim": 0.0}, "sum to 0"),
        ({}, "sum to 0"),
        ([0.4, 0.6], "not a mapping"),
    ],
)
def test_weights_validation(weights: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LensScore(weights=weights)


@pytest.mark.parametrize(
    "settings",
    [
        {"canny_scales": ()},
        {"canny_scales": (1.0, 0.0)},
        {"canny_scales": (1.5,)},
        {"canny_scales": "1.0"},
        {"edge_tolerance": -1},
        {"edge_tolerance": 1.5},
        {"orientation_bins": 1},
        {"tiles": 0},
        {"region": 0},
        {"region_max_difference": 0.0},
        {"region_search": 1.5},
        {"edge_f1_floor": 1.2},
        {"texture_ratio": -0.1},
        {"texture_min": float("nan")},
        {"min_line_fraction": 2.0},
    ],
)
def test_settings_validation(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(settings))):
        LensScore(**settings)


def test_settings_are_hashable_and_accept_lists() -> None:
    config = LensScore(canny_scales=[1.0, 0.5, 0.25])
    assert config.canny_scales == (1.0, 0.5, 0.25)
    assert hash(config) == hash(LensScore(canny_scales=(1.0, 0.5, 0.25)))


def test_settings_from_a_hydra_node() -> None:
    node = OmegaConf.create({"_target_": "src.metrics.lens.LensScore", "weights": {"edge_f1": 3, "ssim": 1},
                             "canny_scales": [1.0], "region_max_difference": 30})  # fmt: skip
    config = instantiate(node)
    assert config.weights["edge_f1"] == 0.75 and config.canny_scales == (1.0,)
    assert config.region_max_difference == 30
    with pytest.raises(InstantiationException, match="tiles=0"):
        instantiate(OmegaConf.create({"_target_": "src.metrics.lens.LensScore", "tiles": 0}))


# ---- bucket table and gates -----------------------------------------------------------------------


ROWS = [
    {"bucket": "384x256", "score": 40.0, "hard_fail": None},
    {"bucket": "384x256", "score": 0.0, "hard_fail": "texture_collapse"},
    {"bucket": "384x256", "score": 20.0, "hard_fail": None},
    {"bucket": "256x384", "score": 30.0, "hard_fail": None},
    {"bucket": "256x384", "score": 0.0, "hard_fail": None},  # a zero without a hard fail is a zero too
]


def test_bucket_table_by_hand() -> None:
    assert bucket_table(ROWS) == [
        {"bucket": "256x384", "count": 2, "mean": 15.0, "zero_rate": 0.5},
        {"bucket": "384x256", "count": 3, "mean": 20.0, "zero_rate": pytest.approx(1 / 3)},
        {"bucket": "all", "count": 5, "mean": 18.0, "zero_rate": 0.4},
    ]
    empty = bucket_table([])
    assert len(empty) == 1 and empty[0]["count"] == 0 and math.isnan(empty[0]["mean"])
    with pytest.raises(ValueError, match="reserved"):
        bucket_table([{"bucket": "all", "score": 1.0, "hard_fail": None}])


def _table(*rows: tuple[str, int, float, float]) -> list[dict[str, Any]]:
    return [{"bucket": b, "count": c, "mean": m, "zero_rate": z} for b, c, m, z in rows]


def test_check_gates_on_hand_made_tables() -> None:
    gates = Gates()
    table = _table(("a", 30, 25.0, 0.10), ("b", 25, 14.0, 0.05), ("small", 5, 1.0, 0.9), ("all", 60, 20.0, 0.12))
    assert check_gates(table, gates, gain=1.5) == {
        "zero_rate": True,  # 0.12 <= 0.12
        "buckets": False,
        "bucket/a": True,
        "bucket/b": False,  # mean 14 < 15
        "learned_margin": True,  # 1.5 >= 1.5
    }
    table = _table(("a", 30, 25.0, 0.31), ("small", 19, 0.0, 1.0), ("all", 49, 15.3, 0.5))
    assert check_gates(table, gates) == {
        "zero_rate": False, "buckets": False, "bucket/a": False, "learned_margin": None,
    }  # fmt: skip
    only_small = _table(("small", 19, 0.0, 1.0), ("all", 19, 0.0, 1.0))
    verdicts = check_gates(only_small, gates, gain=1.4)
    assert verdicts == {"zero_rate": False, "buckets": True, "learned_margin": False}
    assert check_gates(only_small, Gates(bucket_min_count=19))["bucket/small"] is False
    with pytest.raises(ValueError, match="'all' row"):
        check_gates(_table(("a", 30, 25.0, 0.1)), gates)


def test_gates_validation() -> None:
    with pytest.raises(ConfigError, match="zero_rate_max"):
        Gates(zero_rate_max=1.5)
    with pytest.raises(ConfigError, match="bucket_min_count"):
        Gates(bucket_min_count=2.5)
    with pytest.raises(ConfigError, match="learned_margin"):
        Gates(learned_margin=float("nan"))


# ---- score_records --------------------------------------------------------------------------------


def _record(sample_id: str, bucket: str | None, pred: Any, gt: Any = "labelled", **extra: Any) -> dict[str, Any]:
    record = {"sample_id": sample_id, "split": "test", "width": 384, "height": 256, "input": f"/in/{sample_id}.jpg",
              "gt": {"target": f"/gt/{sample_id}.jpg"} if gt == "labelled" else gt, "pred": pred, "errors": [],
              **extra}  # fmt: skip
    if bucket is not None:
        record["bucket"] = bucket
    return record


def _pred(score: float, hard_fail: str | None = None, baseline: float | None = None, **components: float) -> dict:
    pred: dict[str, Any] = {"k1": -0.17, "score": score, "hard_fail": hard_fail, "components": components}
    if baseline is not None:
        pred["baseline"] = {"score": baseline, "hard_fail": None}
    return pred


RECORDS = [
    _record("a", "384x256", _pred(40.0, baseline=35.0, edge_f1=0.8, ssim=0.6)),
    _record("b", "384x256", _pred(0.0, "texture_collapse", baseline=10.0, edge_f1=0.4, ssim=0.2)),
    _record("c", "384x256", _pred(20.0, baseline=16.0, edge_f1=0.6)),
    _record("d", "256x384", _pred(30.0)),
    _record("e", "256x384", _pred(0.0, "size_mismatch")),
    _record("u", "256x384", {"k1": -0.1}, gt=None),
]


def test_score_records_aggregates() -> None:
    evaluation = score_records(RECORDS)
    m = evaluation.metrics
    assert m["score/mean"] == pytest.approx(18.0)
    assert m["score/zero_rate"] == pytest.approx(0.4)
    assert m["score/count"] == 5.0
    assert m["component/edge_f1"] == pytest.approx((0.8 + 0.4 + 0.6) / 3)
    assert m["component/ssim"] == pytest.approx(0.4)
    assert "component/line_orientation" not in m
    assert m["fail/texture_collapse"] == pytest.approx(0.2)
    assert m["fail/size_mismatch"] == pytest.approx(0.2)
    assert m["fail/region_difference"] == 0.0
    assert m["bucket/384x256/mean"] == pytest.approx(20.0)
    assert m["bucket/384x256/zero_rate"] == pytest.approx(1 / 3)
    assert m["bucket/256x384/count"] == 2.0
    assert m["gate/zero_rate"] == 0.0  # 0.4 > 0.12
    assert m["gate/buckets"] == 1.0  # no bucket has 20 images
    # gain over the three records with a baseline: (5 - 10 + 4) / 3
    assert m["baseline/mean"] == pytest.approx((35 + 10 + 16) / 3)
    assert m["baseline/count"] == 3.0
    assert m["gain/mean"] == pytest.approx(-1 / 3)
    assert m["gate/learned_margin"] == 0.0
    assert evaluation.counters["unlabelled"] == 1
    assert evaluation.counters["malformed_pred"] == 0
    assert evaluation.per_sample[0] == {"sample_id": "a", "bucket": "384x256", "score": 40.0, "hard_fail": None,
                                        "edge_f1": 0.8, "ssim": 0.6}  # fmt: skip
    assert [row["sample_id"] for row in evaluation.per_sample] == ["a", "b", "c", "d", "e"]
    assert any("3 of 5" in note for note in evaluation.notes)
    assert "384x256" in evaluation.report and "gate zero_rate: FAIL" in evaluation.report
    buckets = evaluation.files["buckets.json"]
    assert buckets["table"][-1]["bucket"] == "all" and buckets["verdicts"]["zero_rate"] is False


def test_score_records_gates_from_a_mapping() -> None:
    evaluation = score_records(RECORDS, gates={"zero_rate_max": 0.5, "learned_margin": -1.0})
    assert evaluation.metrics["gate/zero_rate"] == 1.0
    assert evaluation.metrics["gate/learned_margin"] == 1.0
    with pytest.raises(ConfigError, match="gates has no setting zero_rate"):
        score_records(RECORDS, gates={"zero_rate": 0.5})
    with pytest.raises(ConfigError, match="score has no setting"):
        score_records(RECORDS, score={"tolerance": 3})


MALFORMED = [
    _record("m1", "384x256", _pred(40.0) | {"score": "40"}),
    _record("m2", None, _pred(40.0)),
    _record("m3", "384x256", _pred(120.0)),
    _record("m4", "384x256", _pred(10.0, "texture_collapse")),
    _record("m5", "384x256", _pred(10.0, "melted")),
    _record("m6", "384x256", {"k1": -0.1}),
    _record("m7", "384x256", _pred(10.0, edge_f1=1.5)),
    _record("m8", "384x256", _pred(10.0) | {"baseline": 3}),
    _record("m9", "384x256", "not an object"),
]


def test_malformed_records_are_counted_or_stop_strict() -> None:
    evaluation = score_records([*RECORDS[:2], *MALFORMED])
    assert evaluation.counters["malformed_pred"] == len(MALFORMED)
    assert evaluation.metrics["score/count"] == 2.0
    expected = ["pred.score", "bucket", "pred.score", "pred.score", "pred.hard_fail", "pred has neither",
                "pred.components.edge_f1", "pred.baseline", "pred is"]  # fmt: skip
    for k, (record, field) in enumerate(zip(MALFORMED, expected, strict=True)):
        with pytest.raises(RecordError, match=f"record '{record['sample_id']}': {field}") as caught:
            score_records([*RECORDS[:2], record], strict=True)
        assert caught.value.index == 2, k
    with pytest.raises(RecordError, match="none of the 2 records could be scored"):
        score_records(MALFORMED[:2])


def test_only_unlabelled_records() -> None:
    evaluation = score_records([RECORDS[-1]])
    assert evaluation.metrics == {"score/count": 0.0}
    assert evaluation.counters["unlabelled"] == 1


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``gt/t.jpg`` (a photo), ``out/good.jpg`` (the same), ``out/bent.jpg`` (a mild barrel),
    ``out/blur.jpg`` (a sigma-3 blur) and ``out/broken.jpg`` (no image)."""
    root = tmp_path_factory.mktemp("lens")
    (root / "gt").mkdir()
    (root / "out").mkdir()
    target = np.ascontiguousarray(PHOTOS["chelsea"]())
    for name, image in (("gt/t.jpg", target), ("out/good.jpg", target), ("out/bent.jpg", barrel(target, -0.1)),
                        ("out/blur.jpg", cv2.GaussianBlur(target, (0, 0), 3))):  # fmt: skip
        assert cv2.imwrite(str(root / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    (root / "out" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def _file_record(sample_id: str, output: str, target: str = "gt/t.jpg", **pred: Any) -> dict[str, Any]:
    return _record(sample_id, "384x256", {"k1": -0.1, "output": output, **pred}, gt={"target": target})


def test_score_records_from_image_files(image_files: Path) -> None:
    records = [
        _file_record("good", "out/good.jpg"),
        _file_record("bent", str(image_files / "out" / "bent.jpg"), baseline={"score": 50.0, "hard_fail": None}),
        _file_record("blur", "out/blur.jpg"),
        _file_record("broken", "out/broken.jpg"),
        _file_record("missing", "out/missing.jpg"),
        _file_record("no_target", "out/good.jpg", target="gt/none.jpg"),
    ]
    evaluation = score_records(records, root=str(image_files))
    assert evaluation.counters["unreadable_output"] == 2
    assert evaluation.counters["unreadable_target"] == 1
    assert evaluation.counters["scored_from_files"] == 3
    rows = {row["sample_id"]: row for row in evaluation.per_sample}
    assert rows["good"]["score"] > 90 and rows["good"]["hard_fail"] is None
    assert 0 < rows["bent"]["score"] < rows["good"]["score"]
    assert rows["blur"]["hard_fail"] == "texture_collapse" and rows["blur"]["score"] == 0.0
    assert set(WEIGHTS) <= set(rows["good"])
    assert evaluation.metrics["gain/mean"] == pytest.approx(rows["bent"]["score"] - 50.0)
    target = cv2.cvtColor(cv2.imread(str(image_files / "gt" / "t.jpg")), cv2.COLOR_BGR2RGB)
    good = cv2.cvtColor(cv2.imread(str(image_files / "out" / "good.jpg")), cv2.COLOR_BGR2RGB)
    assert rows["good"]["score"] == pytest.approx(score_image(good, target).score)
    # strict stops at the unreadable file, naming it; a scorer setting applies to files
    with pytest.raises(RecordError, match="broken.jpg cannot be read"):
        score_records(records, root=str(image_files), strict=True)
    lenient = score_records(records[2:3], root=str(image_files), score={"texture_ratio": 0.0})
    assert lenient.per_sample[0]["hard_fail"] is None


def test_the_evaluation_writes_as_json(tmp_path: Path) -> None:
    evaluation = score_records(RECORDS)
    write_evaluation(tmp_path, evaluation, {"records": len(RECORDS)})
    buckets = json.loads((tmp_path / "eval" / "buckets.json").read_text())
    assert [row["bucket"] for row in buckets["table"]] == ["256x384", "384x256", "all"]
    assert buckets["gates"]["zero_rate_max"] == 0.12
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["metrics"]["score/mean"] == pytest.approx(18.0)
