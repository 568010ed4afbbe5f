"""The job behind ``ensemble.py``: score members and blends honestly, calibrate, correct, submit.

```
outputs/ensemble/<run_name>/
  ranking.csv       every member, blend and final stage: OOF accuracy, log-loss, ECE, audit
  submission.csv    image_id,label of the final stage on the test rows (when members have test)
  report.html       the same tables, self-contained
  oof/              the final stage's OOF (and test) table: this run can itself be a member;
                    its records (gt_vs_pred.jsonl, the artifact contract) and eval/ scored by
                    the members' evaluator, which leaderboard.py ranks and bootstraps
  config.yaml, manifest.json, metrics.json (last: its presence marks the run finished)
```

Steps: load and align the members; score each member as is and each blend by nested OOF
(:func:`~src.ensemble.blends.nested_oof_predict`); then the stack (:mod:`src.ensemble.stack`):
choose the best candidate by ``select_by``, calibrate it, add pair experts. The stack's stages
(``selected``, ``selected+calibrated``, ``selected+calibrated+experts``) are scored out of
sample: each fold is predicted by a stack whose every choice was made on the other folds. The
stack fitted on all OOF rows predicts the test rows. Write files; log to MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import log_loss

from src.core.artifacts import (
    RECORDS_FILE,
    RESOLVED_CONFIG_FILE,
    build_resolved_config,
    read_resolved_config,
    write_artifact,
)
from src.core.errors import ConfigError, DataError
from src.core.evaluating import evaluation_counters, import_scorer, score_usable, write_evaluation
from src.core.io import atomic_path, file_fingerprint, write_text_atomic
from src.core.lifecycle import RunLifecycle, build
from src.core.mlflow_client import RunSpec, configured_tracking_uri
from src.core.rundir import RunDir
from src.ensemble.audit import risk_audit
from src.ensemble.blends import Blend, SelectMember, log_probs, nested_oof_predict
from src.ensemble.calibration import expected_calibration_error
from src.ensemble.experts import PairExperts, pair_features
from src.ensemble.gaussian import check_aligned, load_gaussian_member, nested_gaussian_oof, records_of
from src.ensemble.oof import OOF_DIR, Member, align_members, load_member, write_oof
from src.ensemble.report import render_report
from src.ensemble.stack import (
    SELECT_BY,
    CrossFit,
    FittedStack,
    StackRecipe,
    check_select_by,
    cross_fit_stack,
    expert_summary,
    fit_stack,
)

log = logging.getLogger("podium")
#: Tag of an ensemble's MLflow run naming the experiment its members come from.
SOURCE_EXPERIMENT_TAG = "podium.source_experiment"
Array = npt.NDArray[np.float64]
#: Candidate kinds the stack may choose from (``select_from``).
SELECTABLE = ("member", "blend")


@dataclass(frozen=True)
class OOFData:
    """The aligned inputs every step shares.

    Attributes:
        members: Aligned members (row ``i`` is the same sample in all).
        P: One ``(n, C)`` OOF probability array per member.
        y: ``(n,)`` class indices.
        folds: ``(n,)`` fold of each row (the first member's).
        groups: ``(n,)`` group keys for the group audit, or None.
        P_test: One ``(m, C)`` test probability array per member, or None.
    """

    members: list[Member]
    P: list[Array]
    y: npt.NDArray[np.int64]
    folds: npt.NDArray[np.int64]
    groups: npt.NDArray[np.str_] | None
    P_test: list[Array] | None

    @property
    def classes(self) -> list[str]:
        return self.members[0].classes


@dataclass
class Candidate:
    """A scored prediction: a member as is, a blend, or a stage of the stack.

    Attributes:
        name: ``member:<name>``, ``blend:<name>`` or ``selected[+calibrated][+experts]``.
        kind: ``member``, ``blend`` or ``final``.
        oof: ``(n, C)`` out-of-sample OOF probabilities (blends nested, stages cross-fitted).
        factory: Makes the unfitted blend (members: a :class:`SelectMember`); None for stages.
        test: ``(m, C)`` test probabilities once computed (stages).
    """

    name: str
    kind: str
    oof: Array
    factory: Callable[[], Blend] | None = None
    test: Array | None = None


def resolve_path(cfg: DictConfig, value: str) -> Path:
    """A path from the config; relative ones are relative to ``paths.root_dir``."""
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else Path(cfg.paths.root_dir) / path


def _unique_names(paths: list[Path]) -> list[str]:
    """Member names: the directory name, or ``parent/name`` where two would clash."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def load_groups(csv_path: Path, sample_ids: npt.NDArray[np.str_], column: str) -> npt.NDArray[np.str_]:
    """The group of every OOF sample, joined by ``image_id`` from the dataset's ``train.csv``.

    Raises:
        DataError: The file or column is missing, or an OOF sample id has no row.
    """
    if not csv_path.is_file():
        raise DataError(
            f"train_csv {csv_path} does not exist", "pass train_csv=data/<name>/train.csv, or train_csv=null"
        )
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in ("image_id", column) if c not in table.columns]
    if missing:
        raise DataError(
            f"{csv_path} lacks column(s) {missing}; it has {list(table.columns)}",
            "set group_column=<the group column>, or train_csv=null to skip the group audit",
        )
    groups = table.drop_duplicates("image_id").set_index("image_id")[column]
    absent = pd.Index(sample_ids).difference(groups.index)
    if len(absent):
        raise DataError(
            f"{csv_path} has no row for OOF sample_id {absent[0]!r} ({len(absent)} missing)",
            "pass the train.csv of the dataset the members were trained on",
        )
    return groups.loc[sample_ids].to_numpy(dtype=str)


