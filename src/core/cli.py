"""Entry-point plumbing: config checks, warnings, and clean errors with a non-zero exit.

The console gets ``podium: error: <message>`` (no traceback) for a PodiumError; the job's log file
(``<run dir>/<job>.log``, see ``src.core.lifecycle``) gets the full traceback of every error, and
Python's warnings (captured into logging while the job runs).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from src.core.config import (
    check_override_types,
    group_overrides,
    print_config_tree,
    require_experiment,
    require_values,
    task_overrides,
)
from src.core.errors import PodiumError
from src.core.lifecycle import log_to_files, podium_error
from src.core.ranks import process_rank

log = logging.getLogger("podium")

QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*Consider setting `persistent_workers=True`.*",
    ".*The number of training batches.*is smaller than the logging interval.*",
    ".*FutureWarning.*",
    ".*is an invalid metric name.*",
    # OnExceptionCheckpoint makes Lightning look for a "last" checkpoint on a fresh start;
    # podium passes the resume checkpoint explicitly.
    ".*was called without a model.*",
    ".*there is no last checkpoint available.*",
    ".*litlogger.*",
)


def check_config(cfg: DictConfig, config_name: str, needs_experiment: bool = True) -> None:
    """Validate the composed config: an experiment is chosen (if needed), overrides are typed,
    no mandatory value (``???``) is left unset."""
    if needs_experiment:
        require_experiment(cfg)
    overrides = task_overrides()
    if overrides:
        base = compose(config_name=config_name, overrides=group_overrides(overrides))
        check_override_types(cfg, base, overrides)
    require_values(cfg)


def run_entry(
    fn: Callable[[DictConfig], Any], cfg: DictConfig, config_name: str = "train", needs_experiment: bool = True
) -> Any:
    """Run an entry point's job; PodiumErrors print their message and exit non-zero.

    Args:
        fn: The job (e.g. ``src.core.training.train``).
        cfg: The composed Hydra config.
        config_name: The entry config's name, for re-composing defaults.
        needs_experiment: Fail unless an experiment (data and model) is chosen; jobs that
            consume other runs (ensembles) pass False.

    Returns:
        Whatever ``fn`` returns (the optimized metric for sweeps).
    """
    if cfg.get("extras", {}).get("ignore_warnings"):
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        warnings.filterwarnings("ignore", category=FutureWarning)
    logging.captureWarnings(True)  # into the job's log (and the console), through "py.warnings"
    try:
        check_config(cfg, config_name, needs_experiment)
        if cfg.get("extras", {}).get("print_config") and process_rank() == 0:
            print_config_tree(cfg)
        return fn(cfg)
    except Exception as exc:
        err = podium_error(exc) if isinstance(exc, PodiumError | InstantiationException) else None
        log_to_files(f"podium: error: {err or exc}", exc)
        if err is None:
            raise
        print(f"podium: error: {err}", file=sys.stderr, flush=True)
        drop_stray_run_dir(cfg)
        sys.exit(err.exit_code)
    finally:
        logging.captureWarnings(False)


def drop_stray_run_dir(cfg: DictConfig) -> None:
    """Remove the folder Hydra made for a run that failed before it recorded anything.

    A run directory without ``manifest.json`` holds only Hydra's own files (``.hydra/``, the
    job log): nothing a later run could resume from, so a rejected command leaves no trace.
    """
    if process_rank() != 0:
        return
    try:
        run_dir = Path(cfg.paths.output_dir)
    except OmegaConfBaseException:  # an unresolvable config has no run directory to clean
        return
    if run_dir.is_dir() and not (run_dir / "manifest.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # only succeeds if the experiment folder is now empty
