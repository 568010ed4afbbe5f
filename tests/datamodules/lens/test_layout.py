"""The lens layout reader: pairs, sizes, buckets and cameras of a simulated set; every refusal on
hand-made files, and quarantine leaving the bad pairs out; the decoder."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src.core.errors import ConfigError, DataError
from src.datamodules.lens.geometry import Camera
from src.datamodules.lens.layout import (
    METADATA,
    TEST_DIR,
    TEST_TARGET_DIR,
    TRAIN_DIR,
    bucket_of,
    check_buckets,
    decode_image,
    parent_of,
    read_layout,
    work_size,
)
from src.datamodules.lens.simulate import write_lens_set

#: The simulated set of these tests: 30 pairs and 10 test images (about a second to write).
SET = dict(n_train=30, n_test=10, seed=0)


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lens_set(tmp_path_factory.mktemp("lens"), **SET)


def _image(path: Path, size: tuple[int, int] = (24, 16), mode: str = "RGB", seed: int = 0) -> Path:
    """A random image of ``size`` (width, height) saved at ``path`` (format from the extension)."""
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _pairs(root: Path, ids: list[str], size: tuple[int, int] = (24, 16)) -> Path:
    """Train pairs ``<id>_original.jpg`` / ``<id>_generated.jpg`` of ``size`` under ``root``."""
    for k, sample_id in enumerate(ids):
        _image(root / TRAIN_DIR / f"{sample_id}_original.jpg", size, seed=2 * k)
        _image(root / TRAIN_DIR / f"{sample_id}_generated.jpg", size, seed=2 * k + 1)
    return root


# ---- the simulated set ---------------------------------------------------------------------------------


def test_pairs_sizes_buckets_and_cameras(sim_root: Path) -> None:
    tables = read_layout(sim_root)
    train, test = tables["train"], tables["test"]
    assert len(train) == 30 and len(test) == 10 and train.sample_ids == sorted(train.sample_ids)
    meta = pd.read_csv(sim_root / METADATA, dtype={"image_id": str}).set_index("image_id")
    assert set(train.sample_ids) == set(meta.index[meta["split"] == "train"])
    for i, sample_id in enumerate(train.sample_ids):
        assert train.inputs[i] == sim_root / TRAIN_DIR / f"{sample_id}_original.jpg"
        assert train.targets[i] == sim_root / TRAIN_DIR / f"{sample_id}_generated.jpg"
        with Image.open(train.targets[i]) as img:
            assert train.sizes[i] == img.size
        width, height = train.sizes[i]
        assert train.buckets[i] == f"{width}x{height}"
        assert train.parents[i] == ("landscape" if width > height else "portrait" if height > width else "square")
        row = meta.loc[sample_id]
        assert train.groups[i] == row["group"]
        assert train.cameras[i] == Camera(row["k1"], row["k2"], row["cx"], row["cy"], row["focal"])
    assert train.strata() == train.buckets and train.quarantined == []
    assert all(t == sim_root / TEST_TARGET_DIR / f"{i}.jpg" for i, t in zip(test.sample_ids, test.targets, strict=True))
    assert test.source == sim_root / TEST_DIR
    assert {"portrait", "square", "landscape"} <= set(train.parents + test.parents)


def test_bucket_table_names_sizes_and_max_images(sim_root: Path) -> None:
    table = {"wide": [384, 256], "tall": [256, 384]}
    tables = read_layout(sim_root, buckets=table, max_images=5)
    train = tables["train"]
    assert len(train) == 5 and len(tables["test"]) == 5
    assert train.sample_ids == read_layout(sim_root)["train"].sample_ids[:5]
    expected = {(384, 256): "wide", (256, 384): "tall"}
    assert train.buckets == [expected.get(size, f"{size[0]}x{size[1]}") for size in train.sizes]
    assert bucket_of(384, 256, table) == "wide" and bucket_of(256, 384, table) == "tall"
    assert bucket_of(288, 256, table) == "288x256" and bucket_of(100, 50) == "100x50"
    assert (parent_of(384, 256), parent_of(256, 384), parent_of(256, 256)) == ("landscape", "portrait", "square")


def test_bucket_tables_that_are_refused() -> None:
    assert check_buckets({"a": [3, 2]}) == {"a": (3, 2)} and check_buckets(None) == {}
    with pytest.raises(ConfigError, match=r"data.buckets.a=\[0, 5\] is not a size"):
        check_buckets({"a": [0, 5]})
    with pytest.raises(ConfigError, match=r"data.buckets.b and data.buckets.a are both 3x2"):
        check_buckets({"a": [3, 2], "b": (3, 2)})
    with pytest.raises(ConfigError, match="data.bad_images='skip'"):
        read_layout("nowhere", bad_images="skip")


# ---- decoding -------------------------------------------------------------------------------------------


def test_work_size_by_hand() -> None:
    assert work_size(2048, 1367, 384) == (384, 256)  # 1367 * 384 / 2048 = 256.3
    assert work_size(256, 384, 192) == (128, 192)
    assert work_size(100, 10, 40) == (40, 8)  # 4 pixels would be below the 8-pixel floor
    assert work_size(30, 20, 60) == (60, 40)  # enlarging keeps the aspect too


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_decode_full_and_reduced_match_pil(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 255, (25, 50, 3), dtype=np.uint8), np.ones((4, 4, 1), dtype=np.uint8))
    path = tmp_path / f"x{suffix}"
    Image.fromarray(smooth).save(path, quality=95)  # 200 x 100
    with Image.open(path) as img:
        pil = np.asarray(img.convert("RGB"), dtype=np.int16)
    full = decode_image(path)
    assert full.dtype == np.uint8 and full.shape == (100, 200, 3)
    assert np.abs(full.astype(np.int16) - pil).mean() < 0.5  # same pixels as PIL (libjpeg-turbo in both)
    small = decode_image(path, 48)  # a JPEG decodes at 1/4 (50 x 25), then resized to 48 x 24
    assert small.shape == (24, 48, 3)
    reference = np.asarray(Image.fromarray(pil.astype(np.uint8)).resize((48, 24), Image.Resampling.BOX), np.int16)
    assert np.abs(small.astype(np.int16) - reference).mean() < 6
    assert decode_image(path, 400).shape == (200, 400, 3)  # enlarged to the long side asked for


def test_decode_refuses_a_truncated_or_missing_file(tmp_path: Path) -> None:
    path = _image(tmp_path / "t.png", (40, 30))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=r"cannot read image .*t\.png") as info:
        decode_image(path)
    assert "data.bad_images=quarantine" in str(info.value)
    with pytest.raises(DataError, match=r"cannot read image .*gone\.jpg"):
        decode_image(tmp_path / "gone.jpg", size=(4, 4))


# ---- refusals -----------------------------------------------------------------------------------------------


def test_truncated_file_is_refused_or_quarantined(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _pairs(tmp_path, ["a", "b", "c"])
    bad = root / TRAIN_DIR / "b_generated.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match=r"lens-correction-train-cleaned/b_generated.jpg cannot be decoded") as info:
        read_layout(root)
    assert "replace or remove the file, or pass data.bad_images=quarantine" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="podium"):
        train = read_layout(root, bad_images="quarantine")["train"]
    assert train.sample_ids == ["a", "c"]
    assert [(p.name, "cannot be decoded" in why) for p, why in train.quarantined] == [("b_generated.jpg", True)]
    warnings = [r.getMessage() for r in caplog.records if r.name == "podium"]
    assert len(warnings) == 1 and "leaving 1 image pair(s)" in warnings[0]


def test_missing_partners_name_both_files(tmp_path: Path) -> None:
    root = _pairs(tmp_path, ["a"])
    _image(root / TRAIN_DIR / "b_original.jpg")
    with pytest.raises(DataError, match=r"b_original.jpg has no partner .*b_generated.jpg"):
        read_layout(root)
    (root / TRAIN_DIR / "b_original.jpg").unlink()
    _image(root / TRAIN_DIR / "c_generated.png")
    with pytest.raises(DataError, match=r"c_generated.png has no partner .*c_original.png"):
        read_layout(root)
    train = read_layout(root, bad_images="quarantine")["train"]
    assert train.sample_ids == ["a"] and train.quarantined[0][0].name == "c_generated.png"


def test_size_mismatch_gives_both_sizes(tmp_path: Path) -> None:
    root = _pairs(tmp_path, ["a", "b"])
    _image(root / TRAIN_DIR / "b_generated.jpg", (20, 16))
    with pytest.raises(DataError, match=r"b_original.jpg is 24x16 but its partner .*b_generated.jpg is 20x16"):
        read_layout(root)
    assert read_layout(root, bad_images="quarantine")["train"].sample_ids == ["a"]


@pytest.mark.parametrize(
    ("name", "mode", "what"),
    [("a_original.png", "L", r"grey-scale \(mode L\)"), ("a_generated.png", "LA", r"grey-scale \(mode LA\)"),
     ("a_original.png", "I;16", r"16/32-bit \(mode I;16\)")],
)  # fmt: skip
def test_grey_and_16_bit_files_are_refused(tmp_path: Path, name: str, mode: str, what: str) -> None:
    root = tmp_path
    partner = name.replace("original", "x").replace("generated", "original").replace("x", "generated")
    _image(root / TRAIN_DIR / name, mode=mode)
    _image(root / TRAIN_DIR / partner)
    with pytest.raises(DataError, match=rf"{name} is {what}") as info:
        read_layout(root)
    assert "convert to 8-bit RGB" in str(info.value)


def test_grey_palette_is_refused_and_colour_palette_read(tmp_path: Path) -> None:
    root = tmp_path
    _image(root / TRAIN_DIR / "b_original.png", mode="P")  # a colour palette: fine
    _image(root / TRAIN_DIR / "b_generated.png")
    grey = Image.fromarray(np.arange(24 * 16, dtype=np.uint8).reshape(16, 24)).convert("P")
    grey.save(root / TRAIN_DIR / "a_original.png")
    _image(root / TRAIN_DIR / "a_generated.png")
    with pytest.raises(DataError, match=r"a_original.png is grey-scale \(mode P\)"):
        read_layout(root)
    (root / TRAIN_DIR / "a_original.png").unlink()
    (root / TRAIN_DIR / "a_generated.png").unlink()
    assert read_layout(root)["train"].sample_ids == ["b"]


def test_case_collisions_are_always_refused(tmp_path: Path) -> None:
    root = _pairs(tmp_path, ["a"])
    _image(root / TEST_DIR / "Img.jpg")
    _image(root / TEST_DIR / "img.JPG")
    for policy in ("raise", "quarantine"):
        with pytest.raises(DataError, match=r"Img.jpg and .*img.JPG are the same image id 'img'"):
            read_layout(root, bad_images=policy)
    (root / TEST_DIR / "img.JPG").unlink()
    _image(root / TEST_DIR / "Img.png")  # same id, other extension
    with pytest.raises(DataError, match=r"Img.jpg and .*Img.png are the same image id"):
        read_layout(root)
    _pairs(root, ["A"])
    with pytest.raises(DataError, match=r"A_generated.jpg and .*a_generated.jpg are the same image id"):
        read_layout(root)


def test_test_targets_pair_with_inputs(tmp_path: Path) -> None:
    root = _pairs(tmp_path, ["a"])
    for name in ("x", "y"):
        _image(root / TEST_DIR / f"{name}.jpg")
    _image(root / TEST_TARGET_DIR / "x.jpg")
    test = read_layout(root)["test"]
    assert test.sample_ids == ["x", "y"] and test.targets == [root / TEST_TARGET_DIR / "x.jpg", None]
    _image(root / TEST_TARGET_DIR / "y.jpg", (30, 16))
    with pytest.raises(DataError, match=r"test-originals/y.jpg is 24x16 but its partner test-targets/y.jpg is 30x16"):
        read_layout(root)
    _image(root / TEST_TARGET_DIR / "y.jpg")
    _image(root / TEST_TARGET_DIR / "z.jpg")
    with pytest.raises(DataError, match=r"test-targets/z.jpg has no input test-originals/z"):
        read_layout(root)


def test_bad_metadata_is_refused(tmp_path: Path) -> None:
    root = _pairs(tmp_path, ["a", "b"])
    meta = root / METADATA
    meta.write_text("image_id,group,k1,k2\na,g1,-0.1,0.2\nb,g2,,\n")
    train = read_layout(root)["train"]
    assert train.groups == ["g1", "g2"] and train.cameras == [Camera(-0.1, 0.2), None]
    meta.write_text("image_id,group\na,g1\n")
    assert read_layout(root)["train"].groups == ["g1", "b"]  # an image without a row is its own group
    meta.write_text("image_id,group\na,g1\nzz,g2\n")
    with pytest.raises(DataError, match=r"metadata.csv: image_id 'zz' is not an image"):
        read_layout(root)
    meta.write_text("image_id,group,k1,k2\na,g1,-0.1,0.2\nb,g2,strong,0.1\n")
    with pytest.raises(DataError, match=r"metadata.csv line 3 \(image_id 'b'\): k1='strong' is not a finite number"):
        read_layout(root)
    meta.write_text("id,group\na,g1\n")
    with pytest.raises(DataError, match=r"metadata.csv has no image_id column; it has \['id', 'group'\]"):
        read_layout(root)
    meta.write_text("image_id,camera\na,c1\n")
    with pytest.raises(DataError, match=r"metadata.csv has no column 'group'") as info:
        read_layout(root)
    assert "data.group_field=null" in str(info.value)
    assert read_layout(root, group_field=None)["train"].groups is None


def test_empty_or_missing_train_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing folder .*lens-correction-train-cleaned"):
        read_layout(tmp_path)
    (tmp_path / TRAIN_DIR).mkdir()
    with pytest.raises(DataError, match=r"lens-correction-train-cleaned holds no <id>_original"):
        read_layout(tmp_path)
    _pairs(tmp_path, ["a"])
    (tmp_path / TRAIN_DIR / "a_generated.jpg").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match=r"every image pair of .* was left out"):
        read_layout(tmp_path, bad_images="quarantine")


def test_quarantine_keeps_the_good_pairs_of_a_copied_set(sim_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(sim_root, tmp_path / "copy"))
    ids = read_layout(root)["train"].sample_ids
    (root / TRAIN_DIR / f"{ids[3]}_original.jpg").write_bytes(b"")
    _image(root / TRAIN_DIR / f"{ids[7]}_generated.jpg", (16, 16))
    train = read_layout(root, bad_images="quarantine")["train"]
    assert train.sample_ids == [i for k, i in enumerate(ids) if k not in (3, 7)]
    assert len(train.quarantined) == 2 and len(train.groups) == len(train.cameras) == 28
