"""Co-search plots: one accuracy-vs-latency Pareto panel per device, hypervolume curves, and
predicted-vs-measured parity. matplotlib (Agg); imports cosearch result types only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from edgesplit.cosearch.pareto import pareto_mask
from edgesplit.cosearch.search import Trial

__all__ = ["plot_hypervolume", "plot_pareto_per_device", "plot_parity"]


def plot_pareto_per_device(
    trials: Sequence[Trial],
    path: Path,
    *,
    highlight: Mapping[str, tuple[float, float]] | None = None,
    title: str = "Co-search: accuracy vs predicted latency per device",
) -> Path:
    """One panel per device: every feasible trial, its 2-D front (accuracy up, latency down).

    `highlight` maps a label to (latency_s, accuracy) markers drawn on every panel where it fits,
    e.g. the final model and the BERT-Base-shaped baseline are added per device by the caller.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    devices = sorted({t.device for t in trials})
    cols = min(4, max(1, len(devices)))
    rows = int(np.ceil(len(devices) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, device in zip(axes.flat, devices, strict=False):
        points = [t for t in trials if t.device == device and t.feasible]
        infeasible = [t for t in trials if t.device == device and not t.feasible]
        if infeasible:
            ax.scatter(
                [t.latency_s for t in infeasible],
                [t.accuracy for t in infeasible],
                marker="x",
                c="lightgray",
                s=18,
                label="infeasible",
            )
        if points:
            lat = np.array([t.latency_s for t in points])
            acc = np.array([t.accuracy for t in points])
            ax.scatter(lat, acc, s=16, c="tab:blue", alpha=0.6, label="trials")
            front = pareto_mask(np.stack([lat, -acc], axis=1))
            order = np.argsort(lat[front])
            ax.step(
                lat[front][order],
                acc[front][order],
                where="post",
                c="tab:red",
                lw=1.5,
                label="front",
            )
        for index, (label, (latency, accuracy)) in enumerate((highlight or {}).items()):
            if label.endswith(f"@{device}"):
                ax.scatter(
                    [latency],
                    [accuracy],
                    marker="**^"[index % 3] if index < 3 else "D",
                    s=120,
                    edgecolor="k",
                    zorder=5,
                    label=label.split("@")[0],
                )
        ax.set_xscale("log")
        ax.set_title(device, fontsize=10)
        ax.set_xlabel("predicted latency (s)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(devices) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_hypervolume(
    curves: Mapping[str, np.ndarray], path: Path, *, title: str = "Hypervolume vs evaluations"
) -> Path:
    """`curves[method]` is (seeds, budget) running hypervolume; mean and min-max band per method."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, values in curves.items():
        x = np.arange(1, values.shape[1] + 1)
        ax.plot(x, values.mean(axis=0), label=f"{method} (mean of {values.shape[0]})")
        ax.fill_between(x, values.min(axis=0), values.max(axis=0), alpha=0.2)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("hypervolume (normalised objectives)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_parity(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    *,
    title: str = "Predicted vs measured latency",
) -> Path:
    """`panels[name] = (measured, predicted)` out-of-fold values; log-log with the y = x line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = min(4, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    for ax, (name, (truth, predicted)) in zip(axes.flat, panels.items(), strict=False):
        ax.scatter(truth, predicted, s=10, alpha=0.6)
        low, high = min(truth.min(), predicted.min()), max(truth.max(), predicted.max())
        ax.plot([low, high], [low, high], c="k", lw=0.8)
        ape = np.mean(np.abs(predicted - truth) / truth)
        ax.set_title(f"{name}: MAPE {ape:.1%}", fontsize=9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured (s)")
        ax.set_ylabel("predicted (s)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
