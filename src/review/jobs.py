"""The jobs behind ``review.py``: serve the review of a dataset's suspects, or export its decisions.

``serve``: the suspects of ``source`` (a cross-validation or ensemble run) ranked by ``score``,
images already decided by an earlier review (the manifest's ``review:*`` rows) left out, the
journal of ``outputs/review/<dataset>/`` replayed, and the app on 127.0.0.1 behind a random token.
``export``: the journal's decisions merged into the dataset's cleaning manifest (keep → keep,
trash → drop, relabel → relabel with ``new_label``), which the datamodule applies.
"""

from __future__ import annotations

import secrets
import socket
import threading
import webbrowser
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from src.core.errors import ConfigError, DataError
from src.datamodules.images.cleaning import (
    MANIFEST_COLUMNS,
    REVIEW_PREFIX,
    inspect_image,
    merge_decisions,
    read_manifest,
)
from src.review.app import build_app
from src.review.images import DatasetImages
from src.review.journal import Journal, decisions, read_entries
from src.review.session import ReviewSession
from src.review.suspects import find_suspects

JOURNAL = "journal.jsonl"
#: What each decision becomes in the manifest.
MANIFEST_ACTION = {"keep": "keep", "trash": "drop", "relabel": "relabel"}


def resolve(cfg: DictConfig, value: str) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else Path(str(cfg.paths.root_dir)) / path


def dataset(cfg: DictConfig) -> DatasetImages:
    """The dataset of ``data=``: its training table (prepared first when it has a prepare step)."""
    from hydra.utils import instantiate

    if cfg.get("data") is None or not cfg.data.get("root"):
        raise ConfigError("review.py needs data=<dataset> (digits, image_folder ...)", "pass data=digits")
    root = Path(str(cfg.data.root))
    if not (root / "train.csv").is_file() and cfg.data.get("prepare") is not None:
        instantiate(cfg.data.prepare)(root)
    return DatasetImages(root, str(cfg.data.get("label_column", "label")), cfg.data.get("group_column"))


def review_dir(cfg: DictConfig, images: DatasetImages) -> Path:
    return Path(str(cfg.review_dir)) if cfg.get("review_dir") else resolve(cfg, f"outputs/review/{images.root.name}")


def manifest_path(cfg: DictConfig, images: DatasetImages) -> Path:
    return Path(str(cfg.data.get("manifest") or images.root / "cleaning_manifest.csv"))


def reviewed_before(path: Path) -> set[str]:
    """Images a previous review decided (the manifest's ``review:*`` rows)."""
    if not path.is_file():
        return set()
    frame = read_manifest(path)
    return set(frame.loc[frame["reason"].str.startswith(REVIEW_PREFIX), "image_id"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_session(cfg: DictConfig, images: DatasetImages) -> tuple[ReviewSession, int]:
    """The session over the suspects; returns it and the number of suspects.

    Raises:
        DataError: The source's images are not the dataset's, or its classes differ.
    """
    if not cfg.get("source"):
        raise ConfigError("review.py needs source=<a cv.py or ensemble.py run directory>", "pass source=outputs/...")
    source = resolve(cfg, str(cfg.source))
    decided = reviewed_before(manifest_path(cfg, images))
    suspects, classes = find_suspects(source, str(cfg.score), int(cfg.limit), float(cfg.min_score), decided)
    if classes != images.table.classes:
        raise DataError(
            f"source={source} predicts classes {classes[:12]}, the dataset {images.root} has "
            f"{images.table.classes[:12]}",
            "pass the source trained on this dataset",
        )
    unknown = [s.image_id for s in suspects if s.image_id not in images.paths]
    if unknown:
        raise DataError(
            f"source={source} scores images that {images.root}/train.csv does not list ({', '.join(unknown[:5])})",
            "pass data=<the dataset the source was trained on>",
        )
    journal = Journal(review_dir(cfg, images) / JOURNAL)
    return ReviewSession(suspects, classes, journal, images.look_alikes, float(cfg.lease_s)), len(suspects)


def serve(cfg: DictConfig) -> None:
    """Start the app and block until the process is stopped."""
    import uvicorn

    images = dataset(cfg)
    session, count = build_session(cfg, images)
    token = secrets.token_urlsafe(24)
    port = int(cfg.port) if cfg.get("port") else free_port()
    url = f"http://127.0.0.1:{port}/?token={token}"
    done = len(session.decided())
    print(
        f"podium: review of {count} suspects of {images.root} by {cfg.score} ({done} decided already); "
        f"journal {session.journal.path}\n  open: {url}",
        flush=True,
    )
    if cfg.open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    try:
        uvicorn.run(build_app(session, images, token), host="127.0.0.1", port=port, log_level="warning")
    finally:
        session.journal.close()


def manifest_rows(images: DatasetImages, decided: dict[str, Any]) -> pd.DataFrame:
    """The manifest rows of a review's decisions."""
    rows = []
    for image_id, entry in sorted(decided.items()):
        path = images.paths[image_id]
        check = inspect_image(path)
        width, height = check.size if check.size is not None else (None, None)
        new_label = images.table.classes[entry.label] if entry.action == "relabel" else ""
        rel = images.path(image_id).relative_to(images.root).as_posix()
        rows.append((image_id, rel, MANIFEST_ACTION[entry.action], f"{REVIEW_PREFIX}{entry.action}", width, height,
                     check.sha256, new_label))  # fmt: skip
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).astype({"width": "Int64", "height": "Int64"})


def export(cfg: DictConfig) -> Path:
    """Replay the journal into the cleaning manifest; returns the manifest's path.

    Raises:
        DataError: No journal, or decisions on images the dataset does not list.
    """
    images = dataset(cfg)
    path = review_dir(cfg, images) / JOURNAL
    if not path.is_file():
        raise DataError(f"no review journal at {path}", "review first: python review.py data=... source=...")
    decided = decisions(read_entries(path))
    unknown = sorted(set(decided) - set(images.paths))
    if unknown:
        raise DataError(
            f"{path} decides images {images.root}/train.csv does not list ({', '.join(unknown[:5])})",
            "pass the data= the review was made on",
        )
    manifest = manifest_path(cfg, images)
    rows = manifest_rows(images, decided)
    merge_decisions(manifest, rows)
    counts = rows["action"].value_counts().to_dict()
    shown = ", ".join(f"{k} {counts.get(v, 0)}" for k, v in MANIFEST_ACTION.items())
    print(f"podium: {len(rows)} decisions ({shown}) written into {manifest}", flush=True)
    return manifest


def review(cfg: DictConfig) -> Any:
    """``review.py``: serve (default) or ``action=export``."""
    if cfg.action == "export":
        return export(cfg)
    if cfg.action != "serve":
        raise ConfigError(f"action={cfg.action!r}", "use serve (the default) or export")
    return serve(cfg)
