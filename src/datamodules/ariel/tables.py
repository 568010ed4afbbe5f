"""The dataset-level tables of the Ariel layout: labels, star info, ADC settings, time axes.

Each reader checks what later code relies on (columns, counts, finite values) and raises a
``DataError`` naming the file, the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from src.core.errors import DataError
from src.datamodules.ariel.layout import AIRS, FGS1, INSTRUMENTS, N_WAVELENGTHS, ArielLayout

STAR_COLUMNS: tuple[str, ...] = ("Rs", "Ms", "Ts", "Mp", "e", "P", "sma", "i")
#: Plausible range of each star-table column in the competition's units: (low, high, low allowed,
#: high allowed, unit). Loose by design: a value outside is a wrong unit or a broken row, not a star.
STAR_RANGES: dict[str, tuple[float, float, bool, bool, str]] = {
    "Rs": (0.0, 1e3, False, False, "solar radii"),
    "Ms": (0.0, 1e3, False, False, "solar masses"),
    "Ts": (2000.0, 50000.0, True, True, "K"),
    "Mp": (0.0, 1e5, True, False, "Earth masses"),
    "e": (0.0, 1.0, True, False, "none, an eccentricity"),
    "P": (0.05, 1e4, True, True, "days"),
    "sma": (1.5, 1e4, False, False, "stellar radii (a/Rs)"),
    "i": (0.0, 180.0, True, True, "degrees"),
}
#: Solar radii per astronomical unit (sma in stellar radii = sma in AU * RSUN_PER_AU / Rs).
RSUN_PER_AU = 215.03
WL_COLUMNS: tuple[str, ...] = tuple(f"wl_{k}" for k in range(1, N_WAVELENGTHS + 1))


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV table or raise a DataError naming it and what it should hold."""
    if not path.is_file():
        raise DataError(f"missing {what} file {path}", f"restore {path.name} from the competition data")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {what} file {path}: {exc}", "write it as a comma-separated CSV") from exc


def _require_columns(df: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {missing[:5]}{'...' if len(missing) > 5 else ''} "
            f"({len(df.columns)} columns found)",
            f"write {path.name} with the columns {list(columns[:3])}... of the competition format",
        )


def _require_unique_ids(df: pd.DataFrame, path: Path) -> None:
    """Raise a DataError naming the first planet_id that appears on more than one row."""
    repeated = df["planet_id"][df["planet_id"].duplicated(keep=False)]
    if not repeated.empty:
        first = repeated.iloc[0]
        rows = [int(i) + 2 for i in repeated.index[repeated == first][:5]]  # 1-based, after the header
        raise DataError(
            f"{path}: planet_id {first} appears on {int((repeated == first).sum())} rows (lines {rows}); "
            f"{repeated.nunique()} planet id(s) are repeated",
            f"keep one row per planet in {path.name}",
        )


def read_labels(layout: ArielLayout) -> pd.DataFrame:
    """The training labels.

    Returns:
        A float64 frame indexed by ``planet_id`` (int) with columns ``wl_1..wl_283``: transit
        depths (Rp/Rs)^2 as fractions of the stellar flux.
    """
    path = layout.labels
    df = read_csv(path, "labels")
    if df.shape[1] != N_WAVELENGTHS + 1:
        raise DataError(
            f"labels file {path} has {df.shape[1]} columns, expected planet_id + {N_WAVELENGTHS} depths",
            f"write {path.name} with columns planet_id, wl_1..wl_{N_WAVELENGTHS}",
        )
    _require_columns(df, path, ("planet_id", *WL_COLUMNS))
    _require_unique_ids(df, path)
    df = df.set_index(df["planet_id"].astype(np.int64)).drop(columns="planet_id")
    values = df.to_numpy(np.float64)
    if not np.isfinite(values).all():
        bad = df.index[~np.isfinite(values).all(axis=1)][0]
        raise DataError(f"labels file {path}: planet {bad} has non-finite depths", "fix or drop that row")
    return df


