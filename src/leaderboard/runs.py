"""The finished runs of an experiment in the MLflow store, and the evidence each one carries.

A candidate is a finished top-level MLflow run of the experiment: a training run (``run``), a
cross-validation parent (``cv``, tagged ``podium.cv=parent``; its folds are child runs and are
not candidates) or an ensemble whose members were trained in the experiment (``ensemble``, from
the ensemble experiment, tagged ``podium.source_experiment``). Its evidence is the evaluation
artifact of the artifact contract: ``<run dir>/predictions/<split>/`` for a training run,
``<run dir>/oof/`` for a cross-validation or an ensemble (read from the MLflow artifacts when the
run directory is not on this machine), scored by the evaluator its ``resolved_config.json`` names.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from src.core.artifacts import RECORDS_FILE, SUMMARY_FILE, read_record_lines, read_resolved_config
from src.core.errors import ConfigError, DataError
from src.core.evaluating import EVAL_DIR, METRICS_FILE, PER_SAMPLE_FILE, as_evaluation, import_scorer
from src.core.io import sha256_file
from src.core.mlflow_client import RUN_DIR_TAG

KIND_RUN, KIND_CV, KIND_ENSEMBLE = "run", "cv", "ensemble"
PARENT_TAG = "mlflow.parentRunId"
SOURCE_EXPERIMENT_TAG = "podium.source_experiment"
#: Runs fetched per page of the MLflow search.
PAGE = 500


@dataclass
class Evidence:
    """A run's evaluation artifact, scored.

    Attributes:
        folder: The predictions folder (``gt_vs_pred.jsonl``, ``resolved_config.json``, ``eval/``).
        task: The records' task.
        scorer: The task's ``score_records``.
        records: The labelled records without error codes (the ones scored), in file order.
        sha256: Of ``gt_vs_pred.jsonl`` now.
        scored_sha256: Of the ``gt_vs_pred.jsonl`` that ``eval/metrics.json`` scored; None when the
            folder was never evaluated (or by a version that did not record it).
        metrics: The evaluator's metrics over ``records``.
        per_sample: The evaluator's per-sample rows, one per record of ``records``, or None when it
            writes another shape (one row per class, per box, ...).
        checkpoints: ``(checkpoint file, sha256 recorded when it predicted)`` of each checkpoint
            whose predictions these are (None: not recorded).
    """

    folder: Path
    task: str
    scorer: Callable[..., Any]
    records: list[dict[str, Any]]
    sha256: str
    scored_sha256: str | None
    metrics: dict[str, float]
    per_sample: pd.DataFrame | None
    checkpoints: list[tuple[Path, str | None]] = field(default_factory=list)

    @property
    def sample_ids(self) -> list[str]:
        return [str(r["sample_id"]) for r in self.records]


@dataclass
class Candidate:
    """One finished run on the leaderboard.

    Attributes:
        run_id: The MLflow run id.
        name: The run name (the run directory's name).
        kind: ``run``, ``cv`` or ``ensemble``.
        experiment: The experiment it is a candidate of.
        experiment_id: The id of the MLflow experiment it is logged in.
        start_ms: Start time (ms since the epoch); earlier runs come first among duplicates.
        end_ms: End time (ms), or None.
        run_dir: The run directory on this machine, or None.
        artifact_uri: The run's MLflow artifact root.
        mlflow_metrics: The run's metrics (last value of each) as MLflow has them.
        params: The run's params (the flattened config).
        evidence: The scored evaluation artifact, or None (``problem`` says why).
        problem: Why the run has no evidence.
    """

    run_id: str
    name: str
    kind: str
    experiment: str
    experiment_id: str
    start_ms: int
    end_ms: int | None
    run_dir: Path | None
    artifact_uri: str
    mlflow_metrics: dict[str, float]
    params: dict[str, str]
    evidence: Evidence | None = None
    problem: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"

    def values(self) -> dict[str, float]:
        """Every number a gate or a composite term can name: the MLflow metrics as logged,
        ``eval/<metric>`` of the evaluation artifact and ``run/duration_s``."""
        values = dict(self.mlflow_metrics)
        if self.evidence is not None:
            values |= {f"eval/{k}": float(v) for k, v in self.evidence.metrics.items()}
        if self.end_ms is not None:
            values["run/duration_s"] = (self.end_ms - self.start_ms) / 1000.0
        return values


def store_error(uri: str, exc: BaseException) -> DataError:
    """The error of a store that cannot be read, naming it and the fix."""
    return DataError(
        f"the MLflow store {uri} cannot be read ({type(exc).__name__}: {str(exc)[:300]})",
        "check paths.mlflow_dir / logger.mlflow.tracking_uri; a damaged SQLite file can be set aside "
        "and the runs logged again (python train.py ... force=true)",
    )


def search(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    """Every run matching ``filter_string`` (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def finished_filter(extra: str | None) -> str:
    """MLflow filter of finished runs, and ``extra`` (the user's ``filter=``) when given."""
    base = "attributes.status = 'FINISHED'"
    return f"{base} and {extra}" if extra else base


def find_runs(client: Any, uri: str, experiment: str, cfg: Mapping[str, Any]) -> list[Any]:
    """The finished top-level MLflow runs of ``experiment`` and of its ensembles.

    Raises:
        DataError: No such experiment, no finished run, a filter MLflow refuses, an unreadable store.
    """
    from mlflow.exceptions import MlflowException

    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise DataError(
                f"the MLflow store {uri} has no experiment {experiment!r} (it has: {', '.join(names) or 'none'})",
                f"train or cross-validate it first (python train.py experiment={experiment}), or name one of those",
            )
        runs = search(client, [exp.experiment_id], finished_filter(cfg.get("filter")))
        runs += ensemble_runs(client, experiment, cfg)
    except MlflowException as exc:
        if cfg.get("filter") and exc.error_code == "INVALID_PARAMETER_VALUE":
            raise ConfigError(
                f"filter={cfg.get('filter')!r} is not an MLflow search filter ({str(exc)[:200]})",
                'write it as MLflow does, e.g. filter="params.seed = \'1\'" or "metrics.`val/acc` > 0.9"',
            ) from exc
        raise store_error(uri, exc) from exc
    except DataError:
        raise
    except Exception as exc:  # SQLAlchemy, sqlite3 and OS errors of a damaged store
        raise store_error(uri, exc) from exc
    runs = [r for r in runs if PARENT_TAG not in r.data.tags]
    if not runs:
        raise DataError(
            f"experiment {experiment!r} in {uri} has no finished run"
            + (f" matching filter={cfg.get('filter')!r}" if cfg.get("filter") else ""),
            f"finish a run first (python train.py experiment={experiment}, python cv.py experiment={experiment})"
            + (", or loosen the filter" if cfg.get("filter") else ""),
        )
    return runs


def ensemble_runs(client: Any, experiment: str, cfg: Mapping[str, Any]) -> list[Any]:
    """Finished runs of the ensemble experiment whose members come from ``experiment``."""
    name = cfg.get("ensemble_experiment")
    exp = client.get_experiment_by_name(name) if cfg.get("include_ensembles") and name else None
    if exp is None or name == experiment:
        return []
    tag = f"tags.`{SOURCE_EXPERIMENT_TAG}` = '{experiment}'"
    extra = f"{tag} and {cfg['filter']}" if cfg.get("filter") else tag
    return search(client, [exp.experiment_id], finished_filter(extra))


def kind_of(run: Any, experiment: str) -> str:
    if run.data.tags.get("podium.cv") == "parent":
        return KIND_CV
    return KIND_ENSEMBLE if run.data.tags.get(SOURCE_EXPERIMENT_TAG) == experiment else KIND_RUN


def candidate(run: Any, experiment: str) -> Candidate:
    """A candidate of an MLflow run (its evidence not loaded yet)."""
    run_dir = run.data.tags.get(RUN_DIR_TAG)
    return Candidate(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id,
        kind=kind_of(run, experiment),
        experiment=experiment,
        experiment_id=run.info.experiment_id,
        start_ms=int(run.info.start_time or 0),
        end_ms=int(run.info.end_time) if run.info.end_time else None,
        run_dir=Path(run_dir) if run_dir and Path(run_dir).is_dir() else None,
        artifact_uri=run.info.artifact_uri,
        mlflow_metrics={k: float(v) for k, v in run.data.metrics.items()},
        params=dict(run.data.params),
    )


def evidence_path(cand: Candidate, split: str) -> str:
    """The evaluation artifact's folder relative to the run directory."""
    return "oof" if cand.kind in (KIND_CV, KIND_ENSEMBLE) else f"predictions/{split}"


def fetch_folder(client: Any, cand: Candidate, rel: str, cache: Path) -> Path | None:
    """The run's ``rel`` folder: in its run directory, else downloaded from its MLflow artifacts
    into ``cache`` (None when neither has it)."""
    if cand.run_dir is not None and (cand.run_dir / rel / RECORDS_FILE).is_file():
        return cand.run_dir / rel
    target = cache / cand.run_id
    if (target / rel / RECORDS_FILE).is_file():
        return target / rel
    try:
        import mlflow

        # MLflow puts the folder's last part under dst_path: download beside its place in target.
        parent = target / Path(rel).parent
        parent.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(
            run_id=cand.run_id, artifact_path=rel, dst_path=str(parent), tracking_uri=client.tracking_uri
        )
    except Exception:  # noqa: BLE001 - a missing artifact path raises store-specific errors
        return None
    return target / rel if (target / rel / RECORDS_FILE).is_file() else None


def missing_evidence(cand: Candidate, rel: str, split: str) -> str:
    """Why ``cand`` has no evidence, with the commands that make it."""
    where = cand.run_dir / rel if cand.run_dir is not None else f"<run dir>/{rel} (run directory not on this machine)"
    if cand.kind == KIND_RUN:
        how = (
            f"python predict.py experiment={cand.experiment} run_name={cand.name} split={split}, "
            f"then python evaluate.py path={where}"
        )
    else:
        how = "run it again with this version of podium (it writes oof/gt_vs_pred.jsonl)"
    return f"no evaluation artifact: {where} holds no {RECORDS_FILE}; {how}"


def load_evidence(folder: Path, run_dir: Path | None, kind: str) -> Evidence:
    """Read and score the evaluation artifact in ``folder``.

    ``eval/per_sample.jsonl`` is used when ``eval/metrics.json`` scored these very records (same
    sha256); otherwise the records are scored again with the evaluator they name.

    Raises:
        DataError: The records, their config or their evaluator cannot be read.
    """
    resolved = read_resolved_config(folder) or {}
    task, dotted = str(resolved.get("task") or ""), str(resolved.get("evaluator") or "")
    if not task or not dotted:
        raise DataError(
            f"{folder} does not name its task and evaluator (resolved_config.json)",
            "predict it again with python predict.py (it writes resolved_config.json)",
        )
    scorer = import_scorer(dotted, task, f"fix the evaluator in {folder / 'resolved_config.json'}")
    path = folder / RECORDS_FILE
    records, _, _ = read_record_lines(path, strict=True)
    usable = [r for r in records if r["gt"] is not None and not r["errors"]]
    if not usable:
        raise DataError(f"{path} holds no labelled record without errors", "predict a split with the truth (val)")
    sha = sha256_file(path)
    saved = read_eval(folder)
    scored_sha = ((saved or {}).get("source") or {}).get("sha256")
    if saved is not None and scored_sha == sha:
        metrics, per_sample = saved["metrics"], read_per_sample(folder / EVAL_DIR / PER_SAMPLE_FILE)
    else:
        evaluation = as_evaluation(scorer(usable))
        metrics, per_sample = evaluation.metrics, evaluation.per_sample
    frame = pd.DataFrame(per_sample) if per_sample and len(per_sample) == len(usable) else None
    return Evidence(
        folder=folder,
        task=task,
        scorer=scorer,
        records=usable,
        sha256=sha,
        scored_sha256=scored_sha,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
        per_sample=frame,
        checkpoints=scored_checkpoints(folder, run_dir, kind),
    )


def read_eval(folder: Path) -> dict[str, Any] | None:
    """``eval/metrics.json`` of a predictions folder, or None when absent or unreadable."""
    path = folder / EVAL_DIR / METRICS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def read_per_sample(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def scored_checkpoints(folder: Path, run_dir: Path | None, kind: str) -> list[tuple[Path, str | None]]:
    """The checkpoints that predicted ``folder``'s records, with the sha256 recorded then.

    A training run's is named by its predictions' ``summary.json``; a cross-validation's are its
    folds' (``fold_*/predictions/val/summary.json``); an ensemble's records are its model.
    """
    if run_dir is None or kind == KIND_ENSEMBLE:
        return []
    folds = sorted(run_dir.glob("fold_*/predictions/val/summary.json"))
    summaries = [folder / SUMMARY_FILE] if kind == KIND_RUN else folds
    claims = []
    for summary in summaries:
        try:
            info = json.loads(summary.read_text()).get("checkpoint") or {}
        except (OSError, ValueError):
            continue
        if info.get("path"):
            base = summary.parents[2]  # <run>/predictions/<split>/summary.json -> <run>
            path = Path(info["path"]) if Path(info["path"]).is_absolute() else base / info["path"]
            claims.append((path, info.get("sha256")))
    return claims


def load_candidates(client: Any, uri: str, experiment: str, cfg: Mapping[str, Any], cache: Path) -> list[Candidate]:
    """Every finished run of ``experiment`` (and its ensembles) with its evidence loaded.

    A run without an evaluation artifact stays a candidate with ``problem`` set (it is listed,
    unranked, and fails every gate).
    """
    cands = [candidate(r, experiment) for r in find_runs(client, uri, experiment, cfg)]
    split = str(cfg.get("split") or "val")
    for cand in cands:
        rel = evidence_path(cand, split)
        folder = fetch_folder(client, cand, rel, cache)
        if folder is None:
            cand.problem = missing_evidence(cand, rel, split)
            continue
        try:
            cand.evidence = load_evidence(folder, cand.run_dir, cand.kind)
        except DataError as exc:
            cand.problem = f"unreadable evaluation artifact: {exc}"
    return sorted(cands, key=lambda c: (c.start_ms, c.run_id))


def group_table(spec: Mapping[str, Any] | None) -> dict[str, str] | None:
    """``sample_id -> group`` from the configured table (``groups: {file, id_column,
    group_column}``), or None when the data has no groups configured.

    Raises:
        ConfigError: The file or its columns are missing.
    """
    if not spec or not spec.get("file"):
        return None
    path = Path(str(spec["file"]))
    if not path.is_file():
        raise ConfigError(
            f"groups.file={path} does not exist",
            "point groups.file at the dataset's table of sample ids and groups, or set groups: null",
        )
    frame = pd.read_csv(path, dtype=str)
    columns = [str(spec.get("id_column", "sample_id")), str(spec.get("group_column", "group"))]
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise ConfigError(
            f"groups: {path} has no column {', '.join(absent)} (it has: {', '.join(frame.columns)})",
            "set groups.id_column / groups.group_column to its columns",
        )
    return dict(zip(frame[columns[0]], frame[columns[1]], strict=True))
