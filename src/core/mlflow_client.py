"""Plain MLflow client helpers for podium's tracking store (no Lightning import: cheap to load).

The store is, in this order of precedence (:func:`resolve_tracking_uri`):

1. the tracking URI a config sets explicitly (``logger.mlflow.tracking_uri``, or ``tracking_uri`` of
   ``leaderboard.py`` / ``promote.py``);
2. the ``MLFLOW_TRACKING_URI`` environment variable;
3. the embedded store at ``<root>/mlruns``: a SQLite database plus an ``artifacts/`` folder.

A tracking server (``http(s)://``) keeps its own artifact root (``mlflow server
--artifacts-destination`` / ``--default-artifact-root``): experiments created through it get no
location from podium. A database URI (``sqlite://``, ``postgresql://``) gets ``<store_dir>/artifacts``.

A run directory's MLflow records that cannot be sent (the store went away) are appended, with an
fsync, to ``<run_dir>/mlflow_pending.jsonl`` (:class:`PendingLog`) and sent when the store answers
again, by the same process or by the next start of the run directory, each (metric, step) once.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from src.core.errors import ConfigError, RunStateError

log = logging.getLogger("podium")

MAX_PARAM_CHARS = 6000
_BAD_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")

#: The environment variable MLflow reads the tracking URI from.
ENV_VAR = "MLFLOW_TRACKING_URI"
#: URI schemes podium logs to: tracking servers, and the databases MLflow's SQL store runs on.
SERVER_SCHEMES = ("http", "https")
DATABASE_SCHEMES = ("sqlite", "postgresql")
#: MLflow's HTTP client retries a refused request 7 times with exponential backoff (minutes); podium
#: keeps what it cannot send instead, so it waits a few seconds at most. Set only where unset.
HTTP_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
#: MLflow error codes of a request the store refused for good: sending it again cannot help.
PERMANENT_ERRORS = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "RESOURCE_ALREADY_EXISTS",
        "INVALID_STATE",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "BAD_REQUEST",
        "ENDPOINT_NOT_FOUND",
        "FEATURE_DISABLED",
    }
)

# ---- which store --------------------------------------------------------------------------------


def tracking_uri(store_dir: str | Path) -> str:
    """The SQLite tracking URI of the embedded store at ``store_dir``."""
    return f"sqlite:///{Path(store_dir).resolve() / 'mlflow.db'}"


def configured_tracking_uri(cfg: Any) -> str | None:
    """The tracking URI a composed config sets explicitly, or None.

    ``tracking_uri`` (``leaderboard.py``, ``promote.py``) wins over ``logger.mlflow.tracking_uri``
    (``train.py``, ``cv.py``, ``predict.py``, and the tools composed from them).

    Args:
        cfg: A composed config (a ``DictConfig``).
    """
    from omegaconf import OmegaConf

    for key in ("tracking_uri", "logger.mlflow.tracking_uri"):
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value not in (None, ""):
            return str(value)
    return None


def resolve_tracking_uri(store_dir: str | Path, tracking_uri_: str | None = None) -> str:
    """The tracking URI podium uses: ``tracking_uri_`` when set, else ``$MLFLOW_TRACKING_URI``, else
    the embedded SQLite store at ``store_dir``.

    Args:
        store_dir: The embedded store's folder (``paths.mlflow_dir``).
        tracking_uri_: The URI the config sets explicitly (None or empty: not set).

    Returns:
        The URI (``http(s)://...``, ``postgresql://...`` or ``sqlite:///...``).

    Raises:
        ConfigError: A URI of another kind (a plain folder, ``file:``, ``databricks``), naming where
            it was set.
    """
    explicit = str(tracking_uri_).strip() if tracking_uri_ not in (None, "") else ""
    uri = explicit or os.environ.get(ENV_VAR, "").strip()
    if not uri:
        return tracking_uri(store_dir)
    scheme = urlsplit(uri).scheme.split("+", 1)[0].lower()
    if scheme not in SERVER_SCHEMES + DATABASE_SCHEMES:
        raise ConfigError(
            f"MLflow tracking URI {redact(uri)!r} ({_source(explicit)}) is not a tracking server (http(s)://) or a "
            "database (postgresql://, sqlite:///)",
            "set it to http(s)://<host>:<port> of an `mlflow server`, or postgresql://<user>@<host>/<db>; "
            f"unset it (and {ENV_VAR}) for the embedded store in {store_dir}",
        )
    return uri.rstrip("/") if scheme in SERVER_SCHEMES else uri


def _source(explicit: str) -> str:
    return "set in the config" if explicit else f"from ${ENV_VAR}"


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server's (``http://`` or ``https://``)."""
    return urlsplit(uri).scheme.lower() in SERVER_SCHEMES


def redact(uri: str) -> str:
    """``uri`` with its password replaced by ``***`` (what podium writes into files and messages)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def usable_uri(recorded: str) -> str:
    """The URI to reach the store ``recorded`` (a redacted URI written into a file): the URI of
    ``$MLFLOW_TRACKING_URI`` when it is the same store with its password, else ``recorded``."""
    env = os.environ.get(ENV_VAR, "").strip()
    return env if env and redact(env) == recorded else recorded


def artifact_location(uri: str, store_dir: str | Path) -> str | None:
    """The artifact location of an experiment podium creates: None on a tracking server (its own
    artifact root decides), ``<store_dir>/artifacts`` on a database."""
    return None if is_server(uri) else artifact_root(store_dir)


def artifact_root(store_dir: str | Path) -> str:
    """The artifact location new experiments of a database store get."""
    return (Path(store_dir).resolve() / "artifacts").as_uri()


def bound_http_retries() -> None:
    """Make MLflow's HTTP client give up within seconds (:data:`HTTP_CLIENT_DEFAULTS`), unless the
    environment sets its own values."""
    for key, value in HTTP_CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def unreachable_reason(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why the tracking server at ``uri`` does not answer its ``/health`` endpoint; None if it does.

    Any HTTP answer below 500 counts as an answer (a server behind authentication says 401).
    """
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def _unreachable(uri: str, explicit: str | None, reason: str) -> ConfigError:
    kind = "tracking server" if is_server(uri) else "database"
    return ConfigError(
        f"the MLflow {kind} {redact(uri)} ({_source(explicit or '')}) cannot be reached: {reason}; nothing was "
        "trained or written",
        "start it (mlflow server --backend-store-uri postgresql://... --artifacts-destination ...: README.md, "
        f"'A shared tracking server'), or point logger.mlflow.tracking_uri (or ${ENV_VAR}) at one that runs, "
        "or unset both to log into the embedded store",
    )


def ensure_store(store_dir: str | Path, tracking_uri_: str | None = None) -> str:
    """Check that the store answers (creating or upgrading a database under a file lock); return its URI.

    A tracking server must answer its ``/health`` endpoint. MLflow builds (and migrates) a database
    on first use; several runs that start at once against a new store would otherwise race through
    the same schema migration and fail, so that happens under an exclusive lock in ``store_dir``
    (on one machine; a database shared by several machines is best created by its tracking server,
    or once with ``mlflow db upgrade <uri>``).

    Args:
        store_dir: The embedded store's folder (``paths.mlflow_dir``).
        tracking_uri_: The URI the config sets explicitly (:func:`resolve_tracking_uri`).

    Returns:
        The tracking URI.

    Raises:
        ConfigError: The URI is of an unknown kind, or the server or database does not answer.
    """
    uri = resolve_tracking_uri(store_dir, tracking_uri_)
    if is_server(uri):
        bound_http_retries()
        reason = unreachable_reason(uri)
        if reason is not None:
            raise _unreachable(uri, tracking_uri_, reason)
        return uri
    import fcntl

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(store_dir)
    if uri.startswith("sqlite:///") and uri != tracking_uri(folder):
        folder = Path(uri.removeprefix("sqlite:///")).parent
    folder.mkdir(parents=True, exist_ok=True)
    if not uri.startswith("sqlite:"):
        reason = database_unreachable_reason(uri)
        if reason is not None:
            raise _unreachable(uri, tracking_uri_, reason)
    with open(folder / ".store.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            SqlAlchemyStore(uri, artifact_root(store_dir))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return uri


def database_unreachable_reason(uri: str, timeout_s: int = 5) -> str | None:
    """Why the database at ``uri`` refuses a connection; None if it accepts one.

    One attempt (MLflow's own store retries for about a minute and a half before it gives up).

    Raises:
        ConfigError: The URI's database driver is not installed.
    """
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    args = {"connect_timeout": timeout_s} if uri.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args=args)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"MLflow tracking URI {redact(uri)} needs the database driver {exc.name!r}, which is not installed",
            "pip install -e '.[server]' (PostgreSQL's drivers)",
        ) from exc
    try:
        with engine.connect():
            return None
    except Exception as exc:  # noqa: BLE001 - every driver raises its own connection errors
        return f"{type(exc).__name__}: {str(exc).strip()[:300]}"
    finally:
        engine.dispose()


