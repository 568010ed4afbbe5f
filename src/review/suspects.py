"""The suspects of a dataset: training images the out-of-fold predictions disagree with most.

The source is a cross-validation run (``cv.py``) or an ensemble run (``ensemble.py``): both hold
``oof/`` tables, one out-of-fold probability row per training image. Scores (larger = more
suspect):

- ``loss``: out-of-fold log loss of the current label, ``-log p(label)`` (nats);
- ``margin``: ``p(top class) - p(label)``, 0 when the label is the top class;
- ``disagreement``: for an ensemble, the spread (standard deviation) of ``p(label)`` over its
  members, plus the share of members whose top class is not the label.

``min_score`` and ``limit`` bound the queue; images whose label was already decided in the
dataset's cleaning manifest (a previous review) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from omegaconf import OmegaConf

from src.core.errors import ConfigError, DataError
from src.ensemble.oof import Member, load_member

SCORES = ("loss", "margin", "disagreement")
EPS = 1e-12


@dataclass(frozen=True)
class Suspect:
    """One image to review.

    Attributes:
        image_id: The training image.
        label: Its current class index.
        score: How suspect (see the module docstring).
        probs: ``(C,)`` out-of-fold probabilities.
    """

    image_id: str
    label: int
    score: float
    probs: npt.NDArray[np.float64]


def member_dirs(source: Path) -> list[Path]:
    """An ensemble run's members (its ``config.yaml``'s ``members``), relative ones under the
    project root the ensemble ran in; empty for a cross-validation run."""
    config = source / "config.yaml"
    if not config.is_file():
        return []
    node = OmegaConf.load(config)
    members = node.get("members") or []
    root = Path(str(OmegaConf.select(node, "paths.root_dir", default=source.parents[2])))
    return [Path(m) if Path(m).is_absolute() else root / m for m in members]


def disagreement(source: Path, ref: Member) -> npt.NDArray[np.float64]:
    """Spread of ``p(label)`` over the ensemble's members, plus the share that predicts another class.

    Raises:
        ConfigError: ``source`` is not an ensemble run (no members).
    """
    dirs = member_dirs(source)
    if not dirs:
        raise ConfigError(
            f"score=disagreement needs an ensemble run as source; {source} has no members",
            "pass source=outputs/ensemble/<run>, or score=loss|margin",
        )
    order = {s: i for i, s in enumerate(ref.sample_ids)}
    p_label, wrong = [], []
    for path in dirs:
        member = load_member(path)
        rows = np.asarray([order.get(s, -1) for s in member.sample_ids])
        keep = rows >= 0
        p = np.full(len(ref.sample_ids), np.nan)
        p[rows[keep]] = member.probs[keep, member.labels[keep]]
        top = np.full(len(ref.sample_ids), np.nan)
        top[rows[keep]] = member.probs[keep].argmax(axis=1) != member.labels[keep]
        p_label.append(p)
        wrong.append(top)
    return np.nanstd(np.stack(p_label), axis=0) + np.nanmean(np.stack(wrong), axis=0)


def scores(kind: str, member: Member, source: Path) -> npt.NDArray[np.float64]:
    """The score of every row of ``member`` (see the module docstring)."""
    rows = np.arange(len(member.labels))
    p_label = member.probs[rows, member.labels]
    if kind == "loss":
        return -np.log(np.clip(p_label, EPS, 1.0))
    if kind == "margin":
        return member.probs.max(axis=1) - p_label
    if kind == "disagreement":
        return disagreement(source, member)
    raise ConfigError(f"score={kind!r}", f"use one of {', '.join(SCORES)}")


def find_suspects(
    source: Path, kind: str, limit: int, min_score: float, decided: set[str]
) -> tuple[list[Suspect], list[str]]:
    """The queue (the most suspect images first, those already decided left out) and the classes.

    Raises:
        DataError: ``source`` holds no out-of-fold predictions.
        ConfigError: An unknown score, or a disagreement score without members.
    """
    if not (source / "oof").is_dir():
        raise DataError(
            f"source={source} holds no out-of-fold predictions (no oof/)",
            "pass a cross-validation run (python cv.py experiment=<name>) or an ensemble run directory",
        )
    member = load_member(source)
    values = scores(kind, member, source)
    order = np.argsort(-values, kind="stable")
    picked = []
    for i in order:
        sid = str(member.sample_ids[i])
        if values[i] < min_score or sid in decided:
            continue
        picked.append(Suspect(sid, int(member.labels[i]), float(values[i]), member.probs[i]))
        if len(picked) >= limit:
            break
    return picked, list(member.classes)
