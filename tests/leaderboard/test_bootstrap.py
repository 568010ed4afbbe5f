"""Bootstrap intervals and paired differences, checked against a hand computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.leaderboard.bootstrap import Bootstrap, estimate, group_codes, mean_column, paired
from src.leaderboard.runs import Evidence
from src.metrics.classification import score_records


def records(correct: list[bool], prefix: str = "s", groups: list[str] | None = None) -> list[dict]:
    """Two-class records: the truth is class 0; a correct one puts 0.8 on it, a wrong one 0.3."""
    out = []
    for i, ok in enumerate(correct):
        p = 0.8 if ok else 0.3
        rec = {"sample_id": f"{prefix}{i}", "split": "val", "gt": {"label": 0}, "pred": {"probs": [p, 1 - p]},
               "errors": []}  # fmt: skip
        if groups is not None:
            rec["group"] = groups[i]
        out.append(rec)
    return out


def evidence(recs: list[dict], with_table: bool = True) -> Evidence:
    metrics, per_sample = score_records(recs)
    return Evidence(
        folder=None, task="classification", scorer=score_records, records=recs, sha256="x", scored_sha256="x",
        metrics=metrics, per_sample=pd.DataFrame(per_sample) if with_table else None,
    )  # fmt: skip


RNG = np.random.default_rng(7)
CORRECT = list(RNG.random(60) < 0.7)
GROUPS = [f"g{i // 4}" for i in range(60)]  # 15 groups of 4


def test_interval_matches_a_hand_computed_group_bootstrap() -> None:
    ev = evidence(records(CORRECT, groups=GROUPS))
    codes = group_codes(ev.sample_ids, ev.records, None)
    boot = Bootstrap(samples=500, level=0.9, seed=3)
    got = estimate(ev, "acc", codes, boot)
    # By hand: draw 15 groups with replacement 500 times, concatenate their samples, take the mean.
    picks = np.random.default_rng(3).integers(0, 15, size=(500, 15))
    x = np.asarray(CORRECT, dtype=float)
    means = [np.concatenate([x[4 * g : 4 * g + 4] for g in row]).mean() for row in picks]
    lo, hi = np.percentile(means, [5, 95])
    assert got.method == "mean:correct" and got.groups == 15 and got.replicates == 500
    assert got.value == pytest.approx(x.mean())
    assert (got.lo, got.hi) == pytest.approx((lo, hi), abs=1e-12)
    assert got.lo < got.value < got.hi


def test_rescoring_each_replicate_gives_the_vectorised_interval() -> None:
    recs = records(CORRECT)
    codes = group_codes([r["sample_id"] for r in recs], recs, None)
    boot = Bootstrap(samples=60, rescore_samples=60, seed=1)
    fast = estimate(evidence(recs), "acc", codes, boot)
    slow = estimate(evidence(recs, with_table=False), "acc", codes, boot)
    assert slow.method == "rescore" and fast.method == "mean:correct"
    assert (slow.lo, slow.hi) == pytest.approx((fast.lo, fast.hi), abs=1e-12)


def test_a_metric_that_is_no_per_sample_mean_is_rescored() -> None:
    ev = evidence(records(CORRECT))
    assert mean_column(ev.per_sample, ev.metrics["ece"]) is None
    got = estimate(ev, "ece", group_codes(ev.sample_ids, ev.records, None), Bootstrap(rescore_samples=40))
    assert got.method == "rescore" and got.lo <= got.hi


def test_ungrouped_samples_are_their_own_groups_and_a_table_wins() -> None:
    assert list(group_codes(["a", "b", "c"], [{}, {}, {}], None)) == [0, 1, 2]
    assert list(group_codes(["a", "b", "c"], [], {"a": "x", "b": "y", "c": "x"})) == [0, 1, 0]


def test_paired_difference_uses_the_shared_samples_and_the_same_replicates() -> None:
    better = [True] * 50 + [False] * 10
    worse = [True] * 30 + [False] * 30
    a, b = evidence(records(better)), evidence(records(worse)[:50])  # b scored only 50 samples
    pair = paired(a, b, "acc", None, Bootstrap(samples=400, seed=0))
    assert pair.shared == 50
    assert pair.diff == pytest.approx(1.0 - 30 / 50)
    assert 0 < pair.lo <= pair.diff <= pair.hi
    same = paired(a, a, "acc", None, Bootstrap(samples=100))
    assert (same.diff, same.lo, same.hi) == (0.0, 0.0, 0.0)
    assert paired(a, evidence(records(worse, prefix="other")), "acc", None, Bootstrap()) is None


def test_too_few_groups_are_resampled_sample_by_sample() -> None:
    ev = evidence(records(CORRECT, groups=["x"] * 30 + ["y"] * 30))
    codes = group_codes(ev.sample_ids, ev.records, None)
    got = estimate(ev, "acc", codes, Bootstrap(samples=200, min_groups=10))
    assert got.groups == 60 and got.lo < got.value < got.hi
    # Two groups resampled as groups give at most three distinct values: no honest interval.
    assert estimate(ev, "acc", codes, Bootstrap(samples=200, min_groups=2)).groups == 2
