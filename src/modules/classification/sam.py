"""Sharpness-Aware Minimization (Foret et al., 2021) as two small functions and a BN guard.

One SAM step: gradient g at w → move to w + e with e = rho · g / ||g|| (ASAM scales by |w|) →
gradient at w + e → return to w → the base optimizer steps with that second gradient. The
second forward pass must not update batch-norm running statistics: they are updated once per
step, by the first pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from src.core.private_api import BatchNormBase


@torch.no_grad()
def sam_ascend(
    params: Iterable[nn.Parameter], rho: float, adaptive: bool = False
) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Move every parameter with a gradient to the SAM perturbation point ``w + e``.

    Args:
        params: Parameters whose ``.grad`` holds the first-pass gradient.
        rho: Neighbourhood radius (in parameter units; relative units for ``adaptive``).
        adaptive: ASAM: scale the perturbation element-wise by ``|w|``.

    Returns:
        ``(parameter, e)`` pairs to undo with :func:`sam_descend`.
    """
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return []
    scaled = [(p.abs() * p.grad if adaptive else p.grad) for p in with_grad]
    norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2)
    factor = rho / (norm + 1e-12)
    moves = []
    for p, s in zip(with_grad, scaled, strict=True):
        e = (p.abs() * s if adaptive else s) * factor
        p.add_(e)
        moves.append((p, e))
    return moves


@torch.no_grad()
def sam_descend(moves: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    """Return the parameters from ``w + e`` to ``w`` (their gradients stay those at ``w + e``)."""
    for p, e in moves:
        p.sub_(e)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Batch-norm layers normalise with the batch but leave their running statistics untouched."""
    saved = []
    for m in model.modules():
        if isinstance(m, BatchNormBase):
            saved.append((m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
