"""OmegaConf resolvers podium's configs use. Registered on import of ``src.core``."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+\-]+")
MAX_RUN_NAME = 96


def project_root() -> str:
    """The repository root (the folder holding ``train.py`` and ``configs/``)."""
    return str(PROJECT_ROOT)


def run_name_from_overrides(override_dirname: str | None) -> str:
    """A stable, filesystem-safe run name from Hydra's ``override_dirname``.

    The same command line always maps to the same name, so re-running it finds (and resumes)
    its run directory. No overrides gives ``default``; long names keep a readable prefix plus a
    hash of the full string so two different commands never collide.
    """
    if not override_dirname:
        return "default"
    name = _UNSAFE.sub("_", override_dirname).strip("._") or "default"
    if len(name) > MAX_RUN_NAME:
        digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:10]
        name = f"{name[: MAX_RUN_NAME - 11]}-{digest}"
    return name


def register_resolvers() -> None:
    """Register ``podium.project_root`` and ``podium.run_name`` (idempotent)."""
    for name, fn in (("podium.project_root", project_root), ("podium.run_name", run_name_from_overrides)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
