"""The prediction artifact contract: per-sample records, a summary, a schema-versioned config.

``predict.py`` writes, and ``evaluate.py`` (or any other consumer) reads, one folder per split::

    gt_vs_pred.jsonl       one JSON object per sample, in the loader's order of the split
    summary.json           counts, error-code counters, the checkpoint used, wall time
    resolved_config.json   schema_version, task, stages, artifact paths, evaluator, MLflow run,
                           the resolved config with secrets redacted
    <exports>              the competition export derived from the records (submission.csv, ...)

A record has the top-level keys :data:`RECORD_KEYS`: ``sample_id`` (str), ``split`` (str), ``gt``
(the truth; null when unlabelled), ``pred`` (the prediction) and ``errors`` (string codes such as
``nonfinite_pred``; empty when none), plus any task payload keys. Keys starting with ``_`` are
in-memory attachments for a module's export hook (restored frames, ...) and are never written.

Lines are byte-deterministic: keys sorted, fixed separators, ASCII only, every float rounded to
:data:`FLOAT_DIGITS` significant digits (enough to give back a float32 exactly) and non-finite
floats written as null. The same records always give the same bytes.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from src.core.errors import DataError
from src.core.io import atomic_path, write_json_atomic

#: The schema written into ``resolved_config.json``.
SCHEMA_VERSION = 1
#: The schema versions readers accept (a version is an int; its major is the int itself).
SUPPORTED_MAJORS: tuple[int, ...] = (1,)

RECORDS_FILE = "gt_vs_pred.jsonl"
SUMMARY_FILE = "summary.json"
RESOLVED_CONFIG_FILE = "resolved_config.json"
#: The top-level keys of every record.
RECORD_KEYS = ("sample_id", "split", "gt", "pred", "errors")
#: Error code of a sample whose prediction holds NaN or infinity.
NONFINITE_PRED = "nonfinite_pred"
#: Significant digits of floats in records (9 give back every float32 exactly).
FLOAT_DIGITS = 9
#: Keys of in-memory attachments start with this; they are dropped when records are written.
ATTACHMENT_PREFIX = "_"

#: Config keys whose values are replaced by :data:`REDACTED` (case-insensitive), at any depth.
SECRET_NAMES = ("token", "password", "secret", "api_key")
SECRET_SUFFIXES = ("_secret", "_token", "_password")
REDACTED = "***"
#: The fix of a record its task's scorer cannot read.
OTHER_TASK_FIX = (
    "keep one task's records per file and fix or drop this one (a file without resolved_config.json "
    "names its task with task=<name>)"
)
#: Characters of a malformed line shown in an error message.
SNIPPET_CHARS = 80
#: Longest record line read (bytes); a longer one is counted (``line_too_long``) and skipped
#: without being held in memory. A record is a few kB to a few MB (a detection image with
#: thousands of boxes); a multi-GB line is a broken or foreign file.
MAX_LINE_BYTES = 256 * 2**20
#: Bytes read at a time while skipping the rest of an over-long line.
_SKIP_CHUNK = 2**20


class RecordError(DataError):
    """A record a task's scorer cannot use; ``index`` is its position in the list it was given.

    ``evaluate.py`` turns the index into the file's line number.
    """

    def __init__(self, index: int, what: str, fix: str | None = None) -> None:
        self.index = index
        super().__init__(what, fix)


# ---- writing ------------------------------------------------------------------------------------


def _number(value: float, digits: int) -> float | None:
    if not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def jsonable(value: Any, digits: int = FLOAT_DIGITS) -> Any:
    """``value`` as plain JSON types, floats rounded to ``digits`` significant digits.

    Arrays and tensors (anything with ``tolist``) become lists; numpy scalars become Python
    numbers; NaN and infinity become None.

    Raises:
        TypeError: A value JSON cannot hold (a module returned something unexpected).
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _number(value, digits)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, digits) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return jsonable(value.tolist(), digits)
    raise TypeError(f"a record value of type {type(value).__name__} cannot be written as JSON: {value!r:.80}")