def _range_text(column: str) -> str:
    lo, hi, lo_in, hi_in, unit = STAR_RANGES[column]
    return f"{lo:g} {'<=' if lo_in else '<'} {column} {'<=' if hi_in else '<'} {hi:g} ({unit})"


def _check_star_values(df: pd.DataFrame, path: Path) -> None:
    """Raise a DataError naming the file, the first planet, column and value outside :data:`STAR_RANGES`."""
    for column in STAR_COLUMNS:
        values = pd.to_numeric(df[column], errors="coerce").to_numpy(np.float64)
        lo, hi, lo_in, hi_in, unit = STAR_RANGES[column]
        with np.errstate(invalid="ignore"):
            inside = (values >= lo if lo_in else values > lo) & (values <= hi if hi_in else values < hi)
        bad = np.flatnonzero(~inside)  # NaN, inf and text fail both comparisons
        if not len(bad):
            continue
        row = int(bad[0])
        pid, raw = df["planet_id"].iloc[row], df[column].iloc[row]
        shown = repr(float(raw)) if isinstance(raw, (int, float, np.number)) else repr(raw)
        where = f"{path}: planet {pid} (line {row + 2}) has {column}={shown}"
        count = f"{len(bad)} row(s) of {len(df)} are outside it"
        if not np.isfinite(values[row]):
            raise DataError(
                f"{where}, not a finite number; {count}",
                f"give every planet a number for {column} in {path.name} (unit: {unit})",
            )
        if column == "sma" and 0 < values[row] <= lo:
            rs = pd.to_numeric(df["Rs"], errors="coerce").to_numpy(np.float64)[row]
            example = f" (here {values[row]:g} * {RSUN_PER_AU} / {rs:g} = {values[row] * RSUN_PER_AU / rs:.4g})"
            raise DataError(
                f"{where}: a semi-major axis of at most {lo:g} stellar radii puts the planet inside its star; "
                f"it looks like AU, not stellar radii; {count}",
                f"write sma in stellar radii: sma_rs = sma_au * {RSUN_PER_AU} / Rs{example if rs > 0 else ''}",
            )
        raise DataError(
            f"{where}, outside the plausible range {_range_text(column)}; {count}",
            f"check the unit of {column} in {path.name} (the competition's: {unit}) and that row's values",
        )


def read_star_info(layout: ArielLayout, split: str) -> pd.DataFrame | None:
    """Stellar and orbital parameters, indexed by planet_id; None where the edition has none.

    Columns, in the units of the competition's data description: Rs (solar radii), Ms (solar
    masses), Ts (K), Mp (Earth masses), e, P (days), sma (semi-major axis in stellar radii, a/Rs),
    i (degrees). Every value must be finite and within the loose ranges of :data:`STAR_RANGES`
    (orders of magnitude: a semi-major axis in AU, such as 0.04, is refused).

    Raises:
        DataError: The file is missing or unreadable, lacks a column, repeats a planet, or holds a
            value outside its range (naming the file, planet, column and value).
    """
    path = layout.star_info(split)
    if not path.is_file() and not layout.edition.has_star_info:
        return None
    df = read_csv(path, "star info")
    _require_columns(df, path, ("planet_id", *STAR_COLUMNS))
    _require_unique_ids(df, path)
    _check_star_values(df, path)
    return df.set_index(df["planet_id"].astype(np.int64)).drop(columns="planet_id")


