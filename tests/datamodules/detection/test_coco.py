"""COCO folders and record files are read into the same table; every bad input is refused with a
DataError naming the file, the item and the value; boxes outside their image are clipped or dropped,
counted and logged once."""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from src.core.errors import ConfigError, DataError
from src.datamodules.detection.coco import read_coco, read_dataset, read_records, resolve_format
from tests.datamodules.detection.test_shapes import tiny_shapes


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_shapes(tmp_path_factory.mktemp("shapes"))


def coco_to_records(coco: dict[str, Any], polygons: bool = False) -> list[dict[str, Any]]:
    """The same images as artifact-contract records (rectangles as 4-vertex polygons if asked)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out = []
    for image in coco["images"]:
        gt = []
        for ann in coco["annotations"]:
            if ann["image_id"] != image["id"]:
                continue
            x, y, w, h = ann["bbox"]
            if polygons and names[ann["category_id"]] == "rectangle":
                box = {"type": "poly", "points": [x, y, x + w, y, x + w, y + h, x, y + h]}
            else:
                box = {"type": "bbox_2d", "points": [x, y, x + w, y + h]}
            gt.append({**box, "desc": names[ann["category_id"]]})
        out.append({"sample_id": image["file_name"], "image": f"images/{image['file_name']}",
                    "width": image["width"], "height": image["height"], "gt": gt, "group": image["group"]})  # fmt: skip
    return out


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_coco_and_records_readers_agree(shapes_root: Path, tmp_path: Path) -> None:
    (tmp_path / "images").symlink_to(shapes_root / "images", target_is_directory=True)
    for split, name in (("train", "records.jsonl"), ("test", "records_test.jsonl")):
        coco = json.loads(
            (shapes_root / ("annotations.json" if split == "train" else "annotations_test.json")).read_text()
        )
        write_jsonl(tmp_path / name, coco_to_records(coco, polygons=True))
    from_coco = read_dataset(shapes_root)
    from_records = read_dataset(tmp_path)
    assert resolve_format(shapes_root) == "coco" and resolve_format(tmp_path) == "records"
    for split in ("train", "test"):
        a, b = from_coco[split], from_records[split]
        assert a.classes == b.classes == ["circle", "rectangle", "triangle"]
        assert a.sample_ids == b.sample_ids and a.sizes == b.sizes
        assert [p.resolve() for p in a.paths] == [p.resolve() for p in b.paths]
        assert len(a.boxes) == len(b.boxes) == len(a) and sum(len(x) for x in a.boxes) >= len(a)
        for boxes_a, boxes_b, labels_a, labels_b in zip(a.boxes, b.boxes, a.labels, b.labels, strict=True):
            np.testing.assert_array_equal(boxes_a, boxes_b)
            np.testing.assert_array_equal(labels_a, labels_b)
            assert boxes_a.dtype == np.float32 and labels_a.dtype == np.int64
    assert from_coco["train"].groups == from_records["train"].groups and from_coco["test"].groups is None
    # Hand check of one box: COCO [x, y, w, h] -> [x, y, x + w, y + h], category id k -> label k.
    coco = json.loads((shapes_root / "annotations.json").read_text())
    first = next(a for a in coco["annotations"] if a["image_id"] == 1)
    x, y, w, h = first["bbox"]
    np.testing.assert_array_equal(from_coco["train"].boxes[0][0], [x, y, x + w, y + h])
    assert from_coco["train"].labels[0][0] == first["category_id"]


# ---- a tiny hand-made COCO folder ------------------------------------------------------------------


def _folder(root: Path) -> dict[str, Any]:
    """Two images (20x10 and 16x16) and a valid COCO file; returns the COCO dict."""
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (20, 10), (10, 20, 30)).save(root / "images" / "a.png")
    Image.new("L", (16, 16), 128).save(root / "images" / "b.png")
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10, "group": "g1"},
                   {"id": 2, "file_name": "b.png", "width": 16, "height": 16, "group": "g2"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 3], "area": 12, "iscrowd": 0},
                        {"id": 8, "image_id": 2, "category_id": 2, "bbox": [2.5, 3, 5, 6], "area": 30, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }  # fmt: skip


@pytest.fixture
def coco_dir(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    return tmp_path, _folder(tmp_path)


def _write(root: Path, coco: Any, name: str = "annotations.json") -> Path:
    path = root / name
    path.write_text(coco if isinstance(coco, str) else json.dumps(coco))
    return path


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation setting ``coco[a][i][b] = value`` for ``path`` = ``"a.i.b"`` (``value`` DELETE drops it)."""

    def mutate(coco: dict) -> None:
        *parents, last = path.split(".")
        node = coco
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        key = int(last) if last.isdigit() else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value

    return mutate


