"""Which images of a dataset PIL cannot decode, checked once per file and remembered on disk.

An undecodable file (truncated download, an HTML error page saved as ``.jpg``, zero bytes) would
otherwise stop training at the first batch that draws it, possibly hours in. The datamodule checks
every image at setup instead; ``data.bad_images`` says what happens to the ones that fail.

Decoding every image of a large dataset on every run would cost minutes, so verdicts are cached in
``<root>/image_check.json``, keyed by each file's size and modification time: a later run only
decodes the files that are new or changed (the 1,797 digits: ~0.2 s the first time, ~10 ms after).
A read-only dataset folder simply gets no cache.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from src.core.io import write_json_atomic

#: What to do with images that do not decode (``data.bad_images``).
BAD_IMAGE_POLICIES: tuple[str, ...] = ("raise", "quarantine")
#: The cache of decode verdicts, in the dataset folder.
CHECK_CACHE_NAME = "image_check.json"
#: What PIL raises for files it cannot read or decode.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)
#: Bumped when the meaning of a cached verdict changes.
CACHE_VERSION = 1


def decodes(path: Path) -> bool:
    """Whether PIL can open ``path`` and decode all of its pixels (truncated files fail here)."""
    try:
        with Image.open(path) as img:
            img.load()
    except DECODE_ERRORS:
        return False
    return True


def _signature(path: Path) -> list[int] | None:
    """``[size in bytes, mtime in ns]`` of a file, or None if it cannot be stat'ed."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _key(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


class DecodeCheckCache:
    """Decode verdicts of a dataset's images, keyed by relative path, size and mtime.

    Args:
        root: The dataset folder; the cache file is ``<root>/image_check.json``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / CHECK_CACHE_NAME
        self.entries: dict[str, list] = self._read()
        self.changed = False

    def _read(self) -> dict[str, list]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # absent or unreadable: check everything again
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        entries = data.get("images")
        return entries if isinstance(entries, dict) else {}

    def decodes(self, path: Path) -> bool:
        """The cached verdict while the file is unchanged, else a fresh decode (then cached)."""
        signature = _signature(path)
        if signature is None:
            return False
        key = _key(path, self.root)
        entry = self.entries.get(key)
        if isinstance(entry, list) and entry[:2] == signature and len(entry) == 3:
            return bool(entry[2])
        ok = decodes(path)
        self.entries[key] = [*signature, ok]
        self.changed = True
        return ok

    def save(self) -> None:
        """Write the verdicts back if any were added; a read-only folder keeps no cache."""
        if self.changed:
            with contextlib.suppress(OSError):
                write_json_atomic(self.path, {"version": CACHE_VERSION, "images": self.entries})
            self.changed = False


def undecodable(paths: Sequence[Path], root: Path) -> list[int]:
    """Indices of the ``paths`` PIL cannot decode (checked through the dataset's cache).

    Args:
        paths: Image files.
        root: The dataset folder holding the cache file.

    Returns:
        Positions in ``paths`` of the files that fail to decode, in order.
    """
    cache = DecodeCheckCache(root)
    bad = [i for i, path in enumerate(paths) if not cache.decodes(path)]
    cache.save()
    return bad
