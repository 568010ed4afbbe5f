"""The review's state without a browser: journal replay, leases, undo, export into the manifest,
and the datamodule applying it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.core.errors import DataError
from src.datamodules.images.cleaning import manifest_changes, merge_decisions, read_manifest
from src.datamodules.images.datamodule import ImageFolderDataModule
from src.review.journal import Journal, decisions, read_entries
from src.review.session import Conflict, ReviewSession
from src.review.suspects import Suspect

CLASSES = ["cat", "dog", "owl"]


def suspects(n: int = 5) -> list[Suspect]:
    return [Suspect(f"img{i}", i % 3, 3.0 - i * 0.1, np.asarray([0.1, 0.2, 0.7])) for i in range(n)]


def session(path: Path, clock=None, n: int = 5) -> ReviewSession:
    extra = {"clock": clock} if clock else {}
    return ReviewSession(suspects(n), CLASSES, Journal(path), lambda i, k: [f"near_{k}"], lease_s=60, **extra)


def test_actions_are_journalled_and_replayed_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    s = session(path)
    first = s.state("tab-a")["item"]
    assert first["image_id"] == "img0" and first["top"][0] == {"label": 2, "class_name": "owl", "prob": 0.7}
    after = s.act("tab-a", "img0", "relabel", 1)
    assert after["item"]["image_id"] == "img1" and after["progress"]["done"] == 1
    s.act("tab-a", "img1", "trash")
    s.act("tab-a", "img2", "skip")
    s.journal.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["action"] for x in lines] == ["relabel", "trash", "skip"] and lines[0]["label"] == 1
    again = session(path)  # a new server on the same journal
    assert set(again.decided()) == {"img0", "img1"}
    assert again.state("tab-a")["item"]["image_id"] == "img3"  # the skipped one waits at the back


def test_a_torn_last_line_is_dropped_and_the_next_append_starts_clean(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    s = session(path)
    s.state("t")
    s.act("t", "img0", "keep")
    s.journal.close()
    with open(path, "a") as handle:
        handle.write('{"seq": 2, "reviewer": "t", "act')  # the process died mid-write
    again = session(path)
    assert [e.seq for e in again.journal.entries] == [1]
    again.state("t")
    again.act("t", "img1", "keep")
    assert [e.action for e in read_entries(path)] == ["keep", "keep"]
    entry = '{"seq": %d, "reviewer": "t", "action": "keep", "image_id": "img%d"}\n'
    path.write_text(entry % (1, 0) + "not json\n" + entry % (3, 2))
    with pytest.raises(DataError, match="journal.jsonl:2: not a review journal entry"):
        read_entries(path)


def test_two_reviewers_never_hold_the_same_image_and_leases_expire(tmp_path: Path) -> None:
    now = [0.0]
    s = session(tmp_path / "j.jsonl", clock=lambda: now[0])
    a, b = s.state("a")["item"]["image_id"], s.state("b")["item"]["image_id"]
    assert a != b
    with pytest.raises(Conflict, match="another tab"):
        s.act("b", a, "keep")
    s.act("a", a, "keep")
    with pytest.raises(Conflict, match="decided already"):
        s.act("b", a, "trash")
    now[0] = 61.0  # b walked away: its lease expired, a may take its image
    assert s.state("a")["item"]["image_id"] == b


def test_undo_takes_back_the_last_action_of_that_reviewer_only(tmp_path: Path) -> None:
    s = session(tmp_path / "j.jsonl")
    s.state("a")
    s.act("a", "img0", "trash")
    held_by_b = s.state("b")["item"]["image_id"]
    s.act("b", held_by_b, "keep")
    view = s.undo("a")
    assert view["item"]["image_id"] == "img0" and "img0" not in s.decided() and held_by_b in s.decided()
    assert not view["can_undo"]
    with pytest.raises(Conflict, match="nothing to undo"):
        s.undo("a")
    s.act("a", "img0", "relabel", 2)
    assert decisions(s.journal.entries)["img0"].label == 2


def test_export_rows_merge_into_the_manifest_and_the_datamodule_applies_them(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "digits"
    root.mkdir()
    (root / "train.csv").write_text((data_dir / "digits" / "train.csv").read_text())
    (root / "train").symlink_to(data_dir / "digits" / "train", target_is_directory=True)
    manifest = root / "cleaning_manifest.csv"
    merge_decisions(manifest, pd.DataFrame({"image_id": ["digit_0000"], "path": [""], "action": ["keep"],
                                            "reason": [""], "width": [8], "height": [8], "sha256": [""],
                                            "new_label": [""]}))  # fmt: skip
    rows = pd.DataFrame({"image_id": ["digit_0000", "digit_0001", "digit_0002"], "path": "", "action":
                         ["relabel", "drop", "keep"], "reason": ["review:relabel", "review:trash", "review:keep"],
                         "width": 8, "height": 8, "sha256": "", "new_label": ["7", "", ""]})  # fmt: skip
    merged = merge_decisions(manifest, rows)
    assert merged["image_id"].tolist() == ["digit_0000", "digit_0001", "digit_0002"]  # replaced, not doubled
    assert manifest_changes(manifest, [str(k) for k in range(10)]) == ({"digit_0001"}, {"digit_0000": 7})
    dm = ImageFolderDataModule(str(root), num_classes=10, in_chans=1, mean=[0.5], std=[0.5], manifest=str(manifest))
    dm.setup()
    ids = dm.train_set.sample_ids + dm.val_set.sample_ids
    labels = dict(zip(ids, dm.train_set.labels + dm.val_set.labels, strict=True))
    assert "digit_0001" not in labels and labels["digit_0000"] == 7 and len(ids) == 1796
    plain = ImageFolderDataModule(str(root), num_classes=10, in_chans=1, mean=[0.5], std=[0.5])
    assert plain.fingerprint() != dm.fingerprint()  # the manifest is part of the data
    bad = read_manifest(manifest).assign(new_label=["eleven", "", ""])
    bad.to_csv(manifest, index=False)
    with pytest.raises(DataError, match="relabelled to 'eleven', which is not a class"):
        manifest_changes(manifest, [str(k) for k in range(10)])


def test_suspects_rank_by_loss_margin_and_ensemble_disagreement(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from src.review.suspects import find_suspects
    from tests.ensemble.synthetic import write_member

    a = write_member(tmp_path / "outputs" / "toy", "cv_a", seed=1, n=60)
    b = write_member(tmp_path / "outputs" / "toy", "cv_b", seed=2, n=60)
    by_loss, classes = find_suspects(a, "loss", 10, 0.0, set())
    assert len(by_loss) == 10 and classes == ["c0", "c1", "c2", "c3"]
    assert [s.score for s in by_loss] == sorted((s.score for s in by_loss), reverse=True)
    assert all(s.score == pytest.approx(-np.log(s.probs[s.label])) for s in by_loss)
    decided = {by_loss[0].image_id}
    margin, _ = find_suspects(a, "margin", 100, 0.01, decided)
    assert by_loss[0].image_id not in {s.image_id for s in margin} and all(s.score >= 0.01 for s in margin)
    ensemble = tmp_path / "outputs" / "ensemble" / "ab"
    ensemble.mkdir(parents=True)
    (ensemble / "oof").symlink_to(a / "oof", target_is_directory=True)
    OmegaConf.save({"members": [str(a), str(b)], "paths": {"root_dir": str(tmp_path)}}, ensemble / "config.yaml")
    spread, _ = find_suspects(ensemble, "disagreement", 5, 0.0, set())
    assert len(spread) == 5 and spread[0].score >= spread[-1].score > 0
    with pytest.raises(Exception, match="needs an ensemble run as source"):
        find_suspects(a, "disagreement", 5, 0.0, set())
    with pytest.raises(DataError, match="holds no out-of-fold predictions"):
        find_suspects(tmp_path, "loss", 5, 0.0, set())


def test_review_refuses_a_source_of_another_dataset_and_export_without_a_journal(root: Path, tmp_path: Path) -> None:
    from src.review.jobs import build_session, dataset, export
    from tests.conftest import compose_cfg
    from tests.ensemble.synthetic import write_member

    write_member(root / "outputs" / "toy", "cv_a", seed=1, n=60)
    cfg = compose_cfg(["data=digits", "source=outputs/toy/cv_a"], root, "review")
    with pytest.raises(DataError, match="predicts classes"):
        build_session(cfg, dataset(cfg))
    with pytest.raises(DataError, match="no review journal at"):
        export(cfg)
