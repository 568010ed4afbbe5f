"""Write a toy Ariel dataset in the competition layout: ``python -m src.datamodules.ariel.simulate``.

    python -m src.datamodules.ariel.simulate --out data/ariel_toy --planets 16 --seed 0
    python -m src.datamodules.ariel.simulate --out data/ariel_hard --planets 16 --difficulty hard
    python -m src.datamodules.ariel.simulate --out data/ariel_full --planets 4 --scale full

Full frame geometry (FGS1 32x32, AIRS-CH0 32x356 per parquet row), fewer frames (by default 60
AIRS and 720 FGS1 read pairs per visit over 7.5 h); ``--scale full`` writes the competition's
frame counts (11,250 AIRS, 135,000 FGS1 frames per visit), exposed and written in slices of read
pairs (one parquet row group each, :data:`CHUNK_PIXELS`) so memory holds a slice, not the visit.
Deterministic per seed; planet ``k`` draws from ``default_rng([seed, k])`` so adding planets does
not change the first ones. ``--difficulty hard`` (:mod:`~src.datamodules.ariel.forward`) draws
wider stars, orbits and instruments and adds time-correlated systematics; the default ``easy``
writes the same signal and calibration files as it always did.

Besides the competition files it writes ``<out>/truth/<split>/<planet_id>_<visit>.npz``, for tests
only: the noiseless stellar electrons per read difference that calibration should recover
(``airs_flux`` (pairs, 282) in label order, ``fgs1_flux`` (pairs,)), their times, the injected
depths, the orbit (``t0_h``, ``duration_h``, ``per_d``, ``a_rs``, ``inc_deg``), ``difficulty``
and, for hard, the shared pointing at each instrument's pair mid-times (``fgs1_pointing``,
``airs_pointing`` (pairs, 2)), the relative gain (``fgs1_gain``, ``airs_gain``) and the spot
crossings. The stellar flux includes variability, 1/f noise and spot crossings; the detector's
gain drift and flat-field error are not in it. Nothing in the datamodule reads ``truth/``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from src.core.errors import ConfigError
from src.datamodules.ariel import forward as fw
from src.datamodules.ariel.forward import SimConfig
from src.datamodules.ariel.layout import AIRS, FGS1, INSTRUMENTS, ArielLayout, get_edition
from src.datamodules.ariel.tables import WL_COLUMNS

#: A visit of more pixels than this (read pairs x frame pixels) is simulated in slices of pairs:
#: ~8 M pixels keep a slice's float64 arrays near 0.5 GB; the toy scale stays in one piece.
CHUNK_PIXELS = 8_000_000
#: Read pairs per visit of the competition data: 11,250 AIRS-CH0 and 135,000 FGS1 frames.
FULL_SCALE = {"airs_pairs": 5_625, "fgs1_pairs": 67_500}


def write_matrix(path: Path, values: np.ndarray, fast: bool = False) -> None:
    """Write a 2-D array as a parquet table, one column per array column (named "0", "1", ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [pa.array(values[:, j]) for j in range(values.shape[1])]
    table = pa.Table.from_arrays(columns, names=[str(j) for j in range(values.shape[1])])
    # Wide signal tables write 2x faster without statistics and dictionaries; readers don't care.
    pq.write_table(table, path, use_dictionary=not fast, write_statistics=not fast)


def _times(cfg: SimConfig, instrument: str) -> tuple[np.ndarray, np.ndarray]:
    """Read times and read-pair mid-times (hours) of one instrument."""
    pairs = cfg.airs_pairs if instrument == AIRS else cfg.fgs1_pairs
    first, between = cfg.integration_s[instrument]
    start = np.arange(pairs) * cfg.hours / pairs
    reads = np.empty(2 * pairs)
    reads[0::2], reads[1::2] = start + first / 3600, start + (first + between) / 3600
    return reads, 0.5 * (reads[0::2] + reads[1::2])


@dataclass(frozen=True)
class StarRate:
    """The noiseless stellar rate of one instrument, computable for any slice of its read pairs.

    The random parts (pointing jitter of every pair, the trace or spot centre) are drawn when it is
    made, in the order the simulator always drew them, so a visit computed in one piece or in
    slices of pairs sees the same pointing.
    """

    instrument: str
    cfg: SimConfig
    system: fw.System
    depths: np.ndarray
    mid: np.ndarray
    jitter: np.ndarray
    centre: Any
    systematics: fw.InstrumentSystematics | None = None

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        cfg: SimConfig,
        instrument: str,
        system: fw.System,
        depths: np.ndarray,
        hard: fw.HardVisit | None = None,
    ) -> StarRate:
        """Draw the white pointing jitter and the centre (easy), or take the hard visit's effects.

        Args:
            rng: The planet's random generator.
            cfg: Simulator settings (the planet's, for a hard simulation).
            instrument: ``FGS1`` or ``AIRS-CH0``.
            system: The star and orbit.
            depths: The 283 label depths.
            hard: The hard visit (None: easy).
        """
        _, mid = _times(cfg, instrument)
        jitter = rng.normal(0.0, cfg.jitter_px, (len(mid), 2))
        if hard is not None:
            wl, depth = _instrument_depths(instrument, depths)
            effects = hard.systematics(instrument, system, mid, wl, depth)
            return cls(instrument, cfg, system, depths, mid, jitter, effects.centre, effects)
        if instrument == AIRS:
            centre: Any = 15.5 + rng.uniform(-0.3, 0.3)
        else:
            centre = (15.5 + rng.uniform(-0.3, 0.3), 15.5 + rng.uniform(-0.3, 0.3))
        return cls(instrument, cfg, system, depths, mid, jitter, centre)

    def __call__(self, pairs: slice) -> np.ndarray:
        """Rate per pixel (e-/s, before flat), shape (pairs in the slice, rows, cols)."""
        mid, jitter, system, cfg = self.mid[pairs], self.jitter[pairs], self.system, self.cfg
        effects = self.systematics
        if effects is not None:
            wl, depth = _instrument_depths(self.instrument, self.depths)
            transit = fw.transit_curves(system, mid, depth, wl, u=effects.limb) + effects.bump[pairs]
            lc = transit * fw.drift_factor(system, mid, cfg.hours, wl) * effects.factor[pairs]
            jitter = jitter + effects.pointing[pairs]
            if self.instrument == AIRS:
                return fw.airs_star_rate(system, cfg, lc, jitter, self.centre)
            return fw.fgs1_star_rate(system, cfg, lc[:, 0], jitter, self.centre)
        if self.instrument == AIRS:
            wl = fw.airs_wavelengths()
            depth = np.interp(wl, fw.label_wavelengths()[1:], self.depths[1:])
            lc = fw.transit_curves(system, mid, depth, wl) * fw.drift_factor(system, mid, cfg.hours, wl)
            return fw.airs_star_rate(system, cfg, lc, jitter, self.centre)
        wl = np.array([fw.FGS1_WAVELENGTH_UM])
        lc = fw.transit_curves(system, mid, self.depths[:1], wl) * fw.drift_factor(system, mid, cfg.hours, wl)
        return fw.fgs1_star_rate(system, cfg, lc[:, 0], jitter, self.centre)

    def expose(self, rng: np.random.Generator, star: np.ndarray, det: dict, pairs: slice) -> np.ndarray:
        """Digitised reads of ``pairs`` from their stellar rate ``star`` (:meth:`__call__`), foreground
        added, through the detector ``det`` (and, hard, its unknown flat error and gain drift)."""
        cfg, inst = self.cfg, self.instrument
        if self.systematics is None:
            rate = (star + cfg.foreground[inst]) * det["flat"]
            return fw.expose(rng, rate, det, cfg.integration_s[inst], cfg.adc[inst])
        rate = (star + cfg.foreground[inst]) * (det["flat"] * (1 + self.systematics.flat_error))
        gain = self.systematics.gain[pairs]
        return fw.expose(rng, rate, det, cfg.integration_s[inst], cfg.adc[inst], gain=gain)


