"""The project's exception types.

Every message names the file, field or value at fault, what was expected, and the fix, so that a
user reading the last line of a failed run knows what to change without reading a traceback.
"""

from __future__ import annotations


class PodiumError(Exception):
    """Base class of every error podium raises on purpose.

    Entry points catch it, print its message without a traceback and exit with ``exit_code``.
    """

    exit_code: int = 2

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what}\n  fix: {fix}" if fix else what)


class ConfigError(PodiumError):
    """A config value or command-line override is missing, of the wrong type or out of range."""


class DataError(PodiumError):
    """A data file is missing, unreadable, of the wrong format or holds invalid values."""


class RunStateError(PodiumError):
    """A run directory is in a state the requested command cannot continue from."""


class TrainingError(PodiumError):
    """Training itself failed (for example a non-finite loss)."""

    exit_code = 3
