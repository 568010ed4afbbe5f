"""Learning-rate schedules stepped per optimizer step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, min_factor: float = 0.01
) -> LambdaLR:
    """Linear warm-up from 0 then cosine decay to ``min_factor`` × the base learning rate.

    Args:
        optimizer: The optimizer whose base learning rates are scaled.
        total_steps: Optimizer steps of the whole run (``trainer.estimated_stepping_batches``).
        warmup_fraction: Share of ``total_steps`` spent warming up.
        min_factor: Final learning rate as a fraction of the base one.

    Returns:
        A ``LambdaLR`` to be stepped every optimizer step.
    """
    total = max(1, int(total_steps))
    warmup = round(warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
