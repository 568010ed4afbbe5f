"""The torch path of the per-read steps agrees with the numpy chain (checked on the CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from src.core.errors import ConfigError
from src.datamodules.ariel.chain import CalibrationChain, calibrate_planet
from src.datamodules.ariel.datamodule import ArielDataModule
from src.datamodules.ariel.layout import ArielLayout
from src.datamodules.ariel.settings import instrument_settings
from src.datamodules.ariel.tables import read_adc, read_axis_info
from src.datamodules.ariel.torch_path import TorchFrontend, split_steps


@pytest.mark.parametrize("chunk", [None, 16])
def test_torch_path_matches_numpy_to_float32_rounding(toy_root: Path, chunk):
    layout = ArielLayout(toy_root)
    pid = int(sorted((toy_root / "train").iterdir())[0].name)
    settings, chain = instrument_settings(None), CalibrationChain.from_config(None)
    adc, axis = read_adc(layout, "train"), read_axis_info(layout)
    frontend = TorchFrontend(split_steps(chain.steps)[0], "cpu")
    plain = calibrate_planet(layout, "train", pid, 0, chain, settings, adc, axis, chunk)
    fused = calibrate_planet(layout, "train", pid, 0, chain, settings, adc, axis, chunk, frontend)
    for key in ("fgs1", "airs"):
        assert fused[f"{key}_flux"].shape == plain[f"{key}_flux"].shape
        z = np.abs(fused[f"{key}_flux"] - plain[f"{key}_flux"]) / np.sqrt(plain[f"{key}_var"])
        assert np.nanmax(z) < 1e-3, key  # rounding, far below the noise
        np.testing.assert_allclose(fused[f"{key}_var"], plain[f"{key}_var"], rtol=1e-4)
        np.testing.assert_allclose(fused[f"{key}_time"], plain[f"{key}_time"], rtol=1e-6)


def test_a_chain_the_torch_path_cannot_run_is_refused():
    chain = CalibrationChain.from_config(["adc", "linearity", "cds", "dark", "bin", "extract"])
    with pytest.raises(ConfigError, match="torch_device"):
        split_steps(chain.steps)
    steps, n = split_steps(CalibrationChain.from_config(["adc", "linearity", "dark", "cds", "bin", "extract"]).steps)
    assert n == 5 and [s.name for s in steps] == ["adc", "linearity", "dark", "cds", "bin"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_is_a_config_error_at_build_time(tmp_path: Path):
    with pytest.raises(ConfigError, match="torch_device='cuda'"):
        ArielDataModule(root=str(tmp_path / "none"), calibration={"torch_device": "cuda"})
