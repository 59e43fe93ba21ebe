"""``marginface search``: AM-LFS loss-function search (library: ``experiments/search.py``; its figure:
``experiments/search_figure.py``)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any


def add_search(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search", help="AM-LFS: search the loss (piecewise-linear t and tau) with REINFORCE while training",
        description="Each round samples B losses from N(mu, sigma^2), trains B copies of the model in turn (under "
        "torchrun: B / R per rank, one sample per rank when R = B), rewards "
        "each with held-out verification accuracy, updates mu by REINFORCE and keeps the best copy. Writes "
        "search_log.csv (samples, rewards, distribution per round), search_state.safetensors (resumable) and "
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
    from marginface.runs.layout import RunDir
    from marginface.training.trainer import clear_run

    config = load_search_config(args.config, args.overrides)
    if args.fresh:
        clear_run(config.train.output_dir)
    state = run_search(config, max_rounds=args.rounds)
    from marginface.training.distributed import shutdown

    shutdown()  # under torchrun the ranks are done together; what follows is rank 0's, in one process
    if int(os.environ.get("RANK", "0")) > 0:
        return 0
    from marginface.experiments.search_figure import plot_search

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
        print(f"log: {RunDir(config.train.output_dir).search_log}" + (f", figure: {figure}" if figure else ""))
        for name, kinds in result.get("from_scratch", {}).get("results", {}).items():
            for kind, res in kinds.items():
                print(f"from scratch, {name}, {kind}: {res['mean']:.4f} +- {res['std']:.4f} "
                      f"(seeds: {[round(v, 4) for v in res['accuracies']]})")
        if own := result.get("from_scratch", {}).get("search_model"):
            print("the search's own model: " + ", ".join(f"{kind} {own[kind]:.4f}" for kind in ("validation", "test")
                                                         if kind in own))
    return 0
