"""Inflate: rebuild the int8 post-filter from its artifact file alone and run it on decoded frames.

    python -m src.deploy.inflate ARTIFACT DECODED_VIDEO OUTPUT [--size WxH] [--scale-filter bicubic]

``OUTPUT`` ending in ``.npy`` gets a ``(frames, H, W, 3)`` uint8 RGB array; any other name gets the
frames as raw ``rgb24`` bytes, frame after frame. ``--size`` upscales decoded frames first (for a
video coded at reduced resolution), with the same swscale filter used when it was encoded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import numpy as np
import torch

from src.core.errors import DataError, PodiumError
from src.datamodules.video.codec import frame_array, to_rgb
from src.modules.postfilter.artifact import filter_frames, read_artifact


def read_frames(path: Path, color: str, size: tuple[int, int] | None, scale_filter: str) -> torch.Tensor:
    """Decode a video into ``(frames, 3, H, W)`` uint8 in ``color``, resized to ``size`` if given."""
    if not path.is_file():
        raise DataError(f"no decoded video at {path}", "pass the video file to filter")
    try:
        with av.open(str(path)) as container:
            frames = []
            for frame in container.decode(video=0):
                if size is not None and (frame.width, frame.height) != size:
                    frame = frame.reformat(width=size[0], height=size[1], interpolation=scale_filter.upper())
                frames.append(frame_array(frame, color))
    except av.FFmpegError as exc:
        raise DataError(f"cannot decode {path} ({exc})", "pass a video file FFmpeg can read") from exc
    if not frames:
        raise DataError(f"{path} holds no video frames", "pass a non-empty video")
    return torch.from_numpy(np.stack(frames))


def write_frames(path: Path, rgb: np.ndarray) -> None:
    """``(frames, H, W, 3)`` uint8 → ``.npy`` or raw rgb24 bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, rgb)
    else:
        path.write_bytes(np.ascontiguousarray(rgb).tobytes())


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 176x144") from exc
    return w, h


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m src.deploy.inflate", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="postfilter_int8.pfq")
    parser.add_argument("video", type=Path, help="the decoded (compressed) video")
    parser.add_argument("output", type=Path, help="OUT.npy or OUT.raw (rgb24)")
    parser.add_argument("--size", type=_size, default=None, help="upscale decoded frames to WIDTHxHEIGHT first")
    parser.add_argument("--scale-filter", default="bicubic", help="swscale filter of --size")
    parser.add_argument("--batch", type=int, default=8, help="frames per forward pass")
    args = parser.parse_args(argv)
    try:
        artifact = read_artifact(args.artifact)
        frames = read_frames(args.video, artifact.color, args.size, args.scale_filter)
        filtered = filter_frames(artifact.filter(), frames, args.batch)
        write_frames(args.output, to_rgb(filtered.numpy(), artifact.color))
    except PodiumError as exc:
        print(f"inflate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"inflate: {len(filtered)} frames filtered with {args.artifact} "
          f"({args.artifact.stat().st_size} bytes) -> {args.output}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
