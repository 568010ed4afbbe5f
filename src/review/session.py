"""The state of one review: the queue, who is looking at what, and every decision.

Several reviewers (browser tabs) share one session. Each asks for its next image and gets one
that is neither decided nor leased to another reviewer; the lease lasts until that reviewer acts
on it or ``lease_s`` seconds pass. Every action is written to the journal (fsynced) under the
session's lock before it is answered, so two tabs never lose each other's decisions and a
restarted server resumes from the journal: decided images are done, skipped ones wait at the back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from src.core.errors import ConfigError
from src.review.journal import ACTIONS, Entry, Journal, decisions, effective
from src.review.suspects import Suspect

TOP_K = 3


class Conflict(Exception):
    """An action on an image the reviewer does not hold (another reviewer has it, or it is decided)."""


@dataclass
class Lease:
    reviewer: str
    until: float


class ReviewSession:
    """The queue, the leases and the journal of one review.

    Args:
        suspects: The queue, most suspect first.
        classes: Class names by index.
        journal: The review's journal (replayed: decisions made before a restart count).
        neighbours: ``f(image_id, class index) -> [image ids]``: training images of that class
            that look most like the image.
        lease_s: Seconds an image stays reserved for the reviewer it was shown to.
        clock: Time source (seconds).
    """

    def __init__(
        self,
        suspects: list[Suspect],
        classes: list[str],
        journal: Journal,
        neighbours: Callable[[str, int], list[str]],
        lease_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.suspects = {s.image_id: s for s in suspects}
        self.order = [s.image_id for s in suspects]
        self.classes = classes
        self.journal = journal
        self.neighbours = neighbours
        self.lease_s = lease_s
        self.clock = clock
        self.leases: dict[str, Lease] = {}
        self.lock = threading.Lock()

    # ---- what is decided --------------------------------------------------------------------

    def decided(self) -> dict[str, Entry]:
        return {k: v for k, v in decisions(self.journal.entries).items() if k in self.suspects}

    def skipped_by(self, reviewer: str) -> list[str]:
        """Images this reviewer skipped (still undecided), oldest skip first."""
        done = self.decided()
        skips = [e.image_id for e in effective(self.journal.entries) if e.action == "skip" and e.reviewer == reviewer]
        return [i for i in dict.fromkeys(skips) if i not in done]

    # ---- leases -----------------------------------------------------------------------------

    def _held_by_other(self, image_id: str, reviewer: str) -> bool:
        lease = self.leases.get(image_id)
        return lease is not None and lease.reviewer != reviewer and lease.until > self.clock()

    def _current(self, reviewer: str) -> str | None:
        """The undecided image the reviewer holds a live lease on, if any."""
        now = self.clock()
        held = [i for i, lease in self.leases.items() if lease.reviewer == reviewer and lease.until > now]
        if not held:
            return None
        done = self.decided()  # the journal is replayed once, not once per lease
        return next((i for i in held if i not in done), None)

    def _next(self, reviewer: str) -> str | None:
        """The reviewer's image: the one it holds, else the first free undecided one it has not
        skipped, else its skipped ones again."""
        held = self._current(reviewer)
        if held is not None:
            return held
        done, skipped = self.decided(), self.skipped_by(reviewer)
        free = [i for i in self.order if i not in done and not self._held_by_other(i, reviewer)]
        fresh = [i for i in free if i not in skipped]
        again = [i for i in skipped if i in free]
        return (fresh or again or [None])[0]

    def _lease(self, image_id: str | None, reviewer: str) -> None:
        if image_id is not None:
            self.leases = {k: v for k, v in self.leases.items() if v.reviewer != reviewer}
            self.leases[image_id] = Lease(reviewer, self.clock() + self.lease_s)

    # ---- what the browser sees --------------------------------------------------------------

    def state(self, reviewer: str) -> dict[str, Any]:
        """The reviewer's next image (leased to it), the progress, and whether it can undo."""
        with self.lock:
            image_id = self._next(reviewer)
            self._lease(image_id, reviewer)
            return self._view(reviewer, image_id)

    def _view(self, reviewer: str, image_id: str | None) -> dict[str, Any]:
        last = self._last(reviewer)
        return {
            "classes": self.classes,
            "item": None if image_id is None else self._item(image_id),
            "progress": self.progress(),
            "can_undo": last is not None,
            "last": None if last is None else {"image_id": last.image_id, "action": last.action, "label": last.label},
        }

    def _item(self, image_id: str) -> dict[str, Any]:
        suspect = self.suspects[image_id]
        top = np.argsort(-suspect.probs, kind="stable")[:TOP_K]
        predicted = int(top[0])
        return {
            "image_id": image_id,
            "label": suspect.label,
            "class_name": self.classes[suspect.label],
            "score": round(suspect.score, 4),
            "top": [{"label": int(k), "class_name": self.classes[k], "prob": float(suspect.probs[k])} for k in top],
            "neighbours": [
                {"image_id": n, "class_name": self.classes[predicted]} for n in self.neighbours(image_id, predicted)
            ],
        }

    def progress(self) -> dict[str, Any]:
        """Decided images out of the queue, in all and per current label."""
        done = self.decided()
        per_class = []
        for k, name in enumerate(self.classes):
            ids = [i for i in self.order if self.suspects[i].label == k]
            if ids:
                per_class.append({"class_name": name, "done": sum(i in done for i in ids), "total": len(ids)})
        return {"done": len(done), "total": len(self.order), "per_class": per_class}

    # ---- actions ----------------------------------------------------------------------------

    def act(self, reviewer: str, image_id: str, action: str, label: int | None = None) -> dict[str, Any]:
        """Record ``action`` on ``image_id`` (journal first), then return the reviewer's next image.

        Raises:
            ConfigError: An unknown action, image or class.
            Conflict: Another reviewer holds the image, or it is decided already.
        """
        if action not in ACTIONS:
            raise ConfigError(f"action {action!r}", f"use one of {', '.join(ACTIONS)}")
        if image_id not in self.suspects:
            raise ConfigError(f"image {image_id!r} is not in this review's queue", "act on the image shown")
        if action == "relabel" and (label is None or not 0 <= int(label) < len(self.classes)):
            last = len(self.classes) - 1
            raise ConfigError(f"relabel needs a class index in 0..{last}, got {label!r}", "pick a class")
        with self.lock:
            if self._held_by_other(image_id, reviewer):
                raise Conflict(f"{image_id} is being reviewed in another tab")
            if image_id in self.decided():
                raise Conflict(f"{image_id} was decided already")
            fields: dict[str, Any] = {"image_id": image_id}
            if action == "relabel":
                fields["label"] = int(label)
            self.journal.append(reviewer, action, **fields)
            self.leases.pop(image_id, None)
            following = self._next(reviewer)
            self._lease(following, reviewer)
            return self._view(reviewer, following)

    def _last(self, reviewer: str) -> Entry | None:
        """The reviewer's last action that still counts and can be taken back."""
        done = self.decided()
        for entry in reversed(effective(self.journal.entries)):
            if entry.reviewer != reviewer:
                continue
            decided_by_other = entry.action == "skip" and entry.image_id in done
            return None if decided_by_other else entry
        return None

    def undo(self, reviewer: str) -> dict[str, Any]:
        """Take back the reviewer's last action; its image comes back to this reviewer.

        Raises:
            Conflict: Nothing to undo.
        """
        with self.lock:
            last = self._last(reviewer)
            if last is None:
                raise Conflict("nothing to undo")
            self.journal.append(reviewer, "undo", undoes=last.seq)
            self._lease(last.image_id, reviewer)
            return self._view(reviewer, last.image_id)