def member_paths(cfg: DictConfig) -> list[Path]:
    """The configured member directories (relative ones under ``paths.root_dir``).

    Raises:
        ConfigError: ``members`` is empty.
    """
    if not cfg.members:
        raise ConfigError(
            "members is empty", "pass members=[outputs/<experiment>/<cv run>,...]: the K-fold runs to blend"
        )
    return [resolve_path(cfg, p) for p in cfg.members]


def member_task(path: Path) -> str:
    """The task of a member's out-of-fold records (``oof/resolved_config.json``); members that
    hold only the classification OOF tables are classification members."""
    return str((read_resolved_config(path / OOF_DIR) or {}).get("task") or "classification")


def load_data(cfg: DictConfig) -> OOFData:
    """Load, validate and align the configured members (and their groups)."""
    paths = member_paths(cfg)
    members = align_members([load_member(p, n) for p, n in zip(paths, _unique_names(paths), strict=True)])
    ref = members[0]
    groups = None
    if cfg.get("train_csv"):
        groups = load_groups(resolve_path(cfg, cfg.train_csv), ref.sample_ids, cfg.group_column)
    has_test = ref.test_probs is not None
    return OOFData(
        members=members,
        P=[m.probs for m in members],
        y=ref.labels,
        folds=ref.folds,
        groups=groups,
        P_test=[m.test_probs for m in members] if has_test else None,
    )


def check_blends(cfg: DictConfig) -> None:
    """Raise a ConfigError naming ``blends`` if it picks a name ``blend_defs`` does not define."""
    unknown = [b for b in cfg.blends if b not in cfg.blend_defs]
    if unknown:
        raise ConfigError(
            f"blends={list(cfg.blends)}: unknown blend(s) {unknown}",
            f"use names among {list(cfg.blend_defs)} or define them under blend_defs",
        )


def check_select_from(select_from: Any) -> None:
    """Raise a ConfigError naming ``select_from`` unless it lists candidate kinds (at least one)."""
    kinds = list(select_from or [])
    if not kinds or any(k not in SELECTABLE for k in kinds):
        raise ConfigError(
            f"select_from={kinds} is not a non-empty list of candidate kinds",
            f"use kinds among {list(SELECTABLE)}, e.g. select_from=[member,blend]",
        )


def blend_factories(cfg: DictConfig) -> dict[str, Callable[[], Blend]]:
    """The configured blends by name: ``blends`` picks entries of ``blend_defs`` (partials)."""
    check_blends(cfg)
    return {str(name): build(cfg, f"blend_defs.{name}") for name in cfg.blends}


