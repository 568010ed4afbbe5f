"""The heuristic corrections: one Brown–Conrady camera for every photo, or one per image-size bucket.

What the competition's teams learned, and what this module keeps: k1/k2 belong to the camera, not
the photo, and the camera shows in the image size. So coefficients are searched per size bucket on
the training pairs (a coarse grid over k1 x k2, then a finer grid around the best), with the focal
length the image width and the principal point the image centre, as OpenCV's recipe has them. A
bucket with fewer than ``min_support`` training pairs takes its parent's fit (the orientation:
landscape / portrait / square), and a parent without support the global fit. Every candidate is
ranked by the mean composite score (:class:`src.metrics.lens.LensScore`) of the corrected training
pairs, never by pixel error alone: tuning on MAE improved MAE and lowered the competition score.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from src.core.errors import ConfigError
from src.datamodules.lens.geometry import Camera, FrameError, undistort, undistort_maps

log = logging.getLogger(__name__)

#: The levels a camera can come from, most specific first.
LEVELS = ("bucket", "parent", "global")
#: Methods that search coefficients (``identity`` uses none).
METHODS = ("identity", "global", "bucket")


class Pair(Protocol):
    """A training pair as the heuristics read it (``src.datamodules.lens.datamodule.LensPair``)."""

    bucket: str
    parent: str
    input: np.ndarray
    target: np.ndarray


@dataclass(frozen=True)
class SearchGrid:
    """The coefficient grid: ``k1`` and ``k2`` as ``(start, stop, step)``, stop included.

    The finer grid spans ``± micro_steps`` steps of ``step / micro_divisor`` around the coarse
    grid's best, on both axes.
    """

    k1: tuple[float, float, float] = (-0.50, 0.10, 0.05)
    k2: tuple[float, float, float] = (-0.10, 0.40, 0.10)
    micro_steps: int = 2
    micro_divisor: int = 4

    def __post_init__(self) -> None:
        for name in ("k1", "k2"):
            axis = tuple(getattr(self, name))
            if len(axis) != 3 or not all(math.isfinite(v) for v in axis) or axis[2] <= 0 or axis[1] < axis[0]:
                raise ConfigError(
                    f"model.search.{name}={list(axis)} is not [start, stop, step] with stop >= start and step > 0",
                    f"pass e.g. model.search.{name}=[-0.4,0.1,0.05]",
                )
            object.__setattr__(self, name, axis)
        if self.micro_steps < 0 or self.micro_divisor < 1:
            raise ConfigError(
                f"model.search.micro_steps={self.micro_steps} / micro_divisor={self.micro_divisor} out of range",
                "use micro_steps >= 0 and micro_divisor >= 1",
            )
        # Said at start-up, before a run exists: if the mildest candidate already folds a 3:2 frame
        # or reads outside it, every candidate will (the search would find nothing to choose).
        mildest = min(self.coarse(), key=lambda c: abs(c[0]) + abs(c[1]))
        try:
            undistort_maps(Camera(*mildest), 300, 200)
        except FrameError as exc:
            raise ConfigError(
                f"every candidate of model.search (k1={list(self.k1)}, k2={list(self.k2)}) leaves the frame: the "
                f"mildest, k1={mildest[0]}, k2={mildest[1]}: {exc}",
                "narrow model.search.k1 / model.search.k2 towards 0",
            ) from exc

    @staticmethod
    def _axis(start: float, stop: float, step: float) -> list[float]:
        n = math.floor((stop - start) / step + 1e-9) + 1
        return [round(start + i * step, 6) for i in range(n)]

    def coarse(self) -> list[tuple[float, float]]:
        """Every ``(k1, k2)`` of the coarse grid."""
        return [(a, b) for a in self._axis(*self.k1) for b in self._axis(*self.k2)]

    def micro(self, k1: float, k2: float) -> list[tuple[float, float]]:
        """The finer grid around ``(k1, k2)`` (itself included)."""
        d1, d2 = self.k1[2] / self.micro_divisor, self.k2[2] / self.micro_divisor
        steps = range(-self.micro_steps, self.micro_steps + 1)
        return [(round(k1 + i * d1, 6), round(k2 + j * d2, 6)) for i in steps for j in steps]


@dataclass
class Fit:
    """The camera chosen for a group of pairs, its mean training score and how many pairs it saw."""

    camera: Camera
    score: float
    count: int

    def as_dict(self) -> dict[str, Any]:
        return {"camera": self.camera.as_dict(), "score": round(self.score, 4), "count": self.count}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Fit:
        return cls(Camera.from_mapping(values["camera"]), float(values["score"]), int(values["count"]))


@dataclass
class CoefficientTable:
    """The fitted cameras: global, per parent and per bucket, and which one a photo gets."""

    method: str
    global_fit: Fit
    parents: dict[str, Fit] = field(default_factory=dict)
    buckets: dict[str, Fit] = field(default_factory=dict)

    def camera_for(self, bucket: str, parent: str) -> tuple[Camera, str]:
        """The camera for a photo of ``bucket`` (whose orientation is ``parent``) and its level."""
        if bucket in self.buckets:
            return self.buckets[bucket].camera, "bucket"
        if parent in self.parents:
            return self.parents[parent].camera, "parent"
        return self.global_fit.camera, "global"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: what a checkpoint and ``coefficients.json`` keep."""
        return {
            "method": self.method,
            "global": self.global_fit.as_dict(),
            "parents": {k: v.as_dict() for k, v in sorted(self.parents.items())},
            "buckets": {k: v.as_dict() for k, v in sorted(self.buckets.items())},
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CoefficientTable:
        return cls(
            method=str(values["method"]),
            global_fit=Fit.from_dict(values["global"]),
            parents={k: Fit.from_dict(v) for k, v in values.get("parents", {}).items()},
            buckets={k: Fit.from_dict(v) for k, v in values.get("buckets", {}).items()},
        )

    def training_score(self) -> float:
        """The mean training score of the search: each bucket's own fit where it has one, the global
        fit's for the remaining pairs."""
        own = sum(f.score * f.count for f in self.buckets.values())
        counted = sum(f.count for f in self.buckets.values())
        rest = max(self.global_fit.count - counted, 0)
        return (own + self.global_fit.score * rest) / max(counted + rest, 1)

    @classmethod
    def identity(cls) -> CoefficientTable:
        return cls(method="identity", global_fit=Fit(Camera(), math.nan, 0))


Scorer = Callable[[np.ndarray, np.ndarray], Any]


def _mean_scores(pairs: Sequence[Pair], candidates: Sequence[tuple[float, float]], scorer: Scorer) -> list[float]:
    """The mean score of each ``(k1, k2)`` candidate over ``pairs`` (-inf where it leaves a frame).

    Pairs are the outer loop so that the scorer's cache of the target's features serves every
    candidate of a pair.
    """
    totals = [0.0] * len(candidates)
    for pair in pairs:
        for c, (k1, k2) in enumerate(candidates):
            if totals[c] == -math.inf:
                continue
            try:
                corrected = undistort(pair.input, Camera(k1, k2))
            except FrameError:
                totals[c] = -math.inf
                continue
            totals[c] += float(scorer(corrected, pair.target).score)
    return [t / max(len(pairs), 1) for t in totals]


def grid_search(pairs: Sequence[Pair], grid: SearchGrid, scorer: Scorer) -> Fit:
    """The best ``(k1, k2)`` for ``pairs``: the coarse grid, then the finer grid around its best.

    Ties keep the earlier candidate (the coarse grid's order), so the result is deterministic.
    """
    coarse = grid.coarse()
    scores = _mean_scores(pairs, coarse, scorer)
    best = max(range(len(coarse)), key=lambda c: (scores[c], -c))
    top = (scores[best], *coarse[best])
    micro = [c for c in grid.micro(top[1], top[2]) if c != top[1:]]
    for (k1, k2), value in zip(micro, _mean_scores(pairs, micro, scorer), strict=True):
        if value > top[0]:
            top = (value, k1, k2)
    if not math.isfinite(top[0]):
        raise ConfigError(
            f"every candidate of model.search ({grid}) leaves the frame of the training photos",
            "narrow model.search.k1 / model.search.k2 towards 0",
        )
    return Fit(Camera(top[1], top[2]), float(top[0]), len(pairs))


def fit_table(
    pairs: Sequence[Pair], method: str, grid: SearchGrid, scorer: Scorer, min_support: int = 8
) -> CoefficientTable:
    """Fit the cameras of ``method`` on the training ``pairs``.

    Args:
        pairs: Training pairs (input and target at the fit's resolution).
        method: ``identity`` (no camera; its training score is still measured), ``global`` (one
            camera) or ``bucket`` (per bucket, with fallback to the parent's fit, then the global
            one, below ``min_support`` pairs).
        grid: The coefficient grid.
        scorer: ``scorer(prediction, target).score``, 0-100.
        min_support: Fewest pairs a bucket or parent needs for a fit of its own.
    """
    if method not in METHODS:
        raise ConfigError(f"model.method={method!r} is not a heuristic", f"use one of {list(METHODS)}")
    if not pairs:
        if method == "identity":
            return CoefficientTable.identity()
        raise ConfigError("there are no labelled training pairs to fit coefficients on", "check data.root")
    if method == "identity":
        return CoefficientTable(method, Fit(Camera(), _mean_scores(pairs, [(0.0, 0.0)], scorer)[0], len(pairs)))
    table = CoefficientTable(method=method, global_fit=grid_search(pairs, grid, scorer))
    log.info("global fit: %s (score %.2f on %d pairs)", table.global_fit.camera.as_dict(), table.global_fit.score,
             len(pairs))  # fmt: skip
    if method == "bucket":
        counts: dict[str, int] = {}
        for pair in pairs:
            counts[pair.bucket] = counts.get(pair.bucket, 0) + 1
        # An orientation is fitted only when one of its buckets lacks support and needs its fallback.
        needed = {pair.parent for pair in pairs if counts[pair.bucket] < min_support}
        for level, key in (("parents", "parent"), ("buckets", "bucket")):
            groups: dict[str, list[Pair]] = {}
            for pair in pairs:
                groups.setdefault(getattr(pair, key), []).append(pair)
            for name, members in sorted(groups.items()):
                if key == "parent" and name not in needed:
                    continue
                if len(members) >= min_support:
                    fit = grid_search(members, grid, scorer)
                    getattr(table, level)[name] = fit
                    log.info("%s %s: %s (score %.2f on %d pairs)", key, name, fit.camera.as_dict(), fit.score,
                             len(members))  # fmt: skip
                else:
                    log.info("%s %s: %d pairs < min_support=%d, falls back", key, name, len(members), min_support)
    return table
