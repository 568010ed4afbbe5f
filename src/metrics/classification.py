"""Scores of classification predictions: the records of ``gt_vs_pred.jsonl`` (``evaluate.py``,
the out-of-fold records of ``cv.py``) and the expected calibration error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from src.core.artifacts import RecordError, record_field

#: Equal-width confidence bins of the expected calibration error.
ECE_BINS = 15
#: Smallest probability a log-loss term takes (a predicted 0 would give an infinite loss).
LOG_LOSS_EPS = 1e-15


def expected_calibration_error(
    probs: npt.NDArray[np.float64], y: npt.NDArray[np.integer], n_bins: int = ECE_BINS
) -> float:
    """Top-label expected calibration error (L1), via torchmetrics' ``multiclass_calibration_error``
    (the functional form: a scorer of local arrays never synchronises with other processes).

    Args:
        probs: ``(n, C)`` probabilities.
        y: ``(n,)`` class indices.
        n_bins: Equal-width confidence bins.

    Returns:
        ECE in [0, 1]: the bin-weighted mean of |accuracy - confidence|.
    """
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    preds = torch.as_tensor(np.asarray(probs), dtype=torch.float64)
    target = torch.as_tensor(np.asarray(y))
    return float(multiclass_calibration_error(preds, target, num_classes=probs.shape[1], n_bins=n_bins, norm="l1"))


def _arrays(records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(n, C)`` probabilities and ``(n,)`` labels of labelled records, each checked."""
    probs = [record_field(records, i, "pred.probs", list) for i in range(len(records))]
    labels = [record_field(records, i, "gt.label", int) for i in range(len(records))]
    width = len(probs[0])
    for i, (row, label) in enumerate(zip(probs, labels, strict=True)):
        if len(row) != width:
            what = f"record {records[i]['sample_id']!r}: pred.probs has {len(row)} classes, the first record {width}"
            raise RecordError(i, what, "write one probability per class in every record")
        if not 0 <= label < width:
            what = f"record {records[i]['sample_id']!r}: gt.label {label} is outside 0..{width - 1}"
            raise RecordError(i, what, "write the class index of the truth")
    return np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)


def score_records(records: Sequence[dict[str, Any]]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Accuracy, log loss and expected calibration error of labelled classification records.

    Args:
        records: Records with ``gt`` ``{"label"}`` and ``pred`` ``{"probs"}`` (``src.core.artifacts``).

    Returns:
        ``{"acc", "log_loss" (nats), "ece", "samples"}`` and one row per record (``sample_id``,
        ``correct``, ``p_true``, ``log_loss``).

    Raises:
        RecordError: A record without those fields (a record of another task) or of another width.
    """
    probs, labels = _arrays(records)
    rows = np.arange(len(labels))
    p_true = probs[rows, labels]
    loss = -np.log(np.clip(p_true, LOG_LOSS_EPS, 1.0))
    correct = probs.argmax(axis=1) == labels
    metrics = {
        "acc": float(correct.mean()),
        "log_loss": float(loss.mean()),
        "ece": expected_calibration_error(probs, labels),
        "samples": float(len(labels)),
    }
    per_sample = [
        {"sample_id": r["sample_id"], "correct": bool(c), "p_true": float(p), "log_loss": float(v)}
        for r, c, p, v in zip(records, correct, p_true, loss, strict=True)
    ]
    return metrics, per_sample