def score(probs: Array, data: OOFData, cfg: DictConfig) -> dict[str, float]:
    """Accuracy, log-loss, ECE and the risk audit of OOF probabilities."""
    row = risk_audit(
        probs.argmax(axis=1),
        data.y,
        data.groups,
        n_boot=cfg.audit.n_boot,
        seed=cfg.audit.seed,
        n_splits=cfg.audit.n_splits,
        test_size=cfg.audit.test_size,
    )
    row["log_loss"] = float(log_loss(data.y, probs, labels=np.arange(probs.shape[1])))
    row["ece"] = expected_calibration_error(probs, data.y, n_bins=cfg.calibration.n_bins)
    return row


def candidates(cfg: DictConfig, data: OOFData) -> list[Candidate]:
    """Every member as is and every configured blend, with honest OOF probabilities."""
    out = [
        Candidate(f"member:{m.name}", "member", m.probs, factory=lambda i=i: SelectMember(i))
        for i, m in enumerate(data.members)
    ]
    for name, factory in blend_factories(cfg).items():
        log.info("nested OOF of blend %s", name)
        out.append(
            Candidate(f"blend:{name}", "blend", nested_oof_predict(factory, data.P, data.y, data.folds), factory)
        )
    return out


def rank(rows: list[dict[str, Any]], select_by: str) -> pd.DataFrame:
    """The ranking table, best first by ``select_by`` (ties broken by log-loss)."""
    check_select_by(select_by)
    frame = pd.DataFrame(rows)
    keys = [select_by] + (["log_loss"] if select_by != "log_loss" else [])
    ascending = [SELECT_BY[k] for k in keys]
    return frame.sort_values(keys, ascending=ascending, kind="stable").reset_index(drop=True)


def stack_recipe(cfg: DictConfig, pool: list[Candidate]) -> StackRecipe:
    """The stack of ``cfg``: the candidates of the kinds in ``select_from``, the calibration
    steps and the pair experts (``pair_experts.top_k=0``: none)."""
    check_select_from(cfg.select_from)
    steps = tuple(build(cfg, f"calibration.steps[{i}]", s) for i, s in enumerate(cfg.calibration.steps))
    experts = None
    if cfg.pair_experts.top_k > 0:
        model = build(cfg, "pair_experts.model")
        experts = partial(PairExperts, top_k=cfg.pair_experts.top_k, margins=cfg.pair_experts.margins, factory=model)
    eligible = {c.name: c.factory for c in pool if c.kind in cfg.select_from and c.factory is not None}
    if not eligible:
        raise ConfigError(
            f"select_from={list(cfg.select_from)} leaves no candidate (blends={list(cfg.blends)})",
            "add blends, or let the stack pick members too: select_from=[member,blend]",
        )
    return StackRecipe(eligible, str(cfg.select_by), steps, experts, int(cfg.seed))


@dataclass
class Stack:
    """The stack fitted on every OOF row (its parameters, the test predictions) and its stages
    scored out of sample (:func:`~src.ensemble.stack.cross_fit_stack`).

    Attributes:
        recipe: What the stack chooses from and how.
        full: The stack fitted on every OOF row.
        cross: The cross-fitted stacks: each fold predicted by a stack fitted without it.
        stages: ``selected`` [``+calibrated``] [``+experts``]: cross-fitted OOF probabilities,
            test probabilities of the full stack.
    """

    recipe: StackRecipe
    full: FittedStack
    cross: CrossFit
    stages: list[Candidate]


def build_stack(cfg: DictConfig, data: OOFData, pool: list[Candidate]) -> Stack:
    """Fit the stack on every OOF row and cross-fit it for its out-of-sample stages."""
    recipe = stack_recipe(cfg, pool)
    features = pair_features(data.P)
    full = fit_stack(recipe, data.P, features, data.y, data.folds, oof={c.name: c.oof for c in pool})
    log.info("cross-fitting the stack (%s) over %d folds", " -> ".join(recipe.stage_names()), len(set(data.folds)))
    cross = cross_fit_stack(recipe, data.P, features, data.y, data.folds)
    log.info("candidate chosen per held-out fold: %s", cross.chosen)
    stages = [Candidate(n, "final", p) for n, p in zip(recipe.stage_names(), cross.stages, strict=True)]
    if data.P_test is not None:
        for stage, probs in zip(stages, full.predict(data.P_test, pair_features(data.P_test)), strict=True):
            stage.test = probs
    return Stack(recipe, full, cross, stages)


