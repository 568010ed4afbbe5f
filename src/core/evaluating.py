"""The job behind ``evaluate.py``: score a prediction artifact offline, without model or data.

``python evaluate.py path=<predictions folder or a gt_vs_pred.jsonl> [task=<name>] [strict=true]``
reads the records (:mod:`src.core.artifacts`), scores the labelled ones without errors with the
task's evaluator, and writes ``<folder>/eval/per_sample.jsonl`` and (last)
``<folder>/eval/metrics.json`` = ``{"metrics": {...}, "counters": {...}}``. When the folder's
``resolved_config.json`` names an MLflow run that exists, the metrics are logged into it as
``eval/<folder name>/<metric>`` and the scored artifact is uploaded to its artifacts
(``predictions/<folder name>/``).

The evaluator is a dotted path to ``score_records(records, **options) -> (metrics, per_sample)``
or an :class:`Evaluation` (which adds counters, more files for ``eval/``, notes and a printed
report): the one in ``resolved_config.json`` wins, else ``evaluators[<task>]`` of
``configs/evaluate.yaml``. ``options[<task>]`` of that config (instantiated, so a callable can be
given as a ``_target_`` node) are passed as keyword arguments, and ``strict`` too when the scorer
takes it. ``eval/`` is written whole (a staging folder moved into place), so a failed evaluation
leaves the previous ``eval/`` or none, never a partial one. Nothing here imports a task.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig

from src.core.artifacts import (
    MAX_LINE_BYTES,
    RECORDS_FILE,
    RESOLVED_CONFIG_FILE,
    RecordError,
    line_snippet,
    read_record_lines,
    read_resolved_config,
    record_counts,
    write_json,
    write_jsonl,
)
from src.core.errors import ConfigError, DataError
from src.core.io import sha256_file, staged_folder
from src.core.mlflow_client import log_metrics, recorded_client

#: Folder (inside the predictions folder) that evaluate.py writes.
EVAL_DIR = "eval"
#: Artifact folder of a run's MLflow artifacts that evaluated predictions are uploaded to.
PREDICTIONS_ARTIFACTS = "predictions"
METRICS_FILE = "metrics.json"
PER_SAMPLE_FILE = "per_sample.jsonl"
Scorer = Callable[..., Any]


@dataclass
class Evaluation:
    """What a scorer found, for ``eval/``.

    Attributes:
        metrics: Flat name -> value (``metrics.json``, MLflow).
        per_sample: One row per scored record (``per_sample.jsonl``).
        counters: What the scorer could not use, by name (added to the reader's counters).
        files: More files of ``eval/``: name -> rows (``*.jsonl``) or a JSON object.
        notes: Sentences the user must read with the metrics (``metrics.json``'s ``notes``,
            printed), e.g. that predictions without score were scored as 1.0.
        report: A text table printed by ``evaluate.py`` after the metrics line.
    """

    metrics: dict[str, float]
    per_sample: list[dict[str, Any]]
    counters: dict[str, int] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    report: str = ""


def as_evaluation(result: Evaluation | Sequence[Any]) -> Evaluation:
    """A scorer's result as an :class:`Evaluation` (a scorer may return ``(metrics, per_sample)``)."""
    if isinstance(result, Evaluation):
        return result
    metrics, per_sample = result
    return Evaluation(dict(metrics), list(per_sample))


def locate(path: str) -> tuple[Path, Path]:
    """``(folder, records file)`` of ``path``: a predictions folder or a records file itself.

    Raises:
        DataError: Nothing there, or a folder without ``gt_vs_pred.jsonl``.
    """
    target = Path(path).expanduser()
    if target.is_file():
        return target.parent, target
    if not target.is_dir():
        raise DataError(
            f"path={path} does not exist",
            f"point path at a predictions folder (<run>/predictions/<split>) or a {RECORDS_FILE}",
        )
    records = target / RECORDS_FILE
    if not records.is_file():
        raise DataError(
            f"{target} holds no {RECORDS_FILE}: it is not a predictions folder",
            f"point path at <run dir>/predictions/<split> (python predict.py writes it) or at a {RECORDS_FILE}",
        )
    return target, records


def choose_task(cfg: DictConfig, resolved: Mapping[str, Any] | None, folder: Path) -> str:
    """The task of the artifact: its ``resolved_config.json``'s, or ``task=`` for a foreign file.

    Raises:
        ConfigError: No task known, or ``task=`` contradicts the artifact's.
    """
    named, written = cfg.get("task"), (resolved or {}).get("task")
    if named and written and named != written:
        raise ConfigError(
            f"task={named} but {folder / RESOLVED_CONFIG_FILE} says the records are of task {written!r}",
            "drop task= (the folder names its task), or point path at predictions of that task",
        )
    task = named or written
    if not task:
        raise ConfigError(
            f"the task of {folder} is unknown: it has no {RESOLVED_CONFIG_FILE} (written by another tool?)",
            f"name it: task=<one of {', '.join(cfg.evaluators)}>",
        )
    return str(task)


def load_scorer(cfg: DictConfig, resolved: Mapping[str, Any] | None, task: str) -> tuple[str, Scorer]:
    """The evaluator's dotted path and function (``resolved_config.json`` first, then config).

    Raises:
        ConfigError: No evaluator for the task, or one that cannot be imported.
    """
    dotted = (resolved or {}).get("evaluator") or cfg.evaluators.get(task)
    if not dotted:
        raise ConfigError(
            f"no evaluator for task {task!r} (evaluators: {', '.join(f'{k}={v}' for k, v in cfg.evaluators.items())})",
            f"pass evaluators.{task}=<module.score_records>, or task=<one of {', '.join(cfg.evaluators)}>",
        )
    return str(dotted), import_scorer(
        str(dotted), task, f"pass evaluators.{task}=<module.function>, or fix the evaluator in {RESOLVED_CONFIG_FILE}"
    )


def import_scorer(dotted: str, task: str, fix: str) -> Scorer:
    """The scoring function at ``dotted``.

    Raises:
        ConfigError: It cannot be imported (naming the path, the task and ``fix``).
    """
    try:
        return get_method(dotted)
    except (ImportError, ValueError, AttributeError) as exc:
        raise ConfigError(f"evaluator {dotted!r} of task {task!r} cannot be imported ({exc})", fix) from exc


def scorer_options(cfg: DictConfig, task: str) -> dict[str, Any]:
    """``options[<task>]`` of the config, instantiated (``_target_`` nodes become objects).

    Raises:
        ConfigError: A node that cannot be instantiated, naming its key.
    """
    node = (cfg.get("options") or {}).get(task)
    if not node:
        return {}
    try:
        return dict(instantiate(node, _convert_="all"))
    except InstantiationException as exc:
        raise ConfigError(
            f"options.{task}: {exc}", f"fix the value under options.{task} in configs/evaluate.yaml"
        ) from exc


def call_scorer(scorer: Scorer, records: list[dict[str, Any]], options: Mapping[str, Any], strict: bool) -> Evaluation:
    """Run ``scorer`` with the options it accepts, ``strict`` too when it takes it.

    Raises:
        ConfigError: An option the scorer does not take, naming it and those it takes, or one of
            the names evaluate.py passes itself (``records``, ``strict``).
    """
    reserved = [k for k in options if k in ("records", "strict")]
    if reserved:
        raise ConfigError(
            f"options {', '.join(reserved)} of the evaluator are set by evaluate.py itself",
            "drop them from options.<task> (strict is its own command-line key)",
        )
    params = inspect.signature(scorer).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params and not takes_any]
    if unknown:
        accepted = [k for k in params if k not in ("records", "strict")]
        raise ConfigError(
            f"the evaluator {getattr(scorer, '__module__', '')}.{getattr(scorer, '__name__', scorer)} takes no "
            f"option {', '.join(unknown)} (it takes: {', '.join(accepted) or 'none'})",
            "drop those options, or point evaluators.<task> at an evaluator that takes them",
        )
    kwargs = dict(options)
    if "strict" in params:
        kwargs["strict"] = strict
    return as_evaluation(scorer(records, **kwargs))


