"""On-disk cache of codec round trips, keyed by (source fingerprint, codec settings).

Layout: ``<cache_dir>/<source sha256[:16]>/<settings hash>/stream.mkv`` beside ``meta.json``
(the settings, byte counts and the stream's sha256). Both are written atomically and the meta
last, so an entry is either complete or absent; a stream that fails its checksum is re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.core.io import atomic_path, write_json_atomic
from src.datamodules.video.codec import CodecSettings, SourceVideo, encode


@dataclass(frozen=True)
class EncodedVideo:
    """A cached encoded video and its byte accounting.

    Attributes:
        path: The Matroska file.
        file_bytes: Size of the file in bytes (what would be shipped: the rate numerator).
        stream_bytes: Sum of the coded packets in bytes (the bitstream without the container).
        source_bytes: Size of the source file in bytes.
        frames: Number of encoded frames.
    """

    path: Path
    file_bytes: int
    stream_bytes: int
    source_bytes: int
    frames: int

    @property
    def rate(self) -> float:
        """Compressed size as a fraction of the source file size."""
        return self.file_bytes / self.source_bytes


def settings_hash(settings: CodecSettings) -> str:
    """16 hex digits identifying the settings (and encoder versions)."""
    return hashlib.sha256(settings.key_json().encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RoundTripCache:
    """Encoded videos stored under ``folder``.

    Args:
        folder: Cache root (``data.cache_dir``).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def entry(self, source_fingerprint: str, settings: CodecSettings) -> Path:
        """The folder of one (source, settings) pair."""
        return self.folder / source_fingerprint / settings_hash(settings)

    def load(self, source_fingerprint: str, settings: CodecSettings) -> EncodedVideo | None:
        """The cached encoding, or None when absent, incomplete or corrupt."""
        folder = self.entry(source_fingerprint, settings)
        meta_file, stream = folder / "meta.json", folder / "stream.mkv"
        if not meta_file.is_file() or not stream.is_file():
            return None
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if stream.stat().st_size != meta.get("file_bytes") or _sha256(stream) != meta.get("sha256"):
            return None
        return _encoded(stream, meta)

    def get_or_encode(self, source: SourceVideo, fingerprint: str, settings: CodecSettings) -> EncodedVideo:
        """The cached encoding of ``source``, encoding (and storing) it on a miss."""
        hit = self.load(fingerprint, settings)
        if hit is not None:
            return hit
        folder = self.entry(fingerprint, settings)
        stream = folder / "stream.mkv"
        start = time.perf_counter()
        with atomic_path(stream) as tmp:
            stream_bytes = encode(source, settings, tmp)
        meta: dict[str, Any] = {
            "source": str(source.path),
            "source_fingerprint": fingerprint,
            "source_bytes": source.nbytes,
            "settings": settings.key(),
            "file_bytes": stream.stat().st_size,
            "stream_bytes": stream_bytes,
            "frames": len(source.frames),
            "sha256": _sha256(stream),
            "encode_seconds": round(time.perf_counter() - start, 3),
        }
        write_json_atomic(folder / "meta.json", meta)
        return _encoded(stream, meta)


def _encoded(stream: Path, meta: dict[str, Any]) -> EncodedVideo:
    return EncodedVideo(
        path=stream,
        file_bytes=int(meta["file_bytes"]),
        stream_bytes=int(meta["stream_bytes"]),
        source_bytes=int(meta["source_bytes"]),
        frames=int(meta["frames"]),
    )
