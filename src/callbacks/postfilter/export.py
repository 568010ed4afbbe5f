"""After fit: the int8 post-filter artifact, checked against the quantized model, and its score.

Writes into the run directory:
    postfilter_int8.pfq      int8 weights, scales and biases, xz-compressed (``src.modules.postfilter.artifact``)
    postfilter_report.json   byte counts, rates, per-frame PSNR/SSIM of the decoded, float-filtered
                             and int8-filtered test frames, the score and its formula

and puts into ``metrics.json`` (via ``trainer.callback_metrics``) ``int8/psnr``, ``int8/psnr_gain``,
``int8/ssim``, ``int8/vs_float_db``, ``float/psnr``, ``decoded/psnr``, ``decoded/ssim``,
``artifact/bytes``, ``video/bytes``, ``score/rate``, ``score/rate_codec``, ``score/value`` and
``export/max_abs_diff`` (inflated file vs ``convert_pt2e`` model; 0 when they agree exactly).
Everything is measured on the held-out test block, output rounded to 8 bits as a decoder would.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from src.core.contracts import Quantizable
from src.core.io import write_json_atomic
from src.datamodules.video.codec import to_rgb
from src.metrics.video import ScoreFormula, compression_rate, distortion
from src.modules.postfilter.artifact import (
    PostFilterArtifact,
    filter_frames,
    inflate,
    run_filter,
    to_uint8,
    write_artifact,
)
from src.modules.postfilter.network import PostFilterCNN, residual_filter
from src.modules.postfilter.quant import (
    Int8Conv,
    PostFilterQuantizer,
    convert,
    int8_layers,
    observed,
    set_quantization,
)

ARTIFACT = "postfilter_int8.pfq"


@torch.no_grad()
def calibrate(pl_module: pl.LightningModule, loader: Any, batches: int) -> None:
    """Post-training calibration: observe ``batches`` training batches without fake quantization."""
    body = pl_module.net.body
    set_quantization(body, fake_quant=False, observe=True)
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        pl_module(batch["decoded"].to(pl_module.device))
    set_quantization(body, fake_quant=False, observe=False)


class ConvertedFilter(torch.nn.Module):
    """The post-filter around a ``convert_pt2e`` int8 conv stack: the quantized model itself."""

    def __init__(self, converted: torch.nn.Module, factor: int) -> None:
        super().__init__()
        self.body, self.factor = converted, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_filter(x, self.body, self.factor)


def quantized_filter(net: PostFilterCNN) -> tuple[ConvertedFilter, list[Int8Conv]]:
    """(the ``convert_pt2e`` int8 filter on CPU, its int8 layer records) of a prepared filter."""
    converted = convert(net.body).cpu()
    return ConvertedFilter(converted, net.factor), int8_layers(converted)


def float_filter(net: PostFilterCNN) -> torch.nn.Module:
    """A CPU copy of the filter with fake quantization off (the same weights in float)."""
    copy_ = copy.deepcopy(net).cpu()
    if hasattr(copy_.body, "graph"):
        set_quantization(copy_.body, fake_quant=False, observe=False)
    return copy_


class PostFilterExport(pl.Callback):
    """Convert the trained filter to int8, write the artifact, verify inflate, score the test block.

    When the filter was never quantization-aware trained (no QAT callback, or its epoch never
    came), observers are calibrated on ``calibration_batches`` training batches first (PTQ).

    Args:
        dirpath: Run directory.
        score: The score formula (``ScoreFormula``).
        filename: Artifact file name.
        report: Report file name.
        calibration_batches: Training batches observed for post-training quantization.
        batch: Frames per forward pass in evaluation.
    """

    module_hooks = (Quantizable,)

    def __init__(
        self,
        dirpath: str,
        score: ScoreFormula | None = None,
        filename: str = ARTIFACT,
        report: str = "postfilter_report.json",
        calibration_batches: int = 16,
        batch: int = 4,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.score = score or ScoreFormula("100 * (1 - ssim) + 25 * rate")
        self.filename, self.report = filename, report
        self.calibration_batches, self.batch = calibration_batches, batch

    def _ensure_quantized(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        if not pl_module.qat_prepared:
            pl_module.prepare_qat(PostFilterQuantizer())
        if observed(pl_module.net.body):
            return "qat"
        calibrate(pl_module, trainer.datamodule.train_dataloader(), self.calibration_batches)
        return "ptq"

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or getattr(trainer, "fast_dev_run", False):
            return
        was_training = pl_module.training
        pl_module.eval()
        mode = self._ensure_quantized(trainer, pl_module)
        record = self.export(trainer.datamodule, pl_module.net, mode)
        pl_module.train(was_training)
        metrics = {k: v for k, v in record.items() if isinstance(v, float)}
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def export(self, dm: Any, net: PostFilterCNN, mode: str) -> dict[str, Any]:
        """Write the artifact and the report for a prepared, observed filter; return the record."""
        reference, layers = quantized_filter(net)
        path = self.dirpath / self.filename
        artifact_bytes = write_artifact(path, PostFilterArtifact(net.arch(), dm.hparams.color, layers))
        frames = list(dm.blocks["test"])
        decoded, original = dm.decoded[frames], dm.original[frames]
        inflated_raw = run_filter(inflate(path), decoded, self.batch)
        max_diff = float((inflated_raw - run_filter(reference, decoded, self.batch)).abs().max())
        int8_out = to_uint8(inflated_raw)
        float_out = filter_frames(float_filter(net), decoded, self.batch)
        d_int8, d_float, d_dec = (distortion(x, original) for x in (int8_out, float_out, decoded))
        encoded = dm.encoded
        rate = compression_rate(encoded.file_bytes, artifact_bytes, encoded.source_bytes)
        terms = {k: float(v.mean()) for k, v in d_int8.items()} | {"rate": rate}
        terms |= self._task_terms(int8_out, original, dm.hparams.color)
        record: dict[str, Any] = {
            "int8/psnr": terms["psnr"],
            "int8/ssim": terms["ssim"],
            "int8/psnr_gain": terms["psnr"] - float(d_dec["psnr"].mean()),
            "int8/vs_float_db": terms["psnr"] - float(d_float["psnr"].mean()),
            "float/psnr": float(d_float["psnr"].mean()),
            "decoded/psnr": float(d_dec["psnr"].mean()),
            "decoded/ssim": float(d_dec["ssim"].mean()),
            "artifact/bytes": float(artifact_bytes),
            "video/bytes": float(encoded.file_bytes),
            "score/rate": rate,
            "score/rate_codec": encoded.rate,
            "score/value": self.score(**terms),
            "export/max_abs_diff": max_diff,
        }
        report = {
            **record,
            "quantization": mode,
            "artifact": self.filename,
            "source_bytes": encoded.source_bytes,
            "video_stream_bytes": encoded.stream_bytes,
            "formula": self.score.formula,
            "terms": terms,
            "test_frames": frames,
            "per_frame": {
                name: {k: v.tolist() for k, v in d.items()}
                for name, d in (("decoded", d_dec), ("float", d_float), ("int8", d_int8))
            },
        }
        write_json_atomic(self.dirpath / self.report, report)
        return record

    def _task_terms(self, recon: torch.Tensor, original: torch.Tensor, color: str) -> dict[str, float]:
        if self.score.tasks is None:
            return {}
        rgb = [
            torch.from_numpy(to_rgb(x.numpy(), color)).permute(0, 3, 1, 2).float() / 255.0 for x in (recon, original)
        ]
        return self.score.tasks(*rgb)
