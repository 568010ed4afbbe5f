"""Ariel calibration throughput: the vectorised chain vs a plain reference vs memory bandwidth.

    python benchmarks/ariel_calibration.py [--planets 6] [--repeats 3] [--data DIR]
    python benchmarks/ariel_calibration.py --planets 1 --repeats 2 --airs-pairs 20 --fgs1-pairs 200   # smoke run
    python benchmarks/ariel_calibration.py --scale full [--planets 4] [--repeats 2]   # competition-size planets

``--scale full`` runs ``ariel_calibration_full.py`` (MB/s per process against the parquet-decode
and copy limits, scaling to 2 processes, peak RSS per worker, projected time for 1,100 planets).

Simulates a toy dataset (unless ``--data`` points at one), then times, per planet (both
instruments, default chain, one process):

* end to end (read parquet + calibrate) and compute only (frames already in memory), for the
  vectorised chain (``src.datamodules.ariel``) and the plain reference (``ariel_reference.py``);
* throughput in planets/s and MB/s of raw pixel data (uint16 frames, both instruments);
* this machine's memory bandwidth as numpy copy MB/s (bytes copied per second; each byte is read
  once and written once).

It also checks that the two implementations agree (max |difference| in units of the propagated
sigma). Every timing is repeated (``--repeats``; the variants run in turn within a repeat, so a
change in the machine's load falls on all of them); the printed table shows the medians, and
``benchmarks/results/ariel_calibration.json`` holds the figures of every repeat, with targets on
the paired speed-ups (> 1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ariel_reference as ref
from record import Recorder

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


def time_repeats(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall time (seconds) of every function in each of ``repeats`` rounds, run in turn within a round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def max_disagreement(ids: list[str], layout: ArielLayout, root: Path, ctx: dict) -> float:
    """Largest |vectorised − reference| over every light-curve point, in units of the propagated sigma."""
    worst = 0.0
    for pid in ids:
        fast = calibrate_planet(layout, "train", pid, 0, ctx["chain"], ctx["settings"], ctx["adc"], ctx["axis"])
        plain = ref.calibrate_planet(root, "train", pid, ctx["bins"])
        for key in ("fgs1", "airs"):
            diff = np.abs(fast[f"{key}_flux"] - plain[f"{key}_flux"]) / np.sqrt(plain[f"{key}_var"])
            worst = max(worst, float(np.nanmax(diff)))
    return worst


#: Timed variants: key, printed name.
VARIANTS = (
    ("fast_e2e", "vectorised chain, end to end"),
    ("fast_compute", "vectorised chain, compute only"),
    ("ref_e2e", "plain reference, end to end"),
    ("ref_compute", "plain reference, compute only"),
    ("ref_polyvec", "  same, polynomial vectorised"),
)


def timed_variants(
    ids: list[str], layout: ArielLayout, root: Path, ctx: dict, repeats: int
) -> tuple[dict[str, list[float]], float]:
    """Seconds per repeat of each variant (all planets, after one warm-up pass) and the raw MB read."""
    chain = ctx["chain"]
    raws = {pid: [read_raw(layout, "train", pid, 0, ctx["settings"][i], ctx["adc"], ctx["axis"]) for i in INSTRUMENTS]
            for pid in ids}  # fmt: skip
    loaded = {pid: {i: ref.load_planet(root, "train", pid, i) for i in INSTRUMENTS} for pid in ids}

    def fast_e2e() -> None:
        for pid in ids:
            calibrate_planet(layout, "train", pid, 0, chain, ctx["settings"], ctx["adc"], ctx["axis"])

    def fast_compute() -> None:
        for rs in raws.values():
            for r in rs:
                chain.run(r)

    def ref_e2e() -> None:
        for pid in ids:
            ref.calibrate_planet(root, "train", pid, ctx["bins"])

    def ref_compute() -> None:
        for pid in ids:
            for inst, integ in (("FGS1", (0.1, 0.1)), ("AIRS-CH0", None)):
                ref.calibrate(loaded[pid][inst], inst, ctx["bins"][inst], integ)

    def ref_polyvec() -> None:
        ref.POLY["routine"] = ref.poly_vectorised
        try:
            ref_compute()
        finally:
            ref.POLY["routine"] = ref.poly_per_pixel

    fast_e2e(), ref_compute()  # warm up imports and caches
    fns = {"fast_e2e": fast_e2e, "fast_compute": fast_compute, "ref_e2e": ref_e2e, "ref_compute": ref_compute,
           "ref_polyvec": ref_polyvec}  # fmt: skip
    raw_mb = sum(r.frames.size * 2 for rs in raws.values() for r in rs) / 2**20
    return time_repeats(fns, repeats), raw_mb


def record(rec: Recorder, times: dict[str, list[float]], raw_mb: float, n: int, bandwidth: list[float],
           worst: float) -> None:  # fmt: skip
    """Throughputs, speed-ups, bandwidth share and agreement as figures; targets on the paired speed-ups."""
    sec = {key: np.array(times[key]) for key, _ in VARIANTS}
    for key, name in VARIANTS:
        rec.figure(f"{key}_planets_s", n / sec[key], label=f"{name.strip()}, planets/s", unit="planets/s", digits=2)
        rec.figure(f"{key}_mb_s", raw_mb / sec[key], label=f"{name.strip()}, MB/s of raw pixels", unit="MB/s",
                   digits=1)  # fmt: skip
    rec.figure("speedup_e2e", sec["ref_e2e"] / sec["fast_e2e"], label="speed-up, end to end", unit="×", digits=1)
    rec.figure("speedup_compute", sec["ref_compute"] / sec["fast_compute"], label="speed-up, compute only",
               unit="×", digits=1)  # fmt: skip
    rec.figure("speedup_compute_polyvec", sec["ref_polyvec"] / sec["fast_compute"], unit="×", digits=1,
               label="speed-up, compute only, against the reference with a vectorised polynomial")  # fmt: skip
    rec.figure("copy_mb_s", bandwidth, label="numpy copy bandwidth", unit="MB/s", digits=0)
    rec.figure("bandwidth_share", raw_mb / sec["fast_compute"] / np.array(bandwidth), digits=4,
               label="vectorised compute MB/s over the numpy copy MB/s")  # fmt: skip
    rec.figure("max_sigma_diff", worst, label="max |vectorised − reference| / sigma", digits=6)
    rec.target("speedup_e2e", ">", 1.0, text="the vectorised chain beats the plain reference, paired per repeat")
    rec.target("speedup_compute", ">", 1.0, text="the same, frames already in memory")
    rec.note("The agreement figure is the largest difference of any light-curve point between the two "
             "implementations, in units of that point's propagated sigma; the vectorised chain computes in float32, "
             "the reference in float64.")  # fmt: skip


def print_figures(times: dict[str, list[float]], raw_mb: float, n: int, frames: str, bandwidth: list[float],
                  worst: float) -> None:  # fmt: skip
    """The table and lines this benchmark prints, from the median of the repeats."""
    med = {key: float(np.median(times[key])) for key, _ in VARIANTS}
    print(f"\n{n} planets ({frames}); {raw_mb / n:.1f} MB of raw pixels per planet; one process; "
          f"median of {len(times['fast_e2e'])} repeats")  # fmt: skip
    print(f"{'':34s} {'s/planet':>9s} {'planets/s':>10s} {'MB/s':>8s}")
    for key, name in VARIANTS:
        print(f"{name:34s} {med[key] / n:9.3f} {n / med[key]:10.2f} {raw_mb / med[key]:8.1f}")
    print(f"\nspeed-up, end to end:  {med['ref_e2e'] / med['fast_e2e']:.1f}x")
    polyvec = med["ref_polyvec"] / med["fast_compute"]
    print(f"speed-up, compute only: {med['ref_compute'] / med['fast_compute']:.1f}x "
          f"({polyvec:.1f}x against the reference with a vectorised polynomial)")  # fmt: skip
    bw = float(np.median(bandwidth))
    print(f"numpy copy bandwidth: {bw:.0f} MB/s; vectorised compute runs at "
          f"{raw_mb / med['fast_compute'] / bw:.1%} of it (in raw uint16 MB)")  # fmt: skip
    print(f"max |vectorised - reference| / sigma: {worst:.2e}")


def main() -> None:
    if "--scale" in sys.argv:
        scale = sys.argv[sys.argv.index("--scale") + 1 :][:1]
        if scale == ["full"]:
            import ariel_calibration_full

            ariel_calibration_full.main(sys.argv[1:])
            return
        if scale != ["toy"]:
            sys.exit(f"ariel_calibration.py: --scale {scale[0] if scale else ''!s} is not toy or full")
        sys.argv.remove("--scale"), sys.argv.remove("toy")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--planets", type=int, default=6)
    p.add_argument("--data", type=Path, default=None, help="existing toy dataset (default: simulate one)")
    p.add_argument("--airs-pairs", type=int, default=SimConfig.airs_pairs)
    p.add_argument("--fgs1-pairs", type=int, default=SimConfig.fgs1_pairs)
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (figures per repeat, medians printed)")
    args = p.parse_args()
    rec = Recorder("ariel_calibration", title="Ariel calibration throughput")

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
    settings = instrument_settings(None)
    ctx = {"settings": settings, "adc": read_adc(layout, "train"), "axis": read_axis_info(layout),
           "bins": {name: s.bin_size for name, s in settings.items()},
           "chain": CalibrationChain.from_config(None)}  # fmt: skip
    times, raw_mb = timed_variants(ids, layout, root, ctx, args.repeats)
    bandwidth = [copy_bandwidth() for _ in range(args.repeats)]
    worst = max_disagreement(ids, layout, root, ctx)
    frames = f"AIRS {2 * args.airs_pairs} x 32x356, FGS1 {2 * args.fgs1_pairs} x 32x32 reads"
    print_figures(times, raw_mb, len(ids), frames, bandwidth, worst)
    record(rec, times, raw_mb, len(ids), bandwidth, worst)
    rec.write(summary=f"{len(ids)} toy planets ({frames}, {raw_mb / len(ids):.1f} MB of raw pixels per "
              f"planet), both instruments, default chain, one process; {args.repeats} repeats, the variants "
              "timed in turn within each repeat.")  # fmt: skip
    tmp.cleanup()


if __name__ == "__main__":
    main()
