"""AM-LFS within a CPU budget (docs/amlfs.md): search, then the from-scratch comparison, with a tiny backbone.

Runs ``marginface.experiments.search`` in-process on a tiny28 preset — ``configs/search/synthetic_tiny28_amlfs.yaml``
(synthetic identities, the default) or ``configs/search/celeba299_tiny28_amlfs.yaml`` (real faces) — with
the backbone ``tiny28`` (``marginface.backbones.tiny``; the presets set ``fix_gamma: false``, as these runs were
made): the 112x112 input average-pooled to 28x28 and three strided conv-BN-PReLU layers, ~100x cheaper than
MobileFaceNet, so that a search of B copies x R rounds and six from-scratch runs fit in ~15 CPU minutes.
Rendered synthetic images are memoised (the same pixels, rendered once). Prints the accuracy of the searched mean
transform and of plain softmax over 3 seeds and their ratio, on the reward's held-out identities and on a test block
of identities the search never saw.

    python benchmarks/amlfs_tiny28.py [--preset YAML] [--out DIR] [--test-bin BIN] [--timing] [overrides]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

from marginface.data.synthetic import SyntheticFaces

SYNTHETIC_PRESET = "configs/search/synthetic_tiny28_amlfs.yaml"


def memoise_rendering() -> None:
    SyntheticFaces.render = functools.lru_cache(maxsize=None)(SyntheticFaces.render)


def timing(config) -> dict[str, float]:
    from marginface.experiments.search import search_reward
    from marginface.training.trainer import Trainer

    trainer = Trainer(config.train).setup()
    batches = iter(trainer.data_loader())
    trainer.train_step(*next(batches))
    start = time.perf_counter()
    for _ in range(5):
        trainer.train_step(*next(batches))
    step_s = (time.perf_counter() - start) / 5
    start = time.perf_counter()
    search_reward(trainer)
    return {"step_s": step_s, "reward_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=SYNTHETIC_PRESET, help="a tiny28 search preset")
    parser.add_argument("--out", default="runs/amlfs_tiny28")
    parser.add_argument("--test-bin", action="append", default=[], dest="test_bins", metavar="BIN",
                        help="a test set of the from-scratch runs (.bin); repeat for more")
    parser.add_argument("--seeds", type=int, default=3, help="from-scratch seeds per loss (0: the search only)")
    parser.add_argument("--timing", action="store_true", help="only time one step and one reward")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    memoise_rendering()
    from marginface.experiments.search import (
        compare_from_scratch,
        load_search_config,
        run_search,
        score_search_model,
        search_test_sets,
        unpack,
    )
    from marginface.experiments.search_figure import plot_search
    from marginface.training.trainer import clear_run

    config = load_search_config(args.preset, [f"output_dir={args.out}", *args.overrides])
    if args.timing:
        print(json.dumps(timing(config)))
        return
    clear_run(args.out)
    start = time.perf_counter()
    state = run_search(config)
    search_s = time.perf_counter() - start
    plot_search(args.out)
    if args.seeds == 0:  # the search and its own model only (e.g. to repeat the search with other seeds)
        model = score_search_model(config, search_test_sets(config, args.test_bins))
        print(json.dumps({"search_s": search_s, "final_mean": unpack(state.mean, config.search),
                          "search_model": model}, indent=1))
        return
    steps = config.search.rounds * config.search.steps_per_round
    result = compare_from_scratch(config, state.mean, list(range(args.seeds)), steps, test_bins=args.test_bins)
    res = result["results"]
    print(json.dumps({"search_s": search_s, "total_s": time.perf_counter() - start,
                      "final_mean": unpack(state.mean, config.search), "search_model": result["search_model"],
                      **res}, indent=1))
    for kind in ("validation", "test"):  # validation = the reward's people; test = people the search never used
        if kind not in res["softmax"]:
            continue
        searched, softmax = res["searched"][kind], res["softmax"][kind]
        print(f"{kind} accuracy, searched mean {searched['mean']:.4f} +- {searched['std']:.4f} vs softmax "
              f"{softmax['mean']:.4f} +- {softmax['std']:.4f} (ratio {searched['mean'] / softmax['mean']:.4f}, "
              f"{args.seeds} seeds); the search's own model: {result['search_model'].get(kind, float('nan')):.4f}")


if __name__ == "__main__":
    main()
