"""The detection family under ``trainer=ddp_sim`` and deterministic on CPU (the checks of
tests/test_families.py; a file of its own so that pytest-xdist's ``--dist loadfile`` can run it
beside the other families' two-process runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import compose_cfg
from tests.entry_harness import run_entry_point
from tests.test_experiments import _shapes
from tests.test_families import QUIET, FamilyRuns, assert_ddp_run_like_single, assert_same_seed_same_metrics

DETECTION = ["experiment=shapes_det", "trainer.max_epochs=1", *QUIET]


@pytest.fixture(scope="module")
def detection(tmp_path_factory: pytest.TempPathFactory) -> FamilyRuns:
    root = tmp_path_factory.mktemp("detection_family")
    return FamilyRuns(root, "shapes_det", [*DETECTION, *_shapes(root)])


@pytest.mark.slow
def test_detection_ddp_sim_scores_every_image_once(
    detection: FamilyRuns, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The DDP run's mAP is over the images of both processes: its last checkpoint, predicted on one
    process and scored offline, gives the mAP the two processes logged."""
    from src.core.predicting import predict

    single, ddp = assert_ddp_run_like_single(detection)
    assert ddp["val/samples"] == single["val/samples"] == 8
    assert {"test/map", "test/map_50"} <= set(ddp) and 0 < ddp["val/map_50"] <= 1  # not a trivial 0 == 0 below
    folder = predict(compose_cfg([*detection.args, "run_name=ddp", "split=val"], detection.root, "predict"))
    result = run_entry_point("evaluate", [f"path={folder}", "log_mlflow=false"], tmp_path, monkeypatch, capfd)
    assert result.code == 0, result.output[-3000:]
    scored = json.loads((folder / "eval" / "metrics.json").read_text())["metrics"]
    for metric, key in (("bbox/AP50", "val/map_50"), ("bbox/AP", "val/map"), ("bbox/AR100", "val/mar_100")):
        assert scored[metric] == pytest.approx(ddp[key], rel=1e-5, abs=1e-6), metric


@pytest.mark.slow
def test_detection_same_seed_same_metrics_other_seed_other_loss(detection: FamilyRuns) -> None:
    assert_same_seed_same_metrics(detection)
