"""Scores of a compressed video plus its post-filter: distortion, rate, and a configurable score.

* ``FrameDistortion``: per-frame PSNR (dB) and SSIM (torchmetrics), and their means.
* ``compression_rate``: (compressed video bytes + artifact bytes) / source file bytes.
* ``ScoreFormula``: a formula over ``rate``, ``psnr``, ``ssim``, ``mse`` and, when the user supplies
  task networks, ``d_seg`` and ``d_pose`` — e.g. the video-compression-challenge form
  ``100 * d_seg + sqrt(10 * d_pose) + 25 * rate`` (lower is better).
* ``TaskDistortion``: ``d_seg`` and ``d_pose`` from segmentation / pose networks loaded from
  local files (TorchScript ``.pt`` or ``torch.export`` ``.pt2``).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.utilities import dim_zero_cat

from src.core.artifacts import RecordError, record_field
from src.core.errors import ConfigError, DataError


class FrameDistortion(Metric):
    """Per-frame PSNR and SSIM of reconstructed frames against the originals.

    ``update(preds, target)`` takes ``(frames, C, H, W)`` tensors in [0, 1]; ``compute()`` returns
    ``{"psnr": mean dB, "ssim": mean, "mse": mean}`` over every frame seen (all processes);
    ``per_frame()`` the ``(frames,)`` tensors behind them.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("psnr", default=[], dist_reduce_fx="cat")
        self.add_state("ssim", default=[], dist_reduce_fx="cat")
        self.add_state("mse", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds, target = preds.float(), target.float()
        self.psnr.append(peak_signal_noise_ratio(preds, target, data_range=1.0, reduction="none", dim=(1, 2, 3)))
        self.ssim.append(structural_similarity_index_measure(preds, target, data_range=1.0, reduction="none"))
        self.mse.append(((preds - target) ** 2).mean(dim=(1, 2, 3)))

    def per_frame(self) -> dict[str, torch.Tensor]:
        """``{"psnr", "ssim", "mse"}`` → ``(frames,)`` tensors (this process's frames)."""
        return {k: dim_zero_cat(getattr(self, k)) for k in ("psnr", "ssim", "mse")}

    def compute(self) -> dict[str, torch.Tensor]:
        return {k: dim_zero_cat(getattr(self, k)).mean() for k in ("psnr", "ssim", "mse")}


def distortion(preds: torch.Tensor, target: torch.Tensor, batch: int = 16) -> dict[str, torch.Tensor]:
    """Per-frame ``psnr``, ``ssim`` and ``mse`` of uint8 or [0, 1] frames, ``(frames, C, H, W)``."""
    metric = FrameDistortion()
    scale = 255.0 if preds.dtype == torch.uint8 else 1.0
    for p, t in zip(preds.split(batch), target.split(batch), strict=True):
        metric.update(p.float() / scale, t.float() / scale)
    return metric.per_frame()


def compression_rate(video_bytes: int, artifact_bytes: int, source_bytes: int) -> float:
    """(compressed video bytes + artifact bytes) / source file bytes."""
    if source_bytes <= 0:
        raise DataError(f"source size {source_bytes} bytes", "the source video file is empty")
    return (video_bytes + artifact_bytes) / source_bytes


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}  # fmt: skip
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS = {"sqrt": math.sqrt, "log10": math.log10, "log": math.log, "exp": math.exp, "abs": abs,
              "min": min, "max": max}  # fmt: skip
VARIABLES = ("rate", "psnr", "ssim", "mse", "d_seg", "d_pose")
TASK_VARIABLES = {"d_seg": "seg_network", "d_pose": "pose_network"}


class ScoreFormula:
    """A score computed from named terms by an arithmetic formula from the config.

    Only numbers, the variables ``rate``, ``psnr`` (dB), ``ssim``, ``mse`` (frames in [0, 1]),
    ``d_seg``, ``d_pose``, the operators ``+ - * / **`` and ``sqrt log10 log exp abs min max``
    are allowed; nothing else is evaluated.

    Args:
        formula: E.g. ``"25 * rate + 100 * (1 - ssim)"`` or the challenge form
            ``"100 * d_seg + sqrt(10 * d_pose) + 25 * rate"``.
        seg_network: Local file of the segmentation network (needed when ``d_seg`` is used).
        pose_network: Local file of the pose network (needed when ``d_pose`` is used).

    Raises:
        ConfigError: A syntax error, an unknown name, or a task term without its network.
        DataError: A task network file that is missing or unreadable.
    """

    def __init__(self, formula: str, seg_network: str | None = None, pose_network: str | None = None) -> None:
        self.formula = str(formula)
        try:
            self._tree = ast.parse(self.formula, mode="eval")
        except SyntaxError as exc:
            raise ConfigError(f"score formula {self.formula!r} is not an expression ({exc.msg})", _FIX) from exc
        self.variables = self._check(self._tree.body)
        paths = {"seg_network": seg_network, "pose_network": pose_network}
        for var, key in TASK_VARIABLES.items():
            if var in self.variables and not paths[key]:
                raise ConfigError(
                    f"score formula {self.formula!r} uses {var} but no {key} is given",
                    f"set callbacks.export.score.{key}=<local file of the network>, or drop {var} from the formula",
                )
        self.tasks = TaskDistortion(**paths) if any(v in self.variables for v in TASK_VARIABLES) else None

    def _check(self, node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return set()
        if isinstance(node, ast.Name):
            if node.id not in VARIABLES:
                raise ConfigError(f"score formula {self.formula!r}: unknown name {node.id!r}", _FIX)
            return {node.id}
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return self._check(node.left) | self._check(node.right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return self._check(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
            if node.keywords:
                raise ConfigError(f"score formula {self.formula!r}: keyword arguments are not allowed", _FIX)
            return set().union(*(self._check(a) for a in node.args)) if node.args else set()
        raise ConfigError(f"score formula {self.formula!r}: {ast.dump(node)[:60]} is not allowed", _FIX)

    def __call__(self, **terms: float) -> float:
        """The score for the given terms (every variable of the formula must be given)."""
        missing = self.variables - set(terms)
        if missing:
            raise ConfigError(f"score formula {self.formula!r} needs {sorted(missing)}", "compute those terms first")
        return float(self._eval(self._tree.body, terms))

    def _eval(self, node: ast.AST, terms: dict[str, float]) -> float:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return float(terms[node.id])
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, terms), self._eval(node.right, terms))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, terms))
        return _FUNCTIONS[node.func.id](*(self._eval(a, terms) for a in node.args))


