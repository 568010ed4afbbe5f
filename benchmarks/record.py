"""Benchmark results as data: every benchmark writes ``benchmarks/results/<name>.json``.

A result file holds the figures (each a mean ± std over repeats, with the per-repeat values), the
targets and whether each is met, the exact command, the commit (SHA and dirty flag), the date,
the machine (CPU model and count, load average before and after) and the package versions.
``benchmarks/report.py`` renders the README's benchmark section from these files.

A target is met only when it holds on the mean *and* the margin to the threshold exceeds the
standard deviation over the repeats (one repeat: std 0, the mean must hold). Use a paired
difference (e.g. blend − best member per seed, threshold 0) to test "A beats B".

Usage from a benchmark script::

    from record import Recorder, stat
    rec = Recorder("digits", title="Digits accuracy and wall time")
    rec.figure("val_acc", [0.99, 0.98, 0.99], label="val/acc", digits=4)
    rec.target("val_acc", ">=", 0.97)
    rec.write(summary="...")
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Where result files go; PODIUM_BENCH_RESULTS redirects them (smoke runs of a benchmark).
RESULTS = Path(os.environ.get("PODIUM_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
SCHEMA_VERSION = 1
OPS = (">=", "<=", ">", "<", "in")


def stat(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std (0 for one value), n and the values themselves."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("a figure needs at least one value")
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(vals), "values": vals}


def target_met(mean: float, std: float, op: str, threshold: float | Sequence[float]) -> tuple[bool, float]:
    """Whether ``mean op threshold`` holds with a margin larger than ``std``; returns (met, margin).

    The margin is how far the mean is inside the allowed region (negative: outside). For ``in``
    (a closed range ``[lo, hi]``) it is the distance to the nearer end.
    """
    if op not in OPS:
        raise ValueError(f"unknown target operator {op!r}; use one of {OPS}")
    if op == "in":
        lo, hi = (float(t) for t in threshold)  # type: ignore[union-attr]
        margin = min(mean - lo, hi - mean)
    elif op in (">=", ">"):
        margin = mean - float(threshold)  # type: ignore[arg-type]
    else:
        margin = float(threshold) - mean  # type: ignore[arg-type]
    if not math.isfinite(margin):
        return False, margin
    holds = margin > 0 if op in (">", "<") else margin >= 0
    return bool(holds and (std == 0 or margin > std)), margin


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Commit, date and machine of a benchmark run."""
    sha = _git("rev-parse", "HEAD")
    # results/ itself is excluded: writing one result must not mark the next one dirty
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"))
    return {
        "git_sha": sha or None,
        "git_dirty": dirty,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "lightning": _version("lightning"),
        "timm": _version("timm"),
    }


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class Recorder:
    """Collect one benchmark's figures and targets, then write its result file.

    Args:
        name: File stem under ``benchmarks/results/``.
        title: Heading of its README section.
        command: The exact command (default: this process's argv, with its OMP_NUM_THREADS).
    """

    def __init__(self, name: str, title: str, command: str | None = None) -> None:
        self.name, self.title = name, title
        if command is None:
            script = Path(sys.argv[0]).resolve()
            try:
                script_str = str(script.relative_to(ROOT))
            except ValueError:
                script_str = sys.argv[0]
            prefix = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
            command = prefix + shlex.join(["python", script_str, *sys.argv[1:]])
        self.command = command
        self.figures: dict[str, dict[str, Any]] = {}
        self.targets: list[dict[str, Any]] = []
        self.tables: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.env = environment()
        self.env["load_before"] = _loadavg()
        self._start = time.perf_counter()

    def figure(
        self, key: str, values: float | Sequence[float], label: str | None = None, unit: str = "", digits: int = 3
    ) -> dict[str, Any]:
        """Record a figure (one value or one per repeat); returns its statistics."""
        vals = [values] if isinstance(values, int | float) else list(values)
        fig = {**stat(vals), "label": label or key, "unit": unit, "digits": digits}
        self.figures[key] = fig
        return fig

    def target(self, key: str, op: str, threshold: float | Sequence[float], text: str | None = None) -> bool:
        """Judge figure ``key`` against ``op threshold``; prints and records the verdict."""
        fig = self.figures[key]
        met, margin = target_met(fig["mean"], fig["std"], op, threshold)
        thr = list(threshold) if op == "in" else float(threshold)  # type: ignore[arg-type]
        entry = {"figure": key, "op": op, "threshold": thr, "mean": fig["mean"], "std": fig["std"], "n": fig["n"],
                 "margin": margin, "met": met, "text": text or ""}  # fmt: skip
        self.targets.append(entry)
        print(f"target {format_target(entry, fig)}", flush=True)
        return met

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table rendered under the benchmark's README section (cells as given)."""
        self.tables.append({"title": title, "columns": list(columns), "rows": [[_cell(c) for c in r] for r in rows]})

    def note(self, text: str) -> None:
        """A sentence rendered under the benchmark's figures (an observation, a caveat)."""
        self.notes.append(text)

    def write(self, summary: str = "") -> Path:
        """Write ``benchmarks/results/<name>.json`` atomically and return its path."""
        self.env["load_after"] = _loadavg()
        self.env["wall_s"] = round(time.perf_counter() - self._start, 1)
        data = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "title": self.title,
            "command": self.command,
            "summary": summary,
            "env": self.env,
            "figures": self.figures,
            "targets": self.targets,
            "tables": self.tables,
            "notes": self.notes,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        fd, tmp = tempfile.mkstemp(dir=RESULTS, prefix=f".{self.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1, sort_keys=False)
                fh.write("\n")
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would make a committed result unreadable to others
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        print(f"wrote {path}", flush=True)
        return path


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    return value


def format_value(fig: dict[str, Any], value: float | None = None) -> str:
    """``mean ± std unit`` (or one value) with the figure's digits."""
    d, unit = int(fig.get("digits", 3)), fig.get("unit", "")
    suffix = f" {unit}" if unit else ""
    if value is not None:
        return f"{value:.{d}f}{suffix}"
    if fig["n"] > 1:
        return f"{fig['mean']:.{d}f} ± {fig['std']:.{d}f}{suffix}"
    return f"{fig['mean']:.{d}f}{suffix}"


def format_target(entry: dict[str, Any], fig: dict[str, Any]) -> str:
    """``label mean ± std op threshold (margin m, n=3): met|NOT met``."""
    d = int(fig.get("digits", 3))
    thr = entry["threshold"]
    thr_s = f"[{thr[0]:g}, {thr[1]:g}]" if entry["op"] == "in" else f"{thr:g}"
    verdict = "met" if entry["met"] else "NOT met"
    text = f" — {entry['text']}" if entry.get("text") else ""
    return (f"{fig['label']} {format_value(fig)} {entry['op']} {thr_s} "
            f"(margin {entry['margin']:+.{d}f}, n={entry['n']}): {verdict}{text}")  # fmt: skip
