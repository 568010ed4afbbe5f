"""Dataset hygiene: a manifest of keep/drop/quarantine, and the user's files left untouched."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src.datamodules.images.cleaning import clean_dataset, main


def _png(path: Path, size: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """Six good images, a corrupt one, a tiny one, two copies of good ones, a missing file."""
    root = tmp_path / "messy"
    rows = []
    for i in range(6):
        label = "cat" if i < 3 else "dog"
        _png(root / "train" / label / f"ok{i}.png", 16, seed=i)
        rows.append((f"ok{i}", label, f"g{i}"))
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    _png(root / "train" / "dog" / "tiny.png", 4, seed=99)
    shutil.copyfile(root / "train" / "cat" / "ok0.png", root / "train" / "cat" / "copy_same.png")
    shutil.copyfile(root / "train" / "cat" / "ok1.png", root / "train" / "dog" / "copy_other.png")
    rows += [("broken", "cat", "g7"), ("tiny", "dog", "g8"), ("copy_same", "cat", "g9"),
             ("copy_other", "dog", "g10"), ("ghost", "dog", "g11")]  # fmt: skip
    pd.DataFrame(rows, columns=["image_id", "label", "group"]).to_csv(root / "train.csv", index=False)
    return root


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_manifest_flags_corrupt_tiny_and_duplicate_images(messy: Path) -> None:
    before = _snapshot(messy)
    manifest = clean_dataset(messy, min_side=8)
    assert list(manifest.columns[:4]) == ["image_id", "path", "action", "reason"]
    got = manifest.set_index("image_id")[["action", "reason"]].apply(tuple, axis=1).to_dict()
    assert got == {
        **{f"ok{i}": ("keep", "") for i in range(6)},
        "broken": ("drop", "unreadable"),
        "tiny": ("quarantine", "too_small"),
        "copy_same": ("drop", "exact_duplicate_of:ok0"),
        "copy_other": ("quarantine", "exact_duplicate_of:ok1"),  # same bytes, another label
        "ghost": ("drop", "unreadable"),  # listed in train.csv, no file
    }
    row = manifest.set_index("image_id").loc["tiny"]
    assert row["path"] == "train/dog/tiny.png" and (row["width"], row["height"]) == (4, 4)
    written = pd.read_csv(messy / "cleaning_manifest.csv", keep_default_na=False)
    assert written["action"].tolist() == manifest["action"].tolist()
    after = _snapshot(messy)
    assert after.pop("cleaning_manifest.csv")
    assert after == before  # nothing of the user's was deleted, moved or rewritten


def test_cli_writes_the_manifest_where_asked(messy: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "reports" / "manifest.csv"
    assert main(["--root", str(messy), "--min-side", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "11 images: keep 7, drop 3, quarantine 1" in text and str(out) in text
    assert pd.read_csv(out).set_index("image_id").loc["tiny", "action"] == "keep"  # 4 px >= 2 px
    assert not (messy / "cleaning_manifest.csv").exists()


def test_cli_names_a_missing_csv(tmp_path: Path, capsys) -> None:
    assert main(["--root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere/train.csv" in err and "fix:" in err
