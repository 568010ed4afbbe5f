"""The OOF store: read, validate, align and write the out-of-fold tables of ensemble members.

A *member* is one model trained over K folds, in a run directory (written by the fold runner):

```
<member_dir>/oof/oof.parquet    sample_id, fold, label, logit_0..logit_{C-1}, prob_0..prob_{C-1}
<member_dir>/oof/test.parquet   sample_id, prob_0..prob_{C-1}   (optional; fold and TTA mean)
<member_dir>/oof/classes.json   {"classes": [...]}               class names by index
```

Every table is validated on read (columns, NaN, rows summing to one), and members are aligned on
``sample_id`` before anything is blended: row ``i`` of every member is the same sample.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.special import softmax

from src.core.artifacts import RECORDS_FILE, read_record_lines, read_resolved_config
from src.core.errors import DataError
from src.core.io import atomic_path, write_json_atomic

log = logging.getLogger("podium")

OOF_DIR = "oof"
OOF_FILE = "oof.parquet"
TEST_FILE = "test.parquet"
CLASSES_FILE = "classes.json"
# Probabilities are stored as float32 and averaged over TTA views and folds: rows may miss 1 by
# rounding, never by more than this.
SUM_TOLERANCE = 1e-3
RERUN_FIX = "rerun the fold runner for this member (python cv.py experiment=<name>) to rewrite its oof/ tables"


@dataclass(frozen=True, eq=False)
class Member:
    """One K-fold model's out-of-fold (and optional test) predictions.

    Attributes:
        name: Display name (the member directory's name unless given).
        path: The member's run directory.
        sample_ids: ``(n,)`` training sample ids (str).
        folds: ``(n,)`` validation fold of each sample.
        labels: ``(n,)`` true class indices.
        probs: ``(n, C)`` out-of-fold class probabilities (float64, rows sum to 1).
        classes: Class names by index.
        test_ids: ``(m,)`` test sample ids, or None without a test table.
        test_probs: ``(m, C)`` test probabilities, or None.
        source: The file the OOF rows were read from (``oof.parquet`` or the records).
    """

    name: str
    path: Path
    sample_ids: npt.NDArray[np.str_]
    folds: npt.NDArray[np.int64]
    labels: npt.NDArray[np.int64]
    probs: npt.NDArray[np.float64]
    classes: list[str]
    test_ids: npt.NDArray[np.str_] | None = None
    test_probs: npt.NDArray[np.float64] | None = None
    source: Path | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def take(self, order: npt.NDArray[np.int64]) -> Member:
        """The same member with its OOF rows reordered by ``order``."""
        return replace(
            self,
            sample_ids=self.sample_ids[order],
            folds=self.folds[order],
            labels=self.labels[order],
            probs=self.probs[order],
        )


def _read_classes(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"missing class list {path}", RERUN_FIX)
    try:
        classes = json.loads(path.read_text())["classes"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f'{path} is not of the form {{"classes": [...]}} ({exc})', RERUN_FIX) from exc
    if not isinstance(classes, list) or len(classes) < 2:
        raise DataError(f"{path}: 'classes' must list at least 2 class names, got {classes!r}", RERUN_FIX)
    return [str(c) for c in classes]


def _read_table(path: Path, required: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(
            f"missing out-of-fold table {path}",
            "point `members` at K-fold run directories (outputs/<experiment>/<run_name>) that hold oof/; " + RERUN_FIX,
        )
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise DataError(f"cannot read {path} as parquet ({exc})", RERUN_FIX) from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing[:6]}; it has {list(frame.columns)[:12]}", RERUN_FIX)
    if frame.empty:
        raise DataError(f"{path} has no rows", RERUN_FIX)
    dup = frame["sample_id"][frame["sample_id"].duplicated()]
    if not dup.empty:
        raise DataError(f"{path}: sample_id {dup.iloc[0]!r} appears more than once", RERUN_FIX)
    return frame


def _probabilities(frame: pd.DataFrame, n_classes: int, path: Path) -> npt.NDArray[np.float64]:
    """The ``prob_*`` block as float64, checked for NaN and for rows that sum to one."""
    probs = frame[[f"prob_{c}" for c in range(n_classes)]].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        first = frame["sample_id"].iloc[int(np.argmax(bad))]
        raise DataError(
            f"{path}: sample {first!r} has NaN or inf probabilities ({int(bad.sum())} rows)",
            "find the fold that produced them (a non-finite loss?) and " + RERUN_FIX,
        )
    error = np.abs(probs.sum(axis=1) - 1.0)
    if (error > SUM_TOLERANCE).any() or (probs < 0).any():
        i = int(np.argmax(error))
        raise DataError(
            f"{path}: probabilities of sample {frame['sample_id'].iloc[i]!r} sum to {probs[i].sum():.6f}, "
            f"not 1 (within {SUM_TOLERANCE}), or are negative",
            "write prob_* as a softmax over the classes (averaged over TTA views); " + RERUN_FIX,
        )
    return probs / probs.sum(axis=1, keepdims=True)


def prob_columns(n_classes: int) -> list[str]:
    """The probability columns of an OOF table: ``prob_0 .. prob_{C-1}``."""
    return [f"prob_{c}" for c in range(n_classes)]


def read_cv_records(path: Path) -> list[dict[str, Any]]:
    """The merged out-of-fold records of a cross-validation (``oof/gt_vs_pred.jsonl``), read strictly.

    Raises:
        DataError: A record without truth (``gt``) or without its ``fold``.
    """
    records, _, _ = read_record_lines(path, strict=True)
    bad = next((r["sample_id"] for r in records if r.get("gt") is None or "fold" not in r), None)
    if bad is not None:
        raise DataError(f"{path}: record {bad!r} has no truth (gt) or no fold", RERUN_FIX)
    return records


def table_from_records(path: Path) -> tuple[list[str], pd.DataFrame]:
    """The OOF table of a cross-validation's merged classification records (``oof/gt_vs_pred.jsonl``,
    written by ``cv.py`` for any experiment): class names and ``sample_id, fold, label, prob_*``.

    Raises:
        DataError: The records are not classification records of every fold.
    """
    resolved = read_resolved_config(path.parent) or {}
    if resolved.get("task") != "classification":
        raise DataError(
            f"{path} holds {resolved.get('task') or 'unknown'} records, not classification ones",
            "blend members of one task: classification cv.py runs here",
        )
    records = read_cv_records(path)
    n_classes = len(records[0]["pred"]["probs"])
    names = {int(r["gt"]["label"]): str(r["gt"].get("class_name", r["gt"]["label"])) for r in records}
    classes = [names.get(c, str(c)) for c in range(n_classes)]
    frame = pd.DataFrame(
        {
            "sample_id": [str(r["sample_id"]) for r in records],
            "fold": [int(r["fold"]) for r in records],
            "label": [int(r["gt"]["label"]) for r in records],
        }
    )
    probs = pd.DataFrame([r["pred"]["probs"] for r in records], columns=prob_columns(n_classes))
    return classes, pd.concat([frame, probs], axis=1)


def load_member(path: str | Path, name: str | None = None) -> Member:
    """Read and validate one member's ``oof/`` tables.

    Args:
        path: The member's run directory (holding ``oof/oof.parquet`` and ``oof/classes.json``, or
            the merged records ``oof/gt_vs_pred.jsonl`` that ``cv.py`` writes for any experiment).
        name: Display name; defaults to the directory's name.

    Returns:
        The member, rows in the file's order. Only ``prob_*`` is read: it is the TTA (and, for
        test rows, fold) average the fold runner computed; ``logit_*`` may be absent.

    Raises:
        DataError: A file is missing or unreadable, lacks columns, holds NaN probabilities, rows that
            do not sum to 1, or labels outside the class list.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"member directory {root} does not exist", "pass members=[<K-fold run directory>, ...]")
    oof_dir = root / OOF_DIR
    if not oof_dir.is_dir():
        raise DataError(
            f"member directory {root} holds no out-of-fold predictions ({oof_dir} does not exist)",
            "point members at cv.py run directories (outputs/<experiment>/<cv run>) whose folds all "
            "finished, not at a single train.py run; " + RERUN_FIX,
        )
    oof_path = oof_dir / OOF_FILE
    if not oof_path.is_file() and (oof_dir / RECORDS_FILE).is_file():
        oof_path = oof_dir / RECORDS_FILE
        classes, frame = table_from_records(oof_path)
    else:
        classes = _read_classes(oof_dir / CLASSES_FILE)
        frame = _read_table(oof_path, ["sample_id", "fold", "label", *prob_columns(len(classes))])
    n_classes = len(classes)
    labels = frame["label"].to_numpy()
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n_classes:
        raise DataError(
            f"{oof_path}: label must hold class indices 0..{n_classes - 1} ({oof_dir / CLASSES_FILE}); "
            f"found dtype {labels.dtype}, range {labels.min()}..{labels.max()}",
            RERUN_FIX,
        )
    test_ids = test_probs = None
    test_path = oof_dir / TEST_FILE
    if test_path.is_file():
        test = _read_table(test_path, ["sample_id", *prob_columns(n_classes)])
        test_ids = test["sample_id"].astype(str).to_numpy()
        test_probs = _probabilities(test, n_classes, test_path)
    return Member(
        name=name or root.name,
        path=root,
        sample_ids=frame["sample_id"].astype(str).to_numpy(),
        folds=frame["fold"].to_numpy(dtype=np.int64),
        labels=labels.astype(np.int64),
        probs=_probabilities(frame, n_classes, oof_path),
        classes=classes,
        test_ids=test_ids,
        test_probs=test_probs,
        source=oof_path,
    )


