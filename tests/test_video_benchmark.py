"""The video post-filter benchmark's own logic: the recipes it trains and the finding it writes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("video_postfilter_bench", ROOT / "benchmarks" / "video_postfilter.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _run(gain: float, rms: float, steps: int = 240) -> dict[str, float]:
    return {"gain": gain, "rms": rms, "steps": steps, "decoded": 34.8, "within1": 52.0}


def test_recipes_scale_the_toy_and_keep_qat_to_the_last_epochs(bench: ModuleType) -> None:
    args = bench.parse([])
    assert (args.seeds, args.bikes_frames, args.bikes_crfs) == (3, 60, [32, 38])
    toy = bench.recipe(args)
    assert toy == ["trainer.max_epochs=12", "callbacks.qat.start_epoch=9", "data.patches_per_epoch=320"]
    assert bench.recipe(args, epochs_factor=4)[:2] == ["trainer.max_epochs=48", "callbacks.qat.start_epoch=45"]
    assert bench.recipe(args, patches_factor=4)[2] == "data.patches_per_epoch=1280"
    smoke = bench.parse(["--epochs", "2", "--patches", "32", "data.num_workers=0"])
    assert bench.recipe(smoke) == ["trainer.max_epochs=2", "callbacks.qat.start_epoch=0", "data.patches_per_epoch=32"]
    assert smoke.overrides == ["data.num_workers=0"]
    keys = [c.key for c in bench.cases(args)]
    assert keys == ["carphone_crf32", "bikes_crf32", "bikes_crf38"]
    assert "data.max_frames=60" in bench.cases(args)[1].overrides


def test_budget_finding_says_whether_the_correction_survives_rounding(bench: ModuleType) -> None:
    toy = bench.Case("bikes_crf32", "bikes", 32, [], runs=[_run(0.0, 0.02), _run(0.0, 0.03)])
    flat = [("toy", toy.runs), ("4x epochs", [_run(0.0, 0.004, 960)]), ("MSE", [_run(0.001, 0.2)])]
    text = bench.budget_finding(toy, flat)
    assert "toy (240 steps, n=2) +0.000 dB, correction 0.025 grey levels RMS" in text
    assert "None lifts the correction to half a grey level (largest: MSE, 0.200 RMS)" in text
    assert "no int8 gain exceeds +0.001 dB" in text and "52.0%" in text
    grown = [*flat, ("4x patches at 64 px", [_run(0.12, 0.7, 960)])]
    text = bench.budget_finding(toy, grown)
    assert "With 4x patches at 64 px the correction reaches 0.700 grey levels RMS" in text
    assert "largest int8 gain is +0.120 dB (4x patches at 64 px)" in text and "None lifts" not in text
