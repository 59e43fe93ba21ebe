"""The figure of an AM-LFS loss-function search (``experiments/search.py``): ``search.png`` in its run folder.

The ``marginface search`` command that draws it after a search is in ``marginface/cli/search.py``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from marginface.runs.layout import RunDir


def plot_search(run_dir: str | Path) -> Path | None:
    """``search.png``: the mean target-logit curve per round against ArcFace/CosFace, tau, and the rewards."""
    from marginface.plotting import pyplot

    try:
        plt = pyplot()
    except ImportError:  # the plot extra is optional here: no figure
        return None
    from marginface.experiments.search import read_search

    run_dir = Path(run_dir)
    data = read_search(run_dir)
    if not data["rounds"]:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    _plot_logit_curves(axes[0], data, plt)
    _plot_prob_curves(axes[1], data, plt)
    _plot_rewards(axes[2], data)
    fig.suptitle(f"AM-LFS search: {run_dir.name}")
    fig.tight_layout()
    out = RunDir(run_dir).search_figure
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plot_logit_curves(ax, data: dict[str, Any], plt) -> None:
    thetas, s = data["thetas_deg"], data["scale"]
    cmap = plt.get_cmap("viridis")
    n = len(data["logit_curves"])
    for r, curve in enumerate(data["logit_curves"]):
        label = "mean t, round 0 (identity)" if r == 0 else (f"mean t, after round {r}" if r in (1, n - 1) else None)
        ax.plot(thetas, curve, color=cmap(r / max(n - 1, 1)), lw=1.2, label=label)
    rad = [math.radians(t) for t in thetas]
    ax.plot(thetas, [s * math.cos(t) for t in rad], "k:", label="softmax s cos")
    ax.plot(thetas, [s * (math.cos(t + 0.5) if t + 0.5 <= math.pi else math.cos(t) - 0.5 * math.sin(0.5))
                     for t in rad], "r--", label="ArcFace m=0.5")
    ax.plot(thetas, [s * (math.cos(t) - 0.35) for t in rad], "m--", label="CosFace m=0.35")
    ax.set_xlabel("angle to the target centre (degrees)")
    ax.set_ylabel(f"target logit (s = {s:g})")
    ax.set_title("searched t: mean per round")
    ax.legend(fontsize=7)


def _plot_prob_curves(ax, data: dict[str, Any], plt) -> None:
    cmap = plt.get_cmap("viridis")
    n = len(data["prob_curves"])
    for r, curve in enumerate(data["prob_curves"]):
        ax.plot(data["probs"], curve, color=cmap(r / max(n - 1, 1)), lw=1.2,
                label="round 0" if r == 0 else (f"after round {r}" if r == n - 1 else None))
    ax.plot(data["probs"], data["probs"], "k:", label="identity (cross-entropy)")
    ax.set_xlabel("target probability p")
    ax.set_ylabel("tau(p)")
    ax.set_title("searched tau: mean per round" + ("" if data["prob_searched"] else " (not searched)"))
    ax.legend(fontsize=7)


def _plot_rewards(ax, data: dict[str, Any]) -> None:
    rounds = data["rounds"]
    for r, rewards in zip(rounds, data["rewards"]):
        ax.scatter([r] * len(rewards), [100 * v for v in rewards], s=10, color="0.6")
    ax.plot(rounds, [100 * sum(v) / len(v) for v in data["rewards"]], "b-o", ms=3, label="mean of the B samples")
    ax.plot(rounds, [100 * max(v) for v in data["rewards"]], "g-^", ms=3, label="best (broadcast)")
    ax.set_xlabel("round")
    ax.set_ylabel("held-out verification accuracy (%)")
    ax.set_title("rewards")
    ax.legend(fontsize=7)
