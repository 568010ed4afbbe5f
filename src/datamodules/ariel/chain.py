"""The calibration chain: steps built from config, run over a planet's frames in chunks.

``data.calibration.steps`` is a list of registry names or ``{name: ..., <param>: ...}`` dicts,
applied in order to each instrument. ``chain_hash`` keys the on-disk cache, so any change to the
steps, their parameters or the instrument settings recomputes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from src.core.errors import ConfigError
from src.datamodules.ariel.exposure import Exposure
from src.datamodules.ariel.layout import AIRS, FGS1, ArielLayout
from src.datamodules.ariel.reader import RawExposure, read_raw
from src.datamodules.ariel.settings import InstrumentSettings
from src.datamodules.ariel.steps import STEPS, BinStep, Step
from src.datamodules.ariel.tables import AdcTable, AxisInfo

if TYPE_CHECKING:
    from src.datamodules.ariel.torch_path import TorchFrontend

DEFAULT_STEPS: tuple[str, ...] = ("adc", "mask", "linearity", "dark", "cds", "bin", "flat", "background", "extract")
#: Prefix of each instrument's arrays in a calibrated planet (``fgs1_flux``, ``airs_var``, ...).
ARRAY_PREFIX: dict[str, str] = {FGS1: "fgs1", AIRS: "airs"}
#: Bumped when the meaning of cached arrays changes, so old caches are not reused.
CACHE_FORMAT = 2


def build_step(spec: str | Mapping[str, Any], index: int) -> Step:
    """One step from its config entry (a registry name or a dict with ``name`` and parameters)."""
    where = f"data.calibration.steps[{index}]"
    params = {} if isinstance(spec, str) else dict(spec)
    name = spec if isinstance(spec, str) else params.pop("name", None)
    if name not in STEPS:
        raise ConfigError(f"{where}: unknown calibration step {name!r}", f"use one of {sorted(STEPS)}")
    fields = {f.name for f in dataclasses.fields(STEPS[name])}
    unknown = set(params) - fields
    if unknown:
        raise ConfigError(
            f"{where}: step {name!r} has no parameter(s) {sorted(unknown)}",
            f"its parameters are {sorted(fields) or 'none'}",
        )
    return STEPS[name](**params)


class CalibrationChain:
    """An ordered list of calibration steps applied to one instrument's exposure.

    Args:
        steps: The steps, in order.
    """

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)

    @classmethod
    def from_config(cls, specs: Sequence[str | Mapping[str, Any]] | None = None) -> CalibrationChain:
        """Build from ``data.calibration.steps`` (the default chain when None)."""
        specs = DEFAULT_STEPS if specs is None else specs
        if isinstance(specs, str | bytes) or not isinstance(specs, Sequence):
            raise ConfigError(f"data.calibration.steps={specs!r} is not a list", "write a list of step names")
        return cls([build_step(spec, i) for i, spec in enumerate(specs)])

    def config(self) -> list[dict[str, Any]]:
        """The steps as config dicts (name plus parameters)."""
        return [step.config() for step in self.steps]

    def __call__(self, exp: Exposure) -> Exposure:
        for step in self.steps:
            exp = step(exp)
        return exp

    def chunk_align(self, raw: RawExposure) -> int:
        """Reads per chunk must be a multiple of this: a read pair times the largest time bin."""
        sizes = [s.size or raw.geometry.bin_size for s in self.steps if isinstance(s, BinStep)]
        return 2 * max(sizes, default=1)

    def run(self, raw: RawExposure, chunk_frames: int | None = None, frontend: TorchFrontend | None = None) -> Exposure:
        """Calibrate ``raw`` in chunks of about ``chunk_frames`` reads (all at once when None).

        Chunks bound the memory of full-size planets and keep the arrays in cache. Each chunk's
        extraction profile comes from that chunk's own mean frame. With a ``frontend`` (the
        torch path, see :mod:`~src.datamodules.ariel.torch_path`) it runs the chain's leading
        steps and the remaining steps run here.
        """
        n, align = len(raw.frames), self.chunk_align(raw)
        size = n if not chunk_frames else max(align, int(chunk_frames) // align * align)
        starts = list(range(0, n, size))
        if len(starts) > 1 and n - starts[-1] < align:
            starts.pop()  # fold a short tail into the previous chunk rather than lose it
        bounds = [*starts[1:], n]
        if frontend is None:
            parts = [self(raw.exposure(a, b)) for a, b in zip(starts, bounds, strict=True)]
        else:
            rest = CalibrationChain(self.steps[frontend.n_steps :])
            parts = [rest(frontend(raw, a, b)) for a, b in zip(starts, bounds, strict=True)]
        return parts[0] if len(parts) == 1 else _concat(parts)


def _concat(parts: list[Exposure]) -> Exposure:
    shared = [p.shared_variance for p in parts]
    return dataclasses.replace(
        parts[0],
        signal=np.concatenate([p.signal for p in parts]),
        variance=np.concatenate([p.variance for p in parts]),
        times=np.concatenate([p.times for p in parts]),
        dt=np.concatenate([p.dt for p in parts]),
        shared_variance=None if shared[0] is None else np.concatenate(shared),
    )


def chain_hash(chain: CalibrationChain, settings: Mapping[str, InstrumentSettings], **extra: Any) -> str:
    """16-hex-digit hash of everything that shapes the calibrated output.

    Args:
        chain: The calibration steps.
        settings: Per-instrument settings.
        **extra: Anything else that changes the output (visit, chunk size, ...).

    Returns:
        The hash (stable across processes and runs).
    """
    payload = {
        "format": CACHE_FORMAT,
        "steps": chain.config(),
        "instruments": {k: v.as_dict() for k, v in sorted(settings.items())},
        **extra,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def calibrate_planet(
    layout: ArielLayout,
    split: str,
    planet_id: int,
    visit: int,
    chain: CalibrationChain,
    settings: Mapping[str, InstrumentSettings],
    adc: AdcTable,
    axis: AxisInfo,
    chunk_frames: int | None = None,
    frontend: TorchFrontend | None = None,
) -> dict[str, np.ndarray]:
    """Read and calibrate both instruments of one planet visit (``frontend``: see ``CalibrationChain.run``).

    Returns:
        float32 arrays ``fgs1_flux``/``fgs1_var`` (time,), ``airs_flux``/``airs_var``
        (time, wavelength) in electrons per read difference (and electrons^2), and
        ``fgs1_time``/``airs_time`` (time,) in hours.
    """
    out: dict[str, np.ndarray] = {}
    for name, inst in settings.items():
        raw = read_raw(layout, split, planet_id, visit, inst, adc, axis)
        exp = chain.run(raw, chunk_frames, frontend)
        if not exp.extracted:
            raise ConfigError(
                "data.calibration.steps does not end in light curves ('extract' is missing)",
                "add 'extract' to data.calibration.steps",
            )
        flux, var = exp.signal, exp.variance
        if inst.mode == "white":
            flux, var = flux[:, 0], var[:, 0]
        key = ARRAY_PREFIX[name]
        out[f"{key}_flux"] = flux.astype(np.float32)
        out[f"{key}_var"] = var.astype(np.float32)
        out[f"{key}_time"] = exp.times.astype(np.float32)
    return out
