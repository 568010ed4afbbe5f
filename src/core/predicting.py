"""The job behind ``predict.py``: a trained run's checkpoint -> the prediction artifact of one split.

``python predict.py experiment=<name> [run_name=R] [ckpt=last|best|<path>] [split=val|test]`` finds
the run directory the way ``train.py`` does (same overrides, same ``paths.output_dir``; see
``configs/predict.yaml`` for the overrides that do not count), checks that the checkpoint was
trained with this command's model, predicts the split with the experiment's predict-time
calibration callbacks (``PredictCalibrator``), and writes ``<run>/predictions/<split>/`` (the
artifact contract of :mod:`src.core.artifacts`) plus the module's competition export.

Data the run never saw (``data.root=<another folder>``: a datamodule fingerprint other than the
one in the run's manifest) goes to ``<run>/predictions/<split>-<fingerprint>/`` instead.

Nothing here knows a task: records come from the module (``predict_records``), exports from its
``export_predictions`` hook, samples from the datamodule (``predict_dataloader_for``).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.core.artifacts import (
    FLOAT_DIGITS,
    RECORDS_FILE,
    RESOLVED_CONFIG_FILE,
    SUMMARY_FILE,
    build_resolved_config,
    build_summary,
    write_artifact,
)
from src.core.checkpoint_io import load_checkpoint_file
from src.core.contracts import PredictCalibrator, check_compatibility
from src.core.errors import ConfigError, RunStateError
from src.core.io import sha256_file, staged_folder
from src.core.lifecycle import build
from src.core.mlflow_client import configured_tracking_uri, flatten, redact, resolve_tracking_uri
from src.core.ranks import process_rank
from src.core.rundir import PREDICTIONS_DIR, RunDir

#: Differences named in a refused checkpoint's message (the rest are counted).
SHOWN_DIFFERENCES = 5

# ---- the checkpoint -------------------------------------------------------------------------------


def find_checkpoint(run: RunDir, ckpt: str | None) -> Path:
    """The checkpoint to load.

    Args:
        run: The run directory.
        ckpt: ``last`` (or null): ``checkpoints/last.ckpt``, the weights training ended with;
            ``best``: the monitored best checkpoint recorded in ``metrics.json``; else a file path.

    Raises:
        RunStateError: The run or the file does not exist, with the fix.
    """
    if ckpt not in (None, "last", "best"):
        path = Path(str(ckpt))
        if not path.is_file():
            raise RunStateError(f"checkpoint ckpt={ckpt} does not exist", "pass last, best or the path of a .ckpt file")
        return path
    if ckpt == "best":
        best = run.metrics().get("best/checkpoint")
        path = run.path / best if best else run.checkpoints / "missing-best.ckpt"
    else:
        path = run.last_ckpt
    if not path.is_file():
        raise RunStateError(
            f"no {ckpt or 'last'} checkpoint in {run.checkpoints}",
            "train the run first with the same overrides (python train.py ...), pass run_name=<the trained run>, "
            "or pass ckpt=<path>",
        )
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents (tensors memory-mapped); an unreadable file is refused by name."""
    try:
        return load_checkpoint_file(path, mmap=True)
    except RunStateError as exc:
        fix = "pass ckpt=<another checkpoint> (last, best or a path), or train the run again"
        raise RunStateError(exc.what, fix) from exc


def recorded_model_config(ckpt_path: Path) -> dict[str, Any] | None:
    """The ``model`` section of the config recorded by the checkpoint's run, or None when unknown.

    A checkpoint in a run's ``checkpoints/`` folder belongs to that run; the run's
    ``config.yaml`` says which model trained it.
    """
    folder = ckpt_path.resolve().parent
    config = folder.parent / "config.yaml"
    if folder.name != "checkpoints" or not config.is_file():
        return None
    model = OmegaConf.load(config).get("model")
    return OmegaConf.to_container(model, resolve=True) if model is not None else None


def _describe(value: Any) -> str:
    """A stable text of a hyper-parameter (partials and functions by name, not by address)."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, functools.partial):
        args = [_describe(a) for a in value.args] + [f"{k}={_describe(v)}" for k, v in sorted(value.keywords.items())]
        return f"{_describe(value.func)}({', '.join(args)})"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    return repr(value)


def _differences(saved: Mapping[str, str], now: Mapping[str, str], prefix: str, names: tuple[str, str]) -> list[str]:
    keys = sorted(set(saved) | set(now))
    absent = "(absent)"
    return [
        f"{prefix}{k}: {names[0]} {saved.get(k, absent)}, {names[1]} {now.get(k, absent)}"
        for k in keys
        if saved.get(k) != now.get(k)
    ]


def _hparam_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Hyper-parameters that differ; a different set of names says "another model" at once."""
    if saved and set(saved) != set(current):
        return [
            f"its hyper-parameters are another model's (checkpoint: {', '.join(sorted(saved))}; "
            f"command: {', '.join(sorted(current))})"
        ]
    described = ({k: _describe(v) for k, v in d.items()} for d in (saved, current))
    return _differences(*described, "model.", ("checkpoint", "command"))