def run_ensemble(cfg: DictConfig) -> float | None:
    """Run (or report) the ensemble described by ``cfg`` (``configs/ensemble.yaml``).

    The run directory lives like any run's (:class:`~src.core.lifecycle.RunLifecycle`): finished
    → reported, another config → refused, ``force=true`` → blended again. Everything is computed
    before the run directory or the MLflow run is written.

    Returns:
        The final stage's OOF value of ``select_by`` (for sweeps), or the recorded one when the
        run was already finished.
    """
    lifecycle = RunLifecycle(cfg, job="ensemble", redo="blend again")
    finished = lifecycle.begin()
    if finished is not None:
        return finished.get(f"oof/{cfg.select_by}")
    tasks = {str(p): member_task(p) for p in member_paths(cfg)}
    if len(set(tasks.values())) > 1:
        shown = ", ".join(f"{p} ({task})" for p, task in tasks.items())
        raise ConfigError(f"the members are of different tasks: {shown}", "blend members of one task")
    if set(tasks.values()) != {"classification"}:
        return blend_gaussian(cfg, lifecycle)
    # Settings first: a misspelt name fails before members are read and blends fitted.
    check_select_by(cfg.select_by)
    check_select_from(cfg.select_from)
    check_blends(cfg)
    data = load_data(cfg)
    pool = candidates(cfg, data)
    stack = build_stack(cfg, data, pool)
    rows = [{"name": c.name, "kind": c.kind, **score(c.oof, data, cfg)} for c in [*pool, *stack.stages]]
    chosen = stack.stages[-1]
    ranking = rank(rows, cfg.select_by)
    metrics = summarise(data, ranking, chosen, stack)
    fingerprint = file_fingerprint([m.source for m in data.members])
    lifecycle.start(fingerprint, mlflow=_mlflow_spec(cfg))
    _write_outputs(cfg, lifecycle.run, data, ranking, chosen, stack, metrics)
    lifecycle.finish(metrics, mlflow_metrics=_mlflow_metrics(metrics, ranking))
    return metrics[f"oof/{cfg.select_by}"]


def summarise(data: OOFData, ranking: pd.DataFrame, chosen: Candidate, stack: Stack) -> dict[str, Any]:
    """metrics.json: the final stage's scores, the choices of the full and the cross-fitted
    stacks, the calibration and the experts, run facts."""
    table = ranking.set_index("name")
    metrics: dict[str, Any] = {f"oof/{k}": float(v) for k, v in table.loc[chosen.name].items() if k != "kind"}
    metrics |= {
        "best": stack.full.chosen,
        "final": chosen.name,
        "selected_per_fold": {str(k): name for k, name in stack.cross.chosen.items()},
        "n_members": len(data.members),
        "n_samples": len(data.y),
        "n_classes": len(data.classes),
        "has_test": data.P_test is not None,
    }
    if stack.full.calibration is not None:
        selected, calibrated = stack.recipe.stage_names()[:2]
        metrics["calib/ece_before"] = float(table.loc[selected, "ece"])
        metrics["calib/ece_after"] = float(table.loc[calibrated, "ece"])
        for step in stack.full.calibration.steps_:
            if hasattr(step, "temperature_"):
                metrics["calib/temperature"] = step.temperature_
            if hasattr(step, "bias_"):
                metrics["calib/bias"] = dict(zip(data.classes, map(float, step.bias_), strict=True))
    if stack.full.experts is not None:
        metrics["experts"] = stack.full.experts.summary(data.classes)
        metrics["experts_oof"] = expert_summary(stack.cross.experts, data.classes)
    return metrics


def submission_frame(data: OOFData, chosen: Candidate) -> pd.DataFrame | None:
    """``image_id,label`` (class names) of the chosen stage's test predictions, if any."""
    if chosen.test is None:
        return None
    names = np.asarray(data.classes)[chosen.test.argmax(axis=1)]
    return pd.DataFrame({"image_id": data.members[0].test_ids, "label": names})


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _write_outputs(
    cfg: DictConfig,
    run: RunDir,
    data: OOFData,
    ranking: pd.DataFrame,
    chosen: Candidate,
    stack: Stack,
    metrics: dict[str, Any],
) -> None:
    """Write the ensemble's files into the run directory (the lifecycle writes the rest)."""
    ref = data.members[0]
    _write_csv(run.path / "ranking.csv", ranking)
    submission = submission_frame(data, chosen)
    if submission is not None:
        _write_csv(run.path / "submission.csv", submission)
    else:
        log.warning("no test predictions (members lack oof/test.parquet): no submission.csv")
    write_oof(
        run.path,
        ref.sample_ids,
        data.folds,
        data.y,
        log_probs(chosen.oof),
        data.classes,
        test_ids=ref.test_ids if chosen.test is not None else None,
        test_probs=chosen.test,
    )
    write_text_atomic(run.path / "report.html", _report(cfg, data, ranking, chosen, stack, metrics))
    write_oof_artifact(cfg, run, "classification", _member_evaluator(cfg, ref), [f"ensemble:{chosen.name}"],
                       classification_records(data, chosen.oof))  # fmt: skip
    log.info("ensemble final stage: %s", chosen.name)