def json_line(obj: Mapping[str, Any], digits: int = FLOAT_DIGITS) -> str:
    """One deterministic JSON line (no newline) of a mapping, attachments left out."""
    kept = {k: v for k, v in obj.items() if not str(k).startswith(ATTACHMENT_PREFIX)}
    return json.dumps(jsonable(kept, digits), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]], digits: int = FLOAT_DIGITS) -> Path:
    """Write rows as deterministic JSON lines, atomically; return the path."""
    text = "".join(json_line(row, digits) + "\n" for row in rows)
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("ascii"))
    return Path(path)


def write_records(path: str | Path, records: Sequence[Mapping[str, Any]], digits: int = FLOAT_DIGITS) -> Path:
    """Write ``gt_vs_pred.jsonl``: records in the order given, byte-deterministic, atomically.

    Raises:
        ValueError: A record breaks the contract (missing key, wrong type, repeated sample_id);
            a module that produced it has a bug.
    """
    seen: set[str] = set()
    for record in records:
        problem = record_problem(record)
        if problem is not None:
            raise ValueError(f"record {dict(record).get('sample_id')!r}: {problem[0]}: {problem[1]}")
        if record["sample_id"] in seen:
            raise ValueError(f"sample_id {record['sample_id']!r} appears twice in the records")
        seen.add(record["sample_id"])
    return write_jsonl(path, records, digits)


def error_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many records carry each error code, by code."""
    return dict(sorted(Counter(code for r in records for code in r.get("errors") or ()).items()))


def record_counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """``records``, ``labelled`` (``gt`` not null), ``unlabelled`` and ``with_errors``."""
    labelled = sum(r.get("gt") is not None for r in records)
    return {
        "records": len(records),
        "labelled": labelled,
        "unlabelled": len(records) - labelled,
        "with_errors": sum(bool(r.get("errors")) for r in records),
    }


def build_summary(
    records: Sequence[Mapping[str, Any]], task: str, checkpoint: Mapping[str, Any], wall_time_s: float, **extra: Any
) -> dict[str, Any]:
    """The content of ``summary.json``.

    Args:
        records: The records written.
        task: The task name (``classification``, ``ariel``, ``postfilter``, ...).
        checkpoint: What identifies the checkpoint used (path, epoch, ...).
        wall_time_s: Seconds the prediction took.
        **extra: More top-level entries (split, data fingerprint, ...).
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "counts": record_counts(records),
        "errors": error_counts(records),
        "checkpoint": dict(checkpoint),
        "wall_time_s": round(float(wall_time_s), 3),
        **extra,
    }


def is_secret(key: str) -> bool:
    """Whether a config key names a secret (``token``, ``password``, ``*_secret``, ...)."""
    name = key.lower()
    return name in SECRET_NAMES or name.endswith(SECRET_SUFFIXES)


def redact(config: Any) -> Any:
    """``config`` with the value of every secret key (at any depth) replaced by ``***``."""
    if isinstance(config, Mapping):
        return {k: REDACTED if is_secret(str(k)) else redact(v) for k, v in config.items()}
    if isinstance(config, list | tuple):
        return [redact(v) for v in config]
    return config


