"""The training job behind ``train.py``: one run directory, one MLflow run, resumable.

The run directory's life (report a finished run, refuse another config's, ``force``, manifest,
MLflow run, finish) is :class:`src.core.lifecycle.RunLifecycle`'s; this module fits and tests.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from src.core.checkpoint_io import CarryCallbackMetrics, load_checkpoint_file, scalar_metrics
from src.core.errors import ConfigError
from src.core.lifecycle import RunLifecycle, build_components
from src.core.mlflow_store import PodiumMLFlowLogger
from src.core.rundir import RunDir

log = logging.getLogger("podium")


def load_initial_weights(cfg: DictConfig, model: pl.LightningModule) -> None:
    """Load ``init_from``'s weights into ``model`` (fine-tuning); nothing when it is unset.

    Raises:
        ConfigError: The file does not exist or its weights do not fit the model.
    """
    if not cfg.get("init_from"):
        return
    path = Path(str(cfg.init_from)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"init_from={cfg.init_from}: no such checkpoint file", "pass init_from=<a .ckpt file>, or null"
        )
    try:
        model.load_state_dict(load_checkpoint_file(path)["state_dict"])
    except RuntimeError as exc:
        raise ConfigError(
            f"init_from={path}: its weights do not fit {type(model).__name__} ({str(exc)[:300]})",
            "pass a checkpoint of a run with the same model config, or init_from=null",
        ) from exc


def _objective(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    key = cfg.get("optimized_metric")
    return None if key is None else metrics.get(key)


def _collect(trainer: pl.Trainer, run: RunDir) -> dict[str, Any]:
    """The fit's final metrics: callback metrics (with those the resume checkpoint carried, see
    :class:`~src.core.checkpoint_io.CarryCallbackMetrics`), the best checkpoint, epoch and step."""
    carried = next((cb.carried for cb in trainer.callbacks if isinstance(cb, CarryCallbackMetrics)), {})
    metrics: dict[str, Any] = {**carried, **scalar_metrics(trainer.callback_metrics)}
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
        metrics["best/score"] = float(ckpt.best_model_score)
        metrics["best/checkpoint"] = str(Path(ckpt.best_model_path).relative_to(run.path))
    metrics["epoch"] = trainer.current_epoch
    metrics["global_step"] = trainer.global_step
    return metrics


def _mlflow_logger(loggers: dict[str, Any]) -> PodiumMLFlowLogger | None:
    return next((lg for lg in loggers.values() if isinstance(lg, PodiumMLFlowLogger)), None)


def train(cfg: DictConfig) -> float | None:
    """Fit (or resume, or report) the run described by ``cfg``.

    The run directory decides (:class:`~src.core.lifecycle.RunLifecycle`): ``metrics.json``
    present → report it and return (unless ``force``); a resume point present → resume from it
    into the same MLflow run; otherwise start fresh. Everything that can refuse a value is built
    before anything is written. Only rank 0 writes files or talks to MLflow.

    Args:
        cfg: The composed config (``configs/train.yaml``).

    Returns:
        The value of ``cfg.optimized_metric`` (for hyper-parameter sweeps), or None.
    """
    lifecycle = RunLifecycle(cfg, job="run", redo="train it again")
    finished = lifecycle.begin()
    if finished is not None:
        return _objective(cfg, finished)
    pl.seed_everything(cfg.seed, workers=True)
    parts = build_components(cfg)
    load_initial_weights(cfg, parts.model)
    # The newest of last.ckpt and Lightning's SLURM requeue checkpoints (RunDir.resume_checkpoint).
    resume = lifecycle.resume_point()
    lifecycle.start(parts.datamodule.fingerprint(), mlflow=_mlflow_logger(parts.loggers), resume=resume)
    trainer, model, datamodule = parts.trainer, parts.model, parts.datamodule
    # The run's own checkpoints hold its hyper-parameters (partial optimizers), so they are
    # loaded in full rather than weights-only.
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=False)
    metrics = _collect(trainer, lifecycle.run)
    if cfg.get("test") and datamodule.has_test:
        best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
        trainer.test(model, datamodule=datamodule, ckpt_path="best" if best else None, weights_only=False)
        tested = scalar_metrics(trainer.callback_metrics)
        metrics.update({k: v for k, v in tested.items() if k.startswith("test/")})
    lifecycle.finish(metrics, extra={"world_size": trainer.world_size})
    return _objective(cfg, metrics)
