"""The leaderboard and promotion on a real store (see conftest.py): ranking, intervals, gates,
duplicates, the champion alias, concurrent promotion, rollback, bad input, the HTML in Chromium.

The tests of this module run in file order: the first ones see a store without a champion, the
promotion tests then register one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from src.core.errors import ConfigError, DataError, RunStateError
from src.core.mlflow_client import ensure_store, tracking_uri
from src.core.resolvers import PROJECT_ROOT
from src.leaderboard import registry
from src.leaderboard.jobs import GateFailure, argv_aliases, leaderboard, promote
from src.leaderboard.runs import evidence_path, fetch_folder, load_evidence
from tests.browser import render
from tests.conftest import compose_cfg

MODEL = "podium.digits"
#: Gates every tiny digits run can pass (the shipped ones ask for accuracy >= 0.97).
LENIENT = """
extends: {shipped}
gates:
  - {{name: calibrated, kind: threshold, metric: eval/ece, max: 1.0}}
  - {{name: scored_as_is, kind: checksum}}
  - {{name: new_evidence, kind: duplicate}}
  - {{name: real_scorer, kind: proxy, metric: eval/acc}}
"""


def cfg_of(store: Path, name: str, *overrides: str):
    return compose_cfg(["experiment=digits", "bootstrap.samples=300", *overrides], store, name)


def board_of(store: Path, *overrides: str):
    return leaderboard(cfg_of(store, "leaderboard", *overrides))


def gates_file(store: Path, name: str, text: str) -> str:
    path = store / "gates" / name
    path.parent.mkdir(exist_ok=True)
    shipped = PROJECT_ROOT / "configs" / "gates" / "digits.yaml"
    shutil.copy(shipped, path.parent / "digits_shipped.yaml")
    path.write_text(text.format(shipped="digits_shipped.yaml"))
    return f"gates_file={path}"


def client(store: Path) -> mlflow.MlflowClient:
    uri = tracking_uri(store / "mlruns")
    return mlflow.MlflowClient(uri, registry_uri=uri)


def by_label(board) -> dict:
    return {c.label: c for c in board.candidates}


def test_every_finished_run_is_ranked_with_its_interval(store: Path) -> None:
    board = board_of(store)
    cands = by_label(board)
    assert {"run:a", "run:b", "run:a_again", "run:c", "cv:cv", "ensemble:cv_stack"} == set(cands)
    ranked = [c for c in board.candidates if c.run_id in board.estimates]
    values = [board.estimates[c.run_id].value for c in ranked]
    assert values == sorted(values, reverse=True) and len(ranked) == 5
    saved = json.loads((store / "outputs/digits/a/predictions/val/eval/metrics.json").read_text())
    a = board.estimates[cands["run:a"].run_id]
    assert a.value == pytest.approx(saved["metrics"]["acc"]) and a.method == "mean:correct"
    assert all(e.lo <= e.value <= e.hi for e in board.estimates.values())
    groups = pd.read_csv(store / "data/digits/train.csv")["group"].nunique()
    assert board.estimates[cands["cv:cv"].run_id].groups == groups  # out-of-fold: every group
    assert len(cands["ensemble:cv_stack"].evidence.records) == 1797
    # A run without an evaluation artifact is listed, unranked, with the commands that make one.
    assert "python predict.py experiment=digits run_name=c split=val" in cands["run:c"].problem
    assert board.table["rank"].isna().tolist() == [False] * 5 + [True]
    out = store / "outputs/leaderboard/digits"
    frame = pd.read_csv(out / "leaderboard.csv")
    assert list(frame["run"]) == [c.label for c in board.candidates]
    assert {"acc", "lo", "hi", "vs_champion", "gate:accuracy", "gate:new_evidence"} <= set(frame.columns)
    exp = client(store).get_experiment_by_name("leaderboard")
    logged = client(store).search_runs([exp.experiment_id])[0]
    assert logged.data.tags["podium.leaderboard_of"] == "digits"
    names = {f.path for f in client(store).list_artifacts(logged.info.run_id)}
    assert names == {"leaderboard.csv", "leaderboard.html"}


def test_byte_identical_predictions_are_not_new_evidence(store: Path) -> None:
    board = board_of(store, "log_mlflow=false")
    cands = by_label(board)
    a, again = cands["run:a"], cands["run:a_again"]
    assert a.evidence.sha256 == again.evidence.sha256
    verdict = {r.name: r for r in board.gates[again.run_id]}["new_evidence"]
    assert not verdict.passed and a.run_id in verdict.detail
    assert {r.name: r.passed for r in board.gates[a.run_id]}["new_evidence"]


def test_lens_runs_rank_by_the_mean_image_score_with_bucket_gates(store: Path) -> None:
    cfg = compose_cfg(["experiment=lens_global", "data=lens_toy", "log_mlflow=false"], store, "leaderboard")
    board = leaderboard(cfg)
    assert board.metric == "score/mean" and len(board.estimates) == 2
    for cand in board.candidates:
        est = board.estimates[cand.run_id]
        assert est.method == "mean:score" and est.value == pytest.approx(cand.evidence.metrics["score/mean"])
        gates = {r.name: r for r in board.gates[cand.run_id]}
        assert {"zero_rate", "bucket_mean", "bucket_zeros", "real_scorer"} <= set(gates)
        assert gates["zero_rate"].passed and gates["real_scorer"].passed


def test_the_report_renders_in_headless_chromium(store: Path, tmp_path: Path) -> None:
    page = store / "outputs/leaderboard/digits/leaderboard.html"
    dom, pixels = render(page, tmp_path, size="1400,1200")
    assert "<svg" in dom and dom.count("<circle") == 5 and "run:a_again" in dom
    assert dom.count('class="fail"') >= 6  # every gate of the unranked run, at least
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005


def test_failed_gates_are_all_printed_and_change_nothing(store: Path, capsys) -> None:
    run_id = by_label(board_of(store, "log_mlflow=false"))["run:a"].run_id
    with pytest.raises(GateFailure) as err:
        promote(cfg_of(store, "promote", f"run={run_id}"))
    out = capsys.readouterr().out
    assert "FAIL  accuracy (threshold): eval/acc = " in out and "(needs >= 0.97)" in out
    assert "failed 1 gate(s): accuracy" in str(err.value) and err.value.exit_code == 1
    assert registry.champion_run(client(store), MODEL) is None


def test_promote_dry_run_promote_another_and_roll_back(store: Path, capsys) -> None:
    lenient = gates_file(store, "lenient.yaml", LENIENT)
    board = board_of(store, lenient, "log_mlflow=false")
    cands = by_label(board)
    a, b = cands["run:a"], cands["run:b"]
    mlf = client(store)
    assert promote(cfg_of(store, "promote", lenient, f"run={a.run_id}", "dry_run=true")) is None
    assert "dry run: would register run:a" in capsys.readouterr().out
    assert registry.champion_run(mlf, MODEL) is None
    assert promote(cfg_of(store, "promote", lenient, f"run={a.run_id}")) == "1"
    version = mlf.get_model_version_by_alias(MODEL, "champion")
    assert version.run_id == a.run_id and version.source.endswith("/model")
    assert {"podium.promoted_by", "podium.promoted_at", "podium.gates"} <= set(version.tags)
    assert mlf.get_run(a.run_id).data.tags["podium.champion_of"] == f"{MODEL} v1"
    assert {f.path for f in mlf.list_artifacts(a.run_id, "model")} == {"model/config.yaml", "model/last.ckpt"}
    # The duplicate of the champion is refused; run b is promoted by its run directory.
    with pytest.raises(GateFailure, match="new_evidence"):
        promote(cfg_of(store, "promote", lenient, f"run={cands['run:a_again'].run_id}"))
    assert promote(cfg_of(store, "promote", lenient, f"run={store / 'outputs/digits/b'}")) == "2"
    assert mlf.get_model_version_by_alias(MODEL, "champion").run_id == b.run_id
    assert mlf.get_model_version_by_alias(MODEL, "previous").run_id == a.run_id
    # The board now compares every run with the champion on the samples both scored.
    board = board_of(store, lenient, "log_mlflow=false")
    assert board.champion == b.run_id and set(board.paired) >= {a.run_id, cands["cv:cv"].run_id}
    pair = board.paired[a.run_id]
    shared = set(a.evidence.sample_ids) & set(b.evidence.sample_ids)  # b's seed drew other folds
    assert pair.shared == len(shared) > 0 and pair.lo <= pair.diff <= pair.hi and pair.lo < pair.hi
    # Rollback: champion back to version 1; nothing earlier to go back to after that.
    capsys.readouterr()
    assert promote(cfg_of(store, "promote", lenient, "action=rollback")) == "1"
    assert mlf.get_model_version_by_alias(MODEL, "champion").run_id == a.run_id
    assert str(registry.champion_version(mlf, MODEL).version) == "1"
    with pytest.raises(RunStateError, match="no earlier champion to roll back to"):
        promote(cfg_of(store, "promote", lenient, "action=rollback"))


def test_a_second_promotion_at_the_same_time_is_refused(store: Path) -> None:
    lenient = gates_file(store, "lenient.yaml", LENIENT)
    mlf = client(store)
    before = registry.champion_run(mlf, MODEL)
    versions = len(mlf.search_model_versions(f"name='{MODEL}'"))
    b = by_label(board_of(store, lenient, "log_mlflow=false"))["run:b"]
    with registry.model_lock(store / "mlruns", MODEL), pytest.raises(RunStateError) as err:
        promote(cfg_of(store, "promote", lenient, f"run={b.run_id}"))
    assert "another promotion of model 'podium.digits' is in progress (pid" in str(err.value)
    # One whose gates compared against a champion that has moved since is refused too.
    with pytest.raises(RunStateError, match="changed while the gates were applied"):
        registry.register(mlf, MODEL, "digits", b.run_id, [], [], "an-older-champion", store / "mlruns")
    assert registry.champion_run(mlf, MODEL) == before
    assert len(mlf.search_model_versions(f"name='{MODEL}'")) == versions


def test_a_gate_over_a_metric_no_run_logs_names_the_metrics_there_are(store: Path) -> None:
    bad = gates_file(
        store, "bad.yaml", "gates:\n  - {{name: zero, kind: threshold, metric: eval/zero_rate, max: 0.1}}\n"
    )
    with pytest.raises(ConfigError) as err:
        board_of(store, bad)
    message = str(err.value)
    assert "no run logs the metric 'eval/zero_rate'" in message and "eval/acc" in message and "val/acc" in message


def test_missing_experiment_filter_and_store_are_clear_errors(store: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no experiment 'lens_identity'"):
        leaderboard(compose_cfg(["experiment=lens_identity", "data=lens_toy"], store, "leaderboard"))
    with pytest.raises(DataError, match="has no finished run matching filter"):
        board_of(store, "filter=\"params.seed = '999'\"")
    with pytest.raises(ConfigError, match="is not an MLflow search filter"):
        board_of(store, "filter='seed ==== 1'")
    with pytest.raises(DataError, match="there is no MLflow store"):
        board_of(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(store / "mlruns", broken / "mlruns", ignore=shutil.ignore_patterns("artifacts"))
    (broken / "mlruns" / "mlflow.db").write_bytes(b"not a database" * 100)
    with pytest.raises(DataError, match="cannot be read"):
        board_of(broken)


def test_promote_cli_words_and_exit_codes(store: Path) -> None:
    assert argv_aliases(["rollback", "experiment=x", "--dry-run"]) == [
        "action=rollback",
        "experiment=x",
        "dry_run=true",
    ]
    env = {**os.environ, "PODIUM_ROOT": str(store)}
    cmd = [sys.executable, str(PROJECT_ROOT / "promote.py"), "rollback", "experiment=digits", "--dry-run"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dry run: would move 'champion' of 'podium.digits'" in proc.stdout


def test_the_evidence_is_read_from_the_mlflow_artifacts_without_the_run_directory(store: Path, tmp_path: Path) -> None:
    board = board_of(store, "log_mlflow=false")
    for label in ("run:a", "cv:cv", "ensemble:cv_stack"):
        cand = by_label(board)[label]
        elsewhere = replace(cand, run_dir=None, evidence=None)  # a machine with the store only
        folder = fetch_folder(client(store), elsewhere, evidence_path(elsewhere, "val"), tmp_path)
        assert folder is not None and tmp_path in folder.parents, label
        evidence = load_evidence(folder, None, elsewhere.kind)
        assert evidence.sha256 == cand.evidence.sha256 and evidence.scored_sha256 == evidence.sha256
        assert evidence.metrics["acc"] == pytest.approx(cand.evidence.metrics["acc"])


def test_a_composite_ranks_by_the_weighted_sum_and_shows_each_term(store: Path, capsys) -> None:
    rule = """
