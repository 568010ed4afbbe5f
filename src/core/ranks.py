"""The process's global rank from the launcher's environment, without importing Lightning."""

from __future__ import annotations

import os

# The variables Lightning's rank_zero_only reads, in its order.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def process_rank() -> int:
    """Global rank of this process (0 when not launched as one of several)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            return int(value)
    return 0
