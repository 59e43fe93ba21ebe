"""Drawing and writing the analysis results: PNG (matplotlib, Agg backend) and CSV, both written atomically.

Separate from the numbers (``curves``, ``angles``, ``toy``): every function here takes arrays and a path.
matplotlib is an optional extra (``pip install 'marginface[plot]'``) and is imported inside the functions.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from marginface.files import atomic_write, atomic_write_text
from marginface.plotting import pyplot

#: PNG resolution; the figures stay well under 200 KB at this size.
DPI = 100


def save_figure(fig, path: str | Path) -> Path:
    """Save a figure to ``path`` atomically (temp file + rename) and close it."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        pyplot().close(fig)
        raise ValueError(f"figures are written as PNG: give an output path ending in .png, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI))
    finally:
        pyplot().close(fig)


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """A CSV file with a header row, written atomically; floats with 10 significant digits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.10g}" if isinstance(v, float | np.floating) else v for v in row])
    return atomic_write_text(path, buffer.getvalue())


def draw_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *, xlabel: str,
                ylabel: str, title: str, logy: bool = False, hline: float | None = None) -> Path:
    """One line per entry ``label -> (x, y)``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, lw=1.8)
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.8, ls=":")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_significance(results: Mapping[str, Mapping[str, np.ndarray]], path: str | Path, title: str) -> Path:
    """AM-LFS significance ratio against theta (left) and against the target probability (right), log y."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, r in results.items():
        axes[0].plot(r["theta"], r["ratio"], label=label, lw=1.6)
        axes[1].plot(r["p_target"], r["ratio"], label=label, lw=1.6)
    axes[0].set(xlabel="θ_y (degrees)", xlim=(0, 180))
    axes[1].set(xlabel="target probability p_y", xlim=(0, 1))
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylim(0.3, 10)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_ylabel("|∂L/∂cos θ_y| / Σ_j |∂L/∂cos θ_j|")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_boundaries(boundaries: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Class 1's boundary ``theta2(theta1)`` and its mirror (class 2's), one colour per loss, in degrees."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    for i, (label, (t1, t2)) in enumerate(boundaries.items()):
        color = f"C{i}"
        ax.plot(t1, t2, color=color, lw=1.8, label=label)
        ax.plot(t2, t1, color=color, lw=1.8, ls="--")
    ax.set(xlim=(0, 180), ylim=(0, 180), xlabel="θ1 (degrees, to class 1's centre)",
           ylabel="θ2 (degrees, to class 2's centre)",
           title="binary decision boundaries\nsolid: class 1, dashed: class 2")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def draw_histograms(panels: Mapping[str, Mapping[str, np.ndarray]], edges: np.ndarray, path: str | Path,
                    title: str) -> Path:
    """One panel per entry ``panel title -> {label: counts}``; counts drawn as fractions, overlaid steps."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    centres = (edges[:-1] + edges[1:]) / 2
    for ax, (panel, hists) in zip(axes[0], panels.items()):
        for label, counts in hists.items():
            counts = np.asarray(counts, dtype=np.float64)
            ax.plot(centres, counts / max(counts.sum(), 1.0), drawstyle="steps-mid", label=label, lw=1.6)
        ax.set(xlabel="angle (degrees)", ylabel="fraction of samples", title=panel, xlim=(edges[0], edges[-1]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_training_series(runs: Mapping[str, Mapping[str, list[tuple[int, float]]]], path: str | Path) -> Path:
    """Mean target logit and mean theta_y against the step, one line per run (``label -> log series``)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, series in runs.items():
        for ax, key in zip(axes, ("target_logit_mean", "theta_y_mean")):
            if series.get(key):
                steps, values = zip(*series[key])
                ax.plot(steps, values, "o-", ms=3, label=label)
    axes[0].set(xlabel="step", ylabel="mean target logit / scale", title="target logit during training")
    axes[1].set(xlabel="step", ylabel="mean θ_y (degrees)", title="θ_y during training")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_toy(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Toy features per loss: ``(title, features (N, d), labels (N,))``; d = 2 raw features on the plane,
    d = 3 L2-normalised features on the unit sphere (an orthographic 3-D view)."""
    plt = pyplot()
    fig = plt.figure(figsize=(3.2 * len(panels), 3.8))
    for i, (title, feats, labels) in enumerate(panels):
        three_d = feats.shape[1] == 3
        ax = fig.add_subplot(1, len(panels), i + 1, projection="3d" if three_d else None)
        if three_d:
            feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
            u, v = np.mgrid[0:2 * np.pi:24j, 0:np.pi:12j]
            ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.4)
            ax.scatter(feats[:, 0], feats[:, 1], feats[:, 2], c=labels, cmap="tab10", s=4, depthshade=False)
            ax.set_box_aspect((1, 1, 1))
            ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
        else:
            ax.scatter(feats[:, 0], feats[:, 1], c=labels, cmap="tab10", s=4)
            ax.axhline(0, color="0.8", lw=0.5), ax.axvline(0, color="0.8", lw=0.5)
            ax.set_aspect("equal", adjustable="datalim")
            ax.tick_params(labelsize=6)
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
