"""Plots of the offload benchmark (docs/offload_*.png), from its measurements or its JSON.

Not a benchmark: benchmarks/offload.py draws with these, and `--replot` redraws from
benchmarks/results/offload.json without measuring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from edgesplit.offload.calibrate import Outcome, ProgressiveOutcome
from edgesplit.offload.pipeline import OffloadPipeline


def plot_accuracy_vs_bytes(points: dict[str, list[tuple[float, float, str]]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 5.5))
    markers = {"full image": "s", "fixed ratio": "o", "two rounds": "^"}
    colors = plt.get_cmap("tab20").colors
    for index, (family, pts) in enumerate(points.items()):
        pts = sorted(pts)
        if family.startswith("local"):
            for _, accuracy, name in pts:  # 0 bytes: drawn as reference lines
                ax.axhline(100 * accuracy, color="grey", linestyle=":", linewidth=1)
                ax.text(205, 100 * accuracy + 0.3, f"{name} on the device (0 B)", fontsize=7)
            continue
        adaptive = family.startswith("adaptive")
        ax.plot(
            [p[0] for p in pts],
            [100 * p[1] for p in pts],
            marker="D" if adaptive else markers.get(family.split(" (")[0], "o"),
            linestyle="none" if adaptive else "-",
            markersize=7 if adaptive else 4,
            color=colors[index % len(colors)],
            label=family,
            alpha=0.85,
        )
    ax.set_xscale("log")
    ax.set_xlim(200, 5000)
    ax.set_ylim(35, 90)
    ax.set_xlabel("request body bytes per image (frame header + payload; HTTP framing excluded)")
    ax.set_ylabel("top-1 accuracy on Fashion-MNIST test (%)")
    ax.set_title("Accuracy vs bytes per image (64x64 upscaled Fashion-MNIST, 8x8 patches)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_slo(rows: list[dict[str, Any]], path: Path) -> None:
    names = [
        ("adaptive two-round", "adaptive two-round (robust guard, progressive round 1)"),
        ("adaptive one-round", "adaptive one-round"),
        ("adaptive two-round, one-shot round 1", "adaptive two-round, one-shot, no guard"),
        ("best fixed (same attainment)", "best fixed meeting as many SLOs"),
        ("fixed grid-k64-webp10", "fixed: full image WebP q10"),
        ("local ViT (weak device)", "local ViT (weak device)"),
    ]
    panels = [
        ("slo_attainment_feasible", "SLO met\n(% of feasible frames)", (80, 100.5)),
        ("accuracy", "accuracy\n(% of frames)", (50, 90)),
        ("correct_and_on_time", "correct and on time\n(% of frames)", (40, 90)),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(13, 10.5))
    labels = [
        f"{r['trace'].replace('random_walk', 'rand. walk')}\n{int(1000 * r['slo_s'])} ms"
        for r in rows
    ]
    x = np.arange(len(rows))
    width = 0.8 / len(names)
    for j, (key, label) in enumerate(names):
        offset = x + (j - (len(names) - 1) / 2) * width
        for ax, (field, _, _) in zip(axes, panels, strict=True):
            values = [(r["policies"].get(key) or {}).get(field, np.nan) for r in rows]
            ax.bar(offset, 100 * np.array(values, dtype=float), width, label=label)
    axes[0].axhline(99, color="black", linewidth=0.8, linestyle="--")
    for ax, (_, ylabel, ylim) in zip(axes, panels, strict=True):
        ax.set_ylabel(ylabel)
        ax.set_ylim(*ylim)
        ax.set_xticks(x, labels, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7, loc="lower right", ncol=3)
    fig.suptitle("Bandwidth traces (mean 100 kbit/s, one-way 20 ms) x latency SLOs; dashed: 99 %")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reconstructions(
    pipeline: OffloadPipeline, images: np.ndarray, order: np.ndarray, path: Path
) -> None:
    from edgesplit.offload.patches import paste_patches, patchify

    ks = (4, 8, 16, 32)
    fig, axes = plt.subplots(len(images), 2 * len(ks) + 1, figsize=(2 * len(ks) + 1, len(images)))
    for r, image in enumerate(images):
        axes[r, 0].imshow(image, cmap="gray", vmin=0, vmax=255)
        for c, k in enumerate(ks):
            idx = order[:k]
            result = pipeline.run(patchify(image, 8)[idx][None], idx[None])
            seen = paste_patches(np.full_like(image, 64), idx, patchify(image, 8)[idx])
            axes[r, 1 + 2 * c].imshow(seen, cmap="gray", vmin=0, vmax=255)
            axes[r, 2 + 2 * c].imshow(result.image[0], cmap="gray", vmin=0, vmax=255)
            if r == 0:
                axes[r, 1 + 2 * c].set_title(f"sent k={k}", fontsize=7)
                axes[r, 2 + 2 * c].set_title("reconstructed", fontsize=7)
    axes[0, 0].set_title("original", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_vs_bytes(
    test_outcomes: list[Outcome],
    fixed_ratio: dict[str, list[Outcome]],
    progressive: ProgressiveOutcome,
) -> tuple[dict[str, list[tuple[float, float, str]]], dict[str, dict[str, float]]]:
    """Plot series (family -> [(bytes, accuracy, name)]) and the JSON summary (name ->
    accuracy, mean bytes) of every measured setting, two-round and progressive point."""
    test_progressive = progressive

    def acc_bytes(o: Outcome) -> dict[str, float]:
        return {"accuracy": float(o.correct1.mean()), "bytes_mean": float(o.bytes1.mean())}

    curves: dict[str, list[tuple[float, float, str]]] = {}
    summary_bytes: dict[str, dict[str, float]] = {}
    for o in test_outcomes:
        s = o.setting
        if s.k1 == 64 and s.sampling == "grid":
            family = f"full image ({s.codec})"
        else:
            family = f"fixed ratio (server order, {s.codec}{s.quality or ''})"
        curves.setdefault(family, []).append(
            (float(o.bytes1.mean()), float(o.correct1.mean()), s.name)
        )
        summary_bytes[s.name] = acc_bytes(o)
    for sampling, outs in fixed_ratio.items():
        for o in outs:
            curves.setdefault(f"fixed ratio ({sampling}, zlib)", []).append(
                (float(o.bytes1.mean()), float(o.correct1.mean()), o.setting.name)
            )
            summary_bytes[o.setting.name] = acc_bytes(o)
    for o in test_outcomes:
        if o.setting.sampling == "server" and o.setting.codec in ("webp", "zlib"):
            for k2, correct2 in o.correct2.items():
                name = f"{o.setting.name}+k{k2}"
                point = (float(o.bytes1.mean() + o.bytes2[k2].mean()), float(correct2.mean()), name)
                curves.setdefault(
                    f"two rounds (+{k2} requested, {o.setting.codec}{o.setting.quality or ''})", []
                ).append(point)
                summary_bytes[name] = {"accuracy": point[1], "bytes_mean": point[0]}
    codec, quality = test_progressive.codec, test_progressive.quality
    curves[f"progressive prefix (server order, {codec}{quality} segments)"] = []
    for j, end in enumerate(test_progressive.ends):
        point = (
            float(test_progressive.body_bytes(len(test_progressive.ends) - 1, j).mean()),
            float(test_progressive.correct[:, j].mean()),
            f"progressive prefix k{end}",
        )
        curves[f"progressive prefix (server order, {codec}{quality} segments)"].append(point)
        summary_bytes[point[2]] = {"accuracy": point[1], "bytes_mean": point[0]}
    return curves, summary_bytes


def curves_from_results(result: dict[str, Any]) -> dict[str, list[tuple[float, float, str]]]:
    """Plot series from a results JSON (so `--replot` redraws without re-measuring)."""
    curves: dict[str, list[tuple[float, float, str]]] = {}
    for name, v in result["accuracy_vs_bytes"].items():
        point = (v["bytes_mean"], v["accuracy"], name)
        if name.startswith("local"):
            family = "local"
            point = (0.0, v["accuracy"], name.split(" (")[0])
        elif name.startswith("progressive prefix"):
            family = "progressive prefix (server order, webp50 segments)"
        else:
            base, _, extra = name.partition("+")
            sampling, k, codec = base.split("-", 2)
            if extra:
                if codec not in ("webp50", "zlib"):
                    continue
                family = f"two rounds (+{extra[1:]} requested, {codec})"
            elif sampling == "grid" and k == "k64":
                family = f"full image ({codec.rstrip('0123456789')})"
            else:
                order = "server order" if sampling == "server" else sampling
                family = f"fixed ratio ({order}, {codec})"
        curves.setdefault(family, []).append(point)
    for label in ("adaptive one-round", "adaptive two-round"):
        curves[f"{label} (per trace x SLO)"] = [
            (row["policies"][label]["mean_bytes"], row["policies"][label]["accuracy"], "")
            for row in result["slo"]
        ]
    return curves


def plot_network_blind(rows: list[dict[str, Any]], path: Path) -> None:
    """Per SLO: every fixed setting (pooled over traces) and adaptive two-round, missed SLOs (log
    scale, fewer to the right) vs accuracy; the target region is right of the 1 % line and of the
    adaptive policy."""
    floor = 0.005  # % missed drawn for settings that missed none
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4.8), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):

        def missed(attainment: float) -> float:
            return max(100 * (1 - attainment), floor)

        points = np.array(list(row["fixed_settings"].values()), dtype=float)
        ax.scatter(
            [missed(a) for a in points[:, 0]], 100 * points[:, 1], s=14, color="grey", label="fixed"
        )
        for name, color in (
            (row["rival_meeting_as_many"], "tab:blue"),
            (row["more_accurate_fixed_meeting_fewer"], "tab:orange"),
        ):
            if name:
                att, acc = row["fixed_settings"][name]
                ax.scatter(missed(att), 100 * acc, s=45, color=color, label=name)
        adaptive = row["adaptive_two_round"]
        ax.scatter(
            missed(adaptive["slo_attainment_feasible"]),
            100 * adaptive["accuracy"],
            marker="*",
            s=200,
            color="tab:red",
            label="adaptive two-round",
        )
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xscale("log")
        ax.set_xlim(100, floor / 1.5)  # fewer misses to the right
        ax.set_ylim(55, 90)
        ax.set_xlabel(f"SLOs missed, % of feasible frames (4 traces pooled; 0 drawn at {floor})")
        ax.set_ylabel("accuracy, %")
        ax.set_title(f"SLO {int(1000 * row['slo_s'])} ms: {row['verdict']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(
        "One fixed setting per SLO over all traces vs adaptive two-round; dashed: 1 % missed"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