_FIX = f"write an arithmetic expression over {', '.join(VARIABLES)} (functions: {', '.join(_FUNCTIONS)})"


def load_task_network(path: str | Path, field: str) -> torch.nn.Module:
    """A task network from a local file: ``torch.export`` (``.pt2``) or TorchScript (other names).

    Raises:
        DataError: The file is missing or cannot be loaded; the message names ``field`` and path.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"callbacks.export.score.{field}={str(path)!r}: no such file",
            "point it at a local TorchScript (.pt) or torch.export (.pt2) file of the network",
        )
    try:
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module()
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise DataError(
            f"callbacks.export.score.{field}={str(path)!r} cannot be loaded ({type(exc).__name__}: {exc})",
            "save the network with torch.jit.save (.pt) or torch.export.save (.pt2)",
        ) from exc


class TaskDistortion:
    """Distortion as seen by task networks (the video-compression-challenge terms).

    * ``d_seg``: share of pixels whose segmentation class (argmax over the network's
      ``(frames, classes, H, W)`` output) differs between original and reconstructed frames.
    * ``d_pose``: mean squared difference of the pose network's ``(pairs, P)`` outputs on
      consecutive frame pairs (two RGB frames stacked along channels: ``(pairs, 6, H, W)``).

    Both networks take RGB frames in [0, 1]; wrap a network's own preprocessing inside it.

    Args:
        seg_network: File of the segmentation network, or None.
        pose_network: File of the pose network, or None.
    """

    def __init__(self, seg_network: str | None = None, pose_network: str | None = None) -> None:
        self.seg = load_task_network(seg_network, "seg_network") if seg_network else None
        self.pose = load_task_network(pose_network, "pose_network") if pose_network else None

    @torch.no_grad()
    def __call__(self, recon: torch.Tensor, original: torch.Tensor, batch: int = 8) -> dict[str, float]:
        """``{"d_seg", "d_pose"}`` (those with a network) of ``(frames, 3, H, W)`` RGB in [0, 1]."""
        out: dict[str, float] = {}
        if self.seg is not None:
            differ = [
                (self.seg(r).argmax(1) != self.seg(o).argmax(1)).float().mean(dim=(1, 2))
                for r, o in zip(recon.split(batch), original.split(batch), strict=True)
            ]
            out["d_seg"] = float(torch.cat(differ).mean())
        if self.pose is not None and len(recon) > 1:
            pr, po = _pairs(recon), _pairs(original)
            sq = [
                ((self.pose(a) - self.pose(b)) ** 2).mean(dim=1)
                for a, b in zip(pr.split(batch), po.split(batch), strict=True)
            ]
            out["d_pose"] = float(torch.cat(sq).mean())
        return out


def _pairs(frames: torch.Tensor) -> torch.Tensor:
    return torch.cat([frames[:-1], frames[1:]], dim=1)


# ---- records of gt_vs_pred.jsonl (evaluate.py) --------------------------------------------------

#: The per-frame figures of a post-filter record's ``pred``.
RECORD_FIGURES = ("psnr", "ssim", "psnr_decoded", "ssim_decoded")


def score_records(records: Sequence[dict[str, Any]]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Mean distortion of the restored frames of post-filter records, and the gain over the decoded input.

    Args:
        records: Records whose ``pred`` holds the frame's ``psnr`` (dB), ``ssim``, ``psnr_decoded``
            and ``ssim_decoded`` (``src.core.artifacts``).

    Returns:
        ``{"psnr", "ssim", "psnr_decoded", "ssim_decoded"}`` (means over frames), ``psnr_gain``
        (mean PSNR minus mean decoded PSNR, dB) and ``samples``; per frame ``sample_id``, ``psnr``,
        ``ssim``, ``psnr_gain``.

    Raises:
        RecordError: A record without those figures (a record of another task) or with a non-finite one.
    """
    table: dict[str, list[float]] = {k: [] for k in RECORD_FIGURES}
    for i, record in enumerate(records):
        for key in RECORD_FIGURES:
            value = float(record_field(records, i, f"pred.{key}", (int, float)))
            if not math.isfinite(value):
                what = f"record {record['sample_id']!r}: pred.{key} is {value}"
                raise RecordError(i, what, "mark the record with the error code nonfinite_pred, or fix it")
            table[key].append(value)
    metrics = {k: sum(v) / len(v) for k, v in table.items()}
    metrics["psnr_gain"] = metrics["psnr"] - metrics["psnr_decoded"]
    metrics["samples"] = float(len(records))
    psnr, ssim, decoded = table["psnr"], table["ssim"], table["psnr_decoded"]
    per_sample = [
        {"sample_id": r["sample_id"], "psnr": psnr[i], "ssim": ssim[i], "psnr_gain": psnr[i] - decoded[i]}
        for i, r in enumerate(records)
    ]
    return metrics, per_sample
