"""The evaluation spine (src/core/evaluating.py and the streaming reader of src/core/artifacts.py), task-agnostic.

The scorers are defined in this module and reached the way ``evaluate.py`` reaches a task's, by dotted
path (``+evaluators.toy=tests.core.test_evaluating.<function>``): what a scorer may return, which options
and whether ``strict`` it is given, the files it may add to ``eval/``, and that ``eval/`` is written whole
or not at all.
"""

from __future__ import annotations

import json
import math
import tracemalloc
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from src.core.artifacts import (
    MAX_LINE_BYTES,
    RecordError,
    build_resolved_config,
    line_snippet,
    read_record_lines,
    write_json,
)
from src.core.errors import ConfigError, DataError
from src.core.evaluating import (
    Evaluation,
    as_evaluation,
    call_scorer,
    evaluate,
    max_line_bytes,
    score,
    scorer_options,
    write_evaluation,
)
from src.core.io import sha256_file
from tests.conftest import CONFIG_DIR

HERE = __name__
RECORDS = "gt_vs_pred.jsonl"
#: What the scorers below were called with, newest last.
CALLS: list[dict[str, Any]] = []


def _ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["sample_id"] for r in records]


def tuple_scorer(records: list[dict[str, Any]]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The plain form: ``(metrics, per_sample)``."""
    hits = [r["gt"]["y"] == r["pred"]["y"] for r in records]
    return {"acc": sum(hits) / len(hits), "n": float(len(hits))}, [
        {"sample_id": r["sample_id"], "hit": hit} for r, hit in zip(records, hits, strict=True)
    ]


def full_scorer(records: list[dict[str, Any]], alpha: float = 1.0, strict: bool = False) -> Evaluation:
    """Every part of an :class:`Evaluation`; records its call."""
    CALLS.append({"alpha": alpha, "strict": strict, "ids": _ids(records)})
    return Evaluation(
        metrics={"acc": 0.5, "alpha": float(alpha)},
        per_sample=[{"sample_id": r["sample_id"]} for r in records],
        counters={"odd_records": 1},
        files={"extra.json": {"alpha": alpha}, "rows.jsonl": [{"i": i} for i in range(3)]},
        notes=["alpha scales nothing"],
        report="  TOY TABLE  a | b\n",
    )


def plain_scorer(records: list[dict[str, Any]]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Takes no option and no ``strict``."""
    CALLS.append({"ids": _ids(records)})
    return {"n": float(len(records))}, []


def kwargs_scorer(records: list[dict[str, Any]], **options: Any) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Takes any option."""
    CALLS.append(dict(options))
    return {"n": float(len(records))}, []


def metrics_file_scorer(records: list[dict[str, Any]]) -> Evaluation:
    """Tries to write eval/metrics.json itself."""
    return Evaluation({"n": 1.0}, [], files={"metrics.json": {"metrics": {"n": 2.0}}})


def raising_scorer(records: list[dict[str, Any]]) -> Evaluation:
    raise RuntimeError("the scorer failed mid-way")


def unwritable_scorer(records: list[dict[str, Any]]) -> Evaluation:
    """Fails while eval/ is being written: per_sample.jsonl is written, then this file cannot be."""
    return Evaluation({"n": 1.0}, [{"sample_id": "a"}], files={"zz.json": {"value": object()}})


def record_error_scorer(records: list[dict[str, Any]]) -> Evaluation:
    """Cannot use the second record it is given."""
    raise RecordError(1, f"record {records[1]['sample_id']!r} is broken", "repair that record")


# Line 1 a (scored), 2 u (unlabelled), 3 blank, 4 e (error code), 5 b (scored).
TOY = [
    {"sample_id": "a", "split": "val", "gt": {"y": 1}, "pred": {"y": 1}, "errors": []},
    {"sample_id": "u", "split": "val", "gt": None, "pred": {"y": 0}, "errors": []},
    None,
    {"sample_id": "e", "split": "val", "gt": {"y": 1}, "pred": {"y": 0}, "errors": ["nonfinite_pred"]},
    {"sample_id": "b", "split": "val", "gt": {"y": 0}, "pred": {"y": 1}, "errors": []},
]
TOY_COUNTERS = {"records": 4, "labelled": 3, "unlabelled": 1, "with_errors": 1, "scored": 2}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A predictions folder of the toy task without resolved_config.json."""
    out = tmp_path / "val"
    out.mkdir()
    (out / RECORDS).write_text("".join(("" if r is None else json.dumps(r, sort_keys=True)) + "\n" for r in TOY))
    return out


def toy_cfg(folder: Path, scorer: str, *overrides: str) -> DictConfig:
    """configs/evaluate.yaml for the toy task scored by ``scorer`` of this module."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(
            config_name="evaluate",
            overrides=[f"path={folder}", "task=toy", f"+evaluators.toy={HERE}.{scorer}", "log_mlflow=false",
                       *overrides],
        )  # fmt: skip


def eval_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "eval").iterdir())}


def staging_left(folder: Path) -> list[Path]:
    return sorted(folder.glob(".eval*"))


def written(folder: Path) -> dict[str, Any]:
    """metrics.json without ``source``, after checking that it names the records it scored."""
    summary = json.loads((folder / "eval" / "metrics.json").read_text())
    source = summary.pop("source")
    assert source == {"records": "gt_vs_pred.jsonl", "sha256": sha256_file(folder / "gt_vs_pred.jsonl")}
    return summary


# ---- what a scorer returns ----------------------------------------------------------------------------


def test_a_scorer_returning_a_tuple_still_works(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = evaluate(toy_cfg(folder, "tuple_scorer"))
    # Scored: a (hit) and b (miss); u has no gt, e has an error code.
    assert metrics == {"acc": 0.5, "n": 2.0}
    assert written(folder) == {"metrics": {"acc": 0.5, "n": 2.0}, "counters": TOY_COUNTERS}  # no notes
    assert set(eval_files(folder)) == {"metrics.json", "per_sample.jsonl"}
    rows = [json.loads(line) for line in (folder / "eval" / "per_sample.jsonl").read_text().splitlines()]
    assert rows == [{"sample_id": "a", "hit": True}, {"sample_id": "b", "hit": False}]
    out = capsys.readouterr().out
    assert f"podium: evaluated 2 of 4 toy records in {folder}" in out and "acc=0.5000, n=2.0000" in out
    assert "counters: unlabelled=1, with_errors=1" in out


def test_as_evaluation() -> None:
    made = Evaluation({"m": 1.0}, [{"sample_id": "a"}], notes=["n"])
    assert as_evaluation(made) is made
    for form in (({"m": 1.0}, [{"sample_id": "a"}]), [{"m": 1.0}, ({"sample_id": "a"},)]):
        converted = as_evaluation(form)
        assert converted == Evaluation({"m": 1.0}, [{"sample_id": "a"}])
        assert converted.counters == {} and converted.files == {} and converted.notes == [] and converted.report == ""


def test_the_artifact_may_name_its_evaluator(folder: Path) -> None:
    resolved = build_resolved_config("toy", ["predict"], {"records": RECORDS}, f"{HERE}.plain_scorer", None, {})
    write_json(folder / "resolved_config.json", resolved)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="evaluate", overrides=[f"path={folder}", "log_mlflow=false"])
    assert evaluate(cfg) == {"n": 2.0}  # no task=, no evaluators.toy: resolved_config.json names both


# ---- options and strict -------------------------------------------------------------------------------


def test_options_are_instantiated() -> None:
    cfg = OmegaConf.create(
        {
            "alpha": 3,
            "options": {
                "toy": {
                    "alpha": "${alpha}",
                    "items": [1, 2],
                    "frac": {"_target_": "fractions.Fraction", "numerator": 1, "denominator": 3},
                },
                "other": None,
            },
        }
    )
    options = scorer_options(cfg, "toy")
    assert options == {"alpha": 3, "items": [1, 2], "frac": Fraction(1, 3)}
    assert type(options["items"]) is list  # plain containers, not OmegaConf nodes
    assert scorer_options(cfg, "other") == {} and scorer_options(cfg, "unknown") == {}
    assert scorer_options(OmegaConf.create({}), "toy") == {}
    bad = OmegaConf.create({"options": {"toy": {"frac": {"_target_": "fractions.Nope"}}}})
    with pytest.raises(ConfigError, match=r"options\.toy: .*fractions\.Nope") as info:
        scorer_options(bad, "toy")
    assert "options.toy in configs/evaluate.yaml" in info.value.fix


def test_options_unknown_to_the_scorer_are_refused_naming_them(folder: Path) -> None:
    records = [{"sample_id": "a"}]
    with pytest.raises(ConfigError) as info:
        call_scorer(full_scorer, records, {"alpha": 1, "beta": 2, "gamma": 3}, strict=False)
    assert f"the evaluator {HERE}.full_scorer takes no option beta, gamma (it takes: alpha)" in info.value.what
    with pytest.raises(ConfigError, match=r"plain_scorer takes no option alpha \(it takes: none\)"):
        call_scorer(plain_scorer, records, {"alpha": 1}, strict=False)

    CALLS.clear()
    with pytest.raises(ConfigError, match="takes no option beta"):
        evaluate(toy_cfg(folder, "full_scorer", "+options.toy.beta=1"))
    assert CALLS == [] and not (folder / "eval").exists()


def test_options_reach_the_scorer(folder: Path) -> None:
    CALLS.clear()
    evaluate(toy_cfg(folder, "full_scorer", "+options.toy.alpha=2.5"))
    assert CALLS == [{"alpha": 2.5, "strict": False, "ids": ["a", "b"]}]
    assert written(folder)["metrics"]["alpha"] == 2.5
    CALLS.clear()
    evaluate(toy_cfg(folder, "kwargs_scorer", "+options.toy.alpha=2", "+options.toy.name=x"))
    assert CALLS[0]["alpha"] == 2 and CALLS[0]["name"] == "x"


def test_strict_is_passed_only_to_scorers_that_take_it(folder: Path) -> None:
    CALLS.clear()
    evaluate(toy_cfg(folder, "full_scorer", "strict=true"))  # strict=false: test_options_reach_the_scorer
    assert CALLS[-1]["strict"] is True
    evaluate(toy_cfg(folder, "plain_scorer", "strict=true"))  # takes no strict: not given one
    assert CALLS[-1] == {"ids": ["a", "b"]}
    assert call_scorer(plain_scorer, [{"sample_id": "x"}], {}, strict=True).metrics == {"n": 1.0}


# ---- the files of eval/ -------------------------------------------------------------------------------


def test_extra_files_counters_notes_and_report(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evaluate(toy_cfg(folder, "full_scorer", "+options.toy.alpha=2.5"))
    assert set(eval_files(folder)) == {"metrics.json", "per_sample.jsonl", "extra.json", "rows.jsonl"}
    assert json.loads((folder / "eval" / "extra.json").read_text()) == {"alpha": 2.5}
    assert (folder / "eval" / "rows.jsonl").read_text() == '{"i":0}\n{"i":1}\n{"i":2}\n'
    summary = written(folder)
    assert summary == {
        "metrics": {"acc": 0.5, "alpha": 2.5},
        "counters": {**TOY_COUNTERS, "odd_records": 1},
        "notes": ["alpha scales nothing"],
    }
    out = capsys.readouterr().out
    assert "counters: unlabelled=1, with_errors=1, odd_records=1" in out
    assert "  note: alpha scales nothing\n  TOY TABLE  a | b\n  written: " in out
    assert not staging_left(folder)


@pytest.mark.parametrize("name", ["metrics.json", "per_sample.jsonl", "sub/x.json", ".hidden.json"])
def test_a_scorer_may_not_write_reserved_files(name: str, folder: Path) -> None:
    evaluate(toy_cfg(folder, "tuple_scorer"))
    before = eval_files(folder)
    evaluation = Evaluation({"n": 1.0}, [], files={"fine.json": {}, name: {"n": 2.0}})
    with pytest.raises(ValueError, match=f"an evaluator may not write eval/{name}"):
        write_evaluation(folder, evaluation, {"records": 1})
    assert eval_files(folder) == before and not staging_left(folder)


def test_a_scorer_may_not_write_metrics_json_through_evaluate(folder: Path) -> None:
    with pytest.raises(ValueError, match="may not write eval/metrics.json"):
        evaluate(toy_cfg(folder, "metrics_file_scorer"))
    assert not (folder / "eval").exists() and not staging_left(folder)


@pytest.mark.parametrize(
    ("scorer", "error"),
    [("raising_scorer", RuntimeError), ("unwritable_scorer", TypeError), ("record_error_scorer", DataError)],
    ids=["raises-while-scoring", "fails-while-writing", "record-error"],
)
def test_a_failing_scorer_leaves_the_previous_eval_intact(scorer: str, error: type, folder: Path) -> None:
    with pytest.raises(error):
        evaluate(toy_cfg(folder, scorer))
    assert not (folder / "eval").exists() and not staging_left(folder)  # none before, none after

    evaluate(toy_cfg(folder, "full_scorer"))
    before = eval_files(folder)
    with pytest.raises(error):
        evaluate(toy_cfg(folder, scorer))
    assert eval_files(folder) == before and not staging_left(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["eval", RECORDS]


def test_write_evaluation_replaces_eval_whole(folder: Path) -> None:
    first = write_evaluation(folder, Evaluation({"a": 1.0}, [], files={"old.json": {}}), {"records": 1})
    assert first == folder / "eval" / "metrics.json"
    write_evaluation(folder, Evaluation({"b": math.nan}, [{"sample_id": "s"}], notes=["n"]), {"records": 2})
    assert set(eval_files(folder)) == {"metrics.json", "per_sample.jsonl"}  # old.json went with the old eval/
    assert written(folder) == {"metrics": {"b": None}, "counters": {"records": 2}, "notes": ["n"]}


# ---- a record the scorer cannot use ---------------------------------------------------------------------


def test_a_record_the_scorer_cannot_use_is_named_by_its_line(folder: Path) -> None:
    path = folder / RECORDS
    text = path.read_text().splitlines()[4]
    snippet = text if len(text) <= 80 else text[:80] + "..."
    for strict in ("false", "true"):
        with pytest.raises(DataError) as info:
            evaluate(toy_cfg(folder, "record_error_scorer", f"strict={strict}"))
        # The scorer's second record is b, on line 5 (u and e are not scored, line 3 is blank).
        assert info.value.what == f"{path}:5: record 'b' is broken: {snippet}"
        assert info.value.fix == "repair that record"
    with pytest.raises(DataError) as gone:
        score(folder / "moved.jsonl", [{"sample_id": "x"}, {"sample_id": "y"}], [7, 9], record_error_scorer)
    assert gone.value.what == f"{folder / 'moved.jsonl'}:9: record 'y' is broken"  # no file: no snippet


# ---- reading: line limit, streaming ---------------------------------------------------------------------


def test_max_line_bytes() -> None:
    assert max_line_bytes(OmegaConf.create({})) == MAX_LINE_BYTES
    assert max_line_bytes(OmegaConf.create({"max_line_mb": None})) == MAX_LINE_BYTES
    assert max_line_bytes(OmegaConf.create({"max_line_mb": 0.001})) == 1048  # int(0.001 * 2**20)
    assert max_line_bytes(OmegaConf.create({"max_line_mb": 3})) == 3 * 2**20
    assert max_line_bytes(OmegaConf.create({"max_line_mb": 1e-9})) == 1
    for bad in (0, -1, math.nan, math.inf, True, "big"):
        with pytest.raises(ConfigError, match=r"max_line_mb=.* is not a positive number"):
            max_line_bytes(OmegaConf.create({"max_line_mb": bad}))


def _line(sample_id: str, size: int) -> str:
    """A record line of exactly ``size`` bytes (without its newline)."""
    head = json.dumps({"sample_id": sample_id, "split": "val", "gt": None, "pred": None, "errors": [], "pad": ""})
    return head[:-2] + "x" * (size - len(head)) + head[-2:]


def test_a_line_at_the_limit_is_read_and_one_byte_more_is_counted(tmp_path: Path) -> None:
    path = tmp_path / RECORDS
    path.write_text(_line("a", 200) + "\n" + _line("b", 201) + "\n" + _line("c", 200))  # no final newline
    records, lines, counters = read_record_lines(path, strict=False, max_line_bytes=200)
    assert [r["sample_id"] for r in records] == ["a", "c"] and lines == [1, 3]
    assert counters == {"line_too_long": 1}
    with pytest.raises(DataError, match=rf"{path}:2: line_too_long \(202 bytes, over the limit of 200\)"):
        read_record_lines(path, strict=True, max_line_bytes=200)


def test_an_over_long_line_is_skipped_without_being_held_in_memory(tmp_path: Path) -> None:
    path = tmp_path / RECORDS
    huge = 24 * 2**20
    path.write_text(_line("a", 100) + "\n" + _line("big", huge) + "\n" + _line("c", 100) + "\n")
    tracemalloc.start()
    try:
        records, lines, counters = read_record_lines(path, strict=False, max_line_bytes=2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r["sample_id"] for r in records] == ["a", "c"] and lines == [1, 3]
    assert counters == {"line_too_long": 1}
    assert peak < 6 * 2**20, f"peak {peak / 2**20:.1f} MiB while skipping a {huge / 2**20:.0f} MiB line"


def test_line_snippet(tmp_path: Path) -> None:
    path = tmp_path / RECORDS
    path.write_text("short\n" + "y" * 100 + "\n\n")
    assert line_snippet(path, 1) == "short"
    assert line_snippet(path, 2) == "y" * 80 + "..."
    assert line_snippet(path, 3) == "" and line_snippet(path, 9) == ""