def _member_evaluator(cfg: DictConfig, ref: Member) -> str:
    """The evaluator the members' out-of-fold records name, else ``evaluator`` of the config."""
    return str((read_resolved_config(ref.path / OOF_DIR) or {}).get("evaluator") or cfg.evaluator)


def classification_records(data: OOFData, probs: Array) -> list[dict[str, Any]]:
    """The records of out-of-fold class probabilities (``gt``/``pred`` as ``predict.py`` writes
    them for a classifier, with the row's ``fold``)."""
    names, labels = data.classes, probs.argmax(axis=1)
    ids, folds = data.members[0].sample_ids, data.folds
    return [
        {
            "sample_id": str(sid),
            "split": "oof",
            "gt": {"label": int(y), "class_name": names[int(y)]},
            "pred": {"label": int(k), "class_name": names[int(k)], "probs": row.tolist()},
            "errors": [],
            "fold": int(fold),
        }
        for sid, y, k, row, fold in zip(ids, data.y, labels, probs, folds, strict=True)
    ]


def write_oof_artifact(
    cfg: DictConfig, run: RunDir, task: str, evaluator: str, stages: list[str], records: list[dict[str, Any]]
) -> None:
    """Write the ensemble's out-of-fold records into ``oof/`` and score them into ``oof/eval/``
    (what ``evaluate.py`` would write), so the ensemble is ranked like any run."""
    out = run.path / OOF_DIR
    artifacts = {"records": RECORDS_FILE, "resolved_config": RESOLVED_CONFIG_FILE}
    config = OmegaConf.to_container(cfg, resolve=True)
    write_artifact(out, records, build_resolved_config(task, stages, artifacts, evaluator, None, config))
    scorer = import_scorer(evaluator, task, "cross-validate the members again (python cv.py ...)")
    lines = list(range(1, len(records) + 1))
    evaluation, scored = score_usable(out / RECORDS_FILE, records, lines, scorer)
    write_evaluation(out, evaluation, evaluation_counters(records, scored, evaluation.counters))


def _report(
    cfg: DictConfig,
    data: OOFData,
    ranking: pd.DataFrame,
    chosen: Candidate,
    stack: Stack,
    metrics: dict[str, Any],
) -> str:
    summary = {
        "members": ", ".join(m.name for m in data.members),
        "samples": len(data.y),
        "classes": len(data.classes),
        "candidate of the full stack (test rows)": metrics["best"],
        "candidate per held-out fold": ", ".join(f"{k}: {v}" for k, v in metrics["selected_per_fold"].items()),
        "final": chosen.name,
        "selected by": cfg.select_by,
        "ECE before calibration": metrics.get("calib/ece_before"),
        "ECE after calibration": metrics.get("calib/ece_after"),
        "temperature": metrics.get("calib/temperature"),
    }
    sections = []
    if stack.full.experts is not None and stack.full.experts.pairs_:
        sections.append(("Pair experts of the full stack (test rows)", pd.DataFrame(metrics["experts"])))
    if metrics.get("experts_oof"):
        sections.append(("Pair experts chosen per held-out fold (OOF)", pd.DataFrame(metrics["experts_oof"])))
    if "calib/bias" in metrics:
        bias = metrics["calib/bias"]
        sections.append(
            ("Class bias (log-probability)", pd.DataFrame({"class": list(bias), "bias": list(bias.values())}))
        )
    return render_report(f"ensemble {cfg.run_name}", summary, ranking, sections, final=chosen.name)