def _first_difference(ref: npt.NDArray, other: npt.NDArray) -> str:
    """The first id in one set and not the other, phrased for an error message."""
    only_ref = np.setdiff1d(ref, other)
    if only_ref.size:
        return f"sample_id {only_ref[0]!r} is missing"
    return f"sample_id {np.setdiff1d(other, ref)[0]!r} is not in the first member"


def _order_like(ref_ids: npt.NDArray, member: Member, ids: npt.NDArray, what: str) -> npt.NDArray[np.int64]:
    """Indices that put ``ids`` in the order of ``ref_ids``; DataError if the id sets differ."""
    if len(ids) != len(ref_ids) or not np.array_equal(np.sort(ids), np.sort(ref_ids)):
        raise DataError(
            f"member {member.name!r} ({member.path}) has other {what} ids than the first member: "
            f"{_first_difference(ref_ids, ids)} ({len(ids)} vs {len(ref_ids)} rows)",
            "blend only members trained on the same dataset (same train.csv / test.csv)",
        )
    position = pd.Index(ids).get_indexer(ref_ids)
    return position.astype(np.int64)


def align_members(members: Sequence[Member]) -> list[Member]:
    """Put every member's rows in the first member's sample order and check they agree.

    Members must share the sample id set, the labels of every sample and the class list; test
    tables, where present, must share their id set and are reordered too. Members split by other
    folds are accepted with a warning (their OOF rows are still out-of-fold), and the first
    member's folds are the ones nested fits use.

    Args:
        members: Members as loaded by :func:`load_member`.

    Returns:
        The members, aligned row for row (test rows too).

    Raises:
        DataError: Naming the member and the first mismatched sample id or class list.
    """
    if not members:
        raise DataError("no members to align", "pass members=[<K-fold run directory>, ...]")
    ref = members[0]
    aligned = [ref]
    for member in members[1:]:
        if member.classes != ref.classes:
            raise DataError(
                f"member {member.name!r} has classes {member.classes} but {ref.name!r} has {ref.classes}",
                "blend only members trained on the same dataset and class list",
            )
        other = member.take(_order_like(ref.sample_ids, member, member.sample_ids, "OOF sample"))
        wrong = np.flatnonzero(other.labels != ref.labels)
        if wrong.size:
            i = int(wrong[0])
            raise DataError(
                f"member {member.name!r} labels sample_id {ref.sample_ids[i]!r} as {other.labels[i]} but "
                f"{ref.name!r} labels it {ref.labels[i]} ({wrong.size} samples disagree)",
                "retrain the members from the same train.csv",
            )
        if not np.array_equal(other.folds, ref.folds):
            log.warning("member %r uses other folds than %r; nested fits use %r's", member.name, ref.name, ref.name)
        aligned.append(other)
    return _align_tests(aligned)


