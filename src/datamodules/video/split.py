"""Train/validation/test split of a video by time: contiguous blocks, never random frames.

Neighbouring frames of a video are near-duplicates, so a random split would score a post-filter
on frames it has practically seen. The blocks come in time order (train, then val, then test:
the test block is the latest footage) with ``gap`` unused frames between them. For
cross-validation (:func:`fold_blocks`) the frames before the test block are cut into K contiguous
blocks; fold k validates on block k and trains on the others, ``gap`` frames away from it.
"""

from __future__ import annotations

from collections.abc import Sequence

from src.core.errors import ConfigError

SPLITS = ("train", "val", "test")


def _shown(value: object) -> str:
    return str(list(value)) if isinstance(value, Sequence) and not isinstance(value, str) else repr(value)


def check_shares(fractions: Sequence[float], gap: int = 0) -> list[float]:
    """Validate ``data.split`` and ``data.gap`` without knowing the video's length.

    Returns:
        The shares as floats.

    Raises:
        ConfigError: Not three non-negative numbers summing to 1, or a negative gap.
    """
    try:
        shares = [float(f) for f in fractions]
    except (TypeError, ValueError):
        shares = []
    if len(shares) != 3 or any(f < 0 for f in shares) or abs(sum(shares) - 1.0) > 1e-6:
        raise ConfigError(
            f"data.split={_shown(fractions)} is not three non-negative shares (train, val, test) summing to 1",
            "use e.g. data.split=[0.7,0.15,0.15]",
        )
    if gap < 0:
        raise ConfigError(f"data.gap={gap} is negative", "use 0 or a few frames")
    return shares


def time_split(n_frames: int, fractions: Sequence[float], gap: int = 0) -> dict[str, range]:
    """Contiguous, ordered, non-overlapping frame blocks.

    Args:
        n_frames: Frames in the video.
        fractions: Shares of (train, val, test), summing to 1; train takes the rounding rest.
        gap: Frames left out between consecutive blocks.

    Returns:
        ``{"train": range, "val": range, "test": range}`` of frame indices.

    Raises:
        ConfigError: Fractions not three non-negative numbers summing to 1, a negative gap, or
            a block that would be empty.
    """
    fractions = check_shares(fractions, gap)
    usable = n_frames - 2 * gap
    n_val, n_test = round(usable * fractions[1]), round(usable * fractions[2])
    sizes = [usable - n_val - n_test, n_val, n_test]
    if min(sizes) < 1:
        raise ConfigError(
            f"a video of {n_frames} frames split {fractions} with gap {gap} leaves blocks of {sizes} frames",
            "use a longer video, larger shares for the empty blocks, or a smaller data.gap",
        )
    blocks, start = {}, 0
    for name, size in zip(SPLITS, sizes, strict=True):
        blocks[name] = range(start, start + size)
        start += size + gap
    return blocks


def fold_blocks(blocks: dict[str, range], n_folds: int, fold: int, gap: int = 0) -> dict[str, Sequence[int]]:
    """The blocks of fold ``fold`` of a K-fold split over time (the test block unchanged).

    Args:
        blocks: :func:`time_split`'s blocks.
        n_folds: Contiguous validation blocks the frames before the test block are cut into.
        fold: The block validated on.
        gap: Frames left out on each side of the validation block.

    Returns:
        ``{"train": frames, "val": range, "test": range}``.

    Raises:
        ConfigError: ``fold`` out of range, or a block that would be empty.
    """
    if not 0 <= fold < n_folds:
        raise ConfigError(f"data.fold={fold} is outside 0..{n_folds - 1}", f"pass data.fold=<0..{n_folds - 1}>")
    pool = range(0, max(0, blocks["test"].start - gap))
    edges = [round(i * len(pool) / n_folds) for i in range(n_folds + 1)]
    val = range(edges[fold], edges[fold + 1])
    train = [t for t in pool if t < val.start - gap or t >= val.stop + gap]
    if not val or not train:
        raise ConfigError(
            f"{len(pool)} frames before the test block cut into data.n_folds={n_folds} blocks (gap {gap}) leave "
            f"fold {fold} {len(train)} training and {len(val)} validation frames",
            "use fewer folds, a smaller data.gap or a longer video",
        )
    return {"train": train, "val": val, "test": blocks["test"]}