def build_resolved_config(
    task: str,
    stages: Sequence[str],
    artifacts: Mapping[str, str],
    evaluator: str | None,
    mlflow: Mapping[str, Any] | None,
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """The content of ``resolved_config.json`` (secrets in ``config`` redacted).

    Args:
        task: The task name; with no ``evaluator`` it picks one from ``evaluate.py``'s config.
        stages: The stages run, in order (``predict``, ``calibrate:<callback>``, ``export``).
        artifacts: Artifact name -> path relative to the folder.
        evaluator: Dotted path of the scoring function, or None for the configured one.
        mlflow: ``{"tracking_uri", "run_id"}`` of the run the artifact belongs to, or None.
        config: The resolved config of the command.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "stages": list(stages),
        "artifacts": dict(artifacts),
        "evaluator": evaluator,
        "mlflow": dict(mlflow) if mlflow else None,
        "config": redact(config),
    }


def write_json(path: str | Path, obj: Mapping[str, Any]) -> Path:
    """Write a summary or resolved config (indented, key-sorted JSON) atomically."""
    return write_json_atomic(path, jsonable(obj))


# ---- reading ------------------------------------------------------------------------------------


def write_artifact(
    folder: Path,
    records: Sequence[Mapping[str, Any]],
    resolved: Mapping[str, Any],
    summary: Mapping[str, Any] | None = None,
    digits: int = FLOAT_DIGITS,
) -> None:
    """Write an artifact folder: ``gt_vs_pred.jsonl``, ``resolved_config.json`` and (last, so its
    presence marks the folder complete) ``summary.json`` when given.

    Args:
        folder: The folder (``predictions/<split>``, a cross-validation's or an ensemble's ``oof``).
        records: The records.
        resolved: :func:`build_resolved_config`'s content.
        summary: :func:`build_summary`'s content, or None.
        digits: Significant digits of the records' floats.
    """
    write_records(folder / RECORDS_FILE, records, digits)
    write_json(folder / RESOLVED_CONFIG_FILE, resolved)
    if summary is not None:
        write_json(folder / SUMMARY_FILE, summary)


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def record_problem(obj: Any) -> tuple[str, str] | None:
    """``(code, detail)`` of what makes ``obj`` not a record, or None when it is one.

    Codes: ``not_an_object``, ``missing_key``, ``wrong_type``.
    """
    if not isinstance(obj, Mapping):
        return "not_an_object", f"a JSON {_type(obj)}, expected an object with keys {', '.join(RECORD_KEYS)}"
    missing = [k for k in RECORD_KEYS if k not in obj]
    if missing:
        return "missing_key", f"no {', '.join(repr(k) for k in missing)}"
    for key in ("sample_id", "split"):
        if not isinstance(obj[key], str):
            return "wrong_type", f"{key!r} is a {_type(obj[key])}, expected a string"
    errors = obj["errors"]
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        return "wrong_type", f"'errors' is {json.dumps(errors)[:40]}, expected a list of strings"
    return None


def _snippet(line: str) -> str:
    line = line.rstrip("\r\n")
    return line if len(line) <= SNIPPET_CHARS else line[:SNIPPET_CHARS] + "..."


def _parse(line: str) -> tuple[Any, tuple[str, str] | None]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, ("invalid_json", f"{exc.msg} at column {exc.colno}")
    return obj, record_problem(obj)


def _lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, str | None, int]]:
    """``(line number, text, size in bytes)`` of each line, streamed; text None for a line over
    ``max_line_bytes``, which is skipped without being held in memory.

    Raises:
        DataError: The file is missing or a line is not UTF-8 (a binary file).
    """
    if not path.is_file():
        raise DataError(f"{path} does not exist", f"point path at a predictions folder holding {RECORDS_FILE}")
    offset = 0
    with open(path, "rb") as fh:
        for number in itertools.count(1):
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                return
            size = len(raw)
            if size > max_line_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):
                    raw = fh.readline(_SKIP_CHUNK)
                    size += len(raw)
                yield number, None, size
            else:
                try:
                    yield number, raw.decode("utf-8").rstrip("\r\n"), size
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{path} is not UTF-8 text ({exc.reason} at byte {offset + exc.start}, line {number}): "
                        f"not a {RECORDS_FILE}",
                        f"point path at a {RECORDS_FILE} written by predict.py (one JSON object per line)",
                    ) from exc
            offset += size


def read_record_lines(
    path: str | Path, strict: bool, max_line_bytes: int = MAX_LINE_BYTES
) -> tuple[list[dict[str, Any]], list[int], Counter[str]]:
    """Read a records file: the records, the 1-based line of each, and counters of what was skipped.

    The file is streamed line by line. Blank lines are ignored. A malformed line
    (``invalid_json``, ``not_an_object``, ``missing_key``, ``wrong_type``,
    ``duplicate_sample_id``, ``line_too_long``: over ``max_line_bytes``, skipped unread) is
    counted and skipped, or with ``strict`` stops the read.

    Raises:
        DataError: ``<path>:<line>: <reason>: <snippet>`` for the first malformed line (strict),
            or the file is missing or not text.
    """
    path = Path(path)
    records, lines, counters, seen = [], [], Counter(), set()
    for number, line, size in _lines(path, max_line_bytes):
        if line is None:
            obj, problem, line = None, ("line_too_long", f"{size:,} bytes, over the limit of {max_line_bytes:,}"), ""
        elif not line.strip():
            continue
        else:
            obj, problem = _parse(line)
        if problem is None and obj["sample_id"] in seen:
            problem = ("duplicate_sample_id", f"sample_id {obj['sample_id']!r} appeared on an earlier line")
        if problem is not None:
            if strict:
                raise DataError(
                    f"{path}:{number}: {problem[0]} ({problem[1]}): {_snippet(line)}",
                    f"repair or remove line {number}, or pass strict=false to count and skip malformed lines",
                )
            counters[problem[0]] += 1
            continue
        seen.add(obj["sample_id"])
        records.append(obj)
        lines.append(number)
    return records, lines, counters


def line_snippet(path: str | Path, number: int, max_line_bytes: int = MAX_LINE_BYTES) -> str:
    """The start of line ``number`` of a records file (for an error message); "" when not there."""
    for found, line, _ in _lines(Path(path), max_line_bytes):
        if found == number:
            return _snippet(line or "")
    return ""


def read_records(path: str | Path, strict: bool) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The records of a ``gt_vs_pred.jsonl`` and counters of skipped lines (see :func:`read_record_lines`)."""
    records, _, counters = read_record_lines(path, strict)
    return records, counters


def _supported() -> str:
    return ", ".join(str(v) for v in SUPPORTED_MAJORS)


def check_schema_version(path: Path, config: Mapping[str, Any]) -> int:
    """The ``schema_version`` of a resolved config, refused unless an int of a supported major.

    Raises:
        DataError: Missing, not an int, or unsupported; the message names the supported versions.
    """
    if "schema_version" not in config:
        raise DataError(
            f"{path} has no schema_version (supported schema versions: {_supported()})",
            f'add "schema_version": {SCHEMA_VERSION} if it follows this contract, or remove the file and pass task=',
        )
    version = config["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise DataError(
            f"{path}: schema_version {json.dumps(version)} is a {_type(version)}, not an int "
            f"(supported schema versions: {_supported()})",
            f'write it as an integer, e.g. "schema_version": {SCHEMA_VERSION}',
        )
    if version not in SUPPORTED_MAJORS:
        raise DataError(
            f"{path}: schema_version {version} is not supported (supported schema versions: {_supported()})",
            "read it with the podium version that wrote it, or rewrite it in a supported schema",
        )
    return version


def read_resolved_config(folder: str | Path) -> dict[str, Any] | None:
    """``<folder>/resolved_config.json`` checked for its schema version; None when absent.

    A records file written by another tool may come without one: the task is then named by the
    user (``evaluate.py ... task=<name>``).

    Raises:
        DataError: The file is not a JSON object or its ``schema_version`` is not supported.
    """
    path = Path(folder) / RESOLVED_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc})", f"repair or remove {path.name}") from exc
    if not isinstance(config, dict):
        raise DataError(f"{path} holds a JSON {_type(config)}, expected an object", f"repair or remove {path.name}")
    check_schema_version(path, config)
    return config


def record_field(records: Sequence[Mapping[str, Any]], index: int, dotted: str, kind: type | tuple[type, ...]) -> Any:
    """``records[index]`` at a dotted key (``pred.mu``), checked to be of ``kind``.

    Raises:
        RecordError: The key is missing or of another type, naming the sample and the field
            (a record of another task, usually).
    """
    value: Any = records[index]
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise RecordError(
                index,
                f"record {records[index].get('sample_id')!r} has no {dotted} (a record of another task?)",
                OTHER_TASK_FIX,
            )
        value = value[part]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise RecordError(
            index,
            f"record {records[index].get('sample_id')!r}: {dotted} is a {_type(value)}, "
            f"expected {' or '.join(k.__name__ for k in _kinds(kind))}",
            OTHER_TASK_FIX,
        )
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
