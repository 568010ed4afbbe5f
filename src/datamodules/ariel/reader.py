"""Read one planet visit's raw frames and calibration maps, checked, into ``RawExposure`` values.

Every check names the planet and the file: a missing calibration map, a wrong column count, NaN
or missing values in a signal, a frame count that disagrees with ``axis_info``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from src.core.errors import DataError
from src.datamodules.ariel.detector import linearize
from src.datamodules.ariel.exposure import Detector, Exposure, Geometry
from src.datamodules.ariel.layout import CALIBRATION_NAMES, FRAME_SHAPES, LINEAR_CORR_TERMS, ArielLayout
from src.datamodules.ariel.settings import InstrumentSettings
from src.datamodules.ariel.tables import AdcTable, AxisInfo


def _open_parquet(path: Path, planet_id: int, what: str) -> pq.ParquetFile:
    if not path.is_file():
        raise DataError(
            f"planet {planet_id}: missing {what} file {path}",
            f"restore {path.name} in {path.parent} from the competition data (or re-run the simulator)",
        )
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(path, planet_id, what, exc) from exc


def _unreadable(path: Path, planet_id: int, what: str, exc: Exception) -> DataError:
    return DataError(
        f"planet {planet_id}: cannot read {what} file {path}: {exc}",
        f"restore {path.name} in {path.parent} from the competition data: it is truncated or not parquet",
    )


def _is_numeric(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)


def _require_numeric(fields: Sequence[pa.Field], path: Path, planet_id: int, what: str) -> None:
    """Raise a DataError naming the first column whose values are not numbers (e.g. strings)."""
    bad = [(field.name, field.type) for field in fields if not _is_numeric(field.type)]
    if bad:
        name, dtype = bad[0]
        raise DataError(
            f"planet {planet_id}: {what} file {path} column {name!r} holds {dtype} values "
            f"({len(bad)} non-numeric column(s)); expected integers or floats",
            f"restore {path.name} from the competition data: it was rewritten with the wrong dtype",
        )


def read_matrix(
    path: Path, planet_id: int, what: str, shape: tuple[int, int], columns: Sequence[int] | None = None
) -> np.ndarray:
    """Read a parquet table as a 2-D array of ``shape`` (rows, columns), checked.

    The file is decoded one row group at a time straight into the output array (no table of the
    whole file, no pandas), and only ``columns`` are decoded when given: memory holds the result
    plus one row group.

    Args:
        path: The parquet file.
        planet_id: The planet (for error messages).
        what: What the file holds (for error messages).
        shape: Expected (rows, columns) of the file; rows < 0 accepts any row count.
        columns: Indices of the columns to read (all when None).

    Returns:
        The values with the file's dtype, shape (rows, len(columns) or columns).
    """
    pf = _open_parquet(path, planet_id, what)
    n_rows, n_cols = pf.metadata.num_rows, pf.metadata.num_columns
    if n_rows == 0:
        raise DataError(f"planet {planet_id}: {what} file {path} has no rows", f"restore {path.name}")
    if n_cols != shape[1] or (shape[0] >= 0 and n_rows != shape[0]):
        want = f"{shape[1]} columns" + (f" and {shape[0]} rows" if shape[0] >= 0 else "")
        raise DataError(
            f"planet {planet_id}: {what} file {path} has {n_cols} columns and {n_rows} rows, expected {want}",
            f"restore {path.name}: it is truncated or belongs to another instrument",
        )
    schema = pf.schema_arrow
    fields = list(schema) if columns is None else [schema.field(int(j)) for j in columns]
    _require_numeric(fields, path, planet_id, what)
    names = [field.name for field in fields]
    dtype = np.result_type(*{field.type.to_pandas_dtype() for field in fields})
    values = np.empty((n_rows, len(names)), dtype=dtype)
    row, nulls = 0, 0
    for group in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(group, columns=names, use_threads=False)
        except (OSError, pa.ArrowException) as exc:
            raise _unreadable(path, planet_id, what, exc) from exc
        nulls += sum(col.null_count for col in table.columns)
        if not nulls:
            _fill(values[row : row + table.num_rows], table.columns)
        row += table.num_rows
    if nulls:
        raise DataError(
            f"planet {planet_id}: {what} file {path} has {nulls} missing values",
            f"restore {path.name} from the competition data; raw frames and calibration maps have no gaps",
        )
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise DataError(
            f"planet {planet_id}: {what} file {path} holds {bad} NaN or infinite values",
            f"restore {path.name} from the competition data; raw frames and calibration maps must be finite",
        )
    return values


def _fill(block: np.ndarray, columns: Sequence[pa.ChunkedArray], width: int = 32) -> None:
    """Copy parquet columns into the columns of ``block`` (rows, columns), ``width`` at a time.

    One column at a time would write two bytes per cache line of a row-major frame and sweep the
    whole block once per column; a group of columns fills whole cache lines of each row.
    """
    for j in range(0, len(columns), width):
        group = columns[j : j + width]
        block[:, j : j + len(group)] = np.stack([col.to_numpy() for col in group], axis=1)


def read_frames(path: Path, planet_id: int, instrument: str, columns: tuple[int, int] | None = None) -> np.ndarray:
    """Raw frames of one instrument (ADU), shape (frames, rows, cols), from one row per frame.

    Args:
        path: The signal file.
        planet_id: The planet (for error messages).
        instrument: ``"FGS1"`` or ``"AIRS-CH0"``.
        columns: Only detector columns ``[start, stop)`` of every row are decoded (all when None).
    """
    rows, cols = FRAME_SHAPES[instrument]
    lo, hi = (0, cols) if columns is None else columns
    pixels = None if columns is None else (np.arange(rows)[:, None] * cols + np.arange(lo, hi)[None, :]).ravel()
    values = read_matrix(path, planet_id, f"{instrument} signal", (-1, rows * cols), pixels)
    return values.reshape(-1, rows, hi - lo)


def read_detector(
    layout: ArielLayout,
    split: str,
    planet_id: int,
    instrument: str,
    visit: int,
    adc: AdcTable,
    columns: tuple[int, int] | None = None,
) -> Detector:
    """The calibration maps and ADC settings of one instrument for a planet visit.

    Args:
        layout: The dataset's paths.
        split: ``"train"`` or ``"test"``.
        planet_id: The planet.
        instrument: ``"FGS1"`` or ``"AIRS-CH0"``.
        visit: The visit.
        adc: The split's ADC table.
        columns: Keep detector columns ``[start, stop)`` of every map (all when None), to match
            frames read with the same ``columns``.
    """
    rows, cols = FRAME_SHAPES[instrument]
    keep = slice(None) if columns is None else slice(*columns)
    maps = {}
    for name in CALIBRATION_NAMES:
        path = layout.calibration(split, planet_id, instrument, name, visit)
        n_rows = rows * LINEAR_CORR_TERMS if name == "linear_corr" else rows
        maps[name] = read_matrix(path, planet_id, f"{instrument} {name} calibration", (n_rows, cols))[:, keep]
    gain, offset = adc.gain_offset(planet_id, instrument)
    linear_corr = maps["linear_corr"].reshape(LINEAR_CORR_TERMS, rows, -1)
    return Detector(
        dark=np.ascontiguousarray(maps["dark"], dtype=np.float32),
        dead=np.ascontiguousarray(maps["dead"], dtype=bool),
        flat=np.ascontiguousarray(maps["flat"], dtype=np.float32),
        linear_corr=np.ascontiguousarray(linear_corr, dtype=np.float64),
        read_noise=np.ascontiguousarray(maps["read"], dtype=np.float32),
        gain=gain,
        offset=offset,
    )


def exposure_times(
    settings: InstrumentSettings, axis: AxisInfo, n_frames: int, planet_id: int, path: Path
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-read times (hours) and charge-collection times since reset (seconds).

    Reads come in pairs after each reset; the second read's exposure is the sum of both
    integration times (0.1 s + 4.5 s = 4.6 s for AIRS-CH0).
    """
    times = axis.times_h[settings.name]
    if settings.integration_s is not None:
        step = np.tile(np.asarray(settings.integration_s), n_frames // 2 + 1)[:n_frames]
    else:
        step = axis.integration_s.get(settings.name, np.empty(0))
    if len(times) != n_frames or len(step) != n_frames or n_frames % 2:
        raise DataError(
            f"planet {planet_id}: {path} has {n_frames} frames but axis_info lists {len(times)} times "
            f"and {len(step)} integration times (an even count of reads is expected)",
            "restore the signal file, or axis_info.parquet for this dataset",
        )
    dt = step.astype(np.float64).copy()
    dt[1::2] += dt[0::2]
    return times.astype(np.float64), dt


@dataclass(frozen=True)
class RawExposure:
    """One instrument's raw reads for a planet visit, not yet calibrated.

    Attributes:
        instrument: ``"FGS1"`` or ``"AIRS-CH0"``.
        planet_id: The planet.
        frames: Raw reads (ADU, uint16 in competition files), shape (frames, rows, cols).
        times: Read times (hours), shape (frames,).
        dt: Charge-collection time since reset (seconds), shape (frames,).
        detector: Calibration maps and ADC settings.
        geometry: Aperture, background and extraction settings.
    """

    instrument: str
    planet_id: int
    frames: np.ndarray
    times: npt.NDArray[np.float64]
    dt: npt.NDArray[np.float64]
    detector: Detector
    geometry: Geometry

    def exposure(self, start: int = 0, stop: int | None = None) -> Exposure:
        """Reads ``start:stop`` as an ``Exposure`` in ADU, with the detector model's variance."""
        variance, read_variance, linearized = linearize(self.frames[start:stop], self.detector)
        return Exposure(
            instrument=self.instrument,
            planet_id=self.planet_id,
            signal=linearized.adu,
            variance=variance,
            read_variance=read_variance,
            mask=np.zeros(self.frames.shape[1:], dtype=bool),
            times=self.times[start:stop],
            dt=self.dt[start:stop],
            detector=self.detector,
            geometry=self.geometry,
            linearized=linearized,
        )


def read_raw(
    layout: ArielLayout,
    split: str,
    planet_id: int,
    visit: int,
    settings: InstrumentSettings,
    adc: AdcTable,
    axis: AxisInfo,
) -> RawExposure:
    """Read one instrument of one planet visit: frames, times, calibration maps, geometry.

    Only what the chain uses is decoded: in ``spectrum`` mode with ``columns`` set (AIRS-CH0
    39:321), the kept columns plus :data:`COLUMN_MARGIN` on each side (the extraction profile
    interpolates masked pixels from neighbours up to two columns away), so the frames, maps and
    geometry are cut to those columns before anything else runs.
    """
    path = layout.signal(split, planet_id, settings.name, visit)
    crop = read_columns(settings)
    frames = read_frames(path, planet_id, settings.name, crop)
    detector = read_detector(layout, split, planet_id, settings.name, visit, adc, crop)
    times, dt = exposure_times(settings, axis, len(frames), planet_id, path)
    geometry = settings.geometry()
    if crop is not None:
        geometry = geometry.crop_columns(*crop)
    return RawExposure(settings.name, planet_id, frames, times, dt, detector, geometry)


#: Detector columns read on each side of the kept ones (see :func:`read_raw`).
COLUMN_MARGIN = 2


def read_columns(settings: InstrumentSettings) -> tuple[int, int] | None:
    """The detector columns ``[start, stop)`` the chain needs of an instrument (None: all)."""
    if settings.mode != "spectrum" or settings.columns is None:
        return None
    width = FRAME_SHAPES[settings.name][1]
    return max(0, settings.columns[0] - COLUMN_MARGIN), min(width, settings.columns[1] + COLUMN_MARGIN)
