"""Each gate kind passing and failing, gate specs refused up front, composite ranking."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from src.core.errors import ConfigError
from src.core.io import sha256_file
from src.core.resolvers import PROJECT_ROOT
from src.leaderboard.bootstrap import Paired
from src.leaderboard.composite import check_terms, composite_terms, order
from src.leaderboard.gates import Context, apply_gates, check_specs
from src.leaderboard.runs import Candidate, Evidence


def cand(run_id: str, metrics: dict, per_sample: pd.DataFrame | None = None, sha: str = "s1", **ev) -> Candidate:
    evidence = Evidence(
        folder=Path("/nowhere"), task="t", scorer=None, records=[], sha256=sha, scored_sha256=ev.get("scored", sha),
        metrics={"score": 1.0}, per_sample=per_sample, checkpoints=ev.get("checkpoints", []),
    )  # fmt: skip
    return Candidate(run_id, run_id, "run", "exp", "0", 0, 1000, None, "file:///a", metrics, {}, evidence)


def ctx(**kw) -> Context:
    return Context(**{"metric": "score", "proxies": (), "champion": None, "paired": {}, "earlier": {}, **kw})


def verdicts(c: Candidate, specs: list[dict], context: Context | None = None) -> dict[str, tuple[bool, str]]:
    return {r.name: (r.passed, r.detail) for r in apply_gates(c, specs, context or ctx())}


def test_thresholds_ranges_and_differences() -> None:
    c = cand("r1", {"eval/ece": 0.02, "eval/cov68": 0.70, "int8/psnr": 30.0, "float/psnr": 30.15})
    specs = [
        {"name": "ece", "kind": "threshold", "metric": "eval/ece", "max": 0.015},
        {"name": "cov", "kind": "threshold", "metric": "eval/cov68", "min": 0.63, "max": 0.73},
        {"name": "int8", "kind": "threshold", "metric": "int8/psnr", "minus": "float/psnr", "min": -0.1},
        {"name": "absent", "kind": "threshold", "metric": "eval/zero_rate", "max": 0.12},
    ]
    got = verdicts(c, specs)
    assert got["ece"] == (False, "eval/ece = 0.02 (needs <= 0.015)")
    assert got["cov"][0] is True
    assert got["int8"][0] is False and "int8/psnr - float/psnr = -0.15" in got["int8"][1]
    assert got["absent"] == (False, "the run has no eval/zero_rate")


def test_bucket_rules_judge_only_buckets_with_enough_support() -> None:
    table = pd.DataFrame({"bucket": ["a"] * 20 + ["b"] * 20 + ["c"] * 3,
                          "score": [50.0] * 20 + [0.0] * 7 + [40.0] * 13 + [0.0] * 3})  # fmt: skip
    c = cand("r1", {}, per_sample=table)
    specs = [
        {"name": "mean", "kind": "bucket", "by": "bucket", "column": "score", "min_support": 20, "min": 15},
        {
            "name": "zeros",
            "kind": "bucket",
            "by": "bucket",
            "column": "score",
            "stat": "zero_rate",
            "min_support": 20,
            "max": 0.30,
        },
        {"name": "nocol", "kind": "bucket", "by": "camera", "column": "score"},
    ]
    got = verdicts(c, specs)
    assert got["mean"][0] is True  # c (mean 0) has 3 samples: not judged
    assert got["zeros"] == (False, got["zeros"][1]) and "b=0.35" in got["zeros"][1]
    assert got["nocol"][0] is False and "it has: bucket, score" in got["nocol"][1]


def test_margin_against_the_champion() -> None:
    spec = [{"name": "m", "kind": "margin", "min": 1.5}]
    c = cand("new", {})
    assert verdicts(c, spec)["m"] == (True, "no champion yet: nothing to beat")
    win = ctx(champion="old", paired={"new": Paired(2.0, 0.4, 3.0, 100)})
    assert verdicts(c, spec, win)["m"][0] is True
    small = ctx(champion="old", paired={"new": Paired(1.0, 0.2, 2.0, 100)})
    assert verdicts(c, spec, small)["m"][0] is False
    unsure = ctx(champion="old", paired={"new": Paired(2.0, -0.1, 4.0, 100)})
    assert verdicts(c, spec, unsure)["m"][0] is False
    assert "not comparable" in verdicts(c, spec, ctx(champion="old"))["m"][1]
    assert verdicts(c, spec, ctx(champion="old", proxies=("score",)))["m"][0] is False


def test_lineage_checksum_duplicate_and_proxy(tmp_path: Path) -> None:
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"weights")
    good = cand("r2", {"eval/acc": 0.9}, checkpoints=[(ckpt, sha256_file(ckpt))])
    specs = [{"name": "sum", "kind": "checksum"}, {"name": "dup", "kind": "duplicate"},
             {"name": "real", "kind": "proxy", "metric": "eval/acc"}]  # fmt: skip
    assert all(ok for ok, _ in verdicts(good, specs, ctx(earlier={"s1": "r2"})).values())
    got = verdicts(good, specs, ctx(earlier={"s1": "r1"}))
    assert got["dup"] == (False, "predictions byte-identical to earlier run r1: not new evidence")
    ckpt.write_bytes(b"retrained")
    assert "not the checkpoint that predicted" in verdicts(good, specs)["sum"][1]
    stale = cand("r3", {}, scored="other")
    assert "changed since eval/ scored them" in verdicts(stale, specs)["sum"][1]
    proxy_only = cand("r4", {"val/acc": 0.99})
    got = verdicts(proxy_only, specs, ctx(proxies=("val/acc",)))
    assert got["real"] == (False, "no eval/acc: only proxies (val/acc)")
    on_proxy = [{"name": "t", "kind": "threshold", "metric": "val/acc", "min": 0.9}]
    assert "a proxy cannot promote" in verdicts(proxy_only, on_proxy, ctx(proxies=("val/acc",)))["t"][1]


def test_a_run_without_evidence_fails_every_gate() -> None:
    c = cand("r5", {})
    c.evidence, c.problem = None, "no evaluation artifact: ..."
    got = verdicts(c, [{"name": "dup", "kind": "duplicate"}, {"name": "m", "kind": "margin"}])
    assert got == {"dup": (False, "no evaluation artifact: ..."), "m": (False, "no evaluation artifact: ...")}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([{"name": "x", "kind": "threshold", "metric": "eval/nope", "max": 1}],
         "no run logs the metric 'eval/nope'"),
        ([{"name": "x", "kind": "nonsense"}], "needs a name and a kind among threshold, bucket"),
        ([{"name": "x", "kind": "duplicate"}, {"name": "x", "kind": "checksum"}], "is used twice"),
        ([{"name": "x", "kind": "bucket", "by": "b"}], "a bucket gate needs column"),
        ([{"name": "x", "kind": "bucket", "by": "b", "column": "c", "stat": "median"}], "stat='median'"),
    ],
)  # fmt: skip
def test_bad_gate_specs_are_refused_naming_the_gate(specs: list[dict], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_specs(specs, "gates/x.yaml", {"eval/acc", "val/acc"})
    assert message in str(err.value) and "gates/x.yaml" in str(err.value)
    if "eval/nope" in message:
        assert "eval/acc, val/acc" in str(err.value)


def test_composite_normalises_weights_and_breaks_ties() -> None:
    values = pd.DataFrame(
        {"gll": [1.0, 3.0, 2.0, 3.0], "cov": [0.68, 0.50, 0.70, 0.50], "time": [10.0, 30.0, 20.0, 20.0]},
        index=["a", "b", "c", "d"],
    )
    terms = [{"metric": "gll", "weight": 0.5, "mode": "max"}, {"metric": "cov", "weight": 0.5, "mode": "min",
             "target": 0.6827}]  # fmt: skip
    table = composite_terms(values, terms)
    assert table.loc["a", "term:gll"] == 0.0 and table.loc["b", "term:gll"] == 0.5
    assert table.loc["a", "term:cov"] == pytest.approx(0.5)  # the smallest gap to 0.6827
    assert table.loc["b", "term:cov"] == 0.0
    assert table["composite"].equals(table["term:gll"] + table["term:cov"])
    # b and d tie on the composite; the runtime tie-breaker puts d first.
    ranked = order(table["composite"], "max", values, [{"metric": "time", "mode": "min"}])
    assert ranked.index("d") < ranked.index("b")
    with pytest.raises(ConfigError, match="no run logs the metric 'speed'"):
        check_terms({"terms": [{"metric": "speed", "weight": 1}]}, "g.yaml", set(values.columns))


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "configs" / "gates").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_gates_file_reads_and_its_gates_are_well_formed(path: Path) -> None:
    from omegaconf import OmegaConf

    from src.leaderboard.board import read_gates_file

    node = OmegaConf.merge({"paths": {"data_dir": "/data"}, "board": read_gates_file(path)}, {})
    board = OmegaConf.to_container(node, resolve=True)["board"]
    gates = board.get("gates") or []
    named = {g.get(k) for g in gates for k in ("metric", "minus") if g.get(k)}
    check_specs(gates, str(path), named)  # every kind, name and key valid (metrics exist per run)
    if board.get("composite"):
        terms = board["composite"]["terms"] + (board["composite"].get("tie_breakers") or [])
        check_terms(board["composite"], str(path), {t["metric"] for t in terms})
    assert board.get("model_name", "podium.").startswith("podium.")
