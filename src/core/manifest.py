"""Provenance of a run: what code, command, config, packages, machine and data produced it."""

from __future__ import annotations

import hashlib
import platform
import socket
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.core.resolvers import PROJECT_ROOT

PACKAGES = (
    "torch", "torchvision", "lightning", "timm", "torchmetrics", "torch-geometric", "hydra-core",
    "omegaconf", "mlflow", "numpy", "pandas", "scikit-learn", "mambapy", "mamba-ssm",
)  # fmt: skip

# Keys that say where or how a run executes, or what it reports, not what it computes: they may
# change between a run and its resume (another machine, another device count, the folds one job of a
# cross-validation runs, the log it writes) without making it another run.
NON_IDENTITY_KEYS = ("paths", "extras", "force", "logger", "hydra", "run_name", "log_mlflow", "cv.folds",
                     "trainer.devices", "trainer.accelerator", "trainer.num_nodes", "trainer.strategy",
                     "callbacks.rich_progress_bar", "callbacks.epoch_log")  # fmt: skip


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def identity(config: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The resolved config as a plain dict without the keys in NON_IDENTITY_KEYS."""
    container = OmegaConf.to_container(OmegaConf.create(config) if isinstance(config, dict) else config, resolve=True)
    for dotted in NON_IDENTITY_KEYS:
        *parents, leaf = dotted.split(".")
        node = container
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return container


def config_hash(cfg: DictConfig) -> str:
    """sha256 (16 hex chars) of the resolved config minus the keys in NON_IDENTITY_KEYS."""
    text = OmegaConf.to_yaml(OmegaConf.create(identity(cfg)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_leaves(value, f"{prefix}{key}."))
    return out


def config_diff(old: dict[str, Any], cfg: DictConfig, most: int = 6) -> list[str]:
    """``key: old -> new`` for the identity keys in which ``cfg`` differs from the config ``old``.

    Args:
        old: A run's saved resolved config (``config.yaml``).
        cfg: The config of this command.
        most: How many differences to list at most.

    Returns:
        Up to ``most`` lines, sorted by key.
    """
    before, after = _leaves(identity(old)), _leaves(identity(cfg))
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k, "<unset>") != after.get(k, "<unset>"))
    return [f"{k}: {before.get(k, '<unset>')!r} -> {after.get(k, '<unset>')!r}" for k in keys[:most]]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_info() -> dict[str, Any]:
    """Commit SHA and whether tracked files differ from it (None outside a git checkout)."""
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host_info() -> dict[str, Any]:
    import torch

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": __import__("os").cpu_count(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def build_manifest(
    cfg: DictConfig, command: list[str], data_fingerprint: str | None, mlflow_run_id: str | None
) -> dict[str, Any]:
    """The manifest of a run started now.

    Args:
        cfg: The resolved run config.
        command: The command line (``sys.argv``).
        data_fingerprint: The datamodule's fingerprint of its input files, if it has one.
        mlflow_run_id: The MLflow run this run logs to.

    Returns:
        A JSON-serialisable dict.
    """
    return {
        "experiment": cfg.experiment_name,
        "run_name": cfg.run_name,
        "created_at": utc_now(),
        "command": [Path(command[0]).name, *command[1:]] if command else [],
        "git": git_info(),
        "config_hash": config_hash(cfg),
        "packages": package_versions(),
        "host": host_info(),
        "data_fingerprint": data_fingerprint,
        "mlflow_run_id": mlflow_run_id,
        "resumes": [],
    }
