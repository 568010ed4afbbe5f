"""LightningModule of the Ariel task: any network that maps a batch to (mu, sigma) of 283 depths.

The network comes from config (``configs/model/ariel_*.yaml``): the V50 network or a baseline.
Before training, the network's ``fit_training_data`` (if it has one) fits its closed-form
statistics on the whole training split, and the module records the naive prediction (mean and
standard deviation of all training labels) that both competition scores are normalised by. Both
live in buffers, so a checkpoint carries them.

Loss: Gaussian negative log-likelihood in the network's units ``(y - ref) / unit``, optionally
preceded by ``mse_warmup_epochs`` of mean squared error on mu (sigma untrained), plus any loss
terms callbacks register (``add_loss_term``; e.g. ``PhysicsConstraints``).

Logged: ``train/loss``, ``val/loss``, ``val/gll``, ``val/score2024``, ``val/score2025``,
``val/mae_ppm``, ``val/cov68``, ``val/cov95``, ``val/z_mean``, ``val/z_std`` and ``val/samples``
(planets validated) (torchmetrics, synced across processes). ``validation_step`` and
``predict_step`` return the predictions as dicts of tensors for the callbacks (calibration,
physics checks, report, submission).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import override

from src.core.artifacts import NONFINITE_PRED
from src.core.errors import ConfigError
from src.metrics.ariel import ArielMetrics, gaussian_nll
from src.modules.ariel.parts import N_TARGETS, ArielOutput
from src.modules.ariel.submission import submission_frame, write_csv
from src.modules.base import PodiumModule

LOSSES = ("gaussian_nll", "mse")
#: Error code of a planet with a sigma that is zero or negative (no likelihood can be scored).
NONPOSITIVE_SIGMA = "nonpositive_sigma"
#: The competition export of a predicted split.
SUBMISSION_FILE = "submission.csv"
LossTerm = Callable[[ArielOutput, dict[str, Tensor]], Tensor]


class ArielRegressor(PodiumModule):
    """Depths and sigmas of 283 spectral bins from calibrated light curves.

    Args:
        net: Maps a batch dict to an :class:`ArielOutput`; may implement
            ``fit_training_data(batches)``.
        optimizer: Partial optimizer (called with the trainable parameters); ignored, and no
            optimizer is made, when the network has no trainable parameters (the polynomial fit).
        scheduler: Optional partial scheduler called with ``optimizer`` and ``total_steps``,
            stepped every optimizer step.
        loss: ``gaussian_nll`` or ``mse`` (mu only; for mu-only networks).
        mse_warmup_epochs: Epochs of MSE on mu before the Gaussian NLL takes over.
        stats_batch_size: Batch size of the pass over the training split that fits statistics.
        nonfinite_loss: ``raise`` stops the run at a NaN/Inf training loss; ``skip`` drops that batch.
    """

    task = "ariel"
    evaluator = "src.metrics.ariel.score_records"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        loss: str = "gaussian_nll",
        mse_warmup_epochs: int = 0,
        stats_batch_size: int = 64,
        nonfinite_loss: str = "raise",
    ) -> None:
        super().__init__(nonfinite_loss=nonfinite_loss)
        if loss not in LOSSES:
            raise ConfigError(f"model.loss={loss!r} is unknown", f"use one of {list(LOSSES)}")
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net
        self.val_metrics = ArielMetrics()
        self.test_metrics = ArielMetrics()
        self.register_buffer("naive_mean", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("naive_sigma", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(False))
        self.loss_terms: dict[str, LossTerm] = {}

    # ---- set-up ----------------------------------------------------------------------------------

    @property
    def trainable(self) -> bool:
        """Whether the network has parameters to train."""
        return any(p.requires_grad for p in self.parameters())

    def add_loss_term(self, name: str, term: LossTerm) -> None:
        """Add ``term(output, batch)`` (a scalar) to the training loss; logged as ``train/<name>``."""
        self.loss_terms[name] = term

    def fit_training_statistics(self, loader: DataLoader) -> None:
        """Fit the network's closed-form statistics and the naive prediction on the training split."""
        batches = [b for b in loader]
        if hasattr(self.net, "fit_training_data"):
            self.net.fit_training_data(batches)
        targets = torch.cat([b["target"] for b in batches]).double()
        self.naive_mean.fill_(float(targets.mean()))
        self.naive_sigma.fill_(float(targets.std(unbiased=False).clamp(min=1e-12)))
        self.fitted.fill_(True)
        self._sync_naive(self.naive_mean, self.naive_sigma)

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit" and not self.trainable and self.trainer.world_size > 1:
            # Said here, before the strategy wraps the model: DistributedDataParallel refuses one
            # without trainable parameters with an error that names neither the model nor the fix.
            raise ConfigError(
                f"{type(self.net).__name__} has no trainable parameters, so there is nothing to fit on "
                f"{self.trainer.world_size} processes (DistributedDataParallel refuses such a model)",
                "fit it on one process: trainer=cpu (its closed-form fit needs no gradient sync)",
            )
        if stage != "fit" or bool(self.fitted):
            return
        dm = self.trainer.datamodule if self.trainer is not None else None
        dataset = getattr(dm, "train_set", None)
        if dataset is None:
            raise ConfigError(
                "ArielRegressor needs the datamodule's train_set to fit its training statistics",
                "use src.datamodules.ariel.datamodule.ArielDataModule (data=ariel or data=ariel_toy)",
            )
        self.fit_training_statistics(DataLoader(dataset, batch_size=self.hparams.stats_batch_size, shuffle=False))

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        if "naive_sigma" in state:
            self._sync_naive(state["naive_mean"], state["naive_sigma"])

    def _sync_naive(self, mean: Tensor, sigma: Tensor) -> None:
        """Give the score metrics the naive prediction (training-label mean and std)."""
        for metrics in (self.val_metrics, self.test_metrics):
            metrics.set_naive(float(mean), float(sigma))

    # ---- forward and loss ------------------------------------------------------------------------

    @override
    def forward(self, batch: dict[str, Tensor]) -> ArielOutput:
        return self.net(batch)

    def _mse_phase(self) -> bool:
        return self.hparams.loss == "mse" or self.current_epoch < self.hparams.mse_warmup_epochs

    def _loss(self, out: ArielOutput, target: Tensor, mse: bool) -> Tensor:
        t = (target - out.ref) / out.unit
        mu = (out.mu - out.ref) / out.unit
        if mse:
            return ((t - mu) ** 2).mean()
        return gaussian_nll(t, mu, out.sigma / out.unit)

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        saved = self.snapshot()
        out = self(batch)
        n = batch["target"].shape[0]
        loss = self._loss(out, batch["target"], self._mse_phase())
        for name, term in self.loss_terms.items():
            value = term(out, batch)
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
            loss = loss + value
        if self.guard(loss, batch_idx, saved) is None:
            return None
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        return loss if self.trainable else None

    def _outputs(self, out: ArielOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        result = {
            "planet_id": batch["planet_id"],
            "mu": out.mu.detach(),
            "sigma": out.sigma.detach(),
            "sigma_raw": out.sigma.detach(),
            "embedding": out.embedding.detach(),
        }
        if "target" in batch:
            result["target"] = batch["target"]
        return result

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        out = self(batch)
        n = batch["target"].shape[0]
        loss = self._loss(out, batch["target"], self._mse_phase())
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.val_metrics.update(out.mu, out.sigma, batch["target"])
        self.val_metrics.log_to(self, "val", n)
        return self._outputs(out, batch)

    @override
    def on_validation_epoch_end(self) -> None:
        self.val_metrics.log_z(self, "val")

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if "target" not in batch:
            return  # the competition's test planets have no labels: predictions, not scores
        out = self(batch)
        n = batch["target"].shape[0]
        self.test_metrics.update(out.mu, out.sigma, batch["target"])
        self.test_metrics.log_to(self, "test", n)

    @override
    def on_test_epoch_end(self) -> None:
        self.test_metrics.log_z(self, "test")

    @override
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._outputs(self(batch), batch)

    @override
    def predict_records(self, outputs: list[dict[str, Tensor]], split: str) -> list[dict[str, Any]]:
        """One record per planet: ``gt`` ``{"mu"}`` (the 283 true depths; null on the test split),
        ``pred`` ``{"mu", "sigma"}`` after the predict-time calibration callbacks, and ``naive``
        ``{"mean", "sigma"}`` (the training labels' mean and standard deviation, which both
        competition scores are normalised by). Depths and sigmas in fractions of the stellar flux.
        Error codes: ``nonfinite_pred``, ``nonpositive_sigma``."""
        parts = {k: torch.cat([o[k].detach().cpu() for o in outputs]) for k in ("planet_id", "mu", "sigma")}
        truth = torch.cat([o["target"].detach().cpu() for o in outputs]) if "target" in outputs[0] else None
        finite = (torch.isfinite(parts["mu"]) & torch.isfinite(parts["sigma"])).all(dim=1).tolist()
        positive = (parts["sigma"] > 0).all(dim=1).tolist()
        naive = {"mean": float(self.naive_mean), "sigma": float(self.naive_sigma)}
        records = []
        for i, pid in enumerate(parts["planet_id"].tolist()):
            errors = ([] if finite[i] else [NONFINITE_PRED]) + ([] if positive[i] else [NONPOSITIVE_SIGMA])
            records.append(
                {
                    "sample_id": str(int(pid)),
                    "split": split,
                    "gt": None if truth is None else {"mu": truth[i].tolist()},
                    "pred": {"mu": parts["mu"][i].tolist(), "sigma": parts["sigma"][i].tolist()},
                    "errors": errors,
                    "naive": naive,
                }
            )
        return records

    @override
    def export_predictions(
        self, records: Sequence[dict[str, Any]], out_dir: Path, keep_frames: bool = False
    ) -> dict[str, Path]:
        """``submission.csv`` in the competition's columns (``planet_id``, ``wl_*``, ``sigma_*``)."""
        planets = np.asarray([int(r["sample_id"]) for r in records], dtype=np.int64)
        mu = np.asarray([r["pred"]["mu"] for r in records], dtype=np.float64).reshape(len(records), N_TARGETS)
        sigma = np.asarray([r["pred"]["sigma"] for r in records], dtype=np.float64).reshape(len(records), N_TARGETS)
        path = write_csv(out_dir / SUBMISSION_FILE, submission_frame(planets, mu, sigma))
        return {"submission": path}
