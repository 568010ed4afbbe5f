"""``report.html``: a self-contained diagnostics page of an Ariel run's validation predictions.

One HTML file, no scripts and no external assets (figures are inline PNGs drawn with
matplotlib's Agg backend), so it opens anywhere and MLflow keeps it as an artifact of the run
(the core uploads every file of the run directory when the run finishes). Sections:

* summary: calibrated validation scores, coverage, z moments, physics-violation rates;
* spectra with 1- and 2-sigma bands for sample planets, against the true depths;
* per-cell log-likelihood heatmap (planet x bin);
* power spectrum of the residuals along the AIRS bins;
* histogram of ``z = (y - mu) / sigma`` against N(0, 1);
* empirical coverage of central Gaussian intervals against their nominal level;
* physics-violation map (planet x bin);
* 2-D PCA projection of the networks' per-planet embeddings.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader
from typing_extensions import override

from src.callbacks.ariel.calibration import ConformalCalibration
from src.callbacks.ariel.outputs import calibrators, collect_predictions
from src.callbacks.ariel.physics import PhysicsConstraints, violation_maps
from src.core.contracts import GaussianPredictor
from src.core.io import write_text_atomic
from src.metrics.ariel import central_z, gaussian_log_likelihood, score_2024, score_2025

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; font-size: 0.85em; max-width: 60em; }
"""
#: Default violation thresholds when the run has no PhysicsConstraints callback.
DEFAULT_PHYSICS = {"smooth_threshold_ppm": 50.0, "fft_cutoff": 0.25, "fft_threshold": 0.5}


def _png(fig: Any) -> str:
    """A matplotlib figure as an inline ``<img>`` (base64 PNG); closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _figure(width: float = 9.0, height: float = 3.6, ncols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), squeeze=False)


def coverage_curve(mu: np.ndarray, sigma: np.ndarray, y: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Empirical share of cells inside ``mu ± z(level) sigma`` for each nominal ``level``."""
    z = np.abs(y - mu) / sigma
    return np.array([float((z <= central_z(float(lv))).mean()) for lv in levels])


