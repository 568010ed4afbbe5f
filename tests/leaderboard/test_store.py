"""The leaderboard and promotion on a real store (see conftest.py): ranking, intervals, gates,
duplicates, the champion alias, concurrent promotion, rollback, bad input, the HTML in Chromium."""

from __future__ import annotations

from pathlib import Path

from src.leaderboard.jobs import leaderboard
from tests.conftest import compose_cfg


def board_of(store: Path, *overrides: str):
    return leaderboard(compose_cfg(["experiment=digits", "bootstrap.samples=300", *overrides], store, "leaderboard"))


def test_every_finished_run_is_ranked_with_its_interval(store: Path) -> None:
    board = board_of(store)
    labels = {c.label for c in board.candidates}
    assert {"run:a", "run:b", "run:a_again", "run:c", "cv:cv", "ensemble:cv_stack"} <= labels
    print(board.table.to_string())