def client(store_dir: str | Path, tracking_uri_: str | None = None) -> Any:
    """An ``MlflowClient`` on the store (:func:`ensure_store`), creating the embedded one if needed."""
    import mlflow

    uri = ensure_store(store_dir, tracking_uri_)
    return mlflow.MlflowClient(uri, registry_uri=uri)


def recorded_client(recorded: str) -> Any:
    """An ``MlflowClient`` on the store an artifact or a manifest records (a redacted URI, see
    :func:`usable_uri`), giving up on an absent server within seconds."""
    import mlflow

    uri = usable_uri(recorded)
    if is_server(uri):
        bound_http_retries()
    return mlflow.MlflowClient(uri, registry_uri=uri)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the store could not be reached (sending again later may succeed),
    rather than that it refused the request."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in PERMANENT_ERRORS
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    try:
        import requests
        import sqlalchemy.exc
    except ImportError:  # pragma: no cover - both come with MLflow
        return False
    return isinstance(exc, requests.exceptions.RequestException | sqlalchemy.exc.OperationalError)


# ---- experiments, runs, params, metrics ---------------------------------------------------------


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested mapping into ``a.b.c -> str(value)`` MLflow params (lists kept whole)."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


def experiment_id(mlf: Any, name: str, store_dir: str | Path) -> str:
    """Id of the experiment ``name``, created if missing (:func:`artifact_location` decides where
    its artifacts go).

    Several processes may create it at once; the losers of that race look it up again.
    """
    location = artifact_location(str(mlf.tracking_uri), store_dir)
    for attempt in range(5):
        exp = mlf.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return mlf.create_experiment(name, artifact_location=location)
        except Exception:  # noqa: BLE001 - MLflow raises store-specific errors for the race
            time.sleep(0.2 * (attempt + 1))
    return mlf.get_experiment_by_name(name).experiment_id


