"""Bad commands fail fast: non-zero exit, a message naming the key/file/value and the fix, no run left behind."""

from __future__ import annotations

from pathlib import Path

import pytest


def _bad_csv(root: Path) -> list[str]:
    folder = root / "bad_csv"
    folder.mkdir()
    (folder / "train.csv").write_text("file,class\na.png,1\n")
    return [f"data.root={folder}", "data.prepare=null"]


def _missing_image(root: Path) -> list[str]:
    folder = root / "missing_image"
    (folder / "train" / "cat").mkdir(parents=True)
    (folder / "train.csv").write_text("image_id,label,group\nimg1,cat,g1\n")
    return [f"data.root={folder}", "data.prepare=null"]


CASES = {
    "unknown experiment": (lambda r: ["experiment=nope"], ["Could not find 'experiment/nope'", "digits"]),
    "no experiment": (lambda r: [], ["no experiment chosen", "experiment=<name>", "digits"]),
    "wrong type": (
        lambda r: ["experiment=digits", "trainer.max_epochs=abc"],
        ["trainer.max_epochs expects int", "'abc'"],
    ),
    "float for int": (lambda r: ["experiment=digits", "data.batch_size=1.5"], ["data.batch_size expects int"]),
    "unknown key": (lambda r: ["experiment=digits", "trainer.max_epoch=3"], ["max_epoch"]),
    "fold out of range": (lambda r: ["experiment=digits", "data.fold=7"], ["data.fold=7", "0..4"]),
    "missing data": (
        lambda r: ["experiment=digits", f"data.root={r / 'nowhere'}", "data.prepare=null"],
        ["nowhere/train.csv", "fix:"],
    ),
    "wrong csv columns": (lambda r: ["experiment=digits", *_bad_csv(r)], ["bad_csv/train.csv", "image_id"]),
    "image file missing": (lambda r: ["experiment=digits", *_missing_image(r)], ["'img1'", "missing_image"]),
    "unknown timm model": (
        lambda r: ["experiment=digits", "model.net.model_name=resnet999"],
        ["resnet999", "timm.list_models"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_command_exits_nonzero_with_a_named_cause(case: str, root: Path, run_train) -> None:
    make_args, expected = CASES[case]
    proc = run_train(*make_args(root), "extras.print_config=false", check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    for fragment in expected:
        assert fragment in output, f"{fragment!r} not in:\n{output[-3000:]}"
    assert "Traceback" not in proc.stderr
    leftovers = list((root / "outputs").rglob("*")) if (root / "outputs").exists() else []
    assert not [p for p in leftovers if p.is_file()], f"stray files: {leftovers}"
