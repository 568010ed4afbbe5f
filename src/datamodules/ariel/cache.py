"""On-disk cache of calibrated planets, keyed by (raw-file fingerprint, chain hash).

Layout: ``<cache_dir>/<chain_hash>/<split>/<planet_id>_<visit>.npz``. Each file holds the
calibrated arrays plus a ``__meta__`` record with the raw-file fingerprint, the chain hash and a
sha256 of the arrays. A changed chain looks in another folder (miss); changed raw files change the
fingerprint (stale, recomputed); a truncated or altered file fails its checksum (recomputed).
Writes are atomic, so a crash never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.core.io import atomic_path

META_KEY = "__meta__"


def arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays' names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class CalibrationCache:
    """Calibrated planets stored under one chain hash.

    Args:
        folder: The cache root (``<cache_dir>``).
        chain_hash: Hash of the calibration settings (``chain.chain_hash``).

    Attributes:
        hits: Entries served from disk since creation.
        misses: Entries that were absent, stale or corrupt.
        reasons: Why each miss happened, ``(path, reason)``.
    """

    folder: Path
    chain_hash: str
    hits: int = 0
    misses: int = 0
    reasons: list[tuple[Path, str]] = field(default_factory=list)

    def path(self, split: str, planet_id: int, visit: int) -> Path:
        """The cache file of one planet visit."""
        return Path(self.folder) / self.chain_hash / split / f"{planet_id}_{visit}.npz"

    def load(self, split: str, planet_id: int, visit: int, fingerprint: str) -> dict[str, np.ndarray] | None:
        """The cached arrays, or None (counted as a miss, with a reason) if absent, stale or corrupt."""
        path = self.path(split, planet_id, visit)
        arrays, reason = _read_verified(path, fingerprint, self.chain_hash)
        if arrays is None:
            self.misses += 1
            self.reasons.append((path, reason))
            return None
        self.hits += 1
        return arrays

    def store(self, split: str, planet_id: int, visit: int, fingerprint: str, arrays: dict[str, np.ndarray]) -> Path:
        """Write one planet visit's arrays atomically and return the file."""
        path = self.path(split, planet_id, visit)
        meta = {"fingerprint": fingerprint, "chain_hash": self.chain_hash, "sha256": arrays_checksum(arrays)}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays, **{META_KEY: np.array(json.dumps(meta, sort_keys=True))})
        return path


def _read_verified(path: Path, fingerprint: str, chain_hash: str) -> tuple[dict[str, np.ndarray] | None, str]:
    """Read a cache file and check its key and checksum; return (arrays or None, reason)."""
    if not path.is_file():
        return None, "absent"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        return None, f"unreadable ({exc.__class__.__name__})"
    try:
        meta = json.loads(str(arrays.pop(META_KEY)))
    except (KeyError, json.JSONDecodeError):
        return None, "no metadata"
    if meta.get("chain_hash") != chain_hash:
        return None, "other chain"
    if meta.get("fingerprint") != fingerprint:
        return None, "stale (raw files changed)"
    if meta.get("sha256") != arrays_checksum(arrays):
        return None, "checksum mismatch"
    return arrays, "hit"