RUN_DIR_TAG = "podium.run_dir"


def start_run(
    mlf: Any, experiment: str, run_name: str, run_dir: str | Path, tags: Mapping[str, str] | None = None
) -> str:
    """Create a RUNNING run tagged with its run directory and close the orphans it supersedes."""
    run_id = mlf.create_run(experiment, run_name=run_name, tags={**(tags or {}), RUN_DIR_TAG: str(run_dir)}).info.run_id
    close_orphans(mlf, experiment, run_dir, keep=run_id)
    return run_id


def close_orphans(mlf: Any, experiment: str, run_dir: str | Path, keep: str) -> None:
    """Mark KILLED the RUNNING runs of ``run_dir`` other than ``keep``.

    A process killed between creating its MLflow run and recording the run id in the run
    directory's ``manifest.json`` (or a run directory reset with ``force=true`` after a kill)
    leaves a run that would otherwise show as RUNNING forever; the fresh start that replaces it
    closes it, tagged ``podium.superseded_by``.
    """
    for run in mlf.search_runs([experiment], filter_string="attributes.status = 'RUNNING'"):
        if run.info.run_id != keep and run.data.tags.get(RUN_DIR_TAG) == str(run_dir):
            mlf.set_tag(run.info.run_id, "podium.superseded_by", keep)
            mlf.set_terminated(run.info.run_id, status="KILLED")


