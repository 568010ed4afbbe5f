"""The ensemble's stack — choose a candidate, calibrate it, add pair experts — scored out of sample.

A stack is three choices made on out-of-fold (OOF) predictions:

1. the candidate (a member as is, or a blend) with the best nested OOF ``select_by``;
2. the calibration chain (class bias, temperature), fitted on that candidate's nested OOF;
3. gated pair experts (which pairs, their experts, their margin thresholds), fitted on the
   calibrated nested OOF.

:func:`fit_stack` makes the three choices on the rows it is given, nested over their folds
wherever a step needs out-of-fold inputs; the test predictions use the stack fitted on every OOF
row. :func:`cross_fit_stack` scores the whole procedure: for every fold ``k`` it fits a stack on
the other folds' rows alone and predicts fold ``k`` with it, so no choice — candidate, bias,
temperature, expert pair, gate, threshold — has seen the labels of the rows it is scored on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import log_loss
from sklearn.model_selection import KFold, StratifiedKFold

from src.core.errors import ConfigError
from src.ensemble.blends import Blend, Rows, nested_oof_predict, take_rows
from src.ensemble.calibration import CalibrationChain
from src.ensemble.experts import PairExperts

Array = npt.NDArray[np.float64]
#: Ranking metrics of the choice: metric -> lower is better.
SELECT_BY = {"acc": False, "log_loss": True}
#: Name of the stack's first stage (the chosen candidate); later stages append a suffix.
SELECTED = "selected"


def check_select_by(select_by: str) -> None:
    """Raise a ConfigError naming ``select_by`` unless it is a ranking metric."""
    if select_by not in SELECT_BY:
        raise ConfigError(f"select_by={select_by!r} is not a ranking metric", f"use one of {list(SELECT_BY)}")


@dataclass(frozen=True)
class StackRecipe:
    """What a stack may choose from and how.

    Attributes:
        candidates: Unfitted candidates by name (members as ``SelectMember``), in ranking order
            for ties.
        select_by: ``acc`` (higher is better; ties broken by log-loss) or ``log_loss``.
        calibration: Factories of the calibration steps, applied in order (empty: none).
        experts: Makes unfitted pair experts, or None for none.
        seed: Seed of the inner split when the rows given to :func:`fit_stack` hold one fold.
    """

    candidates: dict[str, Callable[[], Blend]]
    select_by: str = "acc"
    calibration: tuple[Callable[[], Any], ...] = ()
    experts: Callable[[], PairExperts] | None = None
    seed: int = 0

    def stage_names(self) -> list[str]:
        """``selected``, then ``+calibrated`` and ``+experts`` for the configured steps."""
        names = [SELECTED]
        if self.calibration:
            names.append(f"{names[-1]}+calibrated")
        if self.experts is not None:
            names.append(f"{names[-1]}+experts")
        return names


@dataclass
class FittedStack:
    """A stack fitted on some rows: the chosen candidate and the steps fitted on top of it.

    Attributes:
        chosen: Name of the chosen candidate.
        blend: That candidate fitted on every given row.
        calibration: The fitted calibration chain, or None.
        experts: The fitted pair experts, or None.
    """

    chosen: str
    blend: Blend
    calibration: CalibrationChain | None
    experts: PairExperts | None

    def predict(self, P_list: Rows, features: Array) -> list[Array]:
        """Every stage's ``(n, C)`` probabilities on new rows, in :meth:`StackRecipe.stage_names` order.

        Args:
            P_list: One ``(n, C)`` probability array per member.
            features: ``(n, F)`` pair-expert inputs of the same rows.
        """
        out = [self.blend.predict(P_list)]
        if self.calibration is not None:
            out.append(self.calibration.predict(out[-1]))
        if self.experts is not None:
            out.append(self.experts.predict(out[-1], features))
        return out


def choose(oof: dict[str, Array], y: npt.NDArray[np.int64], select_by: str) -> str:
    """The candidate with the best ``select_by`` on its OOF probabilities.

    Accuracy ties are broken by the lower log-loss, then by the order of ``oof``.

    Args:
        oof: ``(n, C)`` OOF probabilities per candidate name.
        y: ``(n,)`` true classes.
        select_by: ``acc`` or ``log_loss``.
    """
    check_select_by(select_by)

    def key(name: str) -> tuple[float, float]:
        probs = oof[name]
        loss = float(log_loss(y, probs, labels=np.arange(probs.shape[1])))
        if select_by == "log_loss":
            return (loss, 0.0)
        return (-float((probs.argmax(axis=1) == y).mean()), loss)

    return min(oof, key=key)  # min keeps the first of equal keys


def inner_folds(folds: npt.NDArray[np.int64], y: npt.NDArray[np.int64], seed: int) -> npt.NDArray[np.int64]:
    """Folds for nested fits on some rows: their own folds, or a seeded 2-way split when they hold
    a single fold (the other folds' rows of a 2-fold cross-validation)."""
    if np.unique(folds).size >= 2:
        return np.asarray(folds)
    out = np.zeros(len(y), dtype=np.int64)
    x = np.zeros(len(y))
    try:
        splits = list(StratifiedKFold(n_splits=2, shuffle=True, random_state=seed).split(x, y))
    except ValueError:  # a class with a single row cannot be stratified
        splits = list(KFold(n_splits=2, shuffle=True, random_state=seed).split(x))
    out[splits[0][1]] = 1
    return out


def fit_stack(
    recipe: StackRecipe,
    P_list: Rows,
    features: Array,
    y: npt.NDArray[np.int64],
    folds: npt.NDArray[np.int64],
    oof: dict[str, Array] | None = None,
) -> FittedStack:
    """Choose the candidate, fit the calibration and the pair experts on these rows.

    Args:
        recipe: The candidates and steps.
        P_list: One ``(n, C)`` OOF probability array per member.
        features: ``(n, F)`` pair-expert inputs.
        y: ``(n,)`` true classes.
        folds: ``(n,)`` fold of each row (at least two distinct values).
        oof: The candidates' nested OOF probabilities on these rows, when already computed.
    """
    if oof is None:
        oof = {name: nested_oof_predict(make, P_list, y, folds) for name, make in recipe.candidates.items()}
    chosen = choose({name: oof[name] for name in recipe.candidates}, y, recipe.select_by)
    blend = recipe.candidates[chosen]().fit(P_list, y)
    probs, chain = oof[chosen], None
    if recipe.calibration:
        make_chain = partial(CalibrationChain, recipe.calibration)
        chain = make_chain().fit(probs, y)
        probs = nested_oof_predict(make_chain, probs, y, folds)
    experts = recipe.experts().fit(probs, features, y, folds) if recipe.experts is not None else None
    return FittedStack(chosen, blend, chain, experts)


@dataclass
class CrossFit:
    """A stack scored out of sample: fitted on the other folds, applied to each held-out fold.

    Attributes:
        stages: Per stage (:meth:`StackRecipe.stage_names` order), ``(n, C)`` probabilities.
        chosen: Per held-out fold, the candidate its stack chose.
        experts: Per held-out fold and pair its stack chose: ``fold``, ``pair`` (class indices),
            ``threshold``, ``rows_gated`` and ``net_fixed`` (rows made right minus rows made
            wrong) on the held-out rows.
        stacks: Per held-out fold, its fitted stack.
    """

    stages: list[Array]
    chosen: dict[int, str] = field(default_factory=dict)
    experts: list[dict[str, Any]] = field(default_factory=list)
    stacks: dict[int, FittedStack] = field(default_factory=dict)


def cross_fit_stack(
    recipe: StackRecipe,
    P_list: Rows,
    features: Array,
    y: npt.NDArray[np.int64],
    folds: npt.NDArray[np.int64],
) -> CrossFit:
    """Every stage's out-of-sample probabilities: each fold predicted by a stack fitted without it.

    The stack of held-out fold ``k`` is :func:`fit_stack` on the other folds' rows, nested over
    those folds (:func:`inner_folds`), so fold ``k``'s labels reach none of its choices.

    Args:
        recipe: The candidates and steps.
        P_list: One ``(n, C)`` OOF probability array per member.
        features: ``(n, F)`` pair-expert inputs.
        y: ``(n,)`` true classes.
        folds: ``(n,)`` fold of each row (at least two distinct values).
    """
    folds = np.asarray(folds)
    fit = CrossFit(stages=[])
    for k in np.unique(folds).tolist():
        held = folds == k
        train_y = y[~held]
        inner = inner_folds(folds[~held], train_y, recipe.seed)
        stack = fit_stack(recipe, take_rows(P_list, ~held), features[~held], train_y, inner)
        preds = stack.predict(take_rows(P_list, held), features[held])
        if not fit.stages:
            fit.stages = [np.empty((len(y), p.shape[1])) for p in preds]
        for out, pred in zip(fit.stages, preds, strict=True):
            out[held] = pred
        fit.chosen[k], fit.stacks[k] = stack.chosen, stack
        if stack.experts is not None:
            fit.experts += _expert_rows(k, stack.experts, preds[-2], preds[-1], y[held])
    return fit


def _expert_rows(
    fold: int, experts: PairExperts, before: Array, after: Array, y: npt.NDArray[np.int64]
) -> list[dict[str, Any]]:
    effects = experts.effects(before, after, y)
    return [
        {"fold": fold, "pair": pair, "threshold": experts.thresholds_[pair], "rows_gated": gated, "net_fixed": fixed}
        for pair, (gated, fixed) in effects.items()
    ]


def expert_summary(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> list[dict[str, Any]]:
    """Per pair, over the held-out folds: how many folds' stacks chose it, their thresholds, and
    the held-out rows it gated and net fixed (:attr:`CrossFit.experts` aggregated)."""
    by_pair: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in rows:
        by_pair.setdefault(row["pair"], []).append(row)
    return [
        {
            "pair": f"{classes[a]}|{classes[b]}",
            "folds_chosen": len(group),
            "thresholds": [r["threshold"] for r in group],
            "oof_rows_gated": sum(r["rows_gated"] for r in group),
            "oof_net_fixed": sum(r["net_fixed"] for r in group),
        }
        for (a, b), group in by_pair.items()
    ]
