"""The codec round trip: decode a source video, encode it with a configurable codec, decode it back.

Everything goes through PyAV (FFmpeg): the source is decoded to its native frames, optionally
downscaled with a named swscale filter, encoded (libx264, libx265 or libsvtav1 at a CRF and preset)
into a Matroska file, decoded, and upscaled back to the source size with the same filter. Frames
are handed out as ``(frames, 3, H, W)`` uint8 arrays in RGB (``rgb24``) or full-resolution YUV
(``yuv444p``: the 4:2:0 chroma planes upsampled by swscale, identically for source and decoded).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from src.core.errors import ConfigError, DataError

# CRF ranges of the 8-bit encoders as FFmpeg exposes them (higher CRF: smaller file, lower quality).
CRF_RANGE: dict[str, tuple[int, int]] = {"libx264": (0, 51), "libx265": (0, 51), "libsvtav1": (1, 63)}
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
SVT_PRESETS = tuple(str(p) for p in range(-1, 14))
SCALE_FILTERS = ("point", "fast_bilinear", "bilinear", "bicubic", "area", "gauss", "sinc", "lanczos", "spline")
COLORS = {"rgb": "rgb24", "yuv": "yuv444p"}


@dataclass(frozen=True)
class CodecSettings:
    """What the codec round trip does; every field is part of the cache key.

    Args:
        name: FFmpeg encoder: ``libx264``, ``libx265`` or ``libsvtav1``.
        crf: Constant rate factor (x264/x265: 0–51, SVT-AV1: 1–63).
        preset: Speed preset (x264/x265: ``ultrafast`` … ``veryslow``; SVT-AV1: ``-1`` … ``13``).
        scale: Resolution factor in (0, 1]; below 1 the frames are downscaled before encoding
            and upscaled back after decoding (sizes rounded to even pixels).
        scale_filter: swscale filter of both resizes (``bicubic``, ``lanczos``, ``area``, ...).
        gop: Keyframe interval in frames (None: the encoder's default).
        pix_fmt: Pixel format given to the encoder.
        options: Extra encoder options passed through as strings (``{tune: psnr}``).

    Raises:
        ConfigError: Unknown codec, CRF out of range, unknown preset or filter, bad scale.
    """

    name: str = "libx264"
    crf: int = 32
    preset: str = "medium"
    scale: float = 1.0
    scale_filter: str = "bicubic"
    gop: int | None = None
    pix_fmt: str = "yuv420p"
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "preset", str(self.preset))
        object.__setattr__(self, "options", {str(k): str(v) for k, v in dict(self.options or {}).items()})
        self._check_codec()
        lo, hi = CRF_RANGE[self.name]
        if isinstance(self.crf, bool) or not isinstance(self.crf, int) or not lo <= self.crf <= hi:
            raise ConfigError(
                f"data.codec.crf={self.crf!r} is out of range for {self.name} [{lo}, {hi}]",
                f"set data.codec.crf to an integer in [{lo}, {hi}] (higher: smaller file, lower quality)",
            )
        presets = SVT_PRESETS if self.name == "libsvtav1" else X26X_PRESETS
        if self.preset not in presets:
            raise ConfigError(
                f"data.codec.preset={self.preset!r} is not a {self.name} preset",
                f"use one of {', '.join(presets)}",
            )
        if not 0.0 < float(self.scale) <= 1.0:
            raise ConfigError(f"data.codec.scale={self.scale} is outside (0, 1]", "use 1.0 (no resize) or e.g. 0.5")
        if self.scale_filter not in SCALE_FILTERS:
            raise ConfigError(
                f"data.codec.scale_filter={self.scale_filter!r} is not a swscale filter",
                f"use one of {', '.join(SCALE_FILTERS)}",
            )

    def _check_codec(self) -> None:
        if self.name not in CRF_RANGE:
            raise ConfigError(
                f"data.codec.name={self.name!r} is not a supported codec",
                f"use one of {', '.join(CRF_RANGE)}",
            )
        if self.name not in av.codecs_available:
            raise ConfigError(
                f"codec {self.name} is not in this PyAV build (av {av.__version__})",
                "install the PyAV wheel from PyPI (it bundles libx264, libx265 and libSvtAv1Enc)",
            )

    def key(self) -> dict[str, Any]:
        """The settings plus the encoder library versions: what the encoded bytes depend on."""
        libs = {k: ".".join(map(str, v)) for k, v in sorted(av.library_versions.items())}
        return {**asdict(self), "scale": float(self.scale), "av": av.__version__, "libs": libs}

    def key_json(self) -> str:
        """``key()`` as canonical JSON (hashed into the cache folder name)."""
        return json.dumps(self.key(), sort_keys=True)

    def encoder_options(self) -> dict[str, str]:
        """FFmpeg options of the encoder (logs of x265 kept to errors)."""
        opts = {"crf": str(self.crf), "preset": self.preset}
        if self.gop is not None:
            opts["g"] = str(self.gop)
        if self.name == "libx265":
            params = self.options.get("x265-params")
            opts["x265-params"] = "log-level=error" + (f":{params}" if params else "")
        return {**self.options, **opts}


@dataclass
class SourceVideo:
    """A decoded source video.

    Attributes:
        path: The file.
        frames: The decoded frames (``av.VideoFrame``, presentation order).
        rate: Frame rate (frames per second).
        nbytes: Size of the source file in bytes (the denominator of the compression rate).
    """

    path: Path
    frames: list[av.VideoFrame]
    rate: Fraction
    nbytes: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.frames[0].width, self.frames[0].height


def read_source(path: str | os.PathLike[str], max_frames: int | None = None) -> SourceVideo:
    """Decode every frame of a video file, or keep its first ``max_frames``.

    Args:
        path: The video file.
        max_frames: Keep only the first this many frames (None: all). The rate denominator
            ``nbytes`` is then the file's size times the share of frames kept.

    Raises:
        DataError: The file is missing, unreadable, holds no video frames, or fewer than
            ``max_frames``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data.source={str(path)!r}: no such video file",
            "pass an existing video file, or a bundled clip name (carphone, bikes)",
        )
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path} has no video stream", "pass a video file (mp4, mkv, y4m, ...)")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            frames = list(container.decode(stream))
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise DataError(
            f"cannot decode {path} as a video ({exc})",
            "check that FFmpeg can read the file (ffprobe <file>), or re-encode it to mp4/mkv",
        ) from exc
    if not frames:
        raise DataError(f"{path} decodes to no frames", "pass a video with at least a few frames")
    source = SourceVideo(path=path, frames=frames, rate=Fraction(rate), nbytes=path.stat().st_size)
    return source if max_frames is None else first_frames(source, max_frames)


