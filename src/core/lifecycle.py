"""One run lifecycle for every entry point (``train.py``, ``cv.py``, ``ensemble.py``, ``predict.py``).

A job that owns a run directory goes through the same named steps::

    lifecycle = RunLifecycle(cfg, job="run", redo="train it again")
    finished = lifecycle.begin()        # finished run of this config: reported, its metrics returned;
    if finished is not None:            # a run directory of another config: RunStateError (exit 2)
        return finished
    parts = build_components(cfg)       # everything that can refuse a value; nothing written yet
    lifecycle.start(fingerprint, mlflow=logger_or_spec, resume=lifecycle.resume_point())
    ...                                 # the job: config.yaml, manifest.json, MLflow run exist now
    lifecycle.finish(metrics)           # manifest finished_at, metrics.json, MLflow artifacts, FINISHED

An exception raised while a config node is instantiated is reported generically, for every node,
as ``<config key>: <message>`` with the value(s) at fault and the fix (:func:`build`).

The job's log is Hydra's job log file, ``<run dir>/<job name>.log`` (``train.log``, ``cv.log``,
``ensemble.log``, ``predict.log``; ``configs/hydra/job_logging/podium.yaml``). The lifecycle writes
the config hash, resumes and the finish into it; ``src.callbacks.epoch_log`` each epoch's metrics;
``src.core.cli.run_entry`` Python's warnings and the full traceback of an error the console shows
in one line (:func:`log_to_files`).
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.core.config import task_overrides
from src.core.contracts import check_compatibility
from src.core.errors import ConfigError, PodiumError, RunStateError
from src.core.io import sweep_temp_files, write_text_atomic
from src.core.manifest import build_manifest, config_diff, config_hash, utc_now
from src.core.ranks import process_rank
from src.core.rundir import RunDir, RunState

if TYPE_CHECKING:
    from src.core.mlflow_client import MlflowRun

log = logging.getLogger("podium")

# ---- the job's log ------------------------------------------------------------------------------


def log_to_files(message: str, exc: BaseException | None = None) -> None:
    """Write ``message`` (with ``exc``'s full traceback) to the job's log files, not the console.

    The console keeps its one-line ``podium: error: ...``; the run directory's log file gets what
    a user reading it after the job died needs. The files are the root logger's file handlers
    (Hydra's job log); nothing is written when logging has none.
    """
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    level = logging.ERROR if exc is not None else logging.INFO
    record = log.makeRecord(log.name, level, __file__, 0, message, None, exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def say(text: str) -> None:
    """Print ``text`` on rank zero and record it in the job's log file."""
    if process_rank() == 0:
        print(text, flush=True)
        log_to_files(text)


def scalars(metrics: dict[str, Any]) -> str:
    """``key=value`` for the numbers and strings of a metrics dict (floats to 4 decimals)."""
    shown = []
    for key, value in sorted(metrics.items()):
        if isinstance(value, float):
            shown.append(f"{key}={value:.4f}")
        elif isinstance(value, int | str) and not isinstance(value, bool):
            shown.append(f"{key}={value}")
    return ", ".join(shown)


# ---- building config nodes ----------------------------------------------------------------------


def podium_error(exc: BaseException) -> PodiumError | None:
    """The PodiumError behind ``exc`` (Hydra wraps errors raised during instantiation)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PodiumError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _override_key(override: str) -> str:
    return override.lstrip("~+").split("=", 1)[0]


def _related(key: str, other: str) -> bool:
    return other == key or other.startswith(f"{key}.") or key.startswith(f"{other}.")


def _node_values(cfg: DictConfig, key: str, most: int = 8) -> list[str]:
    """``key.leaf=value`` for the scalar values of the node at ``key`` (at most ``most``)."""
    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    if not isinstance(node, DictConfig | ListConfig):
        return [f"{key}={node!r}"]
    try:
        plain = OmegaConf.to_container(node, resolve=True)
    except Exception:  # noqa: BLE001 - an unresolvable value is shown as written
        plain = OmegaConf.to_container(node, resolve=False)
    items = plain.items() if isinstance(plain, dict) else enumerate(plain)
    values = [f"{key}.{k}={v!r}" for k, v in items if not isinstance(v, dict | list)]
    return values[:most]


def _causes(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        chain.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return chain


def node_error(cfg: DictConfig, key: str, exc: BaseException) -> ConfigError:
    """A ConfigError for an exception raised while instantiating the node at ``key``.

    Names the innermost key Hydra reports (``full_key``), what failed (a ``_target_`` that does
    not import, or the constructor's own error), the command-line overrides under that key (else
    the node's values), and the fix.
    """
    text = str(exc)
    found = re.search(r"full_key: (\S+)", text)
    where = found.group(1) if found else key
    target = re.search(r"target '([^']+)'", text)
    chain = _causes(exc)
    overrides = [o for o in task_overrides() if _related(where, _override_key(o))]
    if text.startswith("Error locating target"):
        cause = next((c for c in chain if isinstance(c, ModuleNotFoundError)), chain[-1])
        what = f"cannot import _target_ {target.group(1) if target else '?'!r} ({cause})"
        fix = f"set {where}._target_ to an importable class or function (package.module.Name)"
    else:
        cause = next((c for c in chain if not isinstance(c, InstantiationException)), exc)
        built = f" (building {target.group(1)})" if target else ""
        what = f"{type(cause).__name__}: {str(cause).strip()}{built}"
        fix = f"correct {where} in its config file, or on the command line ({where}.<key>=<value>)"
    if overrides:
        return ConfigError(f"{where}: {what}; set by {' '.join(overrides)}", f"change or drop {' '.join(overrides)}")
    values = ", ".join(_node_values(cfg, where)) or "no values"
    return ConfigError(f"{where}: {what}; its values: {values}", fix)


def build(cfg: DictConfig, key: str, node: Any = None, **kwargs: Any) -> Any:
    """Instantiate the config node at ``key`` (or ``node``, named ``key`` in messages).

    Any exception raised while instantiating it becomes a ConfigError naming the key, the value(s)
    and the fix (:func:`node_error`); a PodiumError raised by a constructor passes through as is.

    Args:
        cfg: The composed config.
        key: The node's dotted key (``data``, ``model.net``, ``callbacks.model_checkpoint``).
        node: The node itself when it is not at ``key`` (a list item).
        **kwargs: Passed to ``hydra.utils.instantiate`` (objects the node cannot hold).

    Returns:
        The instantiated object.
    """
    node = OmegaConf.select(cfg, key) if node is None else node
    try:
        return instantiate(node, **kwargs)
    except Exception as exc:
        err = podium_error(exc)
        if err is not None:
            raise err from None
        raise node_error(cfg, key, exc) from exc


def build_group(cfg: DictConfig, key: str) -> dict[str, Any]:
    """Build every entry of a config group that has a ``_target_`` (others are settings).

    Returns:
        ``{"<key>.<name>": object}`` in config order.
    """
    group = OmegaConf.select(cfg, key)
    if not group:
        return {}
    nodes = {name: n for name, n in group.items() if isinstance(n, DictConfig) and "_target_" in n}
    return {f"{key}.{name}": build(cfg, f"{key}.{name}", node) for name, node in nodes.items()}


def trainer_callbacks(callbacks: dict[str, Any]) -> list[Any]:
    """The configured callbacks plus the one every run's checkpoints rely on (the final metrics
    they carry, :class:`src.core.checkpoint_io.CarryCallbackMetrics`)."""
    from src.core.checkpoint_io import CarryCallbackMetrics

    return [*callbacks.values(), CarryCallbackMetrics()]


def trainer_plugins(cfg: DictConfig) -> list[Any]:
    """``trainer.plugins`` plus atomic, verified checkpoint files (unless one is configured)."""
    from lightning.pytorch.plugins.io import CheckpointIO

    from src.core.checkpoint_io import AtomicCheckpointIO

    nodes = cfg.trainer.get("plugins") or []
    plugins = [build(cfg, f"trainer.plugins[{i}]", node) for i, node in enumerate(nodes)]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


@dataclass
class Components:
    """What a training (or prediction) job is made of, built and checked.

    Attributes:
        datamodule: The LightningDataModule (``data``), settings checked, data prepared.
        model: The LightningModule (``model``), optimizer built once.
        callbacks: ``{"callbacks.<name>": callback}``.
        loggers: ``{"logger.<name>": logger}``.
        trainer: The Trainer with those callbacks (and :func:`trainer_callbacks`' own) and loggers.
    """

    datamodule: Any
    model: Any
    callbacks: dict[str, Any]
    loggers: dict[str, Any]
    trainer: Any


def build_components(cfg: DictConfig) -> Components:
    """Build and check everything a training job is made of, before anything is written.

    The datamodule's settings (``check_settings``), its data (``prepare_data``, on rank zero),
    the model's optimizer (``check_optimizers``) and every callback's hooks against the model and
    datamodule (:func:`src.core.contracts.check_compatibility`) are checked here, so a refused
    value stops the command before the run directory's files or the MLflow run exist.

    Raises:
        ConfigError: A node that cannot be built, or a callback whose hooks are missing.
        DataError: Data that ``prepare_data`` refuses.
    """
    datamodule = build(cfg, "data")
    datamodule.check_settings()
    if process_rank() == 0:
        datamodule.prepare_data()
    model = build(cfg, "model")
    model.check_optimizers()
    callbacks = build_group(cfg, "callbacks")
    loggers = build_group(cfg, "logger")
    check_compatibility(model, datamodule, callbacks.items())
    trainer = build(
        cfg,
        "trainer",
        callbacks=trainer_callbacks(callbacks),
        logger=list(loggers.values()) or False,
        plugins=trainer_plugins(cfg),
    )
    return Components(datamodule, model, callbacks, loggers, trainer)


# ---- the run directory's life -------------------------------------------------------------------


#: The manifest's record of the MLflow store a run directory logs into (redacted URI).
MANIFEST_STORE_KEY = "mlflow_tracking_uri"


class MlflowSource(Protocol):
    """What opens a run directory's MLflow run: ``src.core.mlflow_client.RunSpec`` (jobs without
    a Lightning logger) or ``src.core.mlflow_store.PodiumMLFlowLogger`` (training)."""

    def open(self, run_dir: Path, recorded_id: str | None, recorded_store: str | None = None) -> MlflowRun:
        """Bind to ``recorded_id`` (a resumed run) or create the run directory's run; a run the
        manifest records in another store (``recorded_store``) is refused."""
        ...


class RunLifecycle:
    """The life of one run directory, the same for every entry point.

    Args:
        cfg: The job's composed config (``paths.output_dir``, ``experiment_name``, ``run_name``,
            ``force``).
        job: What the run is called in messages (``run``, ``cross-validation``, ``ensemble``).
        redo: What ``force=true`` does, in messages (``train it again``).
    """

    def __init__(self, cfg: DictConfig, job: str = "run", redo: str = "run it again") -> None:
        self.cfg, self.job, self.redo = cfg, job, redo
        self.run = RunDir(Path(cfg.paths.output_dir))
        self.mlflow: MlflowRun | None = None

    @property
    def force(self) -> bool:
        return bool(self.cfg.get("force", False))

    @property
    def name(self) -> str:
        return f"{self.cfg.experiment_name}/{self.cfg.run_name}"

    def begin(self) -> dict[str, Any] | None:
        """Decide what the job does with its run directory, before anything is built.

        Returns:
            The recorded metrics of a finished run of this config (reported on the console and in
            the log; the job returns them), or None when the job runs (``force=true`` always runs).

        Raises:
            RunStateError: The run directory (finished or not) holds a run of another config.
        """
        if self.force:
            return None
        finished = self.run.state() is RunState.FINISHED
        self.refuse_other_config(finished)
        if not finished:
            return None
        self._send_pending()
        metrics = self.run.metrics()
        say(
            f"podium: {self.job} {self.name} is already finished.\n  results: {self.run.path}\n"
            f"  metrics: {self.run.metrics_file}\n    {scalars(metrics)}\n"
            f"  rerun with force=true to {self.redo}, or pass a new run_name=..."
        )
        return metrics

    def _send_pending(self) -> None:
        """A finished run whose last MLflow records could not be sent (the store was away when it
        finished): send them now, to the store this command uses (``logger.mlflow.tracking_uri``,
        ``$MLFLOW_TRACKING_URI`` or the embedded one)."""
        from src.core.mlflow_client import PendingLog, configured_tracking_uri, deliver_pending

        if process_rank() != 0 or not PendingLog(self.run.path).path.is_file():
            return
        store_dir = OmegaConf.select(self.cfg, "paths.mlflow_dir", default=None)
        if store_dir is not None:
            deliver_pending(self.run.path, store_dir, configured_tracking_uri(self.cfg))

    def refuse_other_config(self, finished: bool) -> None:
        """Raise a RunStateError if the manifest records another config hash than this command's."""
        old, now = self.run.manifest().get("config_hash"), config_hash(self.cfg)
        if old is None or old == now:
            return
        if finished:  # reporting those results would hand a sweep (or a reader) numbers of another config
            state, why = "a finished", "its results do not answer this command"
        else:
            state, why = "an unfinished", "continuing it would mix two configs in one run"
        raise RunStateError(
            f"{self.run.path} holds {state} {self.job} of a different config (hash {old}, now {now}"
            f"{self._differences()}); {why}",
            "pass force=true to start it over with this config, or run_name=<new name> to keep both",
        )

    def _differences(self) -> str:
        if not self.run.config_file.is_file():
            return ""
        try:
            old = yaml.safe_load(self.run.config_file.read_text())
            lines = config_diff(old, self.cfg) if isinstance(old, dict) else []
        except Exception:  # noqa: BLE001 - the differences are a courtesy; the hashes already decide
            return ""
        return f"; {'; '.join(lines)}" if lines else ""

    def resume_point(self) -> Path | None:
        """The checkpoint the run continues from; None for a fresh start (always with force)."""
        return None if self.force else self.run.resume_checkpoint()

    def start(
        self,
        fingerprint: str | None = None,
        mlflow: MlflowSource | None = None,
        resume: Path | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Record the run's start (rank zero): call it once everything is built and checked.

        ``force=true`` forgets the previous run here first. Then: leftover temporaries of killed
        writes go, an earlier attempt's checkpoints are set aside on a fresh start
        (:meth:`RunDir.set_aside_checkpoints`), the MLflow run is opened (the one the manifest
        records, which must be in the store it records, else a new one; what an earlier process
        could not send to it is sent first), ``config.yaml`` and ``manifest.json`` (with the
        store's redacted URI) are written (on resume, the manifest gains a ``resumes`` entry) and
        the params logged.

        Args:
            fingerprint: The data's fingerprint, recorded in the manifest.
            mlflow: What opens the MLflow run (None: no MLflow).
            resume: The checkpoint a resumed run continues from (:meth:`resume_point`).
            extra: More manifest fields of a fresh start.
        """
        if process_rank() != 0:
            return
        if self.force:
            self.run.reset()
        self.run.path.mkdir(parents=True, exist_ok=True)
        sweep_temp_files(self.run.path)  # a killed process leaves the temporaries of its writes
        if resume is None:
            self._set_aside_earlier_attempt()
        # The manifest's MLflow run also serves a start killed before its first checkpoint (a fresh
        # start of the same config): its history continues, each (metric, step) logged once.
        # force=true has removed the manifest above, so it gets a new run.
        recorded = self.run.manifest()
        self.mlflow = (
            mlflow.open(self.run.path, recorded.get("mlflow_run_id"), recorded.get(MANIFEST_STORE_KEY))
            if mlflow is not None
            else None
        )
        run_id = self.mlflow.run_id if self.mlflow is not None else None
        store = {MANIFEST_STORE_KEY: self.mlflow.store} if self.mlflow is not None else {}
        write_text_atomic(self.run.config_file, OmegaConf.to_yaml(self.cfg, resolve=True))
        if recorded and resume is not None:
            manifest = {**store, **self._resumed(recorded, resume, run_id)}
        else:
            manifest = {**build_manifest(self.cfg, sys.argv, fingerprint, run_id), **store, **(extra or {})}
        self.run.write_manifest(manifest)
        if self.mlflow is not None:
            self.mlflow.log_new_params(OmegaConf.to_container(self.cfg, resolve=True))
        how = f"resuming from {resume}" if resume is not None else "fresh start"
        log.info("%s %s: config hash %s, %s in %s", self.job, self.name, manifest["config_hash"], how, self.run.path)

    def _set_aside_earlier_attempt(self) -> None:
        """A fresh start: an earlier attempt's checkpoints go to ``checkpoints/previous/`` (said, and logged)."""
        moved = self.run.set_aside_checkpoints()
        if moved:
            names = ", ".join(p.name for p in moved)
            say(
                f"podium: {self.job} {self.name} starts over; the earlier attempt's checkpoints ({names}) are "
                f"now in {self.run.previous_checkpoints}"
            )

    def _resumed(self, manifest: dict[str, Any], resume: Path, run_id: str | None) -> dict[str, Any]:
        """The recorded manifest with this resume appended to ``resumes``."""
        from src.core.checkpoint_io import load_checkpoint_file

        ckpt = load_checkpoint_file(resume, mmap=True)
        entry = {
            "at": utc_now(),
            "checkpoint": resume.relative_to(self.run.path).as_posix(),
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
            "command": sys.argv[1:],
        }
        log.info("resume: %s at epoch %s, global step %s", entry["checkpoint"], entry["epoch"], entry["global_step"])
        manifest.setdefault("resumes", []).append(entry)
        manifest["mlflow_run_id"] = manifest.get("mlflow_run_id") or run_id
        return manifest

    def reopen(self, mlflow: MlflowSource | None) -> None:
        """Bind to the MLflow run the manifest records: a run another job started (CV folds run as
        separate jobs share their parent)."""
        manifest = self.run.manifest()
        recorded = manifest.get("mlflow_run_id")
        self.mlflow = (
            mlflow.open(self.run.path, recorded, manifest.get(MANIFEST_STORE_KEY))
            if mlflow is not None and recorded
            else None
        )

    def finish(
        self, metrics: dict[str, Any], extra: dict[str, Any] | None = None, mlflow_metrics: dict[str, Any] | None = None
    ) -> None:
        """Record the run's end (rank zero): ``finished_at`` in the manifest, ``metrics.json`` (its
        presence marks the run finished), and the MLflow run's artifacts and FINISHED status.

        Args:
            metrics: The final metrics.
            extra: More manifest fields (``world_size``).
            mlflow_metrics: Metrics to log to MLflow now (a Lightning logger logged its own).
        """
        if process_rank() != 0:
            return
        self.run.write_manifest({**self.run.manifest(), **(extra or {}), "finished_at": utc_now()})
        self.run.write_metrics(metrics)
        if self.mlflow is not None:
            if mlflow_metrics:
                self.mlflow.log_metrics(mlflow_metrics)
            self.mlflow.upload(self.run.path)
            self.mlflow.terminate("FINISHED")
        say(f"podium: {self.job} finished: {self.run.path}\n  metrics: {self.run.metrics_file}\n    {scalars(metrics)}")
        kept = self.mlflow.kept if self.mlflow is not None else 0
        if kept:
            say(
                f"podium: warning: the MLflow store {self.mlflow.store} did not answer; {kept} record(s) of run "
                f"{self.mlflow.run_id} are kept in {self.mlflow.pending.path} and sent when this command runs again"
            )

    def abandon(self) -> None:
        """Undo :meth:`start` after a failure before the job recorded anything: ``config.yaml``
        and ``manifest.json`` go (the entry point then removes the folder like any stray run
        directory) and the MLflow run is marked FAILED."""
        if process_rank() != 0:
            return
        self.run.manifest_file.unlink(missing_ok=True)
        self.run.config_file.unlink(missing_ok=True)
        if self.mlflow is not None:
            self.mlflow.terminate("FAILED")