DELETE = object()

COCO_CASES = {
    "missing top-level key": (_set("images", DELETE), r"annotations.json lacks key\(s\) \['images'\]"),
    "missing image key": (_set("images.1.width", DELETE), r"images\[1\] lacks key\(s\) \['width'\]"),
    "missing annotation key": (_set("annotations.0.bbox", DELETE), r"annotations\[0\] lacks key\(s\) \['bbox'\]"),
    "duplicate image id": (_set("images.1.id", 1), r"image id 1 appears twice \(images\[0\] and images\[1\]\)"),
    "duplicate file name": (_set("images.1.file_name", "a.png"), r"image id 2: file_name 'a.png' is also image id 1"),
    "duplicate annotation id": (_set("annotations.1.id", 7), r"annotation id 7 appears twice"),
    "unknown image": (_set("annotations.1.image_id", 99), r"annotation id 8: image_id 99 is not the id of any image"),
    "unknown category": (
        _set("annotations.0.category_id", 5),
        r"annotation id 7: category_id 5 is not a category \(known ids: \[1, 2\]\)",
    ),
    "negative box width": (
        _set("annotations.0.bbox", [1, 1, -2, 3]),
        r"annotation id 7: bbox=\[1, 1, -2, 3\] has a negative",
    ),
    "negative box height": (
        _set("annotations.1.bbox", [1, 1, 2, -0.5]),
        r"annotation id 8: .* negative width or height",
    ),
    "nan in a box": (
        _set("annotations.1.bbox", [1, 1, math.nan, 3]),
        r"annotation id 8: bbox\[2\]=nan is not a finite",
    ),
    "infinite image size": (_set("images.0.width", math.inf), r"image id 1: width=inf is not a finite number"),
    "fractional image size": (_set("images.0.height", 9.5), r"image id 1: height=9.5 is not a whole number"),
    "box not 4 numbers": (_set("annotations.0.bbox", [1, 2, 3]), r"annotation id 7: bbox=\[1, 2, 3\] is not \[x, y"),
    "string in a box": (_set("annotations.0.bbox", [1, "2", 3, 4]), r"annotation id 7: bbox\[1\]='2' is not a finite"),
    "iscrowd not 0/1": (_set("annotations.0.iscrowd", 2), r"annotation id 7: iscrowd=2 is not 0 or 1"),
    "duplicate category id": (_set("categories.1.id", 1), r"categories\[1\]: category id 1 appears twice"),
    "duplicate category name": (_set("categories.1.name", "cat"), r"category name 'cat' appears twice"),
    "no categories": (_set("categories", []), r"annotations.json has no categories"),
    "no images": (_set("images", []), r"annotations.json has no images"),
    "image file missing": (
        _set("images.1.file_name", "c.png"),
        r"image id 2: image file .*images/c.png does not exist",
    ),
    "image of another size": (
        _set("images.0.width", 21),
        r"image id 1: image .*a.png is 20x10 pixels but is declared width=21, height=10",
    ),
    "group missing": (_set("images.1.group", DELETE), r"image id 2 has no usable group \(key 'group': None\)"),
    "annotations not a list": (_set("annotations", {}), r"'annotations' is a dict, not a list"),
}


@pytest.mark.parametrize("case", list(COCO_CASES))
def test_bad_coco_input_names_the_file_item_and_value(coco_dir: tuple[Path, dict], case: str) -> None:
    root, coco = coco_dir
    mutate, message = COCO_CASES[case]
    bad = copy.deepcopy(coco)
    mutate(bad)
    _write(root, bad)
    with pytest.raises(DataError, match=message) as info:
        read_dataset(root)
    assert "annotations.json" in str(info.value) and "fix:" in str(info.value)


