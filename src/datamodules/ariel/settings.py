"""Per-instrument calibration settings (``data.calibration.instruments.<name>``) and their geometry.

A region (aperture or background) is one of::

    {rows: [start, stop]}                  rows start..stop-1, all columns
    {rows: [[0, 6], [26, 32]]}             a union of row ranges
    {radius: 10}                           pixels within 10 px of the centre
    {min_radius: 12}                       pixels farther than 12 px from the centre
    (optional centre: [row, col]; default: the frame centre)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from src.core.errors import ConfigError
from src.datamodules.ariel.exposure import BoolArray, Geometry
from src.datamodules.ariel.layout import AIRS, FGS1, FRAME_SHAPES, INSTRUMENTS

MODES = ("spectrum", "white")

#: Defaults matching the competition's usual choices (AIRS columns 39:321 reversed = wl_2..wl_283).
DEFAULT_INSTRUMENTS: dict[str, dict[str, Any]] = {
    FGS1: {
        "mode": "white",
        "bin_size": 24,
        "integration_s": [0.1, 0.1],
        "aperture": {"radius": 10},
        "background": {"min_radius": 12},
    },
    AIRS: {
        "mode": "spectrum",
        "bin_size": 2,
        "integration_s": None,
        "aperture": {"rows": [8, 24]},
        "background": {"rows": [[0, 6], [26, 32]]},
        "columns": [39, 321],
        "reverse": True,
    },
}


def region_mask(spec: Mapping[str, Any], shape: tuple[int, int], where: str) -> BoolArray:
    """Boolean pixel mask (True = in the region) of a region spec.

    Args:
        spec: ``{rows: ...}``, ``{radius: r}`` or ``{min_radius: r}``, optionally ``centre``.
        shape: Frame shape (rows, cols).
        where: Config path for error messages.

    Returns:
        Boolean array of ``shape``.
    """
    keys = set(spec) - {"centre"}
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    if keys == {"rows"}:
        ranges = spec["rows"]
        ranges = [ranges] if ranges and np.isscalar(ranges[0]) else ranges
        out = np.zeros(shape, dtype=bool)
        for rng in ranges:
            if len(rng) != 2 or not 0 <= int(rng[0]) < int(rng[1]) <= shape[0]:
                raise ConfigError(f"{where}.rows has range {list(rng)}", f"use [start, stop] within 0..{shape[0]}")
            out[int(rng[0]) : int(rng[1])] = True
        return out
    centre = spec.get("centre", [(shape[0] - 1) / 2, (shape[1] - 1) / 2])
    dist = np.hypot(rr - float(centre[0]), cc - float(centre[1]))
    if keys == {"radius"}:
        return dist <= float(spec["radius"])
    if keys == {"min_radius"}:
        return dist > float(spec["min_radius"])
    raise ConfigError(f"{where}={dict(spec)} is not a region", "use {rows: [a, b]}, {radius: r} or {min_radius: r}")


@dataclass(frozen=True)
class InstrumentSettings:
    """Calibration settings of one instrument.

    Attributes:
        name: ``"FGS1"`` or ``"AIRS-CH0"``.
        mode: ``"white"`` (one light curve) or ``"spectrum"`` (one per kept column).
        bin_size: Read differences averaged per time bin.
        integration_s: Seconds from reset to the first read and from the first to the second
            read; None to take them from ``axis_info`` (``<instrument>-integration_time``).
        aperture: Region summed by the extraction.
        background: Off-source region the background is estimated from.
        columns: ``[start, stop)`` detector columns kept in ``spectrum`` mode.
        reverse: Whether the kept columns are reversed (ascending wavelength).
    """

    name: str
    mode: str
    bin_size: int
    integration_s: tuple[float, float] | None
    aperture: dict[str, Any]
    background: dict[str, Any]
    columns: tuple[int, int] | None = None
    reverse: bool = False

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any] | None) -> InstrumentSettings:
        """Settings from ``data.calibration.instruments.<name>`` over the defaults."""
        where = f"data.calibration.instruments.{name}"
        if name not in INSTRUMENTS:
            raise ConfigError(f"{where}: unknown instrument {name!r}", f"use one of {list(INSTRUMENTS)}")
        merged = {**DEFAULT_INSTRUMENTS[name], **dict(cfg or {})}
        unknown = set(merged) - set(DEFAULT_INSTRUMENTS[AIRS]) - set(DEFAULT_INSTRUMENTS[FGS1])
        if unknown:
            known = sorted(DEFAULT_INSTRUMENTS[AIRS])
            raise ConfigError(f"{where} has unknown key(s) {sorted(unknown)}", f"use {known}")
        if merged["mode"] not in MODES:
            raise ConfigError(f"{where}.mode={merged['mode']!r}", f"use one of {list(MODES)}")
        if int(merged["bin_size"]) < 1:
            raise ConfigError(f"{where}.bin_size={merged['bin_size']}", "use a positive number of frames")
        it = merged.get("integration_s")
        cols = merged.get("columns")
        settings = cls(
            name=name,
            mode=str(merged["mode"]),
            bin_size=int(merged["bin_size"]),
            integration_s=None if it is None else (float(it[0]), float(it[1])),
            aperture=dict(merged["aperture"]),
            background=dict(merged["background"]),
            columns=None if cols is None else (int(cols[0]), int(cols[1])),
            reverse=bool(merged.get("reverse", False)),
        )
        settings.geometry()  # validate the regions now, not at the first planet
        return settings

    def geometry(self) -> Geometry:
        """The detector geometry these settings describe."""
        where = f"data.calibration.instruments.{self.name}"
        shape = FRAME_SHAPES[self.name]
        aperture = region_mask(self.aperture, shape, f"{where}.aperture")
        background = region_mask(self.background, shape, f"{where}.background")
        if (aperture & background).any() or not aperture.any() or not background.any():
            raise ConfigError(
                f"{where}: aperture and background must be non-empty and disjoint",
                "move the background rows/radius off the aperture",
            )
        columns = slice(None)
        if self.columns is not None:
            if not 0 <= self.columns[0] < self.columns[1] <= shape[1]:
                raise ConfigError(f"{where}.columns={list(self.columns)}", f"use [start, stop] within 0..{shape[1]}")
            columns = slice(*self.columns)
        return Geometry(aperture, background, self.mode, columns, self.reverse, self.bin_size)

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form (hashed into the cache key)."""
        return {
            "name": self.name,
            "mode": self.mode,
            "bin_size": self.bin_size,
            "integration_s": None if self.integration_s is None else list(self.integration_s),
            "aperture": self.aperture,
            "background": self.background,
            "columns": None if self.columns is None else list(self.columns),
            "reverse": self.reverse,
        }


def instrument_settings(cfg: Mapping[str, Any] | None) -> dict[str, InstrumentSettings]:
    """Settings of every instrument from ``data.calibration.instruments``."""
    cfg = dict(cfg or {})
    unknown = set(cfg) - set(INSTRUMENTS)
    if unknown:
        raise ConfigError(
            f"data.calibration.instruments has unknown instrument(s) {sorted(unknown)}",
            f"use {list(INSTRUMENTS)}",
        )
    return {name: InstrumentSettings.from_config(name, cfg.get(name)) for name in INSTRUMENTS}
