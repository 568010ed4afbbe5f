"""Bad inputs stop with a DataError that names the planet and the file at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.core.errors import DataError
from src.datamodules.ariel.datamodule import ArielDataModule


def first_planet(root: Path) -> int:
    return int(pd.read_csv(root / "train.csv")["planet_id"].iloc[0])


def prepare(root: Path, tmp_path: Path) -> None:
    ArielDataModule(str(root), cache_dir=str(tmp_path / "cache"), folds_dir=str(tmp_path), n_folds=2).prepare_data()


def test_missing_calibration_file(tiny_copy, tmp_path):
    pid = first_planet(tiny_copy)
    path = tiny_copy / "train" / str(pid) / "AIRS-CH0_calibration_0" / "flat.parquet"
    path.unlink()
    with pytest.raises(DataError, match=f"planet {pid}: missing raw file .*flat.parquet") as info:
        prepare(tiny_copy, tmp_path)
    assert str(path) in str(info.value) and "fix:" in str(info.value)


def test_wrong_column_count(tiny_copy, tmp_path):
    pid = first_planet(tiny_copy)
    path = tiny_copy / "train" / str(pid) / "FGS1_signal_0.parquet"
    table = pq.read_table(path)
    pq.write_table(table.select(list(range(1000))), path)
    with pytest.raises(DataError, match=f"planet {pid}: FGS1 signal file .*has 1000 columns.*expected 1024") as info:
        prepare(tiny_copy, tmp_path)
    assert str(path) in str(info.value)


def test_nan_filled_signal(tiny_copy, tmp_path):
    pid = first_planet(tiny_copy)
    path = tiny_copy / "train" / str(pid) / "AIRS-CH0_signal_0.parquet"
    n_rows = pq.read_metadata(path).num_rows
    nan = np.full(n_rows, np.nan)
    pq.write_table(pa.table({str(j): nan for j in range(32 * 356)}), path)
    with pytest.raises(DataError, match=f"planet {pid}: AIRS-CH0 signal file .* NaN") as info:
        prepare(tiny_copy, tmp_path)
    assert str(path) in str(info.value)


def test_gain_of_zero(tiny_copy, tmp_path):
    path = tiny_copy / "adc_info.csv"
    adc = pd.read_csv(path)
    adc["FGS1_adc_gain"] = 0.0
    adc.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"planet \d+: .*adc_info.csv field FGS1_adc_gain=0.0") as info:
        prepare(tiny_copy, tmp_path)
    assert "non-zero" in str(info.value)


def test_planet_in_labels_but_not_on_disk(tiny_copy, tmp_path):
    path = tiny_copy / "train.csv"
    labels = pd.read_csv(path)
    ghost = labels.iloc[:1].copy()
    ghost["planet_id"] = 4242
    pd.concat([labels, ghost]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"planet 4242 is listed in .*train.csv but its folder .*4242 does not exist"):
        prepare(tiny_copy, tmp_path)


def test_labels_with_wrong_column_count(tiny_copy, tmp_path):
    path = tiny_copy / "train.csv"
    pd.read_csv(path).iloc[:, :100].to_csv(path, index=False)
    with pytest.raises(DataError, match=r"labels file .*train.csv has 100 columns, expected planet_id \+ 283"):
        prepare(tiny_copy, tmp_path)


def test_missing_dataset_without_simulation(tmp_path):
    with pytest.raises(DataError, match="does not exist.*\n.*simulate.if_missing=true"):
        prepare(tmp_path / "nowhere", tmp_path)
