"""The training job behind ``train.py``: one run directory, one MLflow run, resumable."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from src.core.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file
from src.core.errors import RunStateError
from src.core.io import sweep_temp_files, write_text_atomic
from src.core.manifest import build_manifest, config_hash, utc_now
from src.core.mlflow_store import PodiumMLFlowLogger
from src.core.rundir import RunDir, RunState

log = logging.getLogger("podium")


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that has a ``_target_`` (others are settings)."""
    if not group:
        return []
    nodes = [n for n in group.values() if isinstance(n, DictConfig) and "_target_" in n]
    return [instantiate(node) for node in nodes]


def trainer_plugins(trainer_cfg: DictConfig) -> list[Any]:
    """The trainer config's plugins plus atomic, verified checkpoint files (unless one is configured)."""
    plugins = [instantiate(p) for p in trainer_cfg.get("plugins") or []]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def _same_config(run: RunDir, cfg: DictConfig, manifest: dict[str, Any], finished: bool) -> None:
    """Refuse a run directory whose manifest records a different config than ``cfg``'s."""
    old, now = manifest.get("config_hash"), config_hash(cfg)
    if old is None or old == now:
        return
    if finished:  # reporting those results would hand a sweep (or a reader) numbers of another config
        state, why, fix = "a finished", "its results do not answer this command", "train this config there instead"
    else:
        state, why, fix = "an unfinished", "resuming it would mix two experiments", "start this run over"
    raise RunStateError(
        f"{run.path} holds {state} run of a different config (hash {old}, now {now}); {why}",
        f"pass force=true to {fix}, or run_name=<new name> to keep both",
    )


def _finished(run: RunDir, cfg: DictConfig) -> float | None:
    _same_config(run, cfg, run.manifest(), finished=True)
    metrics = run.metrics()
    shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, float))
    rank_zero_only(print)(
        f"podium: run {cfg.experiment_name}/{cfg.run_name} is already finished.\n"
        f"  results: {run.metrics_file}\n  metrics: {shown}\n"
        "  rerun with force=true to train it again, or pass a new run_name=..."
    )
    return _objective(cfg, metrics)


def _objective(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    key = cfg.get("optimized_metric")
    return None if key is None else metrics.get(key)


def _check_resumable(run: RunDir, cfg: DictConfig) -> dict[str, Any]:
    manifest = run.manifest()
    _same_config(run, cfg, manifest, finished=False)
    return manifest


def _collect(trainer: pl.Trainer, run: RunDir) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for key, value in trainer.callback_metrics.items():
        v = float(value.detach().cpu()) if isinstance(value, torch.Tensor) else float(value)
        metrics[key] = v
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
        metrics["best/score"] = float(ckpt.best_model_score)
        metrics["best/checkpoint"] = str(Path(ckpt.best_model_path).relative_to(run.path))
    metrics["epoch"] = trainer.current_epoch
    metrics["global_step"] = trainer.global_step
    return metrics


def _mlflow(loggers: list[Logger]) -> PodiumMLFlowLogger | None:
    return next((lg for lg in loggers if isinstance(lg, PodiumMLFlowLogger)), None)


@rank_zero_only
def _start_records(
    run: RunDir,
    cfg: DictConfig,
    manifest: dict[str, Any],
    fingerprint: str | None,
    mlf: PodiumMLFlowLogger | None,
    resume: Path | None,
) -> None:
    """Write config.yaml and manifest.json (a resume from ``resume`` recorded in it), creating (or
    reopening) the MLflow run."""
    write_text_atomic(run.config_file, OmegaConf.to_yaml(cfg, resolve=True))
    run_id = mlf.run_id if mlf is not None else None
    if resume is not None and manifest:
        ckpt = load_checkpoint_file(resume, mmap=True)
        manifest.setdefault("resumes", []).append(
            {
                "at": utc_now(),
                "checkpoint": resume.relative_to(run.path).as_posix(),
                "epoch": ckpt.get("epoch"),
                "global_step": ckpt.get("global_step"),
                "command": sys.argv[1:],
            }
        )
        manifest["mlflow_run_id"] = manifest.get("mlflow_run_id") or run_id
    else:
        manifest = build_manifest(cfg, sys.argv, fingerprint, run_id)
    run.write_manifest(manifest)
    if mlf is not None:
        mlf.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))


@rank_zero_only
def _finish_records(run: RunDir, metrics: dict[str, Any], mlf: PodiumMLFlowLogger | None, trainer: pl.Trainer) -> None:
    run.write_metrics(metrics)
    manifest = run.manifest()
    manifest["finished_at"] = utc_now()
    manifest["world_size"] = trainer.world_size
    run.write_manifest(manifest)
    if mlf is not None:
        mlf.log_run_dir(run.path)
    print(f"podium: finished {run.path}\n  metrics: {run.metrics_file}")


def train(cfg: DictConfig) -> float | None:
    """Fit (or resume, or report) the run described by ``cfg``.

    The run directory decides: ``metrics.json`` present → report it and return (unless
    ``force``); ``checkpoints/last.ckpt`` present → resume from it into the same MLflow run;
    otherwise start fresh. Only rank 0 writes files or talks to MLflow.

    Args:
        cfg: The composed config (``configs/train.yaml``).

    Returns:
        The value of ``cfg.optimized_metric`` (for hyper-parameter sweeps), or None.
    """
    run = RunDir(Path(cfg.paths.output_dir))
    state = run.state()
    if state is RunState.FINISHED and not cfg.force:
        return _finished(run, cfg)
    if cfg.force:
        if rank_zero_only.rank == 0:
            run.reset()
        state = RunState.FRESH
    if rank_zero_only.rank == 0:
        # A killed process leaves the temporaries of the writes it never finished.
        sweep_temp_files(run.path)
        if state is RunState.FRESH:
            run.set_aside_exception_checkpoint()
    manifest = _check_resumable(run, cfg) if state is RunState.RESUMABLE else {}

    pl.seed_everything(cfg.seed, workers=True)
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    if rank_zero_only.rank == 0:
        datamodule.prepare_data()
    fingerprint = datamodule.fingerprint() if hasattr(datamodule, "fingerprint") else None
    model: pl.LightningModule = instantiate(cfg.model)
    if cfg.get("init_from"):
        model.load_state_dict(torch.load(cfg.init_from, map_location="cpu", weights_only=False)["state_dict"])

    callbacks: list[Callback] = instantiate_group(cfg.get("callbacks"))
    loggers: list[Logger] = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=trainer_plugins(cfg.trainer)
    )
    mlf = _mlflow(loggers)
    # The newest of last.ckpt and Lightning's SLURM requeue checkpoints (RunDir.resume_checkpoint).
    resume_from = run.resume_checkpoint() if state is RunState.RESUMABLE else None
    _start_records(run, cfg, manifest, fingerprint, mlf, resume_from)
    if resume_from is not None:
        rank_zero_only(log.info)(f"resuming {run.path} from {resume_from}")
    # The run's own checkpoints hold its hyper-parameters (partial optimizers), so they are
    # loaded in full rather than weights-only.
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=False)
    metrics = _collect(trainer, run)
    if cfg.get("test") and getattr(datamodule, "has_test", False):
        best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
        trainer.test(model, datamodule=datamodule, ckpt_path="best" if best else None, weights_only=False)
        metrics.update({k: v for k, v in _collect(trainer, run).items() if k.startswith("test/")})
    _finish_records(run, metrics, mlf, trainer)
    return _objective(cfg, metrics)
