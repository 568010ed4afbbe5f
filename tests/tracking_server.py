"""A throwaway PostgreSQL cluster and an MLflow tracking server on it, started by the tests.

``initdb`` / ``pg_ctl`` come from Debian's ``postgresql`` (``/usr/lib/postgresql/<version>/bin``,
installed by ``make setup`` where apt is usable as root). The cluster lives in a temporary folder
(data, unix socket and logs), listens on a free port of 127.0.0.1 and trusts local connections;
under root, which PostgreSQL refuses to run as, it runs as the ``postgres`` user. ``mlflow server``
runs on it with ``--artifacts-destination <tmp>/artifacts`` and one worker, on another free port.

Import the fixture into a test module (``from tests.tracking_server import tracking_server``);
without PostgreSQL or its Python driver the tests using it skip, saying why, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: Where Debian installs PostgreSQL's server binaries (<version>/bin).
PG_ROOT = "/usr/lib/postgresql"
#: Seconds a server gets to answer its first health check (the first start creates MLflow's schema).
START_TIMEOUT_S = 90.0


def unavailable(reason: str) -> None:
    """Skip the test with ``reason``; under ``CI=true`` fail it instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"tracking-server tests cannot run under CI=true: {reason}")
    pytest.skip(reason)


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server binaries folder holding ``initdb`` and ``pg_ctl``, or None."""
    found = [p.parent for p in Path(PG_ROOT).glob("*/bin/initdb") if (p.parent / "pg_ctl").is_file()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(uri: str, timeout_s: float = 1.0) -> bool:
    """Whether the MLflow server at ``uri`` answers ``/health``."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except OSError:
        return False


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster in ``folder`` (run as ``user`` when the tests run as root).

    Attributes:
        folder: Data (``data/``), unix socket and log.
        bin_dir: The server binaries.
        port: Its TCP port on 127.0.0.1.
        user: The system user the server runs as (None: this process's).
    """

    folder: Path
    bin_dir: Path
    port: int
    user: str | None

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.folder / "postgres.log"
            tail = log.read_text()[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{' '.join(args[:2])} exited {proc.returncode}: {proc.stderr[-2000:]}\n{tail}")
        return proc

    def start(self) -> None:
        """Create the cluster (trusting local connections) and the ``mlflow`` database, and start it."""
        self._run("initdb", "-D", str(self.folder / "data"), "-U", "podium", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "postgres.log"), "-w",
                  "-o", options, "start")  # fmt: skip
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "podium", "mlflow")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")

    @property
    def uri(self) -> str:
        return f"postgresql://podium@127.0.0.1:{self.port}/mlflow"


@dataclass
class TrackingServer:
    """``mlflow server`` on a PostgreSQL cluster, with a local artifacts destination.

    Attributes:
        db: The cluster.
        port: The server's port on 127.0.0.1 (kept across :meth:`stop` / :meth:`start`).
        artifacts: ``--artifacts-destination``.
        log: The server's output.
    """

    db: PostgresCluster
    port: int
    artifacts: Path
    log: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it answers ``/health``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner processes
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.db.uri,
            "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip
        with open(self.log, "a") as out:
            self.process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(self.uri):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server (its whole process group) and wait until its port is free."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers that outlived their parent
        self.process = None
        deadline = time.monotonic() + 15
        while healthy(self.uri, timeout_s=0.2) and time.monotonic() < deadline:
            time.sleep(0.1)

    def client(self) -> Any:
        import mlflow

        return mlflow.MlflowClient(self.uri, registry_uri=self.uri)


def missing_part() -> str | None:
    """What is missing to start the server here (PostgreSQL, its driver, a user to run it as), or None."""
    if postgres_bin() is None:
        return (
            f"PostgreSQL's initdb is not installed ({PG_ROOT}/<version>/bin); make setup installs Debian's postgresql"
        )
    try:
        import sqlalchemy

        sqlalchemy.create_engine("postgresql://podium@127.0.0.1:1/mlflow")
    except ModuleNotFoundError as exc:
        return f"the PostgreSQL driver {exc.name!r} is not installed (pip install -e '.[dev]')"
    if os.getuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "this runs as root, which PostgreSQL refuses, and there is no postgres user to run it as"
        if shutil.which("runuser") is None:
            return "this runs as root and runuser (to run PostgreSQL as postgres) is missing"
    return None


@contextlib.contextmanager
def running_tracking_server(on_missing: Callable[[str], None] = unavailable) -> Iterator[TrackingServer]:
    """A PostgreSQL cluster and an MLflow tracking server on it, torn down on exit.

    Args:
        on_missing: Called with the reason when something it needs is missing (default: skip the
            test, or fail it under ``CI=true``); it is not expected to return.
    """
    reason = missing_part()
    if reason is not None:
        on_missing(reason)
        raise RuntimeError(reason)
    bin_dir = postgres_bin()
    user = "postgres" if os.getuid() == 0 else None
    # Not under pytest's temporary folder: that is private to this user, and postgres must enter it.
    folder = Path(tempfile.mkdtemp(prefix="podium-tracking-"))
    if user is not None:
        shutil.chown(folder, user=user)
    db = PostgresCluster(folder, bin_dir, free_port(), user)
    server = TrackingServer(db, free_port(), folder / "artifacts", folder / "mlflow-server.log")
    try:
        db.start()
        server.start()
        yield server
    finally:
        server.stop()
        db.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server() -> Iterator[TrackingServer]:
    """An MLflow tracking server on PostgreSQL for the module's tests (skips without PostgreSQL)."""
    with running_tracking_server() as server:
        yield server
