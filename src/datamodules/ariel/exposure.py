"""The value every calibration step takes and returns: frames with their variance and context.

A step never mutates its input: it returns ``dataclasses.replace(exposure, ...)`` with new arrays,
so a chain can be re-run, reordered or truncated without hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from src.core.errors import ConfigError

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Detector:
    """Per-pixel calibration maps and ADC settings of one instrument for one planet visit.

    Attributes:
        dark: Dark current (electrons per second), shape (rows, cols).
        dead: Dead-pixel map (True = dead), shape (rows, cols).
        flat: Relative pixel response (dimensionless, ~1), shape (rows, cols).
        linear_corr: Polynomial mapping measured to linear charge (electrons), constant term first,
            shape (6, rows, cols).
        read_noise: Read-noise standard deviation per read (electrons), shape (rows, cols).
        gain: ADC gain (ADU per electron): electrons = raw / gain + offset.
        offset: ADC offset (electrons).
    """

    dark: FloatArray
    dead: BoolArray
    flat: FloatArray
    linear_corr: FloatArray
    read_noise: FloatArray
    gain: float
    offset: float


@dataclass(frozen=True)
class Geometry:
    """Where the light falls on the detector, and what the extraction returns.

    Attributes:
        aperture: Pixels summed into the light curve (True = in), shape (rows, cols).
        background: Off-source pixels the background is estimated from, shape (rows, cols).
        mode: ``"spectrum"``: one light curve per detector column (AIRS-CH0); ``"white"``: one
            light curve summed over the aperture (FGS1).
        columns: Detector columns kept by the extraction (``spectrum`` mode), as a slice.
        reverse: Whether the kept columns are reversed (AIRS-CH0 wavelength falls with column).
        bin_size: Frames averaged into one time bin by the ``bin`` step.
    """

    aperture: BoolArray
    background: BoolArray
    mode: str
    columns: slice = field(default_factory=lambda: slice(None))
    reverse: bool = False
    bin_size: int = 1

    def crop_columns(self, start: int, stop: int) -> Geometry:
        """The geometry of frames cut to detector columns ``start:stop`` (kept columns renumbered)."""
        lo, hi, _ = self.columns.indices(self.aperture.shape[1])
        return Geometry(
            aperture=self.aperture[:, start:stop],
            background=self.background[:, start:stop],
            mode=self.mode,
            columns=slice(lo - start, hi - start),
            reverse=self.reverse,
            bin_size=self.bin_size,
        )


@dataclass(frozen=True, eq=False)
class Linearized:
    """The ``adc`` and ``linearity`` steps' results, computed once with the raw variance.

    The detector model's variance of a raw read needs the linearised charge of that read, which is
    what ``adc`` followed by ``linearity`` compute; the reader keeps them, so the two steps reuse
    them instead of evaluating the per-pixel polynomial over every frame a second time. A step uses
    them only while its input signal *is* the array they were computed from (steps never modify
    arrays in place, so identity means the same values).

    Attributes:
        adu: The raw reads (ADU) they were computed from.
        electrons: ``adu / gain + offset``: the ``adc`` step's output.
        charge: The ``linear_corr`` polynomial of ``electrons``: the ``linearity`` step's signal.
        slope2: The polynomial's derivative squared, which scales the variance.
    """

    adu: FloatArray
    electrons: FloatArray
    charge: FloatArray
    slope2: FloatArray


@dataclass(frozen=True)
class Exposure:
    """One instrument's frames at some stage of calibration, with their variance.

    Before ``extract`` the signal is a stack of images (frames, rows, cols); after it, light curves
    (frames, bins). The variance has the signal's shape and unit squared.

    Attributes:
        instrument: ``"FGS1"`` or ``"AIRS-CH0"``.
        planet_id: The planet (for error messages).
        signal: Frames, ADU before the ``adc`` step and electrons after it.
        variance: Variance of ``signal`` (signal unit squared), same shape.
        read_variance: Variance added independently by each read (signal unit squared), shape
            (rows, cols); correlated double sampling needs it to undo the shared shot noise.
        mask: Pixels to ignore (True = bad), shape (rows, cols).
        times: Mid-time of each frame (hours), shape (frames,).
        dt: Exposure of each frame (seconds): charge-collection time since reset before ``cds``,
            the time between the two reads after it.
        detector: Calibration maps and ADC settings.
        geometry: Aperture, background region, extraction mode and bin size.
        units: ``"adu"`` or ``"electrons"``.
        cds: Whether correlated double sampling has run (frames are read differences).
        extracted: Whether the frames are light curves rather than images.
        shared_variance: Variance of an error common to every pixel of a column in a frame (from
            a subtracted background estimate), broadcastable to (frames, 1, cols); None if none.
        linearized: The reader's ``adc`` and ``linearity`` results for these frames (see
            :class:`Linearized`); None once used or when unknown.
    """

    instrument: str
    planet_id: int
    signal: FloatArray
    variance: FloatArray
    read_variance: FloatArray
    mask: BoolArray
    times: npt.NDArray[np.float64]
    dt: npt.NDArray[np.float64]
    detector: Detector
    geometry: Geometry
    units: str = "adu"
    cds: bool = False
    extracted: bool = False
    shared_variance: FloatArray | None = None
    linearized: Linearized | None = None

    @property
    def n_frames(self) -> int:
        """Number of frames (reads, read differences or time bins)."""
        return int(self.signal.shape[0])

    def require(self, step: str, *, units: str | None = None, image: bool = False, raw: bool = False) -> None:
        """Raise a ConfigError if this exposure is not at a stage ``step`` can work on.

        Args:
            step: The calling step's registry name.
            units: Required signal unit, if any.
            image: Whether images are required (the step must come before ``extract``).
            raw: Whether individual reads are required (the step must come before ``cds``).
        """
        where = "data.calibration.steps"
        if units is not None and self.units != units:
            raise ConfigError(
                f"{where}: step {step!r} needs the signal in {units} but it is in {self.units} "
                f"({self.instrument}, planet {self.planet_id})",
                f"put 'adc' before {step!r} in {where}" if units == "electrons" else f"move {step!r} first",
            )
        if image and self.extracted:
            raise ConfigError(
                f"{where}: step {step!r} works on detector images but 'extract' ran before it",
                f"put {step!r} before 'extract' in {where}",
            )
        if raw and self.cds:
            raise ConfigError(
                f"{where}: step {step!r} works on individual reads but 'cds' ran before it",
                f"put {step!r} before 'cds' in {where}",
            )
