"""The OOF store: round trip, validation errors that name the file and the fix, alignment by id."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from src.core.artifacts import RECORDS_FILE, RESOLVED_CONFIG_FILE, build_resolved_config, write_json, write_records
from src.core.errors import DataError
from src.ensemble.oof import align_members, load_member, write_oof
from tests.ensemble.synthetic import write_member


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-3.0, 0.0, 3.0]])
    write_oof(tmp_path / "m", ["a", "b", "c"], [0, 1, 1], [0, 1, 2], logits, ["cat", "dog", "eel"],
              test_ids=["t1"], test_probs=[[0.2, 0.3, 0.5]])  # fmt: skip
    frame = pd.read_parquet(tmp_path / "m" / "oof" / "oof.parquet")
    assert list(frame.columns) == ["sample_id", "fold", "label", "logit_0", "logit_1", "logit_2",
                                   "prob_0", "prob_1", "prob_2"]  # fmt: skip
    assert frame["prob_0"].dtype == np.float32
    m = load_member(tmp_path / "m")
    assert m.name == "m" and m.classes == ["cat", "dog", "eel"]
    assert m.sample_ids.tolist() == ["a", "b", "c"] and m.folds.tolist() == [0, 1, 1]
    np.testing.assert_allclose(m.probs, softmax(logits, axis=1), atol=1e-6)
    np.testing.assert_allclose(m.probs.sum(axis=1), 1.0, atol=1e-12)
    assert m.test_ids.tolist() == ["t1"]
    np.testing.assert_allclose(m.test_probs, [[0.2, 0.3, 0.5]], atol=1e-6)


def test_shuffled_members_align_on_sample_id(tmp_path: Path) -> None:
    a, b = load_member(write_member(tmp_path, "a", seed=1)), load_member(write_member(tmp_path, "b", seed=2))
    assert not np.array_equal(a.sample_ids, b.sample_ids)  # written in different row orders
    by_id = {sid: p for sid, p in zip(b.sample_ids, b.probs, strict=True)}
    aligned = align_members([a, b])
    assert np.array_equal(aligned[1].sample_ids, a.sample_ids)
    assert np.array_equal(aligned[1].labels, a.labels) and np.array_equal(aligned[1].folds, a.folds)
    np.testing.assert_array_equal(aligned[1].probs, np.stack([by_id[s] for s in a.sample_ids]))
    assert np.array_equal(aligned[1].test_ids, aligned[0].test_ids)


def _rewrite(path: Path, edit) -> None:
    frame = pd.read_parquet(path)
    edit(frame)
    frame.to_parquet(path, index=False)


def test_mismatched_id_set_names_the_member_and_the_id(tmp_path: Path) -> None:
    a = load_member(write_member(tmp_path, "a", seed=1))
    oof_b = write_member(tmp_path, "b", seed=2) / "oof" / "oof.parquet"

    def rename(frame: pd.DataFrame) -> None:
        frame["sample_id"] = frame["sample_id"].replace("img_0007", "stranger")

    _rewrite(oof_b, rename)
    with pytest.raises(DataError, match=r"member 'b'.*'img_0007' is missing"):
        align_members([a, load_member(tmp_path / "b")])


def test_disagreeing_labels_name_the_member_and_the_id(tmp_path: Path) -> None:
    a = load_member(write_member(tmp_path, "a", seed=1))
    b = load_member(write_member(tmp_path, "b", seed=2))
    labels = b.labels.copy()
    i = int(np.flatnonzero(b.sample_ids == "img_0003")[0])
    labels[i] = (labels[i] + 1) % 4
    with pytest.raises(DataError, match=r"member 'b' labels sample_id 'img_0003'"):
        align_members([a, replace(b, labels=labels)])


def test_other_classes_are_rejected(tmp_path: Path) -> None:
    a = load_member(write_member(tmp_path, "a", seed=1))
    write_member(tmp_path, "b", seed=2)
    (tmp_path / "b" / "oof" / "classes.json").write_text('{"classes": ["w", "x", "y", "z"]}')
    with pytest.raises(DataError, match=r"member 'b' has classes \['w'"):
        align_members([a, load_member(tmp_path / "b")])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(columns=["prob_2"], inplace=True), r"lacks column\(s\) \['prob_2'\]"),
        (lambda f: f.loc.__setitem__((5, "prob_1"), np.nan), r"NaN or inf probabilities"),
        (lambda f: f.__setitem__("prob_0", f["prob_0"] + 0.01), r"sum to 1\.0\d+, not 1"),
        (lambda f: f.__setitem__("label", f["label"] + 4), r"label must hold class indices 0\.\.3"),
    ],
    ids=["missing column", "nan", "not normalised", "label range"],
)
def test_invalid_tables_name_the_file_and_the_fix(tmp_path: Path, edit, message: str) -> None:
    oof = write_member(tmp_path, "m", seed=1) / "oof" / "oof.parquet"
    _rewrite(oof, edit)
    with pytest.raises(DataError, match=message) as info:
        load_member(tmp_path / "m")
    assert str(oof) in str(info.value) and "fix:" in str(info.value)


def test_missing_member_and_missing_table(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_member(tmp_path / "nowhere")
    (tmp_path / "m" / "oof").mkdir(parents=True)
    (tmp_path / "m" / "oof" / "classes.json").write_text('{"classes": ["a", "b"]}')
    with pytest.raises(DataError, match=r"missing out-of-fold table .*oof\.parquet"):
        load_member(tmp_path / "m")


def test_a_member_without_test_table_drops_test_predictions(tmp_path: Path) -> None:
    a = load_member(write_member(tmp_path, "a", seed=1))
    write_member(tmp_path, "b", seed=2)
    (tmp_path / "b" / "oof" / "test.parquet").unlink()
    aligned = align_members([a, load_member(tmp_path / "b")])
    assert all(m.test_probs is None for m in aligned)


def test_a_member_of_any_classification_experiment_loads_from_its_cv_records(tmp_path: Path) -> None:
    """cv.py writes oof/gt_vs_pred.jsonl for every experiment; a member without the OOF tables
    (no OOF writer callback, e.g. image_folder) is read from those records."""
    probs = softmax(np.random.default_rng(0).normal(size=(9, 3)), axis=1)
    names = ["apple", "kiwi", "pear"]
    records = [
        {
            "sample_id": f"img_{i}", "split": "val", "fold": i % 3, "errors": [],
            "gt": {"label": i % 3, "class_name": names[i % 3]},
            "pred": {"label": int(probs[i].argmax()), "probs": probs[i].tolist()},
        }
        for i in range(9)
    ]  # fmt: skip
    oof = tmp_path / "fruits_cv" / "oof"
    write_records(oof / RECORDS_FILE, records)
    write_json(oof / RESOLVED_CONFIG_FILE, build_resolved_config("classification", ["cv:merge"], {}, None, None, {}))
    member = load_member(tmp_path / "fruits_cv")
    assert member.classes == names and member.source == oof / RECORDS_FILE
    assert member.sample_ids.tolist() == [f"img_{i}" for i in range(9)] and member.folds.tolist() == [0, 1, 2] * 3
    assert np.allclose(member.probs, probs, atol=1e-8) and member.labels.tolist() == [0, 1, 2] * 3
    write_json(oof / RESOLVED_CONFIG_FILE, build_resolved_config("ariel", ["cv:merge"], {}, None, None, {}))
    with pytest.raises(DataError, match="holds ariel records, not classification ones"):
        load_member(tmp_path / "fruits_cv")
