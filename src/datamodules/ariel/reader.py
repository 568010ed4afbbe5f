"""Read one planet visit's raw frames and calibration maps, checked, into ``RawExposure`` values.

Every check names the planet and the file: a missing calibration map, a wrong column count, NaN
or missing values in a signal, a frame count that disagrees with ``axis_info``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from src.core.errors import DataError
from src.datamodules.ariel.detector import raw_variance
from src.datamodules.ariel.exposure import Detector, Exposure, Geometry
from src.datamodules.ariel.layout import CALIBRATION_NAMES, FRAME_SHAPES, LINEAR_CORR_TERMS, ArielLayout
from src.datamodules.ariel.settings import InstrumentSettings
from src.datamodules.ariel.tables import AdcTable, AxisInfo


def _read_table(path: Path, planet_id: int, what: str) -> pa.Table:
    if not path.is_file():
        raise DataError(
            f"planet {planet_id}: missing {what} file {path}",
            f"restore {path.name} in {path.parent} from the competition data (or re-run the simulator)",
        )
    try:
        return pq.ParquetFile(path).read(use_threads=False)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(
            f"planet {planet_id}: cannot read {what} file {path}: {exc}",
            f"restore {path.name} in {path.parent} from the competition data: it is truncated or not parquet",
        ) from exc


def _is_numeric(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)


def _require_numeric(table: pa.Table, path: Path, planet_id: int, what: str) -> None:
    """Raise a DataError naming the first column whose values are not numbers (e.g. strings)."""
    bad = [
        (name, col.type)
        for name, col in zip(table.column_names, table.columns, strict=True)
        if not _is_numeric(col.type)
    ]
    if bad:
        name, dtype = bad[0]
        raise DataError(
            f"planet {planet_id}: {what} file {path} column {name!r} holds {dtype} values "
            f"({len(bad)} non-numeric column(s)); expected integers or floats",
            f"restore {path.name} from the competition data: it was rewritten with the wrong dtype",
        )


def read_matrix(path: Path, planet_id: int, what: str, shape: tuple[int, int]) -> np.ndarray:
    """Read a parquet table as a 2-D array of ``shape`` (rows, columns), checked.

    Args:
        path: The parquet file.
        planet_id: The planet (for error messages).
        what: What the file holds (for error messages).
        shape: Expected (rows, columns); rows < 0 accepts any row count.

    Returns:
        The values with the file's dtype, shape (rows, columns).
    """
    table = _read_table(path, planet_id, what)
    if table.num_rows == 0:
        raise DataError(f"planet {planet_id}: {what} file {path} has no rows", f"restore {path.name}")
    if table.num_columns != shape[1] or (shape[0] >= 0 and table.num_rows != shape[0]):
        want = f"{shape[1]} columns" + (f" and {shape[0]} rows" if shape[0] >= 0 else "")
        raise DataError(
            f"planet {planet_id}: {what} file {path} has {table.num_columns} columns and "
            f"{table.num_rows} rows, expected {want}",
            f"restore {path.name}: it is truncated or belongs to another instrument",
        )
    _require_numeric(table, path, planet_id, what)
    nulls = sum(col.null_count for col in table.columns)
    if nulls:
        raise DataError(
            f"planet {planet_id}: {what} file {path} has {nulls} missing values",
            f"restore {path.name} from the competition data; raw frames and calibration maps have no gaps",
        )
    values = np.column_stack([col.to_numpy() for col in table.columns])
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise DataError(
            f"planet {planet_id}: {what} file {path} holds {bad} NaN or infinite values",
            f"restore {path.name} from the competition data; raw frames and calibration maps must be finite",
        )
    return values


def read_frames(path: Path, planet_id: int, instrument: str) -> np.ndarray:
    """Raw frames of one instrument (ADU), shape (frames, rows, cols), from one row per frame."""
    rows, cols = FRAME_SHAPES[instrument]
    values = read_matrix(path, planet_id, f"{instrument} signal", (-1, rows * cols))
    return values.reshape(-1, rows, cols)


def read_detector(
    layout: ArielLayout, split: str, planet_id: int, instrument: str, visit: int, adc: AdcTable
) -> Detector:
    """The calibration maps and ADC settings of one instrument for a planet visit."""
    rows, cols = FRAME_SHAPES[instrument]
    maps = {}
    for name in CALIBRATION_NAMES:
        path = layout.calibration(split, planet_id, instrument, name, visit)
        n_rows = rows * LINEAR_CORR_TERMS if name == "linear_corr" else rows
        maps[name] = read_matrix(path, planet_id, f"{instrument} {name} calibration", (n_rows, cols))
    gain, offset = adc.gain_offset(planet_id, instrument)
    return Detector(
        dark=maps["dark"].astype(np.float32),
        dead=maps["dead"].astype(bool),
        flat=maps["flat"].astype(np.float32),
        linear_corr=maps["linear_corr"].astype(np.float64).reshape(LINEAR_CORR_TERMS, rows, cols),
        read_noise=maps["read"].astype(np.float32),
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
        raw = self.frames[start:stop].astype(np.float32)
        variance, read_variance = raw_variance(raw, self.detector)
        return Exposure(
            instrument=self.instrument,
            planet_id=self.planet_id,
            signal=raw,
            variance=variance,
            read_variance=read_variance,
            mask=np.zeros(raw.shape[1:], dtype=bool),
            times=self.times[start:stop],
            dt=self.dt[start:stop],
            detector=self.detector,
            geometry=self.geometry,
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
    """Read one instrument of one planet visit: frames, times, calibration maps, geometry."""
    path = layout.signal(split, planet_id, settings.name, visit)
    frames = read_frames(path, planet_id, settings.name)
    detector = read_detector(layout, split, planet_id, settings.name, visit, adc)
    times, dt = exposure_times(settings, axis, len(frames), planet_id, path)
    return RawExposure(settings.name, planet_id, frames, times, dt, detector, settings.geometry())