def _align_tests(members: list[Member]) -> list[Member]:
    """Reorder test tables like the first member's; drop them all if any member lacks one."""
    have = [m.test_ids is not None for m in members]
    if not all(have):
        if any(have):
            lacking = [m.name for m, h in zip(members, have, strict=True) if not h]
            log.warning("members %s have no oof/test.parquet: no test predictions, no submission", lacking)
        return [replace(m, test_ids=None, test_probs=None) for m in members]
    ref_ids = members[0].test_ids
    out = [members[0]]
    for m in members[1:]:
        order = _order_like(ref_ids, m, m.test_ids, "test")
        out.append(replace(m, test_ids=m.test_ids[order], test_probs=m.test_probs[order]))
    return out


def write_oof(
    member_dir: str | Path,
    sample_ids: Sequence[str],
    folds: Sequence[int] | npt.NDArray[np.integer],
    labels: Sequence[int] | npt.NDArray[np.integer],
    logits: npt.ArrayLike,
    classes: Sequence[str],
    test_ids: Sequence[str] | None = None,
    test_probs: npt.ArrayLike | None = None,
) -> Path:
    """Write a member's ``oof/`` tables in the format :func:`load_member` reads, atomically.

    Args:
        member_dir: The member's run directory; ``oof/`` is created inside it.
        sample_ids: ``(n,)`` training sample ids.
        folds: ``(n,)`` validation fold of each sample.
        labels: ``(n,)`` class indices.
        logits: ``(n, C)`` out-of-fold logits; ``prob_*`` is their softmax.
        classes: ``C`` class names by index.
        test_ids: ``(m,)`` test sample ids (optional).
        test_probs: ``(m, C)`` test probabilities, rows summing to 1 (with ``test_ids``).

    Returns:
        The ``oof/`` folder.
    """
    out = Path(member_dir) / OOF_DIR
    logits = np.asarray(logits, dtype=np.float64)
    n_classes = len(classes)
    if logits.ndim != 2 or logits.shape != (len(sample_ids), n_classes):
        raise ValueError(f"logits must be (n={len(sample_ids)}, C={n_classes}), got {logits.shape}")
    frame = pd.DataFrame(
        {
            "sample_id": [str(s) for s in sample_ids],
            "fold": np.asarray(folds, dtype=np.int64),
            "label": np.asarray(labels, dtype=np.int64),
        }
    )
    blocks = [frame, _block("logit", logits), _block("prob", softmax(logits, axis=1))]
    _write_parquet(out / OOF_FILE, pd.concat(blocks, axis=1))
    if test_ids is not None:
        probs = np.asarray(test_probs, dtype=np.float64)
        test = pd.DataFrame({"sample_id": [str(s) for s in test_ids]})
        _write_parquet(out / TEST_FILE, pd.concat([test, _block("prob", probs)], axis=1))
    write_json_atomic(out / CLASSES_FILE, {"classes": [str(c) for c in classes]})
    return out


def _block(prefix: str, values: npt.NDArray[np.float64]) -> pd.DataFrame:
    columns = [f"{prefix}_{c}" for c in range(values.shape[1])]
    return pd.DataFrame(values.astype(np.float32), columns=columns)


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
