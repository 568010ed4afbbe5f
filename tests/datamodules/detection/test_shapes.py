"""The shapes generator writes exact tight boxes of real shapes, the same bytes for the same seed,
and rewrites a copy only when it is incomplete or was written with other parameters."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.core.errors import ConfigError, DataError
from src.datamodules.detection.shapes import BACKGROUNDS, GAP, SHAPES, draw_image, photo_folder, write_shapes

#: 24 train + 6 test images of 64 pixels: the whole set in well under a second.
TINY = dict(n_train=24, n_test=6, image_size=64, max_shapes=3, min_size=10, max_size=24, seed=0)
#: A smaller set for the tests that write several copies.
SMALL = dict(n_train=6, n_test=2, image_size=32, max_shapes=2, min_size=6, max_size=12, seed=3)


def tiny_shapes(root: Path) -> Path:
    """Write the :data:`TINY` set under ``root`` and return ``root``."""
    write_shapes(root, **TINY)
    return root


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_shapes(tmp_path_factory.mktemp("shapes"))


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.*")}


def test_layout_categories_and_groups(shapes_root: Path) -> None:
    train = json.loads((shapes_root / "annotations.json").read_text())
    test = json.loads((shapes_root / "annotations_test.json").read_text())
    assert [c["name"] for c in train["categories"]] == ["circle", "rectangle", "triangle"] == list(SHAPES)
    assert [c["id"] for c in train["categories"]] == [1, 2, 3]
    assert len(train["images"]) == 24 and len(test["images"]) == 6
    assert train["images"][0]["file_name"] == "train_0000.png" and test["images"][5]["file_name"] == "test_0005.png"
    photos = {Path(name).stem for name in BACKGROUNDS}
    assert {image["group"] for image in train["images"]} <= photos
    assert len({image["group"] for image in train["images"]}) >= 5  # enough for 5 grouped folds
    assert train["info"]["parameters"] == {"version": 1, **TINY}
    # Every image has 1..max_shapes shapes, and every class occurs.
    per_image = np.bincount([a["image_id"] for a in train["annotations"]], minlength=25)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 3
    assert {a["category_id"] for a in train["annotations"]} == {1, 2, 3}
    assert all((photo_folder() / name).is_file() for name in BACKGROUNDS)


def test_boxes_are_the_tight_boxes_of_the_shape_pixels(shapes_root: Path) -> None:
    """Independently of the generator: in the written PNG, the pixels of exactly the shape's colour
    near its box span exactly the box (x2 = last column + 1), and there are `area` of them; the fill
    ratio of the box says which shape it is (filled rectangle 1, disk ~0.8-0.9, triangle ~0.5)."""
    checked = 0
    for name in ("annotations.json", "annotations_test.json"):
        coco = json.loads((shapes_root / name).read_text())
        files = {image["id"]: image["file_name"] for image in coco["images"]}
        for ann in coco["annotations"]:
            pixels = np.asarray(Image.open(shapes_root / "images" / files[ann["image_id"]]).convert("RGB"))
            x, y, w, h = ann["bbox"]
            assert w >= 5 and h >= 5 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
            y0, x0 = max(0, y - GAP), max(0, x - GAP)
            window = pixels[y0 : y + h + GAP, x0 : x + w + GAP]
            rows, cols = np.nonzero((window == np.array(ann["color"], dtype=np.uint8)).all(axis=2))
            assert (cols.min() + x0, rows.min() + y0) == (x, y)
            assert (cols.max() + x0 + 1, rows.max() + y0 + 1) == (x + w, y + h)
            assert len(rows) == ann["area"]
            fill = ann["area"] / (w * h)
            category = SHAPES[ann["category_id"] - 1]
            if category == "rectangle":
                assert fill == 1.0
            elif category == "circle":
                assert 0.75 < fill < 0.95 and w == h
            else:
                assert 0.4 < fill < 0.55 and w > h  # equilateral: height ~ 0.87 side
            checked += 1
    assert checked > 40


def test_draw_image_boxes_match_masks_and_shapes_do_not_touch() -> None:
    rng = np.random.default_rng(7)
    background = rng.integers(0, 256, size=(80, 80, 3), dtype=np.uint8)
    for _ in range(10):
        image, shapes = draw_image(rng, background, max_shapes=4, min_size=8, max_size=30)
        assert 1 <= len(shapes) <= 4
        covered = np.zeros((80, 80), dtype=int)
        for shape in shapes:
            rows, cols = np.nonzero(shape.mask)
            assert shape.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert (image[shape.mask] == shape.color).all()
            covered += shape.mask
        assert covered.max() == 1  # no overlap
        assert (image[covered == 0] == background[covered == 0]).all()  # the rest is the photo
        for i, earlier in enumerate(shapes):
            for later in shapes[i + 1 :]:  # a later shape keeps GAP pixels away from an earlier one's box
                x1, y1, x2, y2 = earlier.box
                assert not later.mask[max(0, y1 - GAP) : y2 + GAP, max(0, x1 - GAP) : x2 + GAP].any()


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    write_shapes(tmp_path / "a", **SMALL)
    write_shapes(tmp_path / "b", **SMALL)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    write_shapes(tmp_path / "c", **{**SMALL, "seed": 4})
    a, c = _digests(tmp_path / "a"), _digests(tmp_path / "c")
    assert a.keys() == c.keys() and a["images/train_0000.png"] != c["images/train_0000.png"]
    # More train images add to the set without changing the first ones.
    write_shapes(tmp_path / "d", **{**SMALL, "n_train": 8})
    d = _digests(tmp_path / "d")
    assert all(d[f"images/train_{i:04d}.png"] == a[f"images/train_{i:04d}.png"] for i in range(6))


def test_complete_copy_is_kept_and_anything_else_rewritten(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    ann = write_shapes(root, **SMALL)
    stamp = ann.stat().st_mtime_ns, (root / "images" / "train_0003.png").stat().st_mtime_ns
    assert write_shapes(root, **SMALL) == ann
    assert (ann.stat().st_mtime_ns, (root / "images" / "train_0003.png").stat().st_mtime_ns) == stamp
    # A missing image: written again, same bytes.
    before = _digests(root)
    (root / "images" / "train_0003.png").unlink()
    write_shapes(root, **SMALL)
    assert _digests(root) == before
    # Other parameters: rewritten, and info says which.
    write_shapes(root, **{**SMALL, "max_shapes": 1})
    info = json.loads(ann.read_text())["info"]
    assert info["parameters"]["max_shapes"] == 1
    assert max(np.bincount([a["image_id"] for a in json.loads(ann.read_text())["annotations"]])) == 1
    # No test split any more: the stale test file goes.
    write_shapes(root, **{**SMALL, "n_test": 0})
    assert not (root / "annotations_test.json").exists() and ann.is_file()


def test_half_written_copy_is_not_taken_for_a_complete_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite that dies after some images leaves no annotation file that would vouch for them."""
    import src.datamodules.detection.shapes as shapes

    root = tmp_path / "shapes"
    write_shapes(root, **SMALL)

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes, "load_backgrounds", dies)
    with pytest.raises(KeyboardInterrupt):
        write_shapes(root, **{**SMALL, "seed": 9})
    assert not (root / "annotations.json").exists() and not (root / "annotations_test.json").exists()


def test_refuses_bad_parameters_and_foreign_annotations(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_size=40 with image_size=64"):
        write_shapes(tmp_path / "x", **{**TINY, "max_size": 40})
    with pytest.raises(ConfigError, match="n_train=0"):
        write_shapes(tmp_path / "x", **{**TINY, "n_train": 0})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "annotations.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="annotations.json was not written by write_shapes"):
        write_shapes(tmp_path / "mine", **SMALL)
