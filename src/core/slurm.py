"""SLURM glue the configs use: signals named in YAML (``configs/trainer/slurm.yaml``)."""

from __future__ import annotations

import signal

from src.core.errors import ConfigError


def signal_named(name: str) -> signal.Signals:
    """The signal called ``name`` (``USR1``, ``SIGUSR1``; what ``sbatch --signal`` accepts).

    Hydra cannot build an enum member by name, and signal numbers differ between platforms, so
    configs name the signal and this looks it up.

    Args:
        name: Signal name, with or without the ``SIG`` prefix.

    Returns:
        The signal.
    """
    key = name.upper()
    key = key if key.startswith("SIG") else f"SIG{key}"
    try:
        return signal.Signals[key]
    except KeyError:
        raise ConfigError(f"{name!r} is not a signal on this platform", "name one such as USR1, USR2 or TERM") from None
