"""The artifact file format and the ``python -m src.deploy.inflate`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src.core.errors import DataError
from src.core.resolvers import PROJECT_ROOT
from src.datamodules.video.codec import to_rgb
from src.deploy.inflate import main
from src.modules.postfilter.artifact import (
    PostFilterArtifact,
    filter_frames,
    inflate,
    read_artifact,
    unpack,
    write_artifact,
)
from src.modules.postfilter.network import PostFilterCNN
from src.modules.postfilter.quant import PostFilterQuantizer, convert, int8_layers, prepare_qat
from tests.video_support import one_thread, toy_datamodule  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def make_artifact(folder: Path, **arch: int) -> Path:
    """A filter observed on random frames (no training) and exported."""
    torch.manual_seed(0)
    net = PostFilterCNN(**arch)
    torch.nn.init.normal_(net.body[-1].weight, std=0.02)
    net.body = prepare_qat(net.body, net.body_channels, PostFilterQuantizer(averaging_constant=1.0))
    with torch.no_grad():
        net(torch.randint(0, 256, (2, 3, 32, 32)).float() / 255)
    path = folder / "postfilter_int8.pfq"
    write_artifact(path, PostFilterArtifact(net.arch(), "rgb", int8_layers(convert(net.body))))
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default 34.7 k-parameter filter."""
    return make_artifact(tmp_path_factory.mktemp("artifact"))


def test_artifact_round_trip_and_size(artifact: Path) -> None:
    loaded = read_artifact(artifact)
    assert loaded.arch == {"channels": 3, "features": 32, "depth": 5, "kernel_size": 3, "unshuffle": 2}
    weights = sum(layer.weight.numel() for layer in loaded.layers)
    assert weights == 34_560 and artifact.stat().st_size < 50_000  # int8 weights, compressed
    blob = artifact.read_bytes()
    with pytest.raises(DataError, match="not a post-filter artifact"):
        unpack(b"XXXX" + blob[4:], "x.pfq")
    with pytest.raises(DataError, match="is corrupt"):
        unpack(blob[:200], "x.pfq")
    with pytest.raises(DataError, match="no post-filter artifact at"):
        read_artifact(artifact.parent / "missing.pfq")


def test_inflate_command_filters_a_decoded_video(tmp_path: Path) -> None:
    artifact = make_artifact(tmp_path, features=8, depth=3)
    dm = toy_datamodule(tmp_path / "cache")
    dm.setup("fit")
    out = tmp_path / "filtered.npy"
    assert main([str(artifact), str(dm.encoded.path), str(out)]) == 0
    frames = np.load(out)
    expected = to_rgb(filter_frames(inflate(artifact), dm.decoded).numpy(), "rgb")
    assert frames.shape == (120, 144, 176, 3) and np.array_equal(frames, expected)
    raw = tmp_path / "filtered.raw"
    proc = subprocess.run(
        [sys.executable, "-m", "src.deploy.inflate", str(artifact), str(dm.encoded.path), str(raw)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert raw.read_bytes() == frames.tobytes()
    assert main([str(tmp_path / "none.pfq"), str(dm.encoded.path), str(out)]) == 2