def test_valid_hand_made_coco_folder(coco_dir: tuple[Path, dict]) -> None:
    root, coco = coco_dir
    _write(root, coco)
    table = read_dataset(root)["train"]
    assert table.sample_ids == ["a.png", "b.png"] and table.sizes == [(20, 10), (16, 16)]
    assert table.classes == ["cat", "dog"] and table.groups == ["g1", "g2"]
    np.testing.assert_array_equal(table.boxes[1], [[2.5, 3, 7.5, 9]])
    assert table.labels[0].tolist() == [1] and table.labels[1].tolist() == [2]
    assert read_dataset(root, group_field=None)["train"].groups is None
    # Category ids need not be 1..K: labels follow their order.
    other = copy.deepcopy(coco)
    other["categories"] = [{"id": 90, "name": "cat"}, {"id": 17, "name": "dog"}]
    for ann, cid in zip(other["annotations"], (90, 17), strict=True):
        ann["category_id"] = cid
    _write(root, other)
    table = read_dataset(root)["train"]
    assert table.classes == ["dog", "cat"] and table.labels[0].tolist() == [2] and table.labels[1].tolist() == [1]


def test_invalid_json_names_the_line(coco_dir: tuple[Path, dict]) -> None:
    root, coco = coco_dir
    _write(root, json.dumps(coco, indent=1).replace('"height": 16', '"height": 16,,', 1))
    with pytest.raises(DataError, match=r"annotations.json: invalid JSON at line \d+, column \d+"):
        read_dataset(root)


def test_clipping_dropping_and_crowd_are_counted_and_logged_once(
    coco_dir: tuple[Path, dict], caplog: pytest.LogCaptureFixture
) -> None:
    root, coco = coco_dir
    coco["annotations"] += [
        {"id": 9, "image_id": 1, "category_id": 2, "bbox": [-3, 2, 6, 4], "iscrowd": 0},  # clipped to [0, 2, 3, 6]
        {"id": 10, "image_id": 1, "category_id": 2, "bbox": [18, 8, 5, 5], "iscrowd": 0},  # clipped to [18, 8, 20, 10]
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [25, 2, 3, 3], "iscrowd": 0},  # outside: dropped
        {"id": 12, "image_id": 2, "category_id": 1, "bbox": [4, 4, 0, 3], "iscrowd": 0},  # zero width: dropped
        {"id": 13, "image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9], "iscrowd": 1},  # crowd: left out
    ]
    _write(root, coco)
    with caplog.at_level(logging.WARNING, logger="podium"):
        table = read_coco(root / "annotations.json", root / "images")
    assert table.counts == {"clipped": 2, "dropped": 2, "crowd": 1}
    np.testing.assert_array_equal(table.boxes[0], [[1, 1, 5, 4], [0, 2, 3, 6], [18, 8, 20, 10]])
    assert table.labels[0].tolist() == [1, 2, 2] and table.labels[1].tolist() == [2]
    warnings = [r for r in caplog.records if r.name == "podium"]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "annotations.json" in text and "2 box(es) partly outside" in text and "2 box(es) of zero area" in text
    assert "1 iscrowd=1" in text


def test_test_split_uses_the_train_classes(coco_dir: tuple[Path, dict]) -> None:
    root, coco = coco_dir
    _write(root, coco)
    test = copy.deepcopy(coco)
    test["categories"] = [{"id": 5, "name": "dog"}]  # another id, same name: matched by name
    test["annotations"] = [{"id": 1, "image_id": 2, "category_id": 5, "bbox": [0, 0, 2, 2]}]
    for image in test["images"]:
        del image["group"]  # test images need no group
    _write(root, test, "annotations_test.json")
    tables = read_dataset(root)
    assert tables["test"].classes == ["cat", "dog"] and tables["test"].labels[1].tolist() == [2]
    test["categories"] = [{"id": 5, "name": "bird"}]
    _write(root, test, "annotations_test.json")
    with pytest.raises(DataError, match=r"annotations_test.json: categor\(ies\) \['bird'\] are not among"):
        read_dataset(root)


def test_format_is_resolved_or_refused(coco_dir: tuple[Path, dict]) -> None:
    root, coco = coco_dir
    with pytest.raises(DataError, match=r"neither .*annotations.json nor .*records.jsonl exists"):
        read_dataset(root)
    with pytest.raises(DataError, match=r"missing annotation file .*annotations.json"):
        read_dataset(root, format="coco")
    with pytest.raises(DataError, match=r"missing record file .*records.jsonl"):
        read_dataset(root, format="records")
    _write(root, coco)
    write_jsonl(root / "records.jsonl", [])
    with pytest.raises(DataError, match=r"holds both annotations.json and records.jsonl") as info:
        read_dataset(root)
    assert "data.format=coco" in str(info.value)
    assert read_dataset(root, format="coco")["train"].sample_ids == ["a.png", "b.png"]
    with pytest.raises(ConfigError, match=r"data.format='yolo'"):
        read_dataset(root, format="yolo")


