"""Export → artifact → inflate equals the quantized model; report numbers; PTQ fallback; RD report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from src.callbacks.postfilter.export import PostFilterExport, quantized_filter
from src.callbacks.postfilter.qat import QuantizationAwareTraining
from src.callbacks.postfilter.rd_report import RateDistortionReport
from src.core.errors import ConfigError
from src.metrics.video import ScoreFormula
from src.modules.postfilter.artifact import inflate, run_filter
from tests.video_support import one_thread, toy_datamodule, toy_module, toy_trainer  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video_cache")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, cache: Path):
    """A 3-epoch toy run with QAT from epoch 1, exported and RD-reported into ``run``."""
    run = tmp_path_factory.mktemp("run")
    callbacks = [
        QuantizationAwareTraining(start_epoch=1),
        PostFilterExport(dirpath=str(run), score=ScoreFormula("25 * rate + 100 * (1 - ssim)")),
        RateDistortionReport(dirpath=str(run), crfs=[28, 32, 36, 40]),
    ]
    trainer = toy_trainer(run, callbacks, epochs=3)
    module, dm = toy_module(), toy_datamodule(cache, patches_per_epoch=64)
    trainer.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return run, module, dm, metrics


def test_inflated_artifact_equals_the_quantized_model(exported) -> None:
    run, module, dm, metrics = exported
    path = run / "postfilter_int8.pfq"
    assert metrics["artifact/bytes"] == path.stat().st_size < 50_000
    assert metrics["export/max_abs_diff"] == 0.0
    reference, _ = quantized_filter(module.net)  # convert_pt2e of the trained QAT graph
    decoded = dm.decoded[list(dm.blocks["test"])]
    assert torch.equal(run_filter(inflate(path), decoded), run_filter(reference, decoded))


def test_report_numbers_add_up(exported) -> None:
    run, _, dm, metrics = exported
    report = json.loads((run / "postfilter_report.json").read_text())
    enc = dm.encoded
    assert report["quantization"] == "qat" and report["test_frames"] == list(dm.blocks["test"])
    assert metrics["score/rate"] == pytest.approx((enc.file_bytes + metrics["artifact/bytes"]) / enc.source_bytes)
    assert metrics["score/rate_codec"] == pytest.approx(enc.file_bytes / enc.source_bytes)
    terms = report["terms"]
    assert metrics["score/value"] == pytest.approx(25 * terms["rate"] + 100 * (1 - terms["ssim"]), rel=1e-6)
    per = report["per_frame"]
    assert len(per["int8"]["psnr"]) == 17
    assert metrics["int8/psnr"] == pytest.approx(sum(per["int8"]["psnr"]) / 17, rel=1e-5)
    assert metrics["int8/psnr_gain"] == pytest.approx(metrics["int8/psnr"] - metrics["decoded/psnr"], abs=1e-4)
    assert 28.0 < metrics["decoded/psnr"] < 32.0
    assert abs(metrics["int8/vs_float_db"]) < 0.1


def test_rd_report_has_every_crf_and_a_bd_rate(exported) -> None:
    run, _, _, metrics = exported
    rd = json.loads((run / "rd_report.json").read_text())
    points = rd["points"]
    assert [p["crf"] for p in points] == [28, 32, 36, 40]
    assert all(p["rate_filtered"] > p["rate_codec"] for p in points)  # the artifact is paid for
    bytes_, psnr = [p["video_bytes"] for p in points], [p["psnr_codec"] for p in points]
    assert bytes_ == sorted(bytes_, reverse=True) and psnr == sorted(psnr, reverse=True)  # CRF: bytes for quality
    assert psnr[0] > psnr[-1] + 4.0
    assert metrics["rd/bd_rate"] == pytest.approx(rd["bd_rate_percent"])
    assert rd["bd_rate_video_only_percent"] < rd["bd_rate_percent"]
    assert (run / "rd_report.csv").read_text().startswith("crf,video_bytes,rate_codec,rate_filtered")


def test_without_qat_the_export_calibrates_ptq(tmp_path: Path, cache: Path) -> None:
    export = PostFilterExport(dirpath=str(tmp_path), calibration_batches=4)
    trainer = toy_trainer(tmp_path, [export], epochs=1)
    trainer.fit(toy_module(), datamodule=toy_datamodule(cache))
    report = json.loads((tmp_path / "postfilter_report.json").read_text())
    assert report["quantization"] == "ptq" and report["export/max_abs_diff"] == 0.0
    assert abs(report["int8/vs_float_db"]) < 0.3


def test_rd_report_settings_fail_early(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ConfigError, match="has 3 values"):
        RateDistortionReport(dirpath=str(tmp_path), crfs=[30, 32, 34])
    trainer = toy_trainer(tmp_path, [RateDistortionReport(dirpath=str(tmp_path), crfs=[30, 40, 50, 60])], epochs=1)
    with pytest.raises(ConfigError, match=r"crf=60 is out of range for libx264"):
        trainer.fit(toy_module(), datamodule=toy_datamodule(cache))
