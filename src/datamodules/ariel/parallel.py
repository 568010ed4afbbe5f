"""Calibrate many planets: in worker processes when asked, with a progress bar (planets/s, ETA).

A competition set is ~1,100 planets of ~0.5 GB of raw frames each; one process calibrates them one
after another for hours. ``data.calibration.workers=N`` spreads the planets over ``N`` worker
processes (spawned: no state of the parent is shared), each reading, calibrating and caching one
planet at a time, so memory grows with ``N`` planets' chunks (``chunk_frames`` bounds each). A
planet's result does not depend on the worker that made it: the same arrays, bit for bit, as with
one process. The bar shows planets done, planets/s and the time left, so a long calibration is
told apart from a hang.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from src.core.errors import ConfigError, DataError
from src.datamodules.ariel.chain import calibrate_planet
from src.datamodules.ariel.torch_path import TorchFrontend, split_steps

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class PlanetJob:
    """One planet to calibrate: its split, id and the cache fingerprint of its raw files."""

    split: str
    planet_id: int
    fingerprint: str


@contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar of ``total`` planets; yields the function that advances it by one."""
    if not enabled or total == 0:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    speed = TextColumn("{task.fields[rate]}")
    with Progress(TextColumn("Ariel calibration"), BarColumn(), MofNCompleteColumn(), speed,
                  TimeRemainingColumn()) as bar:  # fmt: skip
        task = bar.add_task("calibrate", total=total, rate="")

        def advance() -> None:
            bar.advance(task)
            rate = bar.tasks[task].speed
            bar.update(task, rate=f"{rate:.2f} planets/s" if rate else "")

        yield advance


def run_jobs(
    jobs: Sequence[PlanetJob],
    work: Callable[[PlanetJob], Arrays],
    workers: int,
    show_progress: bool = True,
) -> Iterator[tuple[PlanetJob, Arrays]]:
    """Calibrate ``jobs``: in this process (``workers`` 1) or in ``workers`` spawned processes.

    Args:
        jobs: The planets.
        work: Calibrates and caches one planet (a picklable module-level callable).
        workers: Processes to use (1: this one).
        show_progress: Show the progress bar.

    Yields:
        ``(job, arrays)`` as planets finish (in job order with one worker).

    Raises:
        DataError: A planet failed in a worker, naming it (its error as the cause).
    """
    with progress_bar(len(jobs), show_progress) as advance:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield job, work(job)
                advance()
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            futures = {pool.submit(work, job): job for job in jobs}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    arrays = future.result()
                except Exception as exc:  # a worker's error, re-raised with the planet named
                    for other in futures:
                        other.cancel()
                    raise DataError(
                        f"calibrating {job.split} planet {job.planet_id} failed in a worker: "
                        f"{type(exc).__name__}: {exc}",
                        "see the error above; data.calibration.workers=1 calibrates in this process",
                    ) from exc
                yield job, arrays
                advance()


@dataclass(frozen=True)
class PlanetCalibrator:
    """Calibrates and caches one planet (picklable: sent to the worker processes).

    Attributes:
        layout: The dataset's layout.
        visit: The visit to calibrate.
        chain: The calibration chain.
        settings: Per instrument settings.
        chunk_frames: Reads per calibration chunk (None: all at once).
        cache: Where the result is stored.
        adc: The ADC table of each split that has planets to calibrate.
        axis: The wavelength/time axis info.
        torch_device: Run the per-read steps in torch on this device (None: numpy).
    """

    layout: Any
    visit: int
    chain: Any
    settings: Any
    chunk_frames: int | None
    cache: Any
    adc: dict[str, Any]
    axis: Any
    torch_device: str | None = None

    @cached_property
    def frontend(self) -> TorchFrontend | None:
        """The torch path, made once per process that calibrates (None: numpy)."""
        if self.torch_device is None:
            return None
        return TorchFrontend(split_steps(self.chain.steps)[0], self.torch_device)

    def __call__(self, job: PlanetJob) -> Arrays:
        arrays = calibrate_planet(
            self.layout, job.split, job.planet_id, self.visit, self.chain, self.settings, self.adc[job.split],
            self.axis, self.chunk_frames, self.frontend,
        )  # fmt: skip
        self.cache.store(job.split, job.planet_id, self.visit, job.fingerprint, arrays)
        return arrays


def check_workers(value: Any) -> int:
    """``data.calibration.workers`` as a positive int.

    Raises:
        ConfigError: Not a positive integer.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"data.calibration.workers={value!r} is not a positive number of processes",
            "pass data.calibration.workers=1 (this process) or the number of cores to use",
        )
    return value
