"""Rate–distortion report of codec + post-filter against the codec alone, with the BD-rate.

After fit (and after ``PostFilterExport``, which writes the artifact this reads), the source is
encoded at each of ``crfs`` (through the datamodule's round-trip cache), and the held-out test
block is scored decoded and decoded + filtered by the shipped int8 artifact. Rates are whole-video
bytes over source bytes, the artifact's bytes added to the filtered curve. Writes
``rd_report.json`` and ``rd_report.csv`` into the run directory and ``rd/bd_rate`` (%, negative =
fewer bytes for the same PSNR) into ``metrics.json``, with ``rd/bd_rate_video_only``: the same
without the artifact's bytes (its cost amortized over a long video). The filter is the one trained at the
datamodule's CRF, applied unchanged at every CRF.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from typing_extensions import override

from src.core.contracts import RecodableVideo
from src.core.errors import ConfigError
from src.core.io import atomic_path, write_json_atomic
from src.metrics.rd import bd_rate
from src.metrics.video import compression_rate, distortion
from src.modules.postfilter.artifact import filter_frames, read_artifact


def rd_points(dm: Any, model: torch.nn.Module, artifact_bytes: int, crfs: list[int], batch: int) -> pd.DataFrame:
    """One row per CRF: bytes, rates, PSNR and SSIM of the test block, decoded and filtered."""
    frames = list(dm.blocks["test"])
    original = dm.original[frames]
    rows = []
    for crf in crfs:
        settings = dm.with_crf(int(crf))
        encoded = dm.encode(settings)
        decoded = dm.decoded_frames(settings)[frames]
        d_dec = distortion(decoded, original)
        d_fil = distortion(filter_frames(model, decoded, batch), original)
        rows.append({
            "crf": int(crf),
            "video_bytes": encoded.file_bytes,
            "rate_codec": encoded.rate,
            "rate_filtered": compression_rate(encoded.file_bytes, artifact_bytes, encoded.source_bytes),
            "psnr_codec": float(d_dec["psnr"].mean()),
            "psnr_filtered": float(d_fil["psnr"].mean()),
            "ssim_codec": float(d_dec["ssim"].mean()),
            "ssim_filtered": float(d_fil["ssim"].mean()),
        })  # fmt: skip
    return pd.DataFrame(rows)


class RateDistortionReport(pl.Callback):
    """RD points over several CRFs and the BD-rate of codec + int8 filter vs codec alone.

    Args:
        dirpath: Run directory (holds the artifact; the report goes there).
        crfs: At least 4 CRFs of the datamodule's codec.
        artifact: Artifact file name inside ``dirpath``.
        method: BD-rate interpolation, ``pchip`` or ``cubic``.
        batch: Frames per forward pass.
    """

    datamodule_hooks = (RecodableVideo,)

    def __init__(
        self,
        dirpath: str,
        crfs: list[int],
        artifact: str = "postfilter_int8.pfq",
        method: str = "pchip",
        batch: int = 4,
    ) -> None:
        if len(crfs) < 4:
            raise ConfigError(
                f"callbacks.rd_report.crfs={list(crfs)} has {len(crfs)} values",
                "list at least 4 CRFs: BD-rate interpolates over at least 4 points per curve",
            )
        self.dirpath, self.crfs = Path(dirpath), sorted(int(c) for c in crfs)
        self.artifact, self.method, self.batch = artifact, method, batch

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if stage == "fit" and hasattr(dm, "with_crf"):
            for crf in self.crfs:  # a CRF out of the codec's range fails now, not after training
                dm.with_crf(crf)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or getattr(trainer, "fast_dev_run", False):
            return
        path = self.dirpath / self.artifact
        if not path.is_file():
            raise ConfigError(
                f"RateDistortionReport found no artifact at {path}",
                "list callbacks.export (PostFilterExport) before callbacks.rd_report",
            )
        table = rd_points(trainer.datamodule, read_artifact(path).filter(), path.stat().st_size, self.crfs, self.batch)
        bd = bd_rate(table.rate_codec, table.psnr_codec, table.rate_filtered, table.psnr_filtered, self.method)
        # The same curves without the artifact's bytes: the filter's coding gain once its cost is
        # amortized over a long video (the artifact does not grow with the video).
        bd_video = bd_rate(table.rate_codec, table.psnr_codec, table.rate_codec, table.psnr_filtered, self.method)
        with atomic_path(self.dirpath / "rd_report.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_json_atomic(
            self.dirpath / "rd_report.json",
            {"bd_rate_percent": bd, "bd_rate_video_only_percent": bd_video, "method": self.method,
             "artifact_bytes": path.stat().st_size, "points": table.to_dict(orient="records")},
        )  # fmt: skip
        record = {"rd/bd_rate": bd, "rd/bd_rate_video_only": bd_video}
        for key, value in record.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        for logger in trainer.loggers:
            logger.log_metrics(record, step=trainer.global_step)
