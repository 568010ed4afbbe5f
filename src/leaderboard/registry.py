"""The MLflow Model Registry side of promotion: versions, the ``champion`` and ``previous`` aliases.

A promotion registers the run's model as a new version of the experiment's registered model (its
files uploaded under the run's ``model/`` artifacts), moves ``previous`` to the old champion and
``champion`` to the new version, and records who, when and which gates as tags on the version and
on the run. The registered model's tag ``podium.champions`` keeps the champion versions in order,
so ``promote.py rollback`` moves ``champion`` back to the one before (``previous`` to the one
before that). Every change happens under an exclusive lock on the model (a second promotion of
the same model at the same time is refused and says so), after checking that the champion is
still the one the gates compared against.

The lock is a file beside the embedded store (``paths.mlflow_dir``): it holds off promotions on
one machine. Promotions from several machines through a tracking server do not share it, and
MLflow's registry has no compare-and-set, so the champion is also checked optimistically: read
again just before the aliases move (after the model's upload and its new version, the slow part),
and read back after they moved. A promotion that finds the champion changed, or its alias
overwritten, stops with a RunStateError saying what the registry holds; the window left is the
few milliseconds between the last read and the alias write.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from src.core.errors import RunStateError
from src.core.manifest import utc_now

CHAMPION, PREVIOUS = "champion", "previous"
HISTORY_TAG = "podium.champions"


def champion_version(client: Any, model: str) -> Any | None:
    """The model version the ``champion`` alias points at, or None (no model or no alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def champion_run(client: Any, model: str) -> str | None:
    """The run id of the champion version, or None."""
    version = champion_version(client, model)
    return None if version is None else version.run_id


@contextlib.contextmanager
def model_lock(lock_dir: Path, model: str) -> Iterator[None]:
    """Hold the promotion lock of ``model`` (a file in ``lock_dir``), or refuse at once.

    Raises:
        RunStateError: Another promotion holds it, naming who (pid, host, since).
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f".promote-{''.join(ch if ch.isalnum() else '_' for ch in model)}.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunStateError(
                f"another promotion of model {model!r} is in progress ({holder}); nothing was changed",
                "let it finish, look at the aliases (python leaderboard.py ...), then promote again if still wanted",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def history(client: Any, model: str) -> list[str]:
    """The champion versions in the order they were promoted (the registered model's tag); empty
    when the model is not registered yet."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(model).tags or {}
    except MlflowException:
        return []
    try:
        return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]
    except ValueError:
        return []


def ensure_model(client: Any, model: str, experiment: str) -> None:
    """Create the registered model when it does not exist yet (a concurrent creation is fine)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model)
    except MlflowException:
        with contextlib.suppress(MlflowException):
            client.create_registered_model(model, tags={"podium.experiment": experiment})


def upload_model(client: Any, run_id: str, files: Sequence[tuple[Path, str]]) -> None:
    """Upload the model's files under the run's ``model/`` artifacts (``(file, artifact folder)``)."""
    for path, folder in files:
        client.log_artifact(run_id, str(path), artifact_path=f"model/{folder}".rstrip("/"))


def record_tags(gates: Sequence[Any]) -> dict[str, str]:
    """Who, when and which gates, as tags."""
    return {
        "podium.promoted_by": getpass.getuser(),
        "podium.promoted_at": utc_now(),
        "podium.promoted_on": socket.gethostname(),
        "podium.gates": ", ".join(f"{g.name}:{'pass' if g.passed else 'fail'}" for g in gates),
    }


def set_champion(client: Any, model: str, version: str, before: list[str]) -> None:
    """Point ``champion`` at ``version`` and ``previous`` at the champion before it (history
    written first, so an interrupted change is finished by the next promotion or rollback)."""
    chain = [*before, version]
    client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(chain))
    if len(chain) > 1:
        client.set_registered_model_alias(model, PREVIOUS, chain[-2])
    else:
        with contextlib.suppress(Exception):
            client.delete_registered_model_alias(model, PREVIOUS)
    client.set_registered_model_alias(model, CHAMPION, version)


def check_unchanged(client: Any, model: str, expected: str | None, done: str = "nothing was changed") -> None:
    """Refuse when the champion moved since the gates compared against it.

    Args:
        client: An ``MlflowClient``.
        model: The registered model.
        expected: The champion's run id the gates compared against (None: there was none).
        done: What the message says was changed so far.

    Raises:
        RunStateError: Naming the champion the gates saw and the one there is now.
    """
    now = champion_run(client, model)
    if now != expected:
        raise RunStateError(
            f"the champion of model {model!r} changed while the gates were applied (it was run {expected}, "
            f"it is now run {now}): another promotion won; {done}",
            "run promote again: its margin gate then compares against the new champion",
        )


def confirm_champion(client: Any, model: str, version: str) -> None:
    """Read the ``champion`` alias back after moving it: a promotion from another machine (which
    the file lock does not hold off) may have moved it at the same time.

    Raises:
        RunStateError: The alias points at another version.
    """
    now = champion_version(client, model)
    if now is None or str(now.version) != version:
        raise RunStateError(
            f"another promotion moved 'champion' of model {model!r} to version {now.version if now else 'none'} "
            f"at the same time as this one set it to version {version}; the registry keeps the other one",
            "look at the aliases (python leaderboard.py ...), then promote again if still wanted",
        )


def register(
    client: Any,
    model: str,
    experiment: str,
    run_id: str,
    files: Sequence[tuple[Path, str]],
    gates: Sequence[Any],
    expected_champion: str | None,
    lock_dir: Path,
) -> str:
    """Register ``run_id``'s model and make it the champion; returns the new version.

    Raises:
        RunStateError: Another promotion of the model holds the lock, or the champion moved since
            the gates were applied (the aliases are not changed), or another machine's promotion
            moved it at the same time (:func:`confirm_champion`).
    """
    with model_lock(lock_dir, model):
        check_unchanged(client, model, expected_champion)
        ensure_model(client, model, experiment)
        upload_model(client, run_id, files)
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/model"
        tags = record_tags(gates)
        version = str(client.create_model_version(model, source, run_id=run_id, tags=tags).version)
        # Optimistic check: the lock does not reach other machines of a tracking server.
        check_unchanged(client, model, expected_champion, f"version {version} was registered but is not champion")
        set_champion(client, model, version, [v for v in history(client, model) if v != version])
        confirm_champion(client, model, version)
        for key, value in {**tags, "podium.champion_of": f"{model} v{version}"}.items():
            client.set_tag(run_id, key, value)
        return version


def rollback(client: Any, model: str, lock_dir: Path) -> tuple[str, str]:
    """Move ``champion`` back to the version promoted before the current one.

    Returns:
        ``(version that was champion, version that is champion now)``.

    Raises:
        RunStateError: No earlier champion to return to, or another promotion holds the lock.
    """
    with model_lock(lock_dir, model):
        current = champion_version(client, model)
        chain = history(client, model)
        if current is not None and chain and chain[-1] != str(current.version):
            # A promotion interrupted after writing the history: the alias is the truth.
            at = str(current.version)
            chain = chain[: chain.index(at) + 1] if at in chain else [*chain, at]
        if current is None or len(chain) < 2:
            raise RunStateError(
                f"model {model!r} has no earlier champion to roll back to (champions: {chain or 'none'})",
                "promote a run instead (python promote.py experiment=<name> run=<id>)",
            )
        before = chain[:-2]
        if str(getattr(champion_version(client, model), "version", "")) != str(current.version):
            raise RunStateError(
                f"the champion of model {model!r} moved while rolling back (it was version {current.version}); "
                "nothing was changed",
                "look at the aliases (python leaderboard.py ...), then roll back again if still wanted",
            )
        set_champion(client, model, chain[-2], before)
        confirm_champion(client, model, chain[-2])
        client.set_model_version_tag(model, str(current.version), "podium.rolled_back_at", utc_now())
        return str(current.version), chain[-2]