def _instrument_depths(instrument: str, depths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The instrument's wavelengths (AIRS-CH0 columns, or FGS1's one) and the depths there."""
    if instrument == AIRS:
        wl = fw.airs_wavelengths()
        return wl, np.interp(wl, fw.label_wavelengths()[1:], depths[1:])
    return np.array([fw.FGS1_WAVELENGTH_UM]), depths[:1]


def _truth_flux(instrument: str, star: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """Noiseless stellar electrons per read difference: (pairs,) FGS1, (pairs, 282) AIRS in label order."""
    electrons = star * cfg.integration_s[instrument][1]
    if instrument == AIRS:
        cols = slice(fw.AIRS_COLUMNS[0], fw.AIRS_COLUMNS[1])
        return electrons.sum(axis=1)[:, cols][:, ::-1]
    return electrons.sum(axis=(1, 2))


def _write_signal_chunked(
    path: Path, rng: np.random.Generator, cfg: SimConfig, instrument: str, star_rate: StarRate, det: dict,
    chunk_pairs: int,
) -> np.ndarray:  # fmt: skip
    """Expose and write the signal file slice by slice (one parquet row group each): memory holds
    one slice of frames, never the visit. Returns the truth flux of every pair."""
    pairs = len(star_rate.mid)
    names = [str(j) for j in range(int(np.prod(fw.FRAME_SHAPES[instrument])))]
    schema = pa.schema([(n, pa.uint16()) for n in names])
    path.parent.mkdir(parents=True, exist_ok=True)
    truth = []
    with pq.ParquetWriter(path, schema, use_dictionary=False, write_statistics=False) as writer:
        for start in range(0, pairs, chunk_pairs):
            part = slice(start, min(pairs, start + chunk_pairs))
            star = star_rate(part)
            raw = star_rate.expose(rng, star, det, part)
            flat = raw.reshape(len(raw), -1)
            writer.write_table(
                pa.Table.from_arrays([pa.array(flat[:, j]) for j in range(flat.shape[1])], schema=schema)
            )
            truth.append(_truth_flux(instrument, star, cfg))
    return np.concatenate(truth)


def simulate_visit(
    layout: ArielLayout,
    split: str,
    planet_id: int,
    visit: int,
    rng: np.random.Generator,
    cfg: SimConfig,
    system: fw.System,
    depths: np.ndarray,
    chunk_pixels: int = CHUNK_PIXELS,
    hard: fw.HardPlanet | None = None,
) -> dict[str, np.ndarray]:
    """Write one visit's signal and calibration files; return its noiseless truth arrays.

    An instrument whose visit holds more than ``chunk_pixels`` pixels (competition scale) is
    exposed and written in slices of read pairs, in bounded memory; a smaller one (toy scale) in
    one piece, as it always was. Everything time-correlated (pointing, 1/f noise, variability,
    spot crossings, gain drift) is drawn for the whole visit before the first frame, so a visit's
    noiseless flux is the same whether it is written whole or in slices.

    Args:
        layout: Where the files go.
        split: ``"train"`` or ``"test"``.
        planet_id: The planet.
        visit: The visit index.
        rng: The planet's random generator.
        cfg: Simulator settings (shared timing and ADC).
        system: The star and orbit.
        depths: The 283 label depths.
        chunk_pixels: Pixels above which an instrument's visit is written in slices.
        hard: The planet's hard-simulation draws (None: easy); its instrument settings replace
            ``cfg``'s for the frames.

    Returns:
        The truth arrays (see the module docstring).
    """
    truth: dict[str, np.ndarray] = {}
    drawn: dict[str, tuple[StarRate, dict[str, np.ndarray]]] = {}
    if hard is not None:
        # Every draw but the photon and read noise comes before the first frame, so both
        # instruments' noiseless flux is the same whether the visit is written whole or in slices.
        visit_effects = fw.draw_hard_visit(rng, hard, system, float(np.sqrt(depths.mean())), cfg)
        cfg = hard.cfg
        truth["spots"] = np.array(
            [[s.time_h, s.width_h, s.coverage, s.temp_k] for s in visit_effects.spots], dtype=np.float64
        ).reshape(-1, 4)
        for inst in INSTRUMENTS:
            drawn[inst] = StarRate.draw(rng, cfg, inst, system, depths, visit_effects), fw.draw_detector(rng, cfg, inst)
    for inst in INSTRUMENTS:
        if inst not in drawn:  # easy: drawn between the instruments' exposures, as it always was
            drawn[inst] = StarRate.draw(rng, cfg, inst, system, depths), fw.draw_detector(rng, cfg, inst)
        star_rate, det = drawn[inst]
        signal = layout.signal(split, planet_id, inst, visit)
        frame = int(np.prod(fw.FRAME_SHAPES[inst]))
        pairs = len(star_rate.mid)
        key = "airs" if inst == AIRS else "fgs1"
        if pairs * frame > chunk_pixels:
            chunk = max(1, chunk_pixels // frame)
            truth[f"{key}_flux"] = _write_signal_chunked(signal, rng, cfg, inst, star_rate, det, chunk)
        else:
            star = star_rate(slice(None))
            raw = star_rate.expose(rng, star, det, slice(None))
            write_matrix(signal, raw.reshape(len(raw), -1), fast=True)
            truth[f"{key}_flux"] = _truth_flux(inst, star, cfg)
        if star_rate.systematics is not None:
            truth[f"{key}_pointing"] = star_rate.systematics.pointing
            truth[f"{key}_gain"] = star_rate.systematics.gain
        for name in ("dark", "dead", "flat", "read"):
            write_matrix(layout.calibration(split, planet_id, inst, name, visit), det[name])
        lin = det["linear_corr"].reshape(-1, det["linear_corr"].shape[-1])
        write_matrix(layout.calibration(split, planet_id, inst, "linear_corr", visit), lin)
        truth[f"{key}_time"] = _times(cfg, inst)[1]
    return truth


def simulate_planet(
    layout: ArielLayout, split: str, planet_id: int, rng: np.random.Generator, cfg: SimConfig
) -> tuple[fw.System, np.ndarray]:
    """Draw one planet, write all its visits and truth files; return its system and depths.

    Easy: the spectrum, then the orbit (:func:`~src.datamodules.ariel.forward.draw_system`), then
    each visit, always in that order. Hard: a wider spectrum, an orbit of
    :func:`~src.datamodules.ariel.forward.draw_system_hard`, the planet's instrument settings and
    effect amplitudes, then each visit with its own realisation of the effects.
    """
    wl = fw.label_wavelengths()
    hard = None
    if fw.check_difficulty(cfg.difficulty) == "hard":
        depths = fw.draw_spectrum(rng, wl, base=(1e-3, 3e-2), feature_ppm=(5.0, 400.0))
        k = float(np.sqrt(depths.mean()))
        system = fw.draw_system_hard(rng, cfg.hours, k)
        hard = fw.draw_hard_planet(rng, cfg, system)
        u_fgs1 = hard.limb(wl[:1])[0]
    else:
        depths = fw.draw_spectrum(rng, wl)
        k = float(np.sqrt(depths.mean()))
        system = fw.draw_system(rng, cfg.hours, k)
        u_fgs1 = fw.limb_darkening(wl[:1])[0]
    for visit in range(cfg.visits):
        truth = simulate_visit(layout, split, planet_id, visit, rng, cfg, system, depths, hard=hard)
        path = layout.root / "truth" / split / f"{planet_id}_{visit}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            depths=depths,
            wavelengths=wl,
            t0_h=system.t0_h,
            duration_h=system.duration_h(k),
            per_d=system.P,
            a_rs=system.a_rs,
            inc_deg=system.i,
            u_fgs1=u_fgs1,
            difficulty=cfg.difficulty,
            **truth,
        )
    return system, depths


def _write_axis_info(layout: ArielLayout, cfg: SimConfig) -> None:
    airs_t, _ = _times(cfg, AIRS)
    fgs_t, _ = _times(cfg, FGS1)
    columns = {
        f"{AIRS}-axis0-h": airs_t,
        f"{AIRS}-axis2-um": fw.airs_wavelengths(),
        f"{AIRS}-integration_time": np.tile(cfg.integration_s[AIRS], cfg.airs_pairs),
        f"{FGS1}-axis0-h": fgs_t,
    }
    n = max(len(v) for v in columns.values())
    padded = {k: np.concatenate([v, np.full(n - len(v), np.nan)]) for k, v in columns.items()}
    pq.write_table(pa.table(padded), layout.axis_info)


def _adc_row(cfg: SimConfig) -> dict[str, float]:
    row = {}
    for inst in INSTRUMENTS:
        row[f"{inst}_adc_offset"], row[f"{inst}_adc_gain"] = cfg.adc[inst][1], cfg.adc[inst][0]
    return row


def _write_tables(layout: ArielLayout, cfg: SimConfig, planets: dict[str, list]) -> None:
    """Labels, star info, ADC, axis info, wavelengths and the sample submission."""
    wl = fw.label_wavelengths()
    ids = {s: [p[0] for p in planets[s]] for s in planets}
    labels = pd.DataFrame([d for _, _, d in planets["train"]], columns=list(WL_COLUMNS))
    labels.insert(0, "planet_id", ids["train"])
    labels.to_csv(layout.labels, index=False)
    for split, rows in planets.items():
        if layout.edition.has_star_info:
            info = pd.DataFrame([s.star_info() for _, s, _ in rows])
            info.insert(0, "planet_id", ids[split])
            info.to_csv(layout.star_info(split), index=False)
        if layout.edition.per_planet_adc:
            adc = pd.DataFrame([{"planet_id": p, **_adc_row(cfg), "star": k} for k, p in enumerate(ids[split])])
            adc.to_csv(layout.adc(split), index=False)
    if not layout.edition.per_planet_adc:
        pd.DataFrame([_adc_row(cfg)]).to_csv(layout.adc("train"), index=False)
    _write_axis_info(layout, cfg)
    pd.DataFrame([wl], columns=list(WL_COLUMNS)).to_csv(layout.wavelengths, index=False)
    sub = pd.DataFrame(
        {
            "planet_id": ids["test"],
            **{c: 0.01 for c in WL_COLUMNS},
            **{f"sigma_{k}": 1e-3 for k in range(1, len(wl) + 1)},
        }
    )
    sub.to_csv(layout.sample_submission, index=False)


def simulate_dataset(
    out: str | Path, planets: int, seed: int, test_planets: int = 1, cfg: SimConfig | None = None
) -> Path:
    """Write a complete toy dataset to ``out`` (atomically: a finished folder or none).

    Args:
        out: Destination folder; must not exist yet.
        planets: Training planets (with labels).
        seed: Random seed; the same seed writes the same data.
        test_planets: Test planets (no labels).
        cfg: Simulator settings (defaults: toy scale, easy).

    Returns:
        The dataset folder.

    Raises:
        ConfigError: Planet counts below 1 (train) or 0 (test), ``out`` already exists, an unknown
            difficulty, or a hard simulation of fewer than ``HARD_MIN_HOURS`` hours.
    """
    cfg = cfg or SimConfig()
    out = Path(out)
    if planets < 1 or test_planets < 0:
        raise ConfigError(f"planets={planets}, test_planets={test_planets}", "use planets >= 1, test_planets >= 0")
    if fw.check_difficulty(cfg.difficulty) == "hard" and cfg.hours < fw.HARD_MIN_HOURS:
        raise ConfigError(
            f"hours={cfg.hours} is too short for the hard simulation (transits of {fw.HARD_DURATION_H} h)",
            f"simulate at least {fw.HARD_MIN_HOURS} h",
        )
    if out.exists():
        raise ConfigError(f"simulator output folder {out} already exists", "delete it or pick another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        layout = ArielLayout(tmp, get_edition(cfg.edition))
        ids = _planet_ids(seed, planets + test_planets)
        split_of = ["train"] * planets + ["test"] * test_planets
        done: dict[str, list] = {"train": [], "test": []}
        for k, (pid, split) in enumerate(zip(ids, split_of, strict=True)):
            system, depths = simulate_planet(layout, split, pid, np.random.default_rng([seed, k]), cfg)
            done[split].append((pid, system, depths))
        _write_tables(layout, cfg, done)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _planet_ids(seed: int, n: int) -> list[int]:
    """``n`` distinct planet ids drawn from the seed (like the competition's integer ids)."""
    rng = np.random.default_rng([seed, 2**31 - 1])
    ids: list[int] = []
    while len(ids) < n:
        ids = list(dict.fromkeys([*ids, *map(int, rng.integers(10_000, 2_000_000_000, n))]))[:n]
    return ids


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; prints where the dataset went and how long it took."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="destination folder (must not exist)")
    p.add_argument("--planets", type=int, default=16, help="training planets")
    p.add_argument("--test-planets", type=int, default=4, help="test planets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--scale",
        choices=["toy", "full"],
        default="toy",
        help="full: competition-size visits (5,625 AIRS / 67,500 FGS1 read pairs, about 0.5 GB of frames "
        "each), written in slices in bounded memory; sets the pair counts",
    )
    p.add_argument("--airs-pairs", type=int, default=SimConfig.airs_pairs)
    p.add_argument("--fgs1-pairs", type=int, default=SimConfig.fgs1_pairs)
    p.add_argument("--hours", type=float, default=SimConfig.hours)
    p.add_argument("--visits", type=int, default=SimConfig.visits)
    p.add_argument("--edition", choices=["2025", "2024"], default=SimConfig.edition)
    p.add_argument(
        "--difficulty",
        choices=list(fw.DIFFICULTIES),
        default=SimConfig.difficulty,
        help="hard: transits of unknown time and 1.2-6.5 h duration, shared FGS1/AIRS pointing jitter, 1/f "
        "noise, spot crossings, chromatic limb darkening and variability, per-planet instrument settings",
    )
    args = p.parse_args(argv)
    pairs = FULL_SCALE if args.scale == "full" else {"airs_pairs": args.airs_pairs, "fgs1_pairs": args.fgs1_pairs}
    cfg = replace(
        SimConfig(),
        **pairs,
        hours=args.hours,
        visits=args.visits,
        edition=args.edition,
        difficulty=args.difficulty,
    )
    start = time.perf_counter()
    simulate_dataset(args.out, args.planets, args.seed, args.test_planets, cfg)
    n = args.planets + args.test_planets
    elapsed = time.perf_counter() - start
    print(f"wrote {n} planets to {args.out} in {elapsed:.1f} s ({elapsed / n:.2f} s per planet)")


if __name__ == "__main__":
    main()
