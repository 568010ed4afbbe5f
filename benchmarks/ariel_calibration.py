"""Ariel calibration throughput: the vectorised chain vs a plain reference vs memory bandwidth.

    .venv/bin/python benchmarks/ariel_calibration.py [--planets 6] [--data DIR]

Simulates a toy dataset (unless ``--data`` points at one), then times, per planet (both
instruments, default chain, one process):

* end to end (read parquet + calibrate) and compute only (frames already in memory), for the
  vectorised chain (``src.datamodules.ariel``) and the plain reference (``ariel_reference.py``);
* throughput in planets/s and MB/s of raw pixel data (uint16 frames, both instruments);
* this machine's memory bandwidth as numpy copy MB/s (bytes copied per second; each byte is read
  once and written once).

It also checks that the two implementations agree (max |difference| in units of the propagated
sigma). Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ariel_reference as ref

from src.datamodules.ariel.chain import CalibrationChain, calibrate_planet
from src.datamodules.ariel.forward import SimConfig
from src.datamodules.ariel.layout import INSTRUMENTS, ArielLayout
from src.datamodules.ariel.reader import read_raw
from src.datamodules.ariel.settings import instrument_settings
from src.datamodules.ariel.simulate import simulate_dataset
from src.datamodules.ariel.tables import read_adc, read_axis_info, read_labels, split_planet_ids


def copy_bandwidth(mb: int = 256, repeats: int = 5) -> float:
    """numpy copy throughput (MB copied per second, best of ``repeats``)."""
    src = np.ones(mb * 2**20 // 8)
    dst = np.empty_like(src)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return src.nbytes / 2**20 / best


def best_of(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--planets", type=int, default=6)
    p.add_argument("--data", type=Path, default=None, help="existing toy dataset (default: simulate one)")
    p.add_argument("--airs-pairs", type=int, default=SimConfig.airs_pairs)
    p.add_argument("--fgs1-pairs", type=int, default=SimConfig.fgs1_pairs)
    p.add_argument("--repeats", type=int, default=2, help="timing repeats (best is kept)")
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="ariel_bench_")
    root = args.data
    if root is None:
        root = Path(tmp.name) / "ariel_toy"
        cfg = replace(SimConfig(), airs_pairs=args.airs_pairs, fgs1_pairs=args.fgs1_pairs)
        start = time.perf_counter()
        simulate_dataset(root, args.planets, seed=0, test_planets=0, cfg=cfg)
        print(f"simulated {args.planets} planets in {time.perf_counter() - start:.1f} s")

    layout = ArielLayout(root)
    ids = split_planet_ids(layout, "train", read_labels(layout))[: args.planets]
    adc, axis = read_adc(layout, "train"), read_axis_info(layout)
    settings = instrument_settings(None)
    bins = {name: s.bin_size for name, s in settings.items()}
    chain = CalibrationChain.from_config(None)
    raws = {pid: [read_raw(layout, "train", pid, 0, settings[i], adc, axis) for i in INSTRUMENTS] for pid in ids}
    raw_mb = sum(r.frames.size * 2 for rs in raws.values() for r in rs) / 2**20
    loaded = {pid: {i: ref.load_planet(root, "train", pid, i) for i in INSTRUMENTS} for pid in ids}
    n = len(ids)

    def fast_e2e() -> None:
        for pid in ids:
            calibrate_planet(layout, "train", pid, 0, chain, settings, adc, axis)

    def fast_compute() -> None:
        for rs in raws.values():
            for r in rs:
                chain.run(r)

    def ref_e2e() -> None:
        for pid in ids:
            ref.calibrate_planet(root, "train", pid, bins)

    def ref_compute() -> None:
        for pid in ids:
            for inst, integ in (("FGS1", (0.1, 0.1)), ("AIRS-CH0", None)):
                ref.calibrate(loaded[pid][inst], inst, bins[inst], integ)

    fast_e2e(), ref_compute()  # warm up imports and caches
    rows = [
        ("vectorised chain, end to end", best_of(fast_e2e, args.repeats)),
        ("vectorised chain, compute only", best_of(fast_compute, args.repeats)),
        ("plain reference, end to end", best_of(ref_e2e, args.repeats)),
        ("plain reference, compute only", best_of(ref_compute, args.repeats)),
    ]
    ref.POLY["routine"] = ref.poly_vectorised
    rows.append(("  same, polynomial vectorised", best_of(ref_compute, args.repeats)))
    ref.POLY["routine"] = ref.poly_per_pixel
    bandwidth = copy_bandwidth()

    worst = 0.0
    for pid in ids:
        fast, plain = (
            calibrate_planet(layout, "train", pid, 0, chain, settings, adc, axis),
            ref.calibrate_planet(root, "train", pid, bins),
        )
        for key in ("fgs1", "airs"):
            diff = np.abs(fast[f"{key}_flux"] - plain[f"{key}_flux"]) / np.sqrt(plain[f"{key}_var"])
            worst = max(worst, float(np.nanmax(diff)))

    frames = f"AIRS {2 * args.airs_pairs} x 32x356, FGS1 {2 * args.fgs1_pairs} x 32x32 reads"
    print(f"\n{n} planets ({frames}); {raw_mb / n:.1f} MB of raw pixels per planet; one process")
    print(f"{'':34s} {'s/planet':>9s} {'planets/s':>10s} {'MB/s':>8s}")
    for name, seconds in rows:
        print(f"{name:34s} {seconds / n:9.3f} {n / seconds:10.2f} {raw_mb / seconds:8.1f}")
    print(f"\nspeed-up, end to end:  {rows[2][1] / rows[0][1]:.1f}x")
    print(
        f"speed-up, compute only: {rows[3][1] / rows[1][1]:.1f}x "
        f"({rows[4][1] / rows[1][1]:.1f}x against the reference with a vectorised polynomial)"
    )
    print(
        f"numpy copy bandwidth: {bandwidth:.0f} MB/s; vectorised compute runs at "
        f"{raw_mb / rows[1][1] / bandwidth:.1%} of it (in raw uint16 MB)"
    )
    print(f"max |vectorised - reference| / sigma: {worst:.2e}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
