from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.core.errors import ConfigError, DataError
from src.datamodules.folds import assign_folds, check_fold, load_or_create_folds


def test_stratified_group_folds_keep_groups_together_and_balance_labels() -> None:
    ids = [f"s{i}" for i in range(200)]
    labels = [i % 4 for i in range(200)]
    groups = [f"g{i // 4}" for i in range(200)]
    folds = assign_folds(ids, 5, seed=0, labels=labels, groups=groups)
    assert set(folds.fold) == set(range(5))
    by_group = folds.assign(group=groups).groupby("group").fold.nunique()
    assert (by_group == 1).all()
    sizes = folds.fold.value_counts()
    assert sizes.max() - sizes.min() <= 8


def test_folds_file_is_reused(tmp_path: Path) -> None:
    ids = [f"s{i}" for i in range(50)]
    first = load_or_create_folds(tmp_path, ids, 5, seed=1, labels=[i % 2 for i in range(50)])
    (path,) = tmp_path.glob("folds_*.csv")
    stamp = path.stat().st_mtime_ns
    second = load_or_create_folds(tmp_path, ids, 5, seed=1, labels=[i % 2 for i in range(50)])
    assert path.stat().st_mtime_ns == stamp and first.equals(second)
    load_or_create_folds(tmp_path, ids, 4, seed=1)
    assert len(list(tmp_path.glob("folds_*.csv"))) == 2


def test_bad_fold_settings() -> None:
    with pytest.raises(ConfigError, match="data.fold=5"):
        check_fold(5, 5)
    with pytest.raises(ConfigError, match="n_folds=1"):
        assign_folds(["a", "b"], 1, seed=0)
    with pytest.raises(DataError, match="'a' appears more than once"):
        assign_folds(["a", "a", "b"], 2, seed=0)
    assert np.array_equal(assign_folds(["a", "b"], 2, 0).fold.sort_values(), [0, 1])