def score(
    path: Path,
    records: list[dict[str, Any]],
    lines: list[int],
    scorer: Scorer,
    options: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> Evaluation:
    """Run the scorer; a record it cannot use is reported as ``<path>:<line>: <what>: <snippet>``."""
    try:
        return call_scorer(scorer, records, options or {}, strict)
    except RecordError as exc:
        line = lines[exc.index]
        snippet = line_snippet(path, line) if path.is_file() else ""
        raise DataError(f"{path}:{line}: {exc.what}" + (f": {snippet}" if snippet else ""), exc.fix) from exc


def log_to_mlflow(resolved: Mapping[str, Any] | None, prefix: str, metrics: Mapping[str, float]) -> str:
    """Log ``metrics`` into the artifact's MLflow run; returns what happened as a counter name.

    ``mlflow_none`` (the artifact names no run), ``mlflow_store_missing`` (its SQLite store is
    not on this machine: nothing is created), ``mlflow_run_missing`` (the store lacks the run or
    cannot be reached), ``mlflow_logged``.
    """
    info = (resolved or {}).get("mlflow") or {}
    uri, run_id = info.get("tracking_uri"), info.get("run_id")
    if not uri or not run_id:
        return "mlflow_none"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return "mlflow_store_missing"
    from mlflow.exceptions import MlflowException

    client = recorded_client(uri)
    try:
        client.get_run(run_id)
    except (MlflowException, OSError):
        return "mlflow_run_missing"
    log_metrics(client, run_id, {f"{prefix}/{k}": v for k, v in metrics.items()})
    return "mlflow_logged"


def upload_artifact(resolved: Mapping[str, Any], folder: Path) -> None:
    """Upload the scored artifact (its top-level files and ``eval/``) to its MLflow run under
    ``predictions/<folder name>/``, so that a machine without the run directory (a team's
    tracking server) finds the evidence ``leaderboard.py`` ranks. Per-sample outputs kept in
    sub-folders (restored frames) stay local."""
    info = resolved["mlflow"]
    client = recorded_client(info["tracking_uri"])
    base = f"{PREDICTIONS_ARTIFACTS}/{folder.name}"
    for sub, target in ((folder, base), (folder / EVAL_DIR, f"{base}/{EVAL_DIR}")):
        for path in sorted(sub.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                client.log_artifact(info["run_id"], str(path), artifact_path=target)


def evaluation_counters(
    records: list[dict[str, Any]], scored: int, scorer: Mapping[str, int], reader: Mapping[str, int] | None = None
) -> dict[str, int]:
    """The counters of ``metrics.json``: the records' counts, how many were scored, the reader's
    skipped lines and the scorer's own counters."""
    reader = reader or {}
    counters = {**record_counts(records), "scored": scored}
    counters.update(sorted(reader.items()))
    counters.update(scorer)
    return counters


#: Metrics printed on the summary line; a scorer with more prints its own report.
SHOWN_METRICS = 12


def _report(folder: Path, task: str, evaluation: Evaluation, counters: Mapping[str, int]) -> None:
    """Print the summary: metrics (all, sorted, or the scorer's first :data:`SHOWN_METRICS` in its
    order when it has more, its report holding the rest), counters, notes, report, where."""
    finite = [(k, v) for k, v in evaluation.metrics.items() if math.isfinite(v)]
    finite = sorted(finite) if len(finite) <= SHOWN_METRICS else finite[:SHOWN_METRICS]
    shown = ", ".join(f"{k}={v:.4f}" for k, v in finite)
    skipped = {k: v for k, v in counters.items() if k not in ("records", "labelled", "scored") and v}
    print(
        f"podium: evaluated {counters['scored']} of {counters['records']} {task} records in {folder}\n"
        f"  metrics: {shown or 'none (no labelled record without errors)'}\n"
        f"  counters: {', '.join(f'{k}={v}' for k, v in skipped.items()) or 'nothing skipped'}\n"
        + "".join(f"  note: {note}\n" for note in evaluation.notes)
        + (evaluation.report.rstrip("\n") + "\n" if evaluation.report else "")
        + f"  written: {folder / EVAL_DIR / METRICS_FILE}",
        flush=True,
    )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score the artifact at ``cfg.path`` and write its ``eval/`` folder.

    Records with ``gt`` null are counted (``unlabelled``), records with error codes are counted
    (``with_errors``), and neither is scored. Malformed lines are counted and skipped, or with
    ``strict`` stop the command naming ``<path>:<line>``.

    Args:
        cfg: The composed config (``configs/evaluate.yaml``).

    Returns:
        The metrics.
    """
    folder, path = locate(str(cfg.path))
    resolved = read_resolved_config(folder)
    task = choose_task(cfg, resolved, folder)
    _, scorer = load_scorer(cfg, resolved, task)
    options = scorer_options(cfg, task)
    strict = bool(cfg.strict)
    records, lines, reader = read_record_lines(path, strict=strict, max_line_bytes=max_line_bytes(cfg))
    if not records:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(reader.items())) or "the file is empty"
        raise DataError(
            f"{path} holds no valid record ({detail})", f"point path at a {RECORDS_FILE} written by predict.py"
        )
    evaluation, scored = score_usable(path, records, lines, scorer, options, strict)
    counters = evaluation_counters(records, scored, evaluation.counters, reader)
    if bool(cfg.log_mlflow) and evaluation.metrics:
        counters[log_to_mlflow(resolved, f"{EVAL_DIR}/{folder.name}", evaluation.metrics)] = 1
    write_evaluation(folder, evaluation, counters)
    if counters.get("mlflow_logged"):
        upload_artifact(resolved, folder)
    _report(folder, task, evaluation, counters)
    return evaluation.metrics


def max_line_bytes(cfg: DictConfig) -> int:
    """``max_line_mb`` of the config in bytes (the default when unset).

    Raises:
        ConfigError: Not a positive number.
    """
    value = cfg.get("max_line_mb")
    if value is None:
        return MAX_LINE_BYTES
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"max_line_mb={value!r} is not a positive number", "pass max_line_mb=<MiB>, e.g. 256")
    return max(1, int(value * 2**20))


def score_usable(
    path: Path,
    records: list[dict[str, Any]],
    lines: list[int],
    scorer: Scorer,
    options: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> tuple[Evaluation, int]:
    """Score the labelled records without error codes (the others are only counted).

    Returns:
        ``(evaluation, number of records scored)``.
    """
    usable = [i for i, r in enumerate(records) if r["gt"] is not None and not r["errors"]]
    if not usable:
        return Evaluation({}, []), 0
    picked, at = [records[i] for i in usable], [lines[i] for i in usable]
    return score(path, picked, at, scorer, options, strict), len(usable)


def write_evaluation(folder: Path, evaluation: Evaluation, counters: Mapping[str, int]) -> Path:
    """Write ``<folder>/eval/`` whole: ``per_sample.jsonl``, the scorer's files, then ``metrics.json``
    (with the sha256 of the ``gt_vs_pred.jsonl`` it scored, when the folder has one).

    The folder is written into a hidden staging sibling and moved into place, so ``eval/`` is
    either the previous complete one or this one. Returns the path of ``metrics.json``.
    """
    summary: dict[str, Any] = {"metrics": dict(evaluation.metrics), "counters": dict(counters)}
    if (folder / RECORDS_FILE).is_file():
        # What was scored, so a later reader can tell whether the records changed since.
        summary["source"] = {"records": RECORDS_FILE, "sha256": sha256_file(folder / RECORDS_FILE)}
    if evaluation.notes:
        summary["notes"] = list(evaluation.notes)
    with staged_folder(folder / EVAL_DIR) as out:
        write_jsonl(out / PER_SAMPLE_FILE, evaluation.per_sample)
        for name, content in evaluation.files.items():
            if name in (PER_SAMPLE_FILE, METRICS_FILE) or "/" in name or name.startswith("."):
                raise ValueError(f"an evaluator may not write eval/{name}")
            if name.endswith(".jsonl"):
                write_jsonl(out / name, content)
            else:
                write_json(out / name, content)
        write_json(out / METRICS_FILE, summary)
    return folder / EVAL_DIR / METRICS_FILE