def log_params(mlf: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Log a flat dict of params in batches of 100 (MLflow's limit)."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlf.log_batch(run_id, params=items[start : start + 100])


def log_new_params(mlf: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Flatten ``params`` and log the keys the run does not have yet (a resumed run has its first
    life's params, and MLflow refuses to log a param twice)."""
    existing = mlf.get_run(run_id).data.params
    log_params(mlf, run_id, {k: v for k, v in flatten(params).items() if k not in existing})


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among ``metrics`` (keys sanitised to MLflow's allowed characters)."""
    return {
        _BAD_METRIC_CHARS.sub("_", k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def log_metrics(mlf: Any, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log finite float metrics in batches (keys sanitised to MLflow's allowed characters)."""
    now = int(time.time() * 1000)
    send_metrics(mlf, run_id, [(k, v, now, step) for k, v in finite_metrics(metrics).items()])


#: One metric point: (key, value, timestamp in ms, step).
Point = tuple[str, float, int, int]


def send_metrics(mlf: Any, run_id: str, points: list[Point]) -> None:
    """Log metric points in batches of 500."""
    from mlflow.entities import Metric

    batch = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in points]
    for start in range(0, len(batch), 500):
        mlf.log_batch(run_id, metrics=batch[start : start + 500])


def logged_steps(mlf: Any, run_id: str, keys: Iterable[str] | None = None) -> dict[str, set[int]]:
    """The steps the run has of each metric (of ``keys``, or of every metric it has)."""
    keys = mlf.get_run(run_id).data.metrics if keys is None else keys
    return {k: {m.step for m in mlf.get_metric_history(run_id, k)} for k in keys}


def log_run_dir(mlf: Any, run_id: str, run_dir: str | Path, skip: Iterable[str] = ()) -> None:
    """Upload a run directory's files as artifacts, keeping their relative folders.

    Hidden files and folders are left out, and so are :data:`PENDING_FILE` and the top-level files
    and folders whose name matches a pattern in ``skip`` (names or globs: ``checkpoints``,
    ``hpc_ckpt_*.ckpt``).
    """
    run_dir, skip = Path(run_dir), [*skip, PENDING_FILE]
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if any(fnmatch.fnmatchcase(rel.parts[0], pattern) for pattern in skip):
            continue
        mlf.log_artifact(run_id, str(path), artifact_path=str(rel.parent) if str(rel.parent) != "." else None)


# ---- what could not be sent ---------------------------------------------------------------------

#: The run directory's file of MLflow records not sent yet.
PENDING_FILE = "mlflow_pending.jsonl"


class PendingLog:
    """A run directory's MLflow records that could not be sent yet, one JSON object a line.

    Each line names the store (redacted URI) and the run it is for, and one operation: ``metrics``
    (``points``: ``[key, value, timestamp ms, step]``), ``params``, ``upload`` (the run directory's
    files, less ``skip``) or ``terminate`` (``status``). Lines are appended and fsynced, so a kill
    loses at most the line being written (a torn last line is skipped when read).

    Args:
        run_dir: The run directory.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / PENDING_FILE

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Append ``entries`` and fsync the file (and, when it is new, its folder)."""
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """The entries in order; a line that does not parse (torn by a kill) is skipped."""
        if not self.path.is_file():
            return []
        entries = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "op" in entry and "run_id" in entry:
                entries.append(entry)
        return entries

    def replace(self, entries: list[dict[str, Any]]) -> None:
        """Keep only ``entries`` (written atomically); the file goes when there are none."""
        from src.core.io import write_text_atomic

        if entries:
            write_text_atomic(self.path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
        else:
            self.path.unlink(missing_ok=True)


def deliver(mlf: Any, store: str, pending: PendingLog) -> int:
    """Send the pending entries of the store ``store`` in order; returns how many were sent.

    Metric points the run already has at their step are not sent again (a request that failed
    after the store had written it, or a resumed run's replayed steps), nor are params it has; an
    upload is done again whole. Entries of another store stay in the file; the sent ones go only
    once every one of them is sent.

    Args:
        mlf: An ``MlflowClient`` on the store.
        store: The store's redacted URI (:func:`redact`).
        pending: The run directory's pending records.

    Raises:
        Exception: What the store raised; the file is left as it was.
    """
    entries = pending.read()
    mine = [e for e in entries if e.get("store") == store]
    if not mine:
        return 0
    steps: dict[str, dict[str, set[int]]] = {}
    params: dict[str, set[str]] = {}
    points: list[Point] = []
    run_of_points = None

    def flush() -> None:
        if points:
            send_metrics(mlf, run_of_points, points)
            points.clear()

    for entry in mine:
        run_id, op = entry["run_id"], entry["op"]
        if op != "metrics" or run_id != run_of_points:
            flush()
        if op == "metrics":
            run_of_points = run_id
            keys = {p[0] for p in entry["points"]}
            have = steps.setdefault(run_id, {})
            have.update(logged_steps(mlf, run_id, keys - set(have)))
            for key, value, ts, step in entry["points"]:
                if step not in have.setdefault(key, set()):
                    have[key].add(step)
                    points.append((key, value, ts, step))
        elif op == "params":
            if run_id not in params:
                params[run_id] = set(mlf.get_run(run_id).data.params)
            new = {k: v for k, v in entry["params"].items() if k not in params[run_id]}
            log_params(mlf, run_id, new)
            params[run_id].update(new)
        elif op == "upload":
            log_run_dir(mlf, run_id, pending.path.parent, skip=entry.get("skip", ()))
        elif op == "terminate":
            mlf.set_terminated(run_id, entry["status"])
    flush()
    pending.replace([e for e in entries if e.get("store") != store])
    return len(mine)


def deliver_pending(run_dir: str | Path, store_dir: str | Path, tracking_uri_: str | None = None) -> int:
    """Send what a run directory's earlier process could not (a finished run's last records).

    Args:
        run_dir: The run directory.
        store_dir: The embedded store's folder (``paths.mlflow_dir``).
        tracking_uri_: The URI the config sets explicitly.

    Returns:
        How many entries were sent (0 when there were none, or the store still does not answer;
        then they stay in the file and a warning says so).
    """
    pending = PendingLog(run_dir)
    if not pending.path.is_file():
        return 0
    try:
        mlf = client(store_dir, tracking_uri_)
        sent = deliver(mlf, redact(str(mlf.tracking_uri)), pending)
    except Exception as exc:
        if not (isinstance(exc, ConfigError) or is_transient(exc)):
            raise
        log.warning("podium: MLflow records of %s are still kept in %s: %s", run_dir, pending.path, exc)
        return 0
    _report_delivery(pending, sent)
    return sent


def _report_delivery(pending: PendingLog, sent: int) -> None:
    if sent:
        log.info("podium: sent %d pending MLflow record(s) from %s", sent, pending.path)
    left = pending.read()
    if left:
        stores = sorted({str(e.get("store")) for e in left})
        log.warning(
            "podium: %d MLflow record(s) in %s belong to another store (%s); run with that tracking URI to send them",
            len(left),
            pending.path,
            ", ".join(stores),
        )


# ---- the MLflow run of a run directory ----------------------------------------------------------


@dataclass
class MlflowRun:
    """The MLflow run a run directory records into.

    Every record goes through :meth:`_send`: when the store cannot be reached it is kept in the run
    directory's :class:`PendingLog` instead, the store is tried again ``retry_s`` seconds later
    (a tracking server's ``/health`` first) and, once it answers, what was kept is sent first.
    Metric points are deduplicated by (key, step) against what the run has, so a resumed run's
    replayed steps, and points sent twice after a failed request, are logged once.

    Attributes:
        client: An ``MlflowClient`` on the run's store.
        run_id: The run.
        skip: Top-level names or globs of the run directory not uploaded as artifacts.
        pending: The run directory's pending records (None: errors are raised, nothing is kept).
        store: The store's redacted URI, written with each pending record.
        retry_s: Seconds between attempts while the store does not answer.
    """

    client: Any
    run_id: str
    skip: tuple[str, ...] = ()
    pending: PendingLog | None = None
    store: str = ""
    retry_s: float = 30.0
    _offline_at: float | None = field(default=None, init=False, repr=False)
    _waiting: bool = field(default=False, init=False, repr=False)
    _known: dict[str, set[int]] | None = field(default=None, init=False, repr=False)
    _seen: dict[str, set[int]] = field(default_factory=dict, init=False, repr=False)

    @cached_property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    @property
    def kept(self) -> int:
        """How many records of this store wait in the run directory's pending file."""
        return 0 if self.pending is None else sum(e.get("store") == self.store for e in self.pending.read())

    def deliver_pending(self) -> int:
        """Send what the run directory keeps for this store (an earlier process's records, or this
        one's); returns how many entries were sent. A store that does not answer leaves them kept."""
        if self.pending is None or not self.pending.path.is_file():
            self._waiting = False
            return 0
        try:
            sent = deliver(self.client, self.store, self.pending)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._went_offline(exc)
            self._waiting = True
            return 0
        self._waiting, self._known = False, None
        _report_delivery(self.pending, sent)
        return sent

    def log_new_params(self, params: Mapping[str, Any]) -> None:
        """Log the flattened ``params`` the run does not have yet."""
        flat = flatten(params)
        self._send({"op": "params", "params": flat}, lambda: log_new_params(self.client, self.run_id, flat))

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Log the finite numbers among ``metrics`` at step 0."""
        now = int(time.time() * 1000)
        self.log_points([(k, v, now, 0) for k, v in finite_metrics(metrics).items()])

    def log_points(self, points: list[Point]) -> None:
        """Log metric points, each (key, step) once: the points the run already has (on the store,
        or sent or kept by this process) are dropped."""
        known = self._known_steps()
        fresh = []
        for key, value, ts, step in points:
            if step in self._seen.get(key, ()) or (known is not None and step in known.get(key, ())):
                continue
            self._seen.setdefault(key, set()).add(step)
            fresh.append((key, float(value), int(ts), int(step)))
        if fresh:
            self._send({"op": "metrics", "points": fresh}, lambda: send_metrics(self.client, self.run_id, fresh))

    def upload(self, run_dir: str | Path) -> None:
        """Upload the run directory's files as artifacts, except those ``skip`` names."""
        self._send(
            {"op": "upload", "skip": list(self.skip)}, lambda: log_run_dir(self.client, self.run_id, run_dir, self.skip)
        )

    def terminate(self, status: str) -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self._send({"op": "terminate", "status": status}, lambda: self.client.set_terminated(self.run_id, status))

    def _known_steps(self) -> dict[str, set[int]] | None:
        """The steps the run has on the store, read once (None while the store does not answer)."""
        if self._known is None and self._ready():
            try:
                self._known = logged_steps(self.client, self.run_id)
            except Exception as exc:
                if self.pending is None or not is_transient(exc):
                    raise
                self._went_offline(exc)
        return self._known

    def _send(self, entry: dict[str, Any], send: Callable[[], None]) -> bool:
        """Send one record now, or keep it in the pending file; returns whether it was sent."""
        if self.pending is None:
            send()
            return True
        if self._ready():
            try:
                send()
                return True
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._went_offline(exc)
        self.pending.append([{"store": self.store, "run_id": self.run_id, **entry}])
        self._waiting = True
        return False

    def _ready(self) -> bool:
        """Whether to talk to the store now: not within ``retry_s`` of a failure, the server
        answering its health check, and what was kept sent first."""
        if self.pending is None:
            return True
        if self._offline_at is not None:
            if time.monotonic() - self._offline_at < self.retry_s:
                return False
            uri = str(self.client.tracking_uri)
            if is_server(uri) and unreachable_reason(uri, timeout_s=2.0) is not None:
                self._offline_at = time.monotonic()
                return False
        if self._waiting:
            self.deliver_pending()
            if self._waiting:
                return False
        self._offline_at = None
        return True

    def _went_offline(self, exc: BaseException) -> None:
        if self._offline_at is None:
            log.warning(
                "podium: the MLflow store %s does not answer (%s: %s); its records are kept in %s and sent when it "
                "answers (tried again every %gs) or at the next start of this run",
                self.store,
                type(exc).__name__,
                str(exc)[:200],
                self.pending.path if self.pending is not None else "memory",
                self.retry_s,
            )
        self._offline_at = time.monotonic()


@dataclass(frozen=True)
class RunSpec:
    """Where and how a run directory's MLflow run is created.

    Args:
        store_dir: The embedded MLflow store's folder (``<root>/mlruns``).
        experiment: The MLflow experiment (the experiment config's name).
        run_name: The MLflow run name (the run directory's ``run_name``).
        tags: Tags set at creation (besides the run directory's, which :func:`start_run` adds).
        skip: Top-level names or globs of the run directory not uploaded as artifacts.
        tracking_uri: The tracking URI the config sets explicitly (:func:`resolve_tracking_uri`).
        retry_s: Seconds between attempts while the store does not answer (:class:`MlflowRun`).
    """

    store_dir: str | Path
    experiment: str
    run_name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    tracking_uri: str | None = None
    retry_s: float = 30.0

    def open(self, run_dir: str | Path, recorded_id: str | None, recorded_store: str | None = None) -> MlflowRun:
        """The run ``recorded_id`` (a resumed run), or a new RUNNING run of ``run_dir``.

        A new run closes the RUNNING runs a killed process left for the same run directory. What an
        earlier process of the run directory could not send is sent first.

        Args:
            run_dir: The run directory.
            recorded_id: The MLflow run id its ``manifest.json`` records (None: a new run).
            recorded_store: The store its ``manifest.json`` records (redacted URI), if any.

        Raises:
            ConfigError: The store does not answer.
            RunStateError: The recorded run lives in another store, or is not in this one.
        """
        store = redact(resolve_tracking_uri(self.store_dir, self.tracking_uri))
        if recorded_id is not None and other_store(recorded_store, store):
            raise RunStateError(
                f"{run_dir} logs into MLflow run {recorded_id} of the store {recorded_store} (manifest.json); this "
                f"command logs into {store}",
                _other_store_fix(recorded_store),
            )
        mlf = client(self.store_dir, self.tracking_uri)
        if recorded_id is not None:
            check_recorded_run(mlf, store, run_dir, recorded_id, recorded_store)
        else:
            experiment = experiment_id(mlf, self.experiment, self.store_dir)
            recorded_id = start_run(mlf, experiment, self.run_name, run_dir, tags=self.tags)
        run = MlflowRun(mlf, recorded_id, self.skip, PendingLog(run_dir), store, self.retry_s)
        run.deliver_pending()
        return run


def other_store(recorded: str | None, store: str) -> bool:
    """Whether a run directory whose manifest records the store ``recorded`` would log into another
    one. Two SQLite files are not judged by their path (a repository moved, another mount of the
    same folder): whether the store holds the run decides (:func:`check_recorded_run`)."""
    if not recorded or recorded == store:
        return False
    return not (recorded.startswith("sqlite:") and store.startswith("sqlite:"))


def _other_store_fix(recorded_store: str | None) -> str:
    if recorded_store:
        return (
            f"continue it with logger.mlflow.tracking_uri={recorded_store} (or ${ENV_VAR}), pass force=true to start "
            "it over in this store, or run_name=<new name>"
        )
    return (
        "continue it with the tracking URI it was started with, pass force=true to start it over in this store, "
        "or run_name=<new name>"
    )


def check_recorded_run(mlf: Any, store: str, run_dir: str | Path, run_id: str, recorded_store: str | None) -> None:
    """Refuse to continue a run directory's MLflow run in a store that does not hold it (a run
    directory whose manifest predates the store's record, moved to another store).

    Raises:
        RunStateError: Naming the run, the store and the fix.
    """
    from mlflow.exceptions import MlflowException

    try:
        mlf.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise RunStateError(
            f"the MLflow run {run_id} that {run_dir}/manifest.json records is not in the store {store}",
            _other_store_fix(recorded_store),
        ) from exc