def _weight_differences(model: pl.LightningModule, state: Mapping[str, Any]) -> list[str]:
    mine = model.state_dict()
    missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    shapes = sorted(k for k in set(mine) & set(state) if tuple(mine[k].shape) != tuple(state[k].shape))
    found = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if keys:
            found.append(f"{len(keys)} weight(s) {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    return found


def check_checkpoint_fits(
    model: pl.LightningModule,
    model_cfg: DictConfig,
    ckpt_path: Path,
    checkpoint: dict[str, Any],
    recorded: Mapping[str, Any] | None,
) -> None:
    """Refuse a checkpoint trained with another model than the command's ``model`` config.

    Checked in order: the model section of the checkpoint's run config (when known), the
    hyper-parameters stored in the checkpoint, then the weights' names and shapes.

    Args:
        model: The model the command's config builds.
        model_cfg: The command's ``model`` config.
        ckpt_path: The checkpoint file.
        checkpoint: Its contents.
        recorded: The model section of the checkpoint's run config (:func:`recorded_model_config`).

    Raises:
        ConfigError: naming the differing keys and the fix.
    """
    model.on_load_checkpoint(checkpoint)  # a module may rebuild its structure first (QAT graphs)
    problems: list[str] = []
    if recorded is not None:
        current = flatten(OmegaConf.to_container(model_cfg, resolve=True))
        problems = _differences(flatten(recorded), current, "model.", ("run", "command"))
    if not problems:
        problems = _hparam_differences(checkpoint.get("hyper_parameters") or {}, model.hparams)
    if not problems:
        problems = _weight_differences(model, checkpoint["state_dict"])
    if problems:
        more = f" and {len(problems) - SHOWN_DIFFERENCES} more" if len(problems) > SHOWN_DIFFERENCES else ""
        raise ConfigError(
            f"checkpoint {ckpt_path} was not trained with this command's model ({type(model).__name__}): "
            f"{'; '.join(problems[:SHOWN_DIFFERENCES])}{more}",
            "predict with the experiment and model overrides the checkpoint was trained with (its run's "
            "config.yaml), or pass ckpt=<a checkpoint of this model>; data locations (data.root, ...) may differ",
        )


# ---- the prediction pass ---------------------------------------------------------------------------


def calibrators(cfg: DictConfig) -> list[tuple[str, Any]]:
    """``(config key, callback)`` of the experiment's callbacks that calibrate predictions
    (``PredictCalibrator``), in config order; no other callback is built."""
    found = []
    for key, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        target = get_object(node._target_)
        if isinstance(target, type) and issubclass(target, PredictCalibrator):
            found.append((f"callbacks.{key}", build(cfg, f"callbacks.{key}", node)))
    return found


def predict_outputs(
    cfg: DictConfig, model: pl.LightningModule, datamodule: Any, callbacks: list[Any], ckpt_path: Path
) -> list[dict[str, Any]]:
    """``trainer.predict`` over ``cfg.split`` on one device, the checkpoint (and the calibration
    state stored with it) loaded by Lightning; one output dict per batch."""
    trainer: pl.Trainer = build(
        cfg,
        "trainer",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        devices=1,
        num_nodes=1,
        strategy="auto",
        plugins=None,
    )
    datamodule.predict_split = cfg.split
    with warnings.catch_warnings():
        # This Trainer gets the experiment's calibrators alone, on purpose; Lightning would warn
        # that the checkpoint holds the state of other callbacks (checkpointing, averaging, ...).
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
        # The run's own checkpoints hold partial optimizers: loaded in full, not weights-only.
        return trainer.predict(model, datamodule=datamodule, ckpt_path=str(ckpt_path), weights_only=False)


def check_sample_ids(records: list[dict[str, Any]], expected: list[str], module: Any) -> None:
    """Records must cover the split's samples once, in loader order (a module bug otherwise)."""
    ids = [r.get("sample_id") for r in records]
    if ids != expected:
        shown = next((f"{a!r} vs {b!r}" for a, b in zip(ids, expected, strict=False) if a != b), "")
        raise ValueError(
            f"{type(module).__name__}.predict_records gave {len(ids)} records for {len(expected)} samples "
            f"whose ids differ from the datamodule's sample_ids ({shown})"
        )


# ---- the prediction folder ------------------------------------------------------------------------


def prediction_folder(run: RunDir, split: str, fingerprint: str | None) -> Path:
    """``<run>/predictions/<split>``, or ``<split>-<fingerprint>`` for data the run did not train on
    (a datamodule fingerprint other than the one recorded in the run's manifest)."""
    seen = fingerprint is not None and run.manifest().get("data_fingerprint") == fingerprint
    name = split if seen or fingerprint is None else f"{split}-{fingerprint}"
    return run.path / PREDICTIONS_DIR / name


def _mlflow_run(cfg: DictConfig, run: RunDir) -> dict[str, str] | None:
    """The run's MLflow run: its id and the store its manifest records (else this command's), redacted."""
    manifest = run.manifest()
    if not manifest.get("mlflow_run_id"):
        return None
    store = manifest.get("mlflow_tracking_uri") or redact(
        resolve_tracking_uri(cfg.paths.mlflow_dir, configured_tracking_uri(cfg))
    )
    return {"tracking_uri": store, "run_id": manifest["mlflow_run_id"]}


def _checkpoint_info(cfg: DictConfig, run: RunDir, path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    try:
        shown = path.resolve().relative_to(run.path.resolve()).as_posix()
    except ValueError:
        shown = str(path.resolve())
    return {
        "requested": str(cfg.get("ckpt") or "last"),
        "path": shown,
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def write_prediction(
    folder: Path, cfg: DictConfig, model: Any, records: list[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, str]:
    """Write the export, ``gt_vs_pred.jsonl``, ``resolved_config.json`` and (last) ``summary.json``.

    Args:
        folder: The (staging) prediction folder.
        cfg: The command's config.
        model: The module (its ``task`` and ``export_predictions``).
        records: The split's records.
        meta: ``stages``, ``mlflow``, ``checkpoint``, ``start`` (perf counter) and summary extras.

    Returns:
        Artifact name -> path relative to the folder.
    """
    exports = model.export_predictions(records, folder, keep_frames=bool(cfg.get("keep_frames", False)))
    artifacts = {"records": RECORDS_FILE, "summary": SUMMARY_FILE, "resolved_config": RESOLVED_CONFIG_FILE}
    artifacts.update({name: Path(path).relative_to(folder).as_posix() for name, path in exports.items()})
    config = OmegaConf.to_container(cfg, resolve=True)
    resolved = build_resolved_config(
        model.task, meta["stages"], artifacts, cfg.get("evaluator") or model.evaluator, meta["mlflow"], config
    )
    wall = time.perf_counter() - meta["start"]
    summary = build_summary(records, model.task, meta["checkpoint"], wall, **meta["extra"])
    write_artifact(folder, records, resolved, summary, int(cfg.get("float_digits", FLOAT_DIGITS)))
    return artifacts


def predict(cfg: DictConfig) -> Path:
    """Predict ``cfg.split`` with a trained run's checkpoint and write its prediction folder.

    Args:
        cfg: The composed config (``configs/predict.yaml``).

    Returns:
        The prediction folder.

    Raises:
        RunStateError: No such run or checkpoint.
        ConfigError: The checkpoint was trained with another model, or the datamodule lacks the split.
    """
    start = time.perf_counter()
    run = RunDir(Path(cfg.paths.output_dir))
    ckpt_path = find_checkpoint(run, cfg.get("ckpt"))
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg, "data")
    datamodule.check_settings()
    model = build(cfg, "model")
    checkpoint = read_checkpoint(ckpt_path)
    check_checkpoint_fits(model, cfg.model, ckpt_path, checkpoint, recorded_model_config(ckpt_path))
    datamodule.prepare_data()
    datamodule.setup("predict")
    datamodule.check_split(cfg.split)
    keyed = calibrators(cfg)
    check_compatibility(model, datamodule, keyed)
    outputs = predict_outputs(cfg, model, datamodule, [cb for _, cb in keyed], ckpt_path)
    records = model.predict_records(outputs, cfg.split)
    check_sample_ids(records, datamodule.sample_ids(cfg.split), model)
    fingerprint = datamodule.fingerprint()
    folder = prediction_folder(run, cfg.split, fingerprint)
    if process_rank() != 0:
        # One of several processes of a distributed job (cv.py's folds under DDP): they predict in
        # step, because Lightning's predict loop synchronises every process; rank zero writes.
        return folder
    meta = {
        "start": start,
        "stages": ["predict", *(f"calibrate:{key}" for key, _ in keyed), "export"],
        "mlflow": _mlflow_run(cfg, run),
        "checkpoint": _checkpoint_info(cfg, run, ckpt_path, checkpoint),
        "extra": {"split": cfg.split, "data_fingerprint": fingerprint, "folder": folder.name},
    }
    replaced = " (replacing the earlier ones)" if folder.is_dir() else ""
    with staged_folder(folder) as staging:
        write_prediction(staging, cfg, model, records, meta)
    print(
        f"podium: wrote {len(records)} {cfg.split} records to {folder}{replaced}\n"
        f"  checkpoint: {ckpt_path}\n  evaluate:   python evaluate.py path={folder}",
        flush=True,
    )
    return folder