@dataclass(frozen=True)
class AdcTable:
    """ADC settings: physical signal = raw / gain + offset (electrons).

    Attributes:
        path: The table's file (for error messages).
        frame: One row for all planets, or one row per planet indexed by planet_id.
        per_planet: Whether rows are per planet.
    """

    path: Path
    frame: pd.DataFrame
    per_planet: bool

    def gain_offset(self, planet_id: int, instrument: str) -> tuple[float, float]:
        """The (gain in ADU per electron, offset in electrons) of one planet and instrument."""
        if self.per_planet:
            if planet_id not in self.frame.index:
                raise DataError(
                    f"ADC table {self.path} has no row for planet {planet_id}",
                    f"add planet {planet_id} to {self.path.name}",
                )
            row = self.frame.loc[planet_id]
        else:
            row = self.frame.iloc[0]
        gain, offset = float(row[f"{instrument}_adc_gain"]), float(row[f"{instrument}_adc_offset"])
        if not np.isfinite(gain) or gain == 0.0 or not np.isfinite(offset):
            raise DataError(
                f"planet {planet_id}: {self.path} field {instrument}_adc_gain={gain}, "
                f"{instrument}_adc_offset={offset}; the gain must be finite and non-zero",
                f"restore the ADC values of {instrument} in {self.path.name}",
            )
        return gain, offset


def read_adc(layout: ArielLayout, split: str) -> AdcTable:
    """The ADC table of ``split`` (shared by all planets in 2025, per planet in 2024)."""
    path = layout.adc(split)
    df = read_csv(path, "ADC")
    columns = tuple(f"{i}_adc_{k}" for i in INSTRUMENTS for k in ("offset", "gain"))
    _require_columns(df, path, columns)
    per_planet = layout.edition.per_planet_adc
    if per_planet:
        _require_columns(df, path, ("planet_id",))
        df = df.set_index(df["planet_id"].astype(np.int64))
    elif df.empty:
        raise DataError(f"ADC table {path} has no rows", "restore its single row of gains and offsets")
    return AdcTable(path, df, per_planet)


@dataclass(frozen=True)
class AxisInfo:
    """Time and wavelength axes shared by every planet.

    Attributes:
        times_h: Per instrument, the time of each read (hours), shape (frames,).
        integration_s: Per instrument, the time since the previous read (seconds), shape (frames,),
            where ``axis_info`` lists it (AIRS-CH0); instruments without it are absent.
        airs_wavelength_um: Wavelength of each AIRS-CH0 column (microns), shape (356,).
    """

    times_h: dict[str, np.ndarray]
    integration_s: dict[str, np.ndarray]
    airs_wavelength_um: np.ndarray


def read_axis_info(layout: ArielLayout) -> AxisInfo:
    """Read ``axis_info.parquet`` (columns of unequal length, NaN-padded)."""
    path = layout.axis_info
    if not path.is_file():
        raise DataError(f"missing axis info file {path}", "restore axis_info.parquet from the competition data")
    table = pq.read_table(path)
    names = (f"{AIRS}-axis0-h", f"{FGS1}-axis0-h", f"{AIRS}-integration_time", f"{AIRS}-axis2-um")
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DataError(f"axis info file {path} lacks column(s) {missing}", "restore the competition file")

    def column(name: str) -> np.ndarray:
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        return values[~np.isnan(values)]

    return AxisInfo(
        times_h={AIRS: column(names[0]), FGS1: column(names[1])},
        integration_s={AIRS: column(names[2])},
        airs_wavelength_um=column(names[3]),
    )


def split_planet_ids(layout: ArielLayout, split: str, labels: pd.DataFrame | None = None) -> list[int]:
    """The planet ids of ``split``, each checked to have a folder on disk.

    Train: the labels' planets. Test: those of ``sample_submission.csv`` if present, else the
    numeric folders under ``test/``.

    Args:
        layout: The dataset's paths.
        split: ``"train"`` or ``"test"``.
        labels: The training labels (required for ``"train"``).

    Returns:
        Planet ids in file order.
    """
    if split == "train":
        listing, ids = layout.labels, [int(p) for p in labels.index]
    elif layout.sample_submission.is_file():
        listing = layout.sample_submission
        ids = [int(p) for p in read_csv(listing, "sample submission")["planet_id"]]
    else:
        folder = layout.root / split
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    for pid in ids:
        if not layout.planet_dir(split, pid).is_dir():
            raise DataError(
                f"planet {pid} is listed in {listing} but its folder {layout.planet_dir(split, pid)} does not exist",
                f"restore the folder or remove planet {pid} from {listing.name}",
            )
    return ids
