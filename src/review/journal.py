"""The review journal: every decision appended at once, fsynced, and replayed on restart.

One JSON object per line::

    {"seq": 7, "time": "...", "reviewer": "tab-3f2a", "image_id": "digit_0042",
     "action": "relabel", "label": 5}
    {"seq": 8, "time": "...", "reviewer": "tab-3f2a", "action": "undo", "undoes": 7}

``action`` is ``keep``, ``relabel`` (with ``label``, the new class index), ``trash``, ``skip`` or
``undo`` (``undoes``: the ``seq`` it takes back). A killed server loses nothing: a line is on disk
before the answer is sent; a torn last line (the process died while writing it) is ignored on
replay and cut from the file when the journal is opened again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.core.errors import DataError
from src.core.manifest import utc_now

ACTIONS = ("keep", "relabel", "trash", "skip")
#: Actions that decide an image (a skip only moves it to the back of the reviewer's queue).
DECISIONS = ("keep", "relabel", "trash")


@dataclass(frozen=True)
class Entry:
    """One journal line."""

    seq: int
    reviewer: str
    action: str
    image_id: str | None = None
    label: int | None = None
    undoes: int | None = None
    time: str = ""

    def to_json(self) -> str:
        body = {k: v for k, v in self.__dict__.items() if v is not None}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))


def read_entries(path: Path) -> list[Entry]:
    """Every complete line of the journal (a torn last line is dropped).

    Raises:
        DataError: A line in the middle is not a journal entry (naming file and line).
    """
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw: dict[str, Any] = json.loads(line)
            entries.append(Entry(**raw))
        except (ValueError, TypeError) as exc:
            if number == len(lines):  # the write the process died in
                break
            raise DataError(
                f"{path}:{number}: not a review journal entry ({exc})",
                "restore the file from a backup, or move it away to start the review again",
            ) from exc
    return entries


def effective(entries: list[Entry]) -> list[Entry]:
    """The entries that still count: every action not taken back by an undo, in order."""
    undone = {e.undoes for e in entries if e.action == "undo"}
    return [e for e in entries if e.action != "undo" and e.seq not in undone]


def decisions(entries: list[Entry]) -> dict[str, Entry]:
    """The last effective decision (keep, relabel, trash) of each image."""
    return {e.image_id: e for e in effective(entries) if e.action in DECISIONS and e.image_id}


class Journal:
    """The append-only journal file of one review.

    Args:
        path: ``<review dir>/journal.jsonl``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = read_entries(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a+b")  # noqa: SIM115 - held open for the server's life
        self._drop_torn_tail()

    def _drop_torn_tail(self) -> None:
        """Cut a last line the process died writing (no newline): the next entry starts clean."""
        self._handle.seek(0, os.SEEK_END)
        size = self._handle.tell()
        if not size:
            return
        self._handle.seek(max(0, size - 65536))
        tail = self._handle.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            self._handle.truncate(size - len(tail) + cut + 1 if cut >= 0 else 0)
            self._sync()

    def _sync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def append(self, reviewer: str, action: str, **fields: Any) -> Entry:
        """Write one entry and fsync it before returning it."""
        seq = self.entries[-1].seq + 1 if self.entries else 1
        entry = Entry(seq=seq, reviewer=reviewer, action=action, time=utc_now(), **fields)
        self._handle.write((entry.to_json() + "\n").encode())
        self._sync()
        self.entries.append(entry)
        return entry

    def close(self) -> None:
        self._handle.close()
