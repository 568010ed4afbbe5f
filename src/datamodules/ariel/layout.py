"""Where the Ariel Data Challenge files live, for the 2025 naming and (by a switch) the 2024 one.

2025 edition (``edition="2025"``)::

    <root>/train.csv                          planet_id, wl_1..wl_283 (true depths, fraction)
    <root>/{train,test}_star_info.csv         planet_id, Rs, Ms, Ts, Mp, e, P, sma, i
    <root>/adc_info.csv                       FGS1_adc_offset, FGS1_adc_gain, AIRS-CH0_adc_... (1 row)
    <root>/axis_info.parquet                  AIRS-CH0-axis0-h, AIRS-CH0-axis2-um,
                                              AIRS-CH0-integration_time, FGS1-axis0-h
    <root>/wavelengths.csv                    wl_1..wl_283 (microns)
    <root>/sample_submission.csv              planet_id, wl_1..wl_283, sigma_1..sigma_283
    <root>/{train,test}/<planet_id>/FGS1_signal_<visit>.parquet          rows = 32x32 frames
    <root>/{train,test}/<planet_id>/AIRS-CH0_signal_<visit>.parquet      rows = 32x356 frames
    <root>/{train,test}/<planet_id>/<instrument>_calibration_<visit>/{dark,dead,flat,linear_corr,read}.parquet

2024 edition (``edition="2024"``): no ``_<visit>`` suffix, labels in ``train_labels.csv`` and one
ADC row per planet in ``{train,test}_adc_info.csv`` (planet_id, ..., star).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.core.errors import ConfigError

FGS1 = "FGS1"
AIRS = "AIRS-CH0"
INSTRUMENTS: tuple[str, ...] = (FGS1, AIRS)
#: Frame geometry (rows, columns) of one parquet row, per instrument: a format fact, not a setting.
FRAME_SHAPES: dict[str, tuple[int, int]] = {FGS1: (32, 32), AIRS: (32, 356)}
CALIBRATION_NAMES: tuple[str, ...] = ("dark", "dead", "flat", "linear_corr", "read")
#: Number of polynomial coefficients per pixel in ``linear_corr`` (constant term first).
LINEAR_CORR_TERMS = 6
N_WAVELENGTHS = 283
SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class Edition:
    """File-naming rules of one competition edition.

    Attributes:
        name: ``"2025"`` or ``"2024"``.
        visit_suffix: Whether signal and calibration names end in ``_<visit>``.
        labels_file: File name of the training labels.
        adc_file: File name of the ADC table; ``{split}`` is replaced by the split.
        per_planet_adc: Whether the ADC table has one row per planet (else one row for all).
        has_star_info: Whether ``{split}_star_info.csv`` files are part of the edition.
    """

    name: str
    visit_suffix: bool
    labels_file: str
    adc_file: str
    per_planet_adc: bool
    has_star_info: bool


EDITIONS: dict[str, Edition] = {
    "2025": Edition("2025", True, "train.csv", "adc_info.csv", False, True),
    "2024": Edition("2024", False, "train_labels.csv", "{split}_adc_info.csv", True, False),
}


def get_edition(name: str | int) -> Edition:
    """The naming rules of ``name``, or a ConfigError naming ``data.edition``."""
    key = str(name)
    if key not in EDITIONS:
        raise ConfigError(f"data.edition={name!r} is not known", f"use one of {sorted(EDITIONS)}")
    return EDITIONS[key]


@dataclass(frozen=True)
class ArielLayout:
    """Paths of one Ariel dataset folder.

    Args:
        root: The dataset folder (holding ``train/``, ``test/`` and the CSV tables).
        edition: The file-naming rules (``get_edition("2025")`` by default).
    """

    root: Path
    edition: Edition = EDITIONS["2025"]

    def _suffix(self, visit: int) -> str:
        return f"_{visit}" if self.edition.visit_suffix else ""

    def planet_dir(self, split: str, planet_id: int) -> Path:
        """Folder of one planet's raw files."""
        return self.root / split / str(planet_id)

    def signal(self, split: str, planet_id: int, instrument: str, visit: int = 0) -> Path:
        """Raw detector frames of one instrument and visit (one flattened frame per row)."""
        return self.planet_dir(split, planet_id) / f"{instrument}_signal{self._suffix(visit)}.parquet"

    def calibration_dir(self, split: str, planet_id: int, instrument: str, visit: int = 0) -> Path:
        """Folder of one instrument's calibration maps for a visit."""
        return self.planet_dir(split, planet_id) / f"{instrument}_calibration{self._suffix(visit)}"

    def calibration(self, split: str, planet_id: int, instrument: str, name: str, visit: int = 0) -> Path:
        """One calibration map (``dark``, ``dead``, ``flat``, ``linear_corr`` or ``read``)."""
        return self.calibration_dir(split, planet_id, instrument, visit) / f"{name}.parquet"

    def planet_files(self, split: str, planet_id: int, visit: int = 0) -> list[Path]:
        """Every raw file of one planet visit, in a stable order (signals, then calibration maps)."""
        files = [self.signal(split, planet_id, inst, visit) for inst in INSTRUMENTS]
        for inst in INSTRUMENTS:
            files += [self.calibration(split, planet_id, inst, n, visit) for n in CALIBRATION_NAMES]
        return files

    @property
    def labels(self) -> Path:
        """Training labels: planet_id + 283 transit depths (fraction of stellar flux)."""
        return self.root / self.edition.labels_file

    def adc(self, split: str) -> Path:
        """ADC gain/offset table."""
        return self.root / self.edition.adc_file.format(split=split)

    def star_info(self, split: str) -> Path:
        """Stellar and orbital parameters per planet."""
        return self.root / f"{split}_star_info.csv"

    @property
    def axis_info(self) -> Path:
        """Time axes (hours), AIRS wavelengths (microns) and AIRS integration times (seconds)."""
        return self.root / "axis_info.parquet"

    @property
    def wavelengths(self) -> Path:
        """The 283 label wavelengths (microns)."""
        return self.root / "wavelengths.csv"

    @property
    def sample_submission(self) -> Path:
        """Submission template listing the test planets."""
        return self.root / "sample_submission.csv"

    def shared_files(self, split: str) -> list[Path]:
        """Tables every planet of ``split`` depends on (ADC and axis info), those that exist."""
        return [p for p in (self.adc(split), self.axis_info) if p.is_file()]