extends: {shipped}
composite:
  terms:
    - {{metric: eval/acc, weight: 0.7, mode: max}}
    - {{metric: eval/ece, weight: 0.3, mode: min}}
  tie_breakers:
    - {{metric: run/duration_s, mode: min}}
"""
    capsys.readouterr()
    board = board_of(store, gates_file(store, "composite.yaml", rule), "log_mlflow=false")
    ranked = board.table.dropna(subset=["rank"])
    assert {"term:eval/acc", "term:eval/ece", "composite"} <= set(ranked.columns)
    assert ranked["composite"].tolist() == sorted(ranked["composite"], reverse=True)
    assert (ranked["term:eval/acc"] + ranked["term:eval/ece"]).round(12).tolist() == ranked["composite"].round(
        12
    ).tolist()
    assert ranked["term:eval/acc"].max() == pytest.approx(0.7) and ranked["term:eval/ece"].max() == pytest.approx(0.3)
    out = capsys.readouterr().out
    assert "leaderboard digits" in out and "term:eval/acc" in out


def test_a_rollback_after_an_interrupted_promotion_follows_the_alias(tmp_path: Path) -> None:
    uri = ensure_store(tmp_path / "mlruns")
    mlf = mlflow.MlflowClient(uri, registry_uri=uri)
    run = mlf.create_run(mlf.create_experiment("x")).info.run_id
    mlf.create_registered_model("m")
    for _ in range(3):
        mlf.create_model_version("m", f"file:///nowhere/{run}", run_id=run)
    registry.set_champion(mlf, "m", "1", [])
    registry.set_champion(mlf, "m", "2", ["1"])
    # Promotion of version 3 stopped after writing the history, before moving the aliases.
    mlf.set_registered_model_tag("m", registry.HISTORY_TAG, json.dumps(["1", "2", "3"]))
    assert registry.rollback(mlf, "m", tmp_path) == ("2", "1")
    assert mlf.get_model_version_by_alias("m", "champion").version in (1, "1")
    assert registry.history(mlf, "m") == ["1"]
