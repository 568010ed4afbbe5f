"""Entry-point plumbing: config checks, warnings, and clean errors with a non-zero exit."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from typing import Any

from hydra import compose
from hydra.errors import InstantiationException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from src.core.config import (
    check_override_types,
    group_overrides,
    print_config_tree,
    require_experiment,
    task_overrides,
)
from src.core.errors import PodiumError

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


def podium_error(exc: BaseException) -> PodiumError | None:
    """The PodiumError behind ``exc`` (Hydra wraps errors raised during instantiation)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PodiumError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def check_config(cfg: DictConfig, config_name: str) -> None:
    """Validate the composed config: an experiment is chosen and value overrides are typed."""
    require_experiment(cfg)
    overrides = task_overrides()
    if overrides:
        base = compose(config_name=config_name, overrides=group_overrides(overrides))
        check_override_types(cfg, base, overrides)


def run_entry(fn: Callable[[DictConfig], Any], cfg: DictConfig, config_name: str = "train") -> Any:
    """Run an entry point's job; PodiumErrors print their message and exit non-zero.

    Args:
        fn: The job (e.g. ``src.core.training.train``).
        cfg: The composed Hydra config.
        config_name: The entry config's name, for re-composing defaults.

    Returns:
        Whatever ``fn`` returns (the optimized metric for sweeps).
    """
    if cfg.get("extras", {}).get("ignore_warnings"):
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        check_config(cfg, config_name)
        if cfg.get("extras", {}).get("print_config") and rank_zero_only.rank == 0:
            print_config_tree(cfg)
        return fn(cfg)
    except (PodiumError, InstantiationException) as exc:
        err = podium_error(exc)
        if err is None:
            raise
        print(f"podium: error: {err}", file=sys.stderr, flush=True)
        log.error(str(err))
        sys.exit(err.exit_code)
