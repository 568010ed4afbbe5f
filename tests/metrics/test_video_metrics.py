"""Distortion, rate, score formula, task networks and BD-rate."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from src.core.errors import ConfigError, DataError
from src.metrics.rd import bd_rate
from src.metrics.video import FrameDistortion, ScoreFormula, compression_rate, distortion

ANCHOR_RATE = [0.02, 0.03, 0.045, 0.07]
ANCHOR_PSNR = [27.0, 29.1, 31.0, 33.2]


def test_frame_distortion_is_per_frame_psnr_and_ssim() -> None:
    target = torch.full((3, 3, 16, 16), 0.5)
    preds = target + torch.tensor([0.01, 0.1, 0.0]).view(3, 1, 1, 1)
    preds[2, :, 0, 0] = 0.6  # one pixel off by 0.1: mse = 0.01 / 256
    metric = FrameDistortion()
    metric.update(preds[:2], target[:2])
    metric.update(preds[2:], target[2:])
    per = metric.per_frame()
    expected = torch.tensor([40.0, 20.0, 10 * math.log10(256 / 0.01)])
    assert torch.allclose(per["psnr"], expected, atol=1e-3)
    assert float(metric.compute()["psnr"]) == pytest.approx(float(expected.mean()), abs=1e-3)
    assert per["ssim"][0] > 0.9 and per["ssim"].shape == (3,)
    assert torch.equal(
        distortion((preds * 255).round().to(torch.uint8), (target * 255).round().to(torch.uint8))["psnr"].isfinite(),
        torch.tensor([True, True, True]),
    )


def test_rate_and_challenge_score() -> None:
    assert compression_rate(19_000, 34_000, 590_000) == pytest.approx(53_000 / 590_000)
    score = ScoreFormula("25 * rate + 100 * (1 - ssim)")
    assert score(rate=0.1, ssim=0.9, psnr=30.0) == pytest.approx(12.5)
    assert ScoreFormula("sqrt(10 * mse) + max(0, 40 - psnr)")(mse=0.1, psnr=30.0) == pytest.approx(11.0)


def test_score_formula_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown name 'bitrate'"):
        ScoreFormula("25 * bitrate")
    with pytest.raises(ConfigError, match="is not allowed"):
        ScoreFormula("__import__('os').system('true')")
    with pytest.raises(ConfigError, match="uses d_seg but no seg_network") as err:
        ScoreFormula("100 * d_seg + 25 * rate")
    assert "callbacks.export.score.seg_network" in str(err.value)
    missing = tmp_path / "segnet.pt"
    with pytest.raises(DataError, match=rf"seg_network='{missing}': no such file"):
        ScoreFormula("100 * d_seg + 25 * rate", seg_network=str(missing))
    bad = tmp_path / "posenet.pt"
    bad.write_bytes(b"not a network")
    with pytest.raises(DataError, match="pose_network=.*cannot be loaded"):
        ScoreFormula("sqrt(10 * d_pose)", pose_network=str(bad))


class _Seg(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # 2 classes: bright vs dark pixels
        score = x.mean(dim=1, keepdim=True) - 0.5
        return torch.cat([-score, score], dim=1)


class _Pose(torch.nn.Module):
    def forward(self, pair: torch.Tensor) -> torch.Tensor:  # (pairs, 6, H, W) -> (pairs, 2)
        return torch.stack([pair[:, :3].mean(dim=(1, 2, 3)), pair[:, 3:].mean(dim=(1, 2, 3))], dim=1)


def test_task_networks_from_local_files(tmp_path: Path) -> None:
    seg, pose = tmp_path / "seg.pt", tmp_path / "pose.pt2"
    torch.jit.save(torch.jit.script(_Seg()), str(seg))
    dynamic = ({0: torch.export.Dim.AUTO},)
    torch.export.save(torch.export.export(_Pose(), (torch.rand(2, 6, 8, 8),), dynamic_shapes=dynamic), str(pose))
    score = ScoreFormula("100 * d_seg + sqrt(10 * d_pose) + 25 * rate", str(seg), str(pose))
    original = torch.rand(4, 3, 8, 8)
    same = score.tasks(original, original)
    assert same == {"d_seg": 0.0, "d_pose": 0.0}
    flipped = 1.0 - original  # every pixel changes class; each frame mean m becomes 1 - m
    d = score.tasks(flipped, original)
    assert d["d_seg"] == pytest.approx(1.0)
    diff = (1 - 2 * original.mean(dim=(1, 2, 3))) ** 2  # per frame; pair t holds frames t and t + 1
    expected_pose = float(((diff[:-1] + diff[1:]) / 2).mean())
    assert d["d_pose"] == pytest.approx(expected_pose, rel=1e-4)
    assert score(rate=0.1, **d) == pytest.approx(100 + math.sqrt(10 * expected_pose) + 2.5, rel=1e-4)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_rate(method: str) -> None:
    same = bd_rate(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, ANCHOR_PSNR, method)
    assert same == pytest.approx(0.0, abs=1e-9)
    cheaper = [0.9 * r for r in ANCHOR_RATE]  # the same quality for 10% fewer bytes everywhere
    assert bd_rate(ANCHOR_RATE, ANCHOR_PSNR, cheaper, ANCHOR_PSNR, method) == pytest.approx(-10.0, abs=1e-6)
    better = [p + 0.5 for p in ANCHOR_PSNR]  # +0.5 dB at the same rate: fewer bytes at equal PSNR
    assert bd_rate(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, better, method) < -5.0
    assert math.isnan(bd_rate(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, [p + 20 for p in ANCHOR_PSNR], method))
    with pytest.raises(ConfigError, match="at least 4"):
        bd_rate(ANCHOR_RATE[:3], ANCHOR_PSNR[:3], ANCHOR_RATE[:3], ANCHOR_PSNR[:3], method)
