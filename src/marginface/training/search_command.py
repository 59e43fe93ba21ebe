"""``marginface search``: AM-LFS loss-function search (see ``experiments/search.py``) and its figure."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any


def add_search(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search", help="AM-LFS: search the loss (piecewise-linear t and tau) with REINFORCE while training",
        description="Each round samples B losses from N(mu, sigma^2), trains B copies of the model in turn (under "
        "torchrun: B / R per rank, one sample per rank when R = B), rewards "
        "each with held-out verification accuracy, updates mu by REINFORCE and keeps the best copy. Writes "
        "log.csv (samples, rewards, distribution per round), search_state.safetensors (resumable) and "
        "search.png to the config's output_dir.")
    parser.add_argument("--config", required=True,
                        help="YAML search preset, e.g. configs/search/synthetic_tiny28_amlfs.yaml")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first instead of resuming")
    parser.add_argument("--rounds", type=int, default=None, help="stop after this many new rounds (resume later)")
    parser.add_argument("--compare-seeds", type=int, default=0,
                        help="afterwards train the searched mean and plain softmax from scratch with this many seeds")
    parser.add_argument("--compare-steps", type=int, default=None,
                        help="steps of each from-scratch run (default: the search's rounds x steps_per_round)")
    parser.add_argument("--test-bin", action="append", default=[], dest="test_bins", metavar="BIN",
                        help="also evaluate the from-scratch runs on this .bin set (never a reward set; repeat for "
                        "more); synthetic data gets a test block of new identities without it")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("overrides", nargs="*", help="section.field=value, e.g. search.samples=8 optim.lr=0.05")
    parser.set_defaults(func=run_search_command)


def run_search_command(args: argparse.Namespace) -> int:
    from marginface.experiments.search import compare_from_scratch, load_search_config, run_search, unpack
    from marginface.training.trainer import clear_run

    config = load_search_config(args.config, args.overrides)
    if args.fresh:
        clear_run(config.train.output_dir)
    state = run_search(config, max_rounds=args.rounds)
    from marginface.training.distributed import shutdown

    shutdown()  # under torchrun the ranks are done together; what follows is rank 0's, in one process
    if int(os.environ.get("RANK", "0")) > 0:
        return 0
    figure = plot_search(config.train.output_dir)
    result: dict[str, Any] = {
        "rounds_done": state.round, "mean": unpack(state.mean, config.search),
        "rewards_last_round": state.history[-1]["rewards"] if state.history else [],
        "output_dir": config.train.output_dir, "figure": None if figure is None else str(figure)}
    if args.compare_seeds > 0 and state.round == config.search.rounds:
        steps = args.compare_steps or config.search.rounds * config.search.steps_per_round
        result["from_scratch"] = compare_from_scratch(config, state.mean, list(range(args.compare_seeds)), steps,
                                                      test_bins=args.test_bins)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{state.round}/{config.search.rounds} rounds; rewards of the last round: "
              f"{[round(r, 4) for r in result['rewards_last_round']]}")
        print(f"mean transform now: {result['mean']}")
        print(f"log: {config.train.output_dir}/log.csv" + (f", figure: {figure}" if figure else ""))
        for name, kinds in result.get("from_scratch", {}).get("results", {}).items():
            for kind, res in kinds.items():
                print(f"from scratch, {name}, {kind}: {res['mean']:.4f} +- {res['std']:.4f} "
                      f"(seeds: {[round(v, 4) for v in res['accuracies']]})")
        if own := result.get("from_scratch", {}).get("search_model"):
            print("the search's own model: " + ", ".join(f"{kind} {own[kind]:.4f}" for kind in ("validation", "test")
                                                         if kind in own))
    return 0


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
    out = run_dir / "search.png"
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
