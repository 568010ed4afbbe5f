"""Run an entry point (``train.py``, ``cv.py``, ``ensemble.py``, ``predict.py``, ``evaluate.py``) in-process.

``python train.py ...`` costs ~8 s of imports per call; calling the script's ``@hydra.main``
function in the test process costs a config composition. :func:`run_entry_point` reproduces what
the command line does (``sys.argv``, ``PODIUM_ROOT``, a fresh Hydra) and undoes what the command
does to the process afterwards: Hydra's logging handlers (the per-run log file and the console
handler bound to the captured stdout) and singletons, the working directory, the warning filters,
environment variables (``seed_everything`` sets ``PL_GLOBAL_SEED``) and the global RNG states.

Import the entry points before any test captures output (this module does it on import): Lightning
binds a logging handler to ``sys.stderr`` when first imported, and a test's capture stream is
closed when that test ends.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from src.core.resolvers import PROJECT_ROOT

ENTRY_POINTS = ("train", "cv", "ensemble", "predict", "evaluate")
_MODULES: dict[str, ModuleType] = {}


@dataclass(frozen=True)
class EntryResult:
    """What one in-process command left: its exit code and captured output.

    Attributes:
        code: The ``SystemExit`` code (0 when the entry function returned normally).
        out: Captured stdout.
        err: Captured stderr.
    """

    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        """stdout and stderr together (for message assertions)."""
        return self.out + self.err


def load_entry(name: str) -> ModuleType:
    """Import ``<repo>/<name>.py`` once; its ``main`` finds ``configs/`` next to the file.

    Hydra resolves ``config_path`` relative to the task function's module; for a module that is
    not ``__main__`` it looks for a Python package, so the task function is marked as defined in
    ``__main__``, which makes Hydra use its file (as under ``python train.py``).
    """
    if name not in ENTRY_POINTS:
        raise ValueError(f"unknown entry point {name!r}; use one of {ENTRY_POINTS}")
    if name not in _MODULES:
        path = PROJECT_ROOT / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"podium_entry_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main.__wrapped__.__module__ = "__main__"
        _MODULES[name] = module
    return _MODULES[name]


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


class _ProcessState:
    """The process-wide state Hydra changes during a run, captured so it can be put back."""

    def __init__(self) -> None:
        self.cwd = os.getcwd()
        self.root_handlers = list(logging.getLogger().handlers)
        self.root_level = logging.getLogger().level
        manager = logging.Logger.manager
        self.levels = {
            name: (lg.level, lg.propagate, lg.disabled, list(lg.handlers))
            for name, lg in manager.loggerDict.items()
            if isinstance(lg, logging.Logger)
        }
        self.hydra_cfg = HydraConfig.instance().cfg
        self.environ = dict(os.environ)
        self.rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())

    def restore(self) -> None:
        os.chdir(self.cwd)
        for key in set(os.environ) - set(self.environ):
            del os.environ[key]
        os.environ.update(self.environ)
        random.setstate(self.rng[0])
        np.random.set_state(self.rng[1])
        torch.set_rng_state(self.rng[2])
        root = logging.getLogger()
        for handler in list(root.handlers):
            if handler not in self.root_handlers:
                root.removeHandler(handler)
                handler.close()  # the run's log file (its folder may be gone) and console handler
        for handler in self.root_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(self.root_level)
        for name, lg in logging.Logger.manager.loggerDict.items():
            if not isinstance(lg, logging.Logger):
                continue
            level, propagate, disabled, handlers = self.levels.get(name, (logging.NOTSET, True, False, []))
            for handler in [h for h in lg.handlers if h not in handlers]:
                lg.removeHandler(handler)
                handler.close()
            lg.setLevel(level)
            lg.propagate = propagate
            lg.disabled = disabled
        HydraConfig.instance().cfg = self.hydra_cfg
        GlobalHydra.instance().clear()


def run_entry_point(
    name: str,
    overrides: list[str],
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> EntryResult:
    """Run ``python <name>.py <overrides>`` in this process, rooted at ``root``.

    Args:
        name: ``train``, ``cv``, ``ensemble``, ``predict`` or ``evaluate``.
        overrides: The command-line arguments.
        root: The project root (``PODIUM_ROOT``): outputs/, mlruns/ and data/ live there.
        monkeypatch: Sets ``sys.argv`` and the environment for the call only.
        capfd: Captures what the command prints (file-descriptor level, like a subprocess).

    Returns:
        The exit code and the captured output.
    """
    module = load_entry(name)
    capfd.readouterr()  # drop whatever earlier steps printed
    state = _ProcessState()
    with monkeypatch.context() as patch, warnings.catch_warnings():
        patch.setattr(sys, "argv", [str(PROJECT_ROOT / f"{name}.py"), *overrides])
        patch.setenv("PODIUM_ROOT", str(root))
        patch.delenv("HYDRA_FULL_ERROR", raising=False)  # tracebacks only where a user sees them
        GlobalHydra.instance().clear()
        try:
            module.main()
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        finally:
            state.restore()
    captured = capfd.readouterr()
    return EntryResult(code, captured.out, captured.err)


for _name in ENTRY_POINTS:  # at collection, while sys.stderr is the session's stream
    load_entry(_name)