def _mlflow_spec(cfg: DictConfig) -> RunSpec | None:
    """The ensemble's MLflow run (experiment ``experiment_name``), unless ``log_mlflow=false``;
    tagged with the experiment its members were trained in (``leaderboard.py`` lists the
    ensembles of an experiment by it)."""
    if not cfg.get("log_mlflow", True):
        return None
    tags = {SOURCE_EXPERIMENT_TAG: members_experiment(member_paths(cfg))}
    return RunSpec(
        cfg.paths.mlflow_dir, cfg.experiment_name, cfg.run_name, tags, tracking_uri=configured_tracking_uri(cfg)
    )


def members_experiment(paths: list[Path]) -> str:
    """The experiment the members were trained in (their ``config.yaml``'s ``experiment_name``;
    their folder's parent name when it has none), or the names joined by ``+`` when they differ."""
    names = []
    for path in paths:
        config = path / "config.yaml"
        name = OmegaConf.load(config).get("experiment_name") if config.is_file() else None
        names.append(str(name or path.parent.name))
    return "+".join(sorted(set(names)))


def _mlflow_metrics(metrics: dict[str, Any], ranking: pd.DataFrame) -> dict[str, Any]:
    """The final metrics and every candidate's scores (``rank/<name>/<metric>``)."""
    values = dict(metrics)
    for row in ranking.to_dict("records"):
        values |= {f"rank/{row['name']}/{k}": v for k, v in row.items() if isinstance(v, float)}
    return values


# ---- members that predict a Gaussian per target (Ariel) -------------------------------------------


def blend_gaussian(cfg: DictConfig, lifecycle: RunLifecycle) -> float:
    """Blend μ/σ members (``ensemble.py`` on Ariel cross-validations).

    Every member and the moment-matched mixture (``gaussian.blend``, weights fitted on the other
    folds' rows) are scored with the task's evaluator on out-of-fold records; the weights fitted
    on every row are reported. Writes ``ranking.csv`` and the blend's nested out-of-fold records
    (``oof/gt_vs_pred.jsonl`` with ``resolved_config.json``: ``evaluate.py`` scores them again).

    Returns:
        The blend's out-of-fold ``gaussian.select_by``.
    """
    paths = member_paths(cfg)
    members = [load_gaussian_member(p, n) for p, n in zip(paths, _unique_names(paths), strict=True)]
    check_aligned(members)
    ref = members[0]
    scorer = import_scorer(ref.evaluator, ref.task, "cross-validate the members again (python cv.py ...)")
    mus, sigmas = [m.mu for m in members], [m.sigma for m in members]
    rows = [
        {"name": f"member:{m.name}", "kind": "member", **scorer(records_of(ref, m.mu, m.sigma))[0]} for m in members
    ]
    make = build(cfg, "gaussian.blend")
    mu, sigma = nested_gaussian_oof(make, mus, sigmas, ref.y, ref.folds)
    blended = records_of(ref, mu, sigma)
    rows.append({"name": "blend:gaussian_mixture", "kind": "blend", **scorer(blended)[0]})
    select = str(cfg.gaussian.select_by)
    if select not in rows[-1]:
        raise ConfigError(
            f"gaussian.select_by={select!r} is not a metric of the records", f"use one of {list(rows[-1])[2:]}"
        )
    ranking = pd.DataFrame(rows).sort_values(select, ascending=select == "mae_ppm", kind="stable")
    weights = make().fit(mus, sigmas, ref.y).weights_
    metrics: dict[str, Any] = {f"oof/{k}": float(v) for k, v in rows[-1].items() if k not in ("name", "kind")}
    metrics |= {"weights": dict(zip([m.name for m in members], map(float, weights), strict=True))}
    metrics |= {"best": ranking["name"].iloc[0], "n_members": len(members), "n_samples": len(ref.y)}
    lifecycle.start(file_fingerprint([m.source for m in members]), mlflow=_mlflow_spec(cfg))
    _write_csv(lifecycle.run.path / "ranking.csv", ranking)
    write_oof_artifact(cfg, lifecycle.run, ref.task, ref.evaluator, ["ensemble:gaussian_mixture"], blended)
    numeric = {k: v for k, v in metrics.items() if isinstance(v, float)}
    lifecycle.finish(metrics, mlflow_metrics=_mlflow_metrics(numeric, ranking))
    return metrics[f"oof/{select}"]
