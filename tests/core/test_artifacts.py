"""The prediction artifact contract: deterministic records, redaction, strict and lenient reading,
schema versions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from src.core.artifacts import (
    NONFINITE_PRED,
    REDACTED,
    SCHEMA_VERSION,
    RecordError,
    build_resolved_config,
    build_summary,
    read_record_lines,
    read_records,
    read_resolved_config,
    record_field,
    redact,
    write_json,
    write_records,
)
from src.core.errors import DataError


def records(order: int = 1) -> list[dict]:
    """Three records holding numpy, torch and Python numbers; ``order`` flips the key order."""
    made = []
    for i in range(3):
        pred = {"probs": np.array([0.1, 0.2, 0.7], dtype=np.float32) * (i + 1), "label": np.int64(2)}
        record = {
            "sample_id": f"s{i}",
            "split": "val",
            "gt": None if i == 2 else {"label": 2},
            "pred": dict(reversed(pred.items())) if order < 0 else pred,
            "errors": [],
            "score": torch.tensor(1 / 3, dtype=torch.float64) * i,
            "_restored": np.zeros((2, 2), dtype=np.uint8),
        }
        made.append(dict(reversed(record.items())) if order < 0 else record)
    return made


def test_same_records_give_the_same_bytes(tmp_path: Path) -> None:
    a = write_records(tmp_path / "a.jsonl", records()).read_bytes()
    b = write_records(tmp_path / "b.jsonl", records(order=-1)).read_bytes()  # other key order, same content
    assert a == b
    lines = a.decode().splitlines()
    assert lines[0].startswith('{"errors":[],"gt":{"label":2},"pred":{"label":2,"probs":[0.100000001,')
    assert "_restored" not in a.decode()  # attachments stay in memory
    parsed = [json.loads(line) for line in lines]
    # 9 significant digits give back every float32 exactly
    assert np.float32(parsed[2]["pred"]["probs"][2]) == np.float32(0.7) * 3
    assert parsed[1]["score"] == 0.333333333 and parsed[2]["gt"] is None


def test_non_finite_floats_are_written_as_null(tmp_path: Path) -> None:
    bad = [{"sample_id": "x", "split": "test", "gt": None, "pred": {"mu": [1.0, math.nan, math.inf]},
            "errors": [NONFINITE_PRED]}]  # fmt: skip
    line = write_records(tmp_path / "r.jsonl", bad).read_text()
    assert '"mu":[1.0,null,null]' in line and json.loads(line)["errors"] == [NONFINITE_PRED]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"sample_id": "a", "split": "val", "gt": None, "pred": {}}, "missing_key: no 'errors'"),
        ({"sample_id": 3, "split": "val", "gt": None, "pred": {}, "errors": []}, "'sample_id' is a int"),
        ({"sample_id": "a", "split": "val", "gt": None, "pred": {}, "errors": "none"}, "expected a list of strings"),
    ],
)
def test_writer_refuses_a_record_that_breaks_the_contract(tmp_path: Path, record: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_records(tmp_path / "r.jsonl", [record])
    assert not (tmp_path / "r.jsonl").exists()


def test_writer_refuses_a_repeated_sample_id(tmp_path: Path) -> None:
    twice = records()[:1] * 2
    with pytest.raises(ValueError, match="sample_id 's0' appears twice"):
        write_records(tmp_path / "r.jsonl", twice)


def test_secrets_are_redacted_at_any_depth() -> None:
    config = {
        "token": "t",
        "logger": {"mlflow": {"Password": "p", "tracking_uri": "sqlite:///x"}},
        "servers": [{"API_KEY": "k", "name": "a"}, {"db_secret": {"nested": 1}, "github_token": "g"}],
        "tokenizer": "bpe",
        "user_password": "u",
        "secret_sauce": "kept",
    }
    out = redact(config)
    assert out["token"] == out["logger"]["mlflow"]["Password"] == out["user_password"] == REDACTED
    assert out["servers"][0] == {"API_KEY": REDACTED, "name": "a"}
    assert out["servers"][1] == {"db_secret": REDACTED, "github_token": REDACTED}
    assert out["tokenizer"] == "bpe" and out["secret_sauce"] == "kept"
    assert out["logger"]["mlflow"]["tracking_uri"] == "sqlite:///x"
    assert config["token"] == "t"  # the input is left as it was
    resolved = build_resolved_config("classification", ["predict"], {"records": "gt_vs_pred.jsonl"}, None, None, config)
    assert resolved["schema_version"] == SCHEMA_VERSION == 1 and resolved["config"]["token"] == REDACTED


def test_summary_counts_records_and_error_codes() -> None:
    made = records()
    made[0]["errors"] = [NONFINITE_PRED]
    summary = build_summary(made, "classification", {"path": "checkpoints/last.ckpt"}, 1.23456, split="val")
    assert summary["counts"] == {"records": 3, "labelled": 2, "unlabelled": 1, "with_errors": 1}
    assert summary["errors"] == {NONFINITE_PRED: 1} and summary["wall_time_s"] == 1.235
    assert summary["task"] == "classification" and summary["split"] == "val"


GOOD = '{"sample_id":"a","split":"val","gt":null,"pred":{},"errors":[]}'
MALFORMED = [
    GOOD,
    '{"sample_id":"b","split":"val","gt":null,"pred":{},"errors":[]',  # truncated
    "[1, 2]",
    '{"sample_id":"c","split":"val","gt":null,"pred":{}}',
    "",
    GOOD,  # the same sample again
    '{"sample_id":"d","split":"val","gt":{"label":1},"pred":{"label":1},"errors":[]}',
]


@pytest.fixture
def malformed(tmp_path: Path) -> Path:
    path = tmp_path / "gt_vs_pred.jsonl"
    path.write_text("\n".join(MALFORMED) + "\n")
    return path


def test_lenient_reading_counts_malformed_lines_and_goes_on(malformed: Path) -> None:
    found, lines, counters = read_record_lines(malformed, strict=False)
    assert [r["sample_id"] for r in found] == ["a", "d"] and lines == [1, 7]
    assert counters == {"invalid_json": 1, "not_an_object": 1, "missing_key": 1, "duplicate_sample_id": 1}
    assert read_records(malformed, strict=False)[0] == found


def test_strict_reading_stops_at_the_first_malformed_line_with_path_line_reason_snippet(malformed: Path) -> None:
    with pytest.raises(DataError) as err:
        read_records(malformed, strict=True)
    expected = (
        f"{malformed}:2: invalid_json (Expecting ',' delimiter at column 63): "
        '{"sample_id":"b","split":"val","gt":null,"pred":{},"errors":[]'
    )
    assert err.value.what == expected
    assert "repair or remove line 2" in err.value.fix and "strict=false" in err.value.fix


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("[1, 2]", "not_an_object (a JSON list"),
        ('{"sample_id":"c","split":"val","gt":null,"pred":{}}', "missing_key (no 'errors')"),
        ('{"sample_id":"c","split":["val"],"gt":null,"pred":{},"errors":[]}', "wrong_type ('split' is a list"),
    ],
)
def test_strict_reading_names_each_kind_of_bad_record(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(GOOD + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        read_records(path, strict=True)
    assert err.value.what.startswith(f"{path}:2: {reason}")


def test_long_lines_are_shown_cut(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"sample_id": "' + "x" * 200 + "\n")
    with pytest.raises(DataError) as err:
        read_records(path, strict=True)
    assert err.value.what.endswith('{"sample_id": "' + "x" * 65 + "...")


def test_a_binary_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "gt_vs_pred.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(DataError, match=r"gt_vs_pred.jsonl is not UTF-8 text"):
        read_records(path, strict=False)


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ('"1"', r'schema_version "1" is a str, not an int \(supported schema versions: 1\)'),
        ("1.0", r"schema_version 1.0 is a float, not an int \(supported schema versions: 1\)"),
        ("true", r"schema_version true is a bool, not an int \(supported schema versions: 1\)"),
        ("2", r"schema_version 2 is not supported \(supported schema versions: 1\)"),
    ],
)
def test_schema_version_must_be_a_supported_int(tmp_path: Path, version: str, message: str) -> None:
    (tmp_path / "resolved_config.json").write_text(f'{{"schema_version": {version}, "task": "ariel"}}')
    with pytest.raises(DataError, match=message):
        read_resolved_config(tmp_path)


def test_resolved_config_absent_missing_version_or_valid(tmp_path: Path) -> None:
    assert read_resolved_config(tmp_path) is None  # a file written by another tool: the user names the task
    path = tmp_path / "resolved_config.json"
    path.write_text('{"task": "ariel"}')
    with pytest.raises(DataError, match=r"has no schema_version \(supported schema versions: 1\)"):
        read_resolved_config(tmp_path)
    write_json(path, build_resolved_config("ariel", ["predict"], {}, None, None, {"seed": 1}))
    assert read_resolved_config(tmp_path)["task"] == "ariel"


def test_record_field_names_the_sample_and_the_field() -> None:
    made = [{"sample_id": "p1", "pred": {"mu": [1.0]}}, {"sample_id": "p2", "pred": {"label": 3}}]
    assert record_field(made, 0, "pred.mu", list) == [1.0]
    with pytest.raises(RecordError, match=r"record 'p2' has no pred.mu \(a record of another task\?\)") as err:
        record_field(made, 1, "pred.mu", list)
    assert err.value.index == 1
    with pytest.raises(RecordError, match=r"record 'p1': pred.mu is a list, expected int or float"):
        record_field(made, 0, "pred.mu", (int, float))
