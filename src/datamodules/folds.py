"""Folds files: one ``sample_id,fold`` table per dataset and split settings, shared by every model.

The file name carries the split settings (``folds_k{K}_seed{S}_{hash}.csv``) so two settings never
overwrite each other, and an existing file is read back instead of being recomputed: every model
of a dataset sees exactly the same split, which is what makes their out-of-fold predictions
comparable and blendable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from src.core.errors import ConfigError, DataError
from src.core.io import atomic_path


def assign_folds(
    sample_ids: Sequence[str],
    n_folds: int,
    seed: int,
    labels: Sequence | None = None,
    groups: Sequence | None = None,
) -> pd.DataFrame:
    """Assign each sample to one of ``n_folds`` validation folds.

    Uses scikit-learn's splitters: ``StratifiedGroupKFold`` when labels and groups are given,
    ``StratifiedKFold`` with labels only, ``GroupKFold`` with groups only, else ``KFold``.

    Args:
        sample_ids: Unique sample identifiers.
        n_folds: Number of folds (at least 2).
        seed: Shuffling seed.
        labels: Optional class labels to stratify on.
        groups: Optional group keys; samples of one group always share a fold.

    Returns:
        A frame with columns ``sample_id`` and ``fold`` in the order of ``sample_ids``.
    """
    ids = pd.Series(list(sample_ids), dtype=str)
    if n_folds < 2 or n_folds > len(ids):
        raise ConfigError(
            f"data.n_folds={n_folds} is out of range for {len(ids)} samples",
            f"set data.n_folds to an integer in 2..{max(2, len(ids))}",
        )
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        raise DataError(f"sample id {dup!r} appears more than once", "make sample ids unique")
    x = np.zeros(len(ids))
    if labels is not None and groups is not None:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, np.asarray(labels), np.asarray(groups))
    elif labels is not None:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, np.asarray(labels))
    elif groups is not None:
        splits = GroupKFold(n_splits=n_folds).split(x, groups=np.asarray(groups))
    else:
        splits = KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x)
    fold = np.full(len(ids), -1, dtype=np.int64)
    for k, (_, val_idx) in enumerate(splits):
        fold[val_idx] = k
    return pd.DataFrame({"sample_id": ids, "fold": fold})


def folds_path(
    data_dir: Path,
    n_folds: int,
    seed: int,
    ids: Sequence[str],
    scheme: str,
    labels: Sequence | None = None,
    groups: Sequence | None = None,
) -> Path:
    """The folds file for a dataset's samples, their labels and groups, and the split settings.

    The digest covers the labels and groups too: relabelled or regrouped samples get a new folds
    file rather than the folds computed for the old ones.
    """
    parts = [ids, *(col for col in (labels, groups) if col is not None)]
    text = "\n\n".join("\n".join(map(str, col)) for col in parts)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return Path(data_dir) / f"folds_{scheme}_k{n_folds}_seed{seed}_{digest}.csv"


def load_or_create_folds(
    data_dir: Path,
    sample_ids: Sequence[str],
    n_folds: int,
    seed: int,
    labels: Sequence | None = None,
    groups: Sequence | None = None,
) -> pd.DataFrame:
    """Read the dataset's folds file, writing it first (atomically) if it does not exist yet.

    Args:
        data_dir: The dataset folder the folds file lives in.
        sample_ids: The dataset's sample ids.
        n_folds: Number of folds.
        seed: Shuffling seed.
        labels: Optional labels to stratify on.
        groups: Optional group keys.

    Returns:
        A frame with ``sample_id`` and ``fold`` aligned to ``sample_ids``.
    """
    scheme = ("strat" if labels is not None else "") + ("group" if groups is not None else "")
    path = folds_path(data_dir, n_folds, seed, sample_ids, scheme or "plain", labels, groups)
    if not path.exists():
        folds = assign_folds(sample_ids, n_folds, seed, labels, groups)
        with atomic_path(path) as tmp:
            folds.to_csv(tmp, index=False)
    folds = pd.read_csv(path, dtype={"sample_id": str})
    if list(folds.columns) != ["sample_id", "fold"] or len(folds) != len(sample_ids):
        raise DataError(
            f"folds file {path} does not match the dataset ({len(folds)} rows for "
            f"{len(sample_ids)} samples, columns {list(folds.columns)})",
            f"delete {path} so it is written again",
        )
    return folds.set_index("sample_id").loc[list(map(str, sample_ids))].reset_index()


def check_fold(fold: int, n_folds: int) -> None:
    """Raise a ConfigError naming ``data.n_folds`` or ``data.fold`` unless ``0 <= fold < n_folds``
    and ``n_folds >= 2`` (checked when the datamodule is built, before any run is recorded)."""
    if int(n_folds) < 2:
        raise ConfigError(
            f"data.n_folds={n_folds}: cross-validation needs at least 2 folds",
            "set data.n_folds to 2 or more (5 is the usual choice)",
        )
    if not 0 <= int(fold) < int(n_folds):
        raise ConfigError(
            f"data.fold={fold} is out of range for data.n_folds={n_folds}",
            f"pick data.fold in 0..{int(n_folds) - 1}",
        )


def validation_folds(
    data_dir: Path,
    sample_ids: Sequence[str],
    fold: int,
    n_folds: int,
    seed: int,
    strata: Sequence | None,
    groups: Sequence | None,
    source: str,
    group_field: str | None,
) -> np.ndarray:
    """The fold index of each sample (:func:`load_or_create_folds`), checked so that fold ``fold``
    leaves neither training nor validation empty.

    Args:
        data_dir, sample_ids, n_folds, seed: As :func:`load_or_create_folds`.
        fold: The validation fold.
        strata, groups: Labels to stratify on and group keys (either may be None).
        source: The file the groups come from, for messages.
        group_field: The config key's value naming the groups, for messages.

    Raises:
        DataError: Fewer groups than folds, or an empty split, naming ``source`` and the fix.
    """
    if groups is not None and len(set(groups)) < n_folds:
        raise DataError(
            f"{source} has {len(set(groups))} group(s) ({group_field!r}) for data.n_folds={n_folds}: a fold "
            "would hold no sample",
            f"set data.n_folds to at most {len(set(groups))}, or data.group_field=null for ungrouped folds",
        )
    folds = load_or_create_folds(data_dir, sample_ids, n_folds, seed, strata, groups)["fold"].to_numpy()
    for name, mask in (("train", folds != fold), ("validation", folds == fold)):
        if not mask.any():
            raise DataError(
                f"fold {fold} of {source} leaves the {name} split empty ({len(sample_ids)} samples)",
                "add samples or groups, or lower data.n_folds",
            )
    return folds