def first_frames(source: SourceVideo, count: int) -> SourceVideo:
    """The first ``count`` frames of ``source``, its byte size scaled by the share kept.

    Raises:
        DataError: The source has fewer than ``count`` frames.
    """
    total = len(source.frames)
    if count > total:
        raise DataError(
            f"data.max_frames={count} but {source.path} has {total} frames",
            f"use data.max_frames <= {total}, or data.max_frames=null for the whole clip",
        )
    nbytes = max(1, round(source.nbytes * count / total))
    return SourceVideo(path=source.path, frames=source.frames[:count], rate=source.rate, nbytes=nbytes)


def _interp(settings: CodecSettings) -> str:
    return settings.scale_filter.upper()


def coded_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """Frame size given to the encoder: ``scale`` × the source size, rounded to even pixels."""
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def encode(source: SourceVideo, settings: CodecSettings, out_path: Path) -> int:
    """Encode ``source`` into a Matroska file at ``out_path``.

    Returns:
        The summed size of the coded packets in bytes (the bitstream without the container).
    """
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at info level
    width, height = coded_size(*source.size, float(settings.scale))
    stream_bytes = 0
    with av.open(str(out_path), "w", format="matroska") as out:
        stream = out.add_stream(settings.name, rate=source.rate)
        stream.width, stream.height, stream.pix_fmt = width, height, settings.pix_fmt
        stream.options = settings.encoder_options()
        for i, frame in enumerate(source.frames):
            coded = frame.reformat(width=width, height=height, format=settings.pix_fmt, interpolation=_interp(settings))
            coded.pts, coded.time_base = i, Fraction(1) / source.rate
            for packet in stream.encode(coded):
                stream_bytes += packet.size
                out.mux(packet)
        for packet in stream.encode():
            stream_bytes += packet.size
            out.mux(packet)
    return stream_bytes


def decode(path: Path, size: tuple[int, int], settings: CodecSettings, color: str) -> np.ndarray:
    """Decode an encoded file and bring its frames back to the source ``size`` (width, height).

    Returns:
        ``(frames, 3, H, W)`` uint8 array in ``color`` (``rgb`` or ``yuv``).
    """
    width, height = size
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if (frame.width, frame.height) != size:
                frame = frame.reformat(width=width, height=height, interpolation=_interp(settings))
            frames.append(frame_array(frame, color))
    return np.stack(frames)


def frame_array(frame: av.VideoFrame, color: str) -> np.ndarray:
    """One frame as a ``(3, H, W)`` uint8 array in ``rgb`` or ``yuv`` (4:4:4)."""
    if color not in COLORS:
        raise ConfigError(f"data.color={color!r} is not a colour space", "use 'rgb' or 'yuv'")
    if color == "rgb":
        return np.ascontiguousarray(frame.to_ndarray(format="rgb24").transpose(2, 0, 1))
    return np.ascontiguousarray(frame.reformat(format="yuv444p").to_ndarray())


def frames_array(frames: list[av.VideoFrame], color: str) -> np.ndarray:
    """Frames as a ``(frames, 3, H, W)`` uint8 array in ``color``."""
    return np.stack([frame_array(f, color) for f in frames])


def to_rgb(frames: np.ndarray, color: str) -> np.ndarray:
    """``(frames, 3, H, W)`` uint8 in ``color`` → ``(frames, H, W, 3)`` uint8 RGB."""
    if color == "rgb":
        return np.ascontiguousarray(frames.transpose(0, 2, 3, 1))
    out = [
        av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="yuv444p").to_ndarray(format="rgb24") for f in frames
    ]
    return np.stack(out)
