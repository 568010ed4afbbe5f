"""Atomic file writes: a reader never sees a half-written file.

Everything podium writes that a later process trusts (metrics, manifests, folds, caches,
checkpoints) goes through here: write to a temporary sibling, flush, fsync, then ``os.replace``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Suffix of the temporary siblings written before the rename.
TEMP_SUFFIX = ".tmp"
#: Age (seconds) after which a temporary in a folder shared by several runs counts as abandoned.
STALE_TEMP_S = 3600.0


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left untouched.

    Args:
        path: The final destination. Its parent folder is created if needed.

    Yields:
        A path in the same folder to write the content to.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TEMP_SUFFIX, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _commit(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _commit(tmp: Path, final: Path) -> None:
    """Make ``tmp`` durable, then move it onto ``final`` in one step (the fault tests hook here)."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
    os.replace(tmp, final)


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Write a folder whole: into a hidden sibling, then moved into place.

    predict.py writes its prediction folders and evaluate.py its ``eval/`` folders this way. The
    folder being replaced stays complete until the new one is; a failed or killed writer leaves
    only its hidden staging folder, removed by a later attempt once it is an hour old (another
    process may still be writing it before that). The parent folder is removed again when the
    write fails and nothing else was ever put there.

    Yields:
        The staging folder to write into.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - STALE_TEMP_S
    for stale in final.parent.glob(f".{final.name}.*"):
        if stale.is_dir() and stale.stat().st_mtime < cutoff:
            shutil.rmtree(stale, ignore_errors=True)
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            final.parent.rmdir()  # only succeeds if nothing was ever written there


def is_temp_file(path: Path) -> bool:
    """Whether ``path`` is a temporary sibling made by :func:`atomic_path`."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def sweep_temp_files(folder: str | os.PathLike[str], older_than_s: float = 0.0) -> list[Path]:
    """Delete the temporaries of writes that never completed (a killed process leaves them).

    Args:
        folder: Searched recursively.
        older_than_s: Only delete temporaries at least this old (seconds), so a folder shared
            with a live writer (a data cache) keeps that writer's file.

    Returns:
        The deleted paths.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    cutoff = time.time() - older_than_s
    gone = []
    for p in root.rglob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            if is_temp_file(p) and p.is_file() and p.stat().st_mtime <= cutoff:
                p.unlink()
                gone.append(p)
    return gone


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically and return the path."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def file_fingerprint(paths: list[Path], extra: str = "") -> str:
    """A cheap content fingerprint of files: sha256 over names, sizes and mtimes (ns).

    Args:
        paths: The files to fingerprint, in a stable order.
        extra: Any string that should also change the fingerprint (for example settings).

    Returns:
        A 16-character hex digest.
    """
    import hashlib

    h = hashlib.sha256(extra.encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file's bytes (read in chunks: checkpoints may be large)."""
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