def residual_power(residuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean FFT power of residuals along the bins (mean removed per planet): (cycles per bin, power ppm^2)."""
    r = 1e6 * (residuals - residuals.mean(axis=1, keepdims=True))
    power = np.abs(np.fft.rfft(r, axis=1)) ** 2 / r.shape[1]
    return np.fft.rfftfreq(r.shape[1]), power.mean(axis=0)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Projection of rows of ``x`` on their first two principal axes, shape (rows, 2)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        return np.zeros((len(x), 2))
    xc = x - x.mean(axis=0)
    scale = xc.std(axis=0)
    xc = xc / np.where(scale > 0, scale, 1.0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    proj = xc @ vt[:2].T
    return np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))


def _spectra_figure(p: Mapping[str, np.ndarray], n: int) -> str:
    rows = max(1, min(n, len(p["mu"])))
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(9.0, 2.4 * rows), squeeze=False, constrained_layout=True)
    bins = np.arange(p["mu"].shape[1])
    for k in range(min(rows, len(p["mu"]))):
        ax = axes[k, 0]
        mu, sigma = 1e6 * p["mu"][k], 1e6 * p["sigma"][k]
        ax.fill_between(bins, mu - 2 * sigma, mu + 2 * sigma, color="tab:blue", alpha=0.15, label="±2σ")
        ax.fill_between(bins, mu - sigma, mu + sigma, color="tab:blue", alpha=0.3, label="±1σ")
        ax.plot(bins, mu, color="tab:blue", lw=1, label="μ")
        if "target" in p:
            ax.plot(bins, 1e6 * p["target"][k], color="k", lw=0.8, label="true")
        ax.set_ylabel("depth (ppm)")
        ax.set_title(f"planet {int(p['planet_id'][k])}", fontsize=9)
        if k == 0:
            ax.legend(fontsize=8, ncol=4, loc="upper right")
    axes[-1, 0].set_xlabel("bin (0 = FGS1, 1-282 = AIRS-CH0, ascending wavelength)")
    return _png(fig)


def _heatmap_figure(values: np.ndarray, title: str, label: str, cmap: str = "viridis") -> str:
    fig, axes = _figure(9.0, 3.6)
    im = axes[0, 0].imshow(values, aspect="auto", interpolation="nearest", cmap=cmap)
    axes[0, 0].set_xlabel("bin (0 = FGS1)")
    axes[0, 0].set_ylabel("planet")
    axes[0, 0].set_title(title, fontsize=10)
    fig.colorbar(im, ax=axes[0, 0], label=label)
    return _png(fig)


def _fft_figure(residuals: np.ndarray, z: np.ndarray) -> str:
    fig, axes = _figure(9.0, 3.2, ncols=2)
    freq, power = residual_power(residuals[:, 1:])
    axes[0, 0].semilogy(freq[1:], power[1:])
    axes[0, 0].set_xlabel("frequency (cycles per AIRS bin)")
    axes[0, 0].set_ylabel("residual power (ppm²)")
    freq, power = residual_power(1e-6 * z[:, 1:])
    axes[0, 1].semilogy(freq[1:], power[1:], color="tab:orange")
    axes[0, 1].axhline(1.0, color="k", lw=0.8, ls="--", label="white, σ calibrated")
    axes[0, 1].set_xlabel("frequency (cycles per AIRS bin)")
    axes[0, 1].set_ylabel("power of z")
    axes[0, 1].legend(fontsize=8)
    return _png(fig)


def _z_figure(z: np.ndarray) -> str:
    fig, axes = _figure(6.0, 3.4)
    clipped = np.clip(z.ravel(), -6, 6)
    axes[0, 0].hist(clipped, bins=60, density=True, alpha=0.6, label="z (clipped to ±6)")
    grid = np.linspace(-6, 6, 241)
    axes[0, 0].plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), color="k", label="N(0, 1)")
    axes[0, 0].set_xlabel("z = (y − μ) / σ")
    axes[0, 0].legend(fontsize=8)
    return _png(fig)


def _coverage_figure(p: Mapping[str, np.ndarray], conformal: Mapping[str, float]) -> str:
    levels = np.linspace(0.05, 0.99, 40)
    fig, axes = _figure(5.0, 4.0)
    ax = axes[0, 0]
    ax.plot(levels, coverage_curve(p["mu"], p["sigma"], p["target"], levels), label="Gaussian μ ± zσ")
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="nominal")
    for key, value in conformal.items():
        if key.startswith("cov"):
            level = int(key[3:]) / 100
            ax.scatter([level], [value], color="tab:red", zorder=3, label=f"conformal {key[3:]}% (cross-fit)")
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage")
    ax.legend(fontsize=8)
    return _png(fig)


def _embedding_figure(embedding: np.ndarray, colour: np.ndarray) -> str:
    proj = pca_2d(embedding)
    fig, axes = _figure(5.5, 4.0)
    sc = axes[0, 0].scatter(proj[:, 0], proj[:, 1], c=1e6 * colour, cmap="plasma", s=25)
    fig.colorbar(sc, ax=axes[0, 0], label="mean true depth (ppm)")
    axes[0, 0].set_xlabel("PC 1")
    axes[0, 0].set_ylabel("PC 2")
    return _png(fig)


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{fmt(v)}</td></tr>" for k, v in rows)
    return f"<table><thead><tr><th>quantity</th><th>value</th></tr></thead><tbody>{body}</tbody></table>"


def summary_rows(
    p: Mapping[str, np.ndarray], naive: tuple[float, float], maps: Mapping[str, np.ndarray]
) -> list[tuple[str, Any]]:
    """The summary table's rows (validation fold, calibrated sigma)."""
    y, mu, sigma = (torch.from_numpy(np.asarray(p[k], dtype=np.float64)) for k in ("target", "mu", "sigma"))
    z = ((y - mu) / sigma).numpy()
    return [
        ("planets (validation fold)", len(mu)),
        ("Ariel 2024 score", float(score_2024(y, mu, sigma, *naive))),
        ("Ariel 2025 score", float(score_2025(y, mu, sigma, *naive))),
        ("MAE (ppm)", float(1e6 * (y - mu).abs().mean())),
        ("coverage of 68% interval", float((np.abs(z) <= central_z(0.68)).mean())),
        ("coverage of 95% interval", float((np.abs(z) <= central_z(0.95)).mean())),
        ("z mean", float(z.mean())),
        ("z std", float(z.std())),
        ("median σ (ppm)", float(1e6 * np.median(p["sigma"]))),
        ("physics: share of cells violating", float(maps["any"].mean())),
        ("physics: share of planets with a high-frequency violation", float(maps["high_freq"].mean())),
    ]


def render_ariel_report(
    title: str,
    predictions: Mapping[str, np.ndarray],
    naive: tuple[float, float],
    physics: Mapping[str, float] | None = None,
    conformal: Mapping[str, float] | None = None,
    n_spectra: int = 6,
) -> str:
    """The report page for labelled predictions.

    Args:
        title: Page heading (experiment / run).
        predictions: ``planet_id``, ``mu``, ``sigma`` (calibrated), ``target``, ``embedding``:
            arrays with planets first, depths as fractions.
        naive: Training-label (mean, std), the scores' naive prediction.
        physics: Violation thresholds (``smooth_threshold_ppm``, ``fft_cutoff``, ``fft_threshold``).
        conformal: Cross-fitted conformal coverages (``cov68``, ...), drawn on the coverage plot.
        n_spectra: Planets whose spectra are drawn.

    Returns:
        A complete HTML document.
    """
    p = {k: np.asarray(v, dtype=np.float64) for k, v in predictions.items()}
    physics = {**DEFAULT_PHYSICS, **(physics or {})}
    maps = {k: v.numpy() for k, v in violation_maps(torch.from_numpy(p["mu"]), **physics).items()}
    y, mu, sigma = p["target"], p["mu"], p["sigma"]
    z = (y - mu) / sigma
    gll = gaussian_log_likelihood(*(torch.from_numpy(a) for a in (y, mu, sigma))).numpy()
    sections = [
        ("Summary (validation fold, calibrated σ)", _table(summary_rows(p, naive, maps))),
        ("Spectra with σ bands", _spectra_figure(p, n_spectra)),
        ("Gaussian log-likelihood per cell (nats)", _heatmap_figure(gll, "GLL(y; μ, σ), planet × bin", "nats")),
        ("Residual power spectrum along the AIRS bins", _fft_figure(y - mu, z)),
        ("z = (y − μ) / σ against N(0, 1)", _z_figure(z)),
        ("Coverage against nominal", _coverage_figure(p, conformal or {})),
        (
            "Physics-violation map",
            _heatmap_figure(maps["any"].astype(float), "violations (1 = violated)", "violated", cmap="Reds"),
        ),
        ("Embeddings (PCA, 2-D)", _embedding_figure(p["embedding"], y.mean(axis=1))),
    ]
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    note = (
        '<p class="note">Depths are transit depths in ppm of the stellar flux; bin 0 is FGS1, bins 1-282 the '
        "AIRS-CH0 spectral bins in ascending wavelength. Scores use the training labels' mean and standard "
        "deviation as the naive prediction.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{note}{body}</body></html>\n"
    )


def write_report(path: Path, html_text: str) -> Path:
    """Write the page atomically."""
    return write_text_atomic(path, html_text)


class ArielReport(Callback):
    """Write ``<dirpath>/report.html`` after fit from the validation fold's calibrated predictions.

    Place it after ``ArielSubmissionWriter`` (which restores the best weights when asked) so the
    report shows the weights that were submitted.

    Args:
        dirpath: The run directory.
        title: Page heading (default: the run directory's ``<experiment>/<run>``).
        n_spectra: Planets whose spectra are drawn.
        batch_size: Prediction batch size.
    """

    module_hooks = (GaussianPredictor,)

    def __init__(self, dirpath: str, title: str | None = None, n_spectra: int = 6, batch_size: int = 16) -> None:
        self.dirpath = Path(dirpath)
        self.title = title or f"Ariel report: {self.dirpath.parent.name}/{self.dirpath.name}"
        self.n_spectra, self.batch_size = int(n_spectra), int(batch_size)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        loader = DataLoader(trainer.datamodule.val_set, batch_size=self.batch_size, shuffle=False)
        preds = collect_predictions(pl_module, loader, calibrators(trainer))
        physics = next((cb for cb in trainer.callbacks if isinstance(cb, PhysicsConstraints)), None)
        thresholds = None
        if physics is not None:
            thresholds = {
                "smooth_threshold_ppm": physics.smooth_threshold_ppm,
                "fft_cutoff": physics.fft_cutoff,
                "fft_threshold": physics.fft_threshold,
            }
        conformal = next((cb.report for cb in trainer.callbacks if isinstance(cb, ConformalCalibration)), None)
        naive = (float(pl_module.naive_mean), float(pl_module.naive_sigma))
        page = render_ariel_report(self.title, preds, naive, thresholds, conformal, self.n_spectra)
        write_report(self.dirpath / "report.html", page)