# ---- record files ------------------------------------------------------------------------------------


def _records(root: Path) -> list[dict[str, Any]]:
    _folder(root)
    return [
        {"sample_id": "a", "image": "images/a.png", "width": 20, "height": 10, "group": "g1",
         "gt": [{"type": "bbox_2d", "points": [1, 1, 5, 4], "desc": "cat"}]},
        {"sample_id": "b", "image": "images/b.png", "width": 16, "height": 16, "group": "g2",
         "gt": [{"type": "poly", "points": [2, 3, 9, 4, 5, 12], "desc": "dog"},
                {"type": "bbox_2d", "points": [-2, 1, 3, 3], "desc": "cat"}]},
    ]  # fmt: skip


RECORD_CASES = {
    "missing key": (_set("0.gt", DELETE), r"records.jsonl line 1 lacks key\(s\) \['gt'\]"),
    "duplicate sample id": (_set("1.sample_id", "a"), r"line 2: sample_id 'a' already appears on line 1"),
    "negative box": (
        _set("0.gt.0.points", [5, 1, 1, 4]),
        r"line 1: gt\[0\]: points=\[5, 1, 1, 4\] has a negative width",
    ),
    "short polygon": (_set("1.gt.0.points", [1, 2, 3, 4]), r"line 2: gt\[0\]: poly has 4 points values"),
    "odd polygon": (_set("1.gt.0.points", [1, 2, 3, 4, 5, 6, 7]), r"line 2: gt\[0\]: poly has 7 points values"),
    "infinite point": (_set("0.gt.0.points", [1, math.inf, 3, 4]), r"line 1: gt\[0\]: points\[1\]=inf is not a finite"),
    "unknown type": (_set("0.gt.0.type", "circle"), r"line 1: gt\[0\]: type='circle' is not one of"),
    "empty desc": (_set("0.gt.0.desc", ""), r"line 1: gt\[0\]: desc='' is not a class name"),
    "gt not a list": (_set("1.gt", None), r"line 2: gt=None is not a list"),
    "missing image": (_set("1.image", "images/zz.png"), r"line 2: image file .*images/zz.png does not exist"),
    "wrong size": (_set("1.height", 15), r"line 2: image .*b.png is 16x16 pixels but is declared width=16, height=15"),
    "zero width": (_set("0.width", 0), r"line 1: width=0 is not a whole number of pixels >= 1"),
    "group missing": (_set("0.group", DELETE), r"line 1 has no usable group"),
    "not an object": (_set("1", [1, 2]), r"records.jsonl line 2 is a list, not a JSON object"),
}


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_bad_records_name_the_file_line_and_value(tmp_path: Path, case: str) -> None:
    records = _records(tmp_path)
    mutate, message = RECORD_CASES[case]
    mutate(records)
    write_jsonl(tmp_path / "records.jsonl", records)
    with pytest.raises(DataError, match=message) as info:
        read_dataset(tmp_path)
    assert "records.jsonl" in str(info.value)


def test_records_polygons_become_boxes_and_lines_are_named(tmp_path: Path) -> None:
    records = _records(tmp_path)
    path = write_jsonl(tmp_path / "records.jsonl", records)
    table = read_records(path, tmp_path)
    assert table.classes == ["cat", "dog"] and table.sample_ids == ["a", "b"] and table.groups == ["g1", "g2"]
    np.testing.assert_array_equal(table.boxes[1], [[2, 3, 9, 12], [0, 1, 3, 3]])  # poly bbox; clipped box
    assert table.labels[1].tolist() == [2, 1] and table.counts["clipped"] == 1
    # Invalid JSON names its line; blank lines are skipped.
    path.write_text(json.dumps(records[0]) + "\n\n" + '{"sample_id": "b",\n')
    with pytest.raises(DataError, match=r"records.jsonl line 3: invalid JSON at column \d+"):
        read_records(path, tmp_path)
    # A test file's class names must be training classes.
    write_jsonl(tmp_path / "records.jsonl", records)
    test = copy.deepcopy(records)
    test[1]["gt"][0]["desc"] = "bird"
    write_jsonl(tmp_path / "records_test.jsonl", test)
    with pytest.raises(DataError, match=r"records_test.jsonl line 2: gt\[0\] desc='bird' is not among"):
        read_dataset(tmp_path)
