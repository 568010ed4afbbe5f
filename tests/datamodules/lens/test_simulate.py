"""The lens simulator: the same bytes for the same seed, a complete set left alone, every camera's
size in the set, the metadata, and the stored camera undoing the distortion it rendered."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.core.errors import ConfigError, DataError
from src.datamodules.lens.geometry import Camera, undistort
from src.datamodules.lens.layout import METADATA, TEST_DIR, TEST_TARGET_DIR, TRAIN_DIR, decode_image
from src.datamodules.lens.simulate import CAMERAS, JITTER, PHOTOS, STAMP, load_photos, main, render, write_lens_set

#: 30 pairs and 10 test images: about a second to write.
SET = dict(n_train=30, n_test=10, seed=0)


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lens_set(tmp_path_factory.mktemp("lens") / "sim", **SET)


@pytest.fixture(scope="module")
def rows(sim_root: Path) -> list[dict[str, str]]:
    with open(sim_root / METADATA, newline="") as fh:
        return list(csv.DictReader(fh))


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.*")}


def test_the_same_seed_writes_the_same_bytes(sim_root: Path, tmp_path: Path) -> None:
    again = write_lens_set(tmp_path / "again", **SET)
    first = _digests(sim_root)
    assert first == _digests(again)
    assert len([k for k in first if k.startswith(TRAIN_DIR)]) == 60 and len(first) == 60 + 20 + 2


def test_a_complete_set_is_left_alone_and_other_settings_replace_it(sim_root: Path, tmp_path: Path) -> None:
    mtimes = {p: p.stat().st_mtime_ns for p in sim_root.rglob("*")}
    assert write_lens_set(sim_root, **SET) == sim_root
    assert {p: p.stat().st_mtime_ns for p in sim_root.rglob("*")} == mtimes
    small = tmp_path / "small"
    write_lens_set(small, n_train=2, n_test=1, seed=5)
    write_lens_set(small, n_train=3, n_test=0, seed=5)  # other settings: the whole set is replaced
    assert sorted(p.name for p in small.iterdir()) == [TRAIN_DIR, METADATA, STAMP]
    assert len(list((small / TRAIN_DIR).iterdir())) == 6
    assert not list(tmp_path.glob(".small.*"))  # no staging folder left behind


def test_foreign_folders_and_bad_settings_are_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="holds files the lens simulator did not write"):
        write_lens_set(tmp_path, n_train=1, n_test=0)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="n_train=0"):
        write_lens_set(tmp_path / "x", n_train=0)
    with pytest.raises(ConfigError, match=r"quality=\(95, 88\)"):
        write_lens_set(tmp_path / "x", quality=(95, 88))


def test_every_camera_and_its_size_appear(sim_root: Path, rows: list[dict[str, str]]) -> None:
    sizes = set()
    for row in rows:
        folder, name = (
            (TRAIN_DIR, f"{row['image_id']}_original.jpg")
            if row["split"] == "train"
            else (TEST_DIR, f"{row['image_id']}.jpg")
        )
        with Image.open(sim_root / folder / name) as img:
            size = img.size
        assert size == next(c.size for c in CAMERAS if c.name == row["camera"])
        sizes.add(size)
    assert {row["camera"] for row in rows} == {c.name for c in CAMERAS}
    assert sizes == {(384, 256), (320, 240), (256, 384), (288, 256), (256, 256)}


def test_metadata_columns_and_values(sim_root: Path, rows: list[dict[str, str]]) -> None:
    with open(sim_root / METADATA, newline="") as fh:
        header = fh.readline().strip().split(",")
    assert header == ["image_id", "split", "camera", "group", "k1", "k2", "cx", "cy", "focal"]
    assert [r["split"] for r in rows] == ["train"] * 30 + ["test"] * 10
    assert all(len(r["image_id"]) == 12 and int(r["image_id"], 16) >= 0 for r in rows)
    assert len({r["image_id"] for r in rows}) == 40
    assert {r["group"] for r in rows} <= {group for _, _, group in PHOTOS.values()}
    assert len({r["group"] for r in rows}) >= 5  # enough scenes for 5 grouped folds
    by_name = {c.name: c for c in CAMERAS}
    for r in rows:
        camera = by_name[r["camera"]]
        assert abs(float(r["k1"]) - camera.k1) < 5 * JITTER and abs(float(r["k2"]) - camera.k2) < 5 * JITTER
        expected = camera.camera()
        assert (float(r["cx"]), float(r["cy"]), float(r["focal"])) == (expected.cx, expected.cy, expected.focal)
    test_ids = sorted(r["image_id"] for r in rows if r["split"] == "test")
    assert sorted(p.stem for p in (sim_root / TEST_TARGET_DIR).iterdir()) == test_ids


def test_cropped_cameras_are_relative_to_the_output() -> None:
    by_name = {c.name: c for c in CAMERAS}
    # left 288 of a 384-wide frame: the principal point (frame x = 192) is 48 px right of the crop's centre (144).
    assert by_name["crop_left"].camera() == Camera(-0.30, 0.10, cx=48 / 288, cy=0.0, focal=384 / 288)
    assert by_name["square"].camera() == Camera(-0.35, 0.15, cx=0.0, cy=0.0, focal=1.5)
    assert by_name["portrait"].camera() == Camera(-0.30, 0.10, cx=0.0, cy=0.0, focal=1.5)
    assert by_name["wide_a"].camera(-0.2, 0.3) == Camera(-0.2, 0.3)
    assert sum(c.weight for c in CAMERAS) == pytest.approx(1.0)


def test_the_stored_camera_undoes_the_written_distortion(sim_root: Path, rows: list[dict[str, str]]) -> None:
    recovered, distorted = [], []
    for r in rows[:30]:
        inp = decode_image(sim_root / TRAIN_DIR / f"{r['image_id']}_original.jpg")
        target = decode_image(sim_root / TRAIN_DIR / f"{r['image_id']}_generated.jpg").astype(np.float64)
        camera = Camera.from_mapping({k: float(r[k]) for k in ("k1", "k2", "cx", "cy", "focal")})
        recovered.append(np.abs(undistort(inp, camera) - target).mean())
        distorted.append(np.abs(inp - target).mean())
    recovered, distorted = np.array(recovered), np.array(distorted)
    assert recovered.mean() < 2.5  # grey levels, JPEG included
    assert distorted.mean() > 2 * recovered.mean()
    assert (recovered < distorted).all()


def test_rendering_before_jpeg_is_recovered_almost_exactly() -> None:
    photos = load_photos()
    recovered, distorted = [], []
    for i in range(12):
        image = render(np.random.default_rng([7, i]), photos, (90, 90))
        target = image.target.astype(np.float64)
        recovered.append(np.abs(undistort(image.input, image.camera) - target).mean())
        distorted.append(np.abs(image.input - target).mean())
    assert np.mean(recovered) < 1.0 and np.mean(distorted) > 4 * np.mean(recovered)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--images", "4", "--seed", "1"]) == 0
    assert "wrote 3 training pairs and 1 test images (seed 1)" in capsys.readouterr().out
    assert len(list((out / TRAIN_DIR).iterdir())) == 6 and len(list((out / TEST_DIR).iterdir())) == 1
    assert main(["--out", str(out), "--images", "4", "--seed", "1"]) == 0
    assert "already holds this set" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--images", "4", "--test-fraction", "1.5"])
