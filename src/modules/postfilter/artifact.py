"""The int8 post-filter file (``postfilter_int8.pfq``): int8 weights, scales and biases, compressed.

Layout: the 4-byte magic ``PFQ8`` then an xz (LZMA2) stream holding a little-endian uint32 header
length, a JSON header (format version, filter architecture, colour space, per-layer quantization
parameters and array shapes) and the raw arrays, in header order: per conv the int8 weights,
float32 per-channel weight scales, int64 weight zero points and float32 biases. Nothing else is
needed to rebuild the filter: reading it imports neither the training code nor its config.
"""

from __future__ import annotations

import io
import json
import lzma
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src.core.errors import DataError
from src.core.io import atomic_path
from src.modules.postfilter.quant import Int8Conv, Int8PostFilter, QParams

MAGIC = b"PFQ8"
VERSION = 1
_ARRAYS = (("weight", "int8"), ("weight_scale", "float32"), ("weight_zero_point", "int64"), ("bias", "float32"))


@dataclass(frozen=True)
class PostFilterArtifact:
    """A decoded artifact.

    Attributes:
        arch: The float filter's constructor arguments (``PostFilterCNN.arch()``).
        color: Colour space the filter works in (``rgb`` or ``yuv``).
        layers: The quantized convs.
    """

    arch: dict[str, int]
    color: str
    layers: list[Int8Conv]

    def filter(self) -> Int8PostFilter:
        """The rebuilt filter (eval mode)."""
        return Int8PostFilter(self.layers, int(self.arch["unshuffle"])).eval()


def pack(artifact: PostFilterArtifact) -> bytes:
    """Serialize and compress an artifact."""
    header: dict[str, Any] = {"format": "podium-postfilter-int8", "version": VERSION, "arch": artifact.arch,
                              "color": artifact.color, "layers": []}  # fmt: skip
    blobs = io.BytesIO()
    for layer in artifact.layers:
        spec = layer.meta()
        spec["arrays"] = []
        for name, dtype in _ARRAYS:
            array = getattr(layer, name).detach().cpu().numpy().astype(dtype)
            spec["arrays"].append({"name": name, "dtype": dtype, "shape": list(array.shape)})
            blobs.write(array.astype(np.dtype(dtype).newbyteorder("<")).tobytes())
        header["layers"].append(spec)
    head = json.dumps(header, separators=(",", ":")).encode()
    payload = struct.pack("<I", len(head)) + head + blobs.getvalue()
    return MAGIC + lzma.compress(payload, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)


def unpack(blob: bytes, origin: str = "<bytes>") -> PostFilterArtifact:
    """Decompress and parse an artifact.

    Raises:
        DataError: Not an artifact, a corrupt one, or one of an unknown version.
    """
    if not blob.startswith(MAGIC):
        raise DataError(f"{origin} is not a post-filter artifact (no {MAGIC!r} magic)", "pass a postfilter_int8.pfq")
    try:
        payload = lzma.decompress(blob[len(MAGIC) :])
        (n,) = struct.unpack("<I", payload[:4])
        header = json.loads(payload[4 : 4 + n])
    except (lzma.LZMAError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{origin} is corrupt ({exc})", "export it again from its run") from exc
    if header.get("version") != VERSION:
        raise DataError(f"{origin} has format version {header.get('version')}", f"this code reads version {VERSION}")
    offset, layers = 4 + n, []
    for spec in header["layers"]:
        arrays = {}
        for a in spec["arrays"]:
            dtype = np.dtype(a["dtype"]).newbyteorder("<")
            count = int(np.prod(a["shape"], dtype=np.int64))
            arr = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(a["shape"])
            arrays[a["name"]] = torch.from_numpy(arr.astype(a["dtype"]))
            offset += count * dtype.itemsize
        out_q = spec["output_q"]
        layers.append(
            Int8Conv(
                **arrays,
                padding=tuple(spec["padding"]),
                input_q=QParams(**spec["input_q"]),
                relu=bool(spec["relu"]),
                output_q=None if out_q is None else QParams(**out_q),
            )
        )
    return PostFilterArtifact(arch=header["arch"], color=header["color"], layers=layers)


def write_artifact(path: str | Path, artifact: PostFilterArtifact) -> int:
    """Write an artifact atomically; returns its size in bytes."""
    blob = pack(artifact)
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    return len(blob)


def read_artifact(path: str | Path) -> PostFilterArtifact:
    """Read an artifact file.

    Raises:
        DataError: The file is missing, unreadable or not a valid artifact.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"no post-filter artifact at {path}", "pass the postfilter_int8.pfq of a finished run") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc})", "check the file's permissions") from exc
    return unpack(blob, str(path))


def inflate(path: str | Path) -> Int8PostFilter:
    """The int8 filter stored in ``path`` (eval mode), rebuilt from that file alone."""
    return read_artifact(path).filter()


@torch.no_grad()
def run_filter(model: torch.nn.Module, frames: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """A filter's raw output on uint8 frames (CPU).

    Args:
        model: The filter (on CPU), ``(batch, 3, H, W)`` in [0, 1] → same.
        frames: ``(frames, 3, H, W)`` uint8, in the filter's colour space.
        batch: Frames per forward pass.

    Returns:
        ``(frames, 3, H, W)`` float32, unclamped.
    """
    return torch.cat([model(chunk.float() / 255.0) for chunk in frames.split(batch)])


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """[0, 1] float frames → uint8 (clamped, rounded): what a decoder outputs."""
    return (frames.clamp(0, 1) * 255.0).round().to(torch.uint8)


def filter_frames(model: torch.nn.Module, frames: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Run a filter over uint8 frames and round the output back to 8 bits (``(frames, 3, H, W)``)."""
    return to_uint8(run_filter(model, frames, batch))
