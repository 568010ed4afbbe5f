"""Post-hoc calibration of ensemble probabilities, fitted on out-of-fold predictions.

Calibrators have the blends' shape with a single input: ``fit(probs, y)`` and
``predict(probs) -> probs``, both on ``(n, C)`` probability arrays; they work on
``log(probs)`` internally. :func:`src.ensemble.blends.nested_oof_predict` scores them honestly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax

from src.ensemble.blends import log_probs, one_hot
from src.metrics.classification import expected_calibration_error

__all__ = ["CalibrationChain", "ClassBias", "TemperatureScaling", "expected_calibration_error", "nll"]

Array = npt.NDArray[np.float64]


def nll(logits: Array, y: npt.NDArray[np.int64]) -> float:
    """Mean negative log-likelihood (natural log) of ``softmax(logits)`` for classes ``y``."""
    return float(-log_softmax(logits, axis=1)[np.arange(len(y)), y].mean())


class ClassBias:
    """An additive per-class bias on the log-probabilities: ``softmax(log p + b)``.

    ``b`` minimises the OOF negative log-likelihood (a smooth convex problem solved with L-BFGS,
    with its gradient) rather than accuracy directly: accuracy is piecewise constant in ``b``, so
    a search over it overfits the OOF rows near class boundaries, while the NLL optimum is the
    bias that undoes a shift of the class priors (the usual reason a bias is needed) and moves
    argmax decisions as a side effect. ``b`` is defined up to a constant; it is stored centred.

    Args:
        l2: L2 penalty on ``b`` (0: none).
        eps: Probability floor before the log.

    Attributes:
        bias_: ``(C,)`` fitted bias (natural-log units), mean zero.
    """

    def __init__(self, l2: float = 0.0, eps: float = 1e-12) -> None:
        self.l2, self.eps = l2, eps

    def fit(self, probs: Array, y: npt.NDArray[np.int64]) -> ClassBias:
        z = log_probs(probs, self.eps)
        target = one_hot(y, z.shape[1])

        def objective(b: Array) -> tuple[float, Array]:
            shifted = z + b
            grad = (softmax(shifted, axis=1) - target).mean(axis=0) + 2 * self.l2 * b
            return nll(shifted, y) + self.l2 * float(b @ b), grad

        result = minimize(objective, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B")
        self.bias_ = result.x - result.x.mean()
        return self

    def predict(self, probs: Array) -> Array:
        return softmax(log_probs(probs, self.eps) + self.bias_, axis=1)


class TemperatureScaling:
    """One temperature for all classes: ``softmax(log p / T)``, ``T`` minimising the OOF NLL.

    The search runs over ``log T`` (``scipy.optimize.minimize_scalar``, bounded), so ``T`` and
    ``1/T`` are equally easy to reach. ``T > 1`` softens over-confident probabilities; the
    argmax (and so accuracy) never changes.

    Args:
        t_min: Smallest temperature searched.
        t_max: Largest temperature searched.
        eps: Probability floor before the log.

    Attributes:
        temperature_: The fitted temperature (dimensionless).
    """

    def __init__(self, t_min: float = 0.05, t_max: float = 20.0, eps: float = 1e-12) -> None:
        self.t_min, self.t_max, self.eps = t_min, t_max, eps

    def fit(self, probs: Array, y: npt.NDArray[np.int64]) -> TemperatureScaling:
        z = log_probs(probs, self.eps)
        bounds = (np.log(self.t_min), np.log(self.t_max))
        result = minimize_scalar(
            lambda log_t: nll(z / np.exp(log_t), y), bounds=bounds, method="bounded", options={"xatol": 1e-6}
        )
        self.temperature_ = float(np.exp(result.x))
        return self

    def predict(self, probs: Array) -> Array:
        return softmax(log_probs(probs, self.eps) / self.temperature_, axis=1)


class CalibrationChain:
    """Calibrators applied in order, each fitted on the previous one's output.

    Args:
        steps: Factories of unfitted calibrators (e.g. ``[ClassBias, TemperatureScaling]``).

    Attributes:
        steps_: The fitted calibrators.
    """

    def __init__(self, steps: Sequence[Callable[[], Any]]) -> None:
        self.steps = list(steps)

    def fit(self, probs: Array, y: npt.NDArray[np.int64]) -> CalibrationChain:
        self.steps_ = []
        for factory in self.steps:
            step = factory().fit(probs, y)
            probs = step.predict(probs)
            self.steps_.append(step)
        return self

    def predict(self, probs: Array) -> Array:
        for step in self.steps_:
            probs = step.predict(probs)
        return probs
