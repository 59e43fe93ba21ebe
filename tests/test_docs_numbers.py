"""The numbers that docs/results.md, docs/evaluation.md and docs/data.md state, recomputed from the committed CSV,
the code, the benchmark or the shared data, and looked for in the docs' own sentences (issue 30 found several that
did not match)."""

from __future__ import annotations

import csv
import importlib.util
import math
import re
import statistics
from pathlib import Path

import pytest
import torch

from marginface import losses
from marginface.experiments import study, study_stats

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "docs" / "results" / "celeba299_tiny28_losses.csv"
SETS = ["lfw", "cfp_fp", "cfp_ff", "lfw_8px_q30"]
ROWS = list(csv.DictReader(CSV.open(newline="")))
ARMS = list(dict.fromkeys(r["arm"] for r in ROWS))
SMALL = [a for a in ARMS if a.endswith("_small")]
PAPER = [a for a in ARMS if a.endswith("_paper")]
LOSS_ARMS = [a for a in ARMS if not a.startswith("arcface_m")]  # the 19 arms of the 10 losses
SWEEP = ["arcface_m0.2", "arcface_small", "arcface_m0.4", "arcface_m0.5", "arcface_m0.6", "arcface_m0.8"]


def _text(name: str) -> str:
    """The doc with its line breaks and runs of spaces made single spaces (sentences wrap anywhere)."""
    return re.sub(r"\s+", " ", (ROOT / "docs" / name).read_text())


RESULTS = _text("results.md")


def values(arm: str, metric: str) -> list[float]:
    """The arm's seeds' values of a CSV column, in percent."""
    return [100 * float(r[metric]) for r in ROWS if r["arm"] == arm]


def mean(arm: str, metric: str) -> float:
    return statistics.fmean(values(arm, metric))


def std(arm: str, metric: str) -> float:
    return statistics.stdev(values(arm, metric))


def gains(arm: str, s: str) -> list[float]:
    """Claim 5: the arm's accuracy minus softmax's on set ``s``, per seed both have (percent)."""
    mine = {r["seed"]: 100 * float(r[f"{s}_acc"]) for r in ROWS if r["arm"] == arm}
    return [mine[r["seed"]] - 100 * float(r[f"{s}_acc"]) for r in ROWS if r["arm"] == "softmax" and r["seed"] in mine]


def stated(text: str, phrase: str) -> None:
    assert phrase in text, f"the docs do not state {phrase!r}"


def test_the_results_table_is_the_csv() -> None:
    """Every row of the page's table is what ``marginface study --summary`` prints from the committed CSV."""
    table = study.summary_table(ROWS, SETS).splitlines()
    page = (ROOT / "docs" / "results.md").read_text().splitlines()
    assert len(table) == 2 + 24
    for line in table[2:]:
        assert line in page, f"docs/results.md's table lacks or differs from {line!r}"


def test_every_mean_and_std_the_results_section_quotes_is_a_table_cell() -> None:
    cells = {f"{mean(a, f'{s}_{k}'):.2f} ± {std(a, f'{s}_{k}'):.2f}"
             for a in ARMS for s in SETS for k in ("acc", "tar")}
    cells |= {f"{abs(statistics.fmean(g)):.2f} ± {statistics.stdev(g):.2f}"  # claim 5's gains, checked below
              for a in ("normface_small", "normface_paper") for g in (gains(a, "lfw"), gains(a, "lfw_8px_q30"))}
    section = RESULTS[RESULTS.index("## Results (tiny28 study"):RESULTS.index("## Fine-tuning a strong model")]
    quoted = re.findall(r"\d+\.\d\d ± \d+\.\d\d", section)
    assert len(quoted) > 150
    assert sorted(set(quoted) - cells) == []


def test_the_runs_are_counted_right() -> None:
    seeds = [int(r["seed"]) for r in ROWS]
    assert (len(ROWS), sum(s <= 2 for s in seeds), sum(s >= 3 for s in seeds)) == (88, 72, 16)
    assert len({r["arm"] for r in ROWS if int(r["seed"]) >= 3}) == 8 and {r["steps"] for r in ROWS} == {"1000"}
    stated(RESULTS, "88 runs on the 2 cores")
    # lanes: 2, so the runs' own times summed over both lanes bound the wall clock from below
    for seeds, stated_time in (((0, 1, 2), "~1 h 20 min"), ((3, 4), "20 min")):
        seconds = sum(float(r["train_wall_s"]) + float(r["eval_wall_s"]) for r in ROWS if int(r["seed"]) in seeds)
        hours, rest = divmod(round(seconds / 2 / 60 / 5) * 5, 60)  # per lane, to 5 minutes
        assert stated_time.lstrip("~") == (f"{hours} h {rest} min" if hours else f"{rest} min")
        if seeds == (0, 1, 2):
            stated(RESULTS, f"add up to {seconds / 60:.0f} min over the two lanes")
    stated(RESULTS, "24 arms x seeds 0, 1, 2 (72 runs, ~1 h 20 min")
    stated(RESULTS, "16 runs, 20 min")
    stated(RESULTS, "seeds 3 and 4 for the 8 arms")
    stated(RESULTS, f"evaluation, {statistics.fmean(float(r['eval_wall_s']) for r in ROWS):.0f} s on average")
    assert (len(LOSS_ARMS), len(SMALL), len(PAPER)) == (19, 9, 9)
    stated(RESULTS, "softmax and the nine `_small` arms")
    assert "10 `_small`" not in RESULTS


def test_sphereface_lambda_at_the_last_step_is_the_code_schedule() -> None:
    paper = losses.create("sphereface", embedding_size=4, num_classes=3).train()
    small = losses.create("sphereface", embedding_size=4, num_classes=3, lambda_gamma=0.6)
    x, y = torch.randn(2, 4), torch.tensor([0, 1])
    paper(x, y)  # one training-mode forward per training step (the trainer's): the first step's lambda ...
    assert int(paper.step) == 1 and paper.current_lambda() == pytest.approx(1000 / 1.12)
    paper.step.fill_(999)
    paper(x, y)  # ... and the 1,000th's
    assert int(paper.step) == 1000 and paper.current_lambda() == pytest.approx(1000 / (1 + 0.12 * 1000), rel=1e-12)
    floor_step = None
    for step in range(1, 1001):
        small.step.fill_(step)
        if floor_step is None and small.current_lambda() == 5.0:
            floor_step = step
    stated(RESULTS, f"lambda = 1000 / (1 + 0.12 x 1000) = {paper.current_lambda():.2f} at the last step")
    assert floor_step == 332
    stated(RESULTS, f"anneals lambda to its floor 5 by step ~{round(floor_step, -1)} of 1,000")


def test_the_paper_scale_arms_are_below_their_small_arms_by_the_stated_points() -> None:
    gaps = {a[:-6]: mean(a[:-6] + "_small", "lfw_acc") - mean(a, "lfw_acc") for a in PAPER if a != "sphereface_paper"}
    for s in ("cfp_fp", "cfp_ff"):
        assert all(mean(a[:-6] + "_small", f"{s}_acc") > mean(a, f"{s}_acc") for a in PAPER if a != "sphereface_paper")
    low, high = min(gaps, key=gaps.get), max(gaps, key=gaps.get)
    assert (low, high) == ("normface", "magface")
    stated(RESULTS, f"by {gaps[low]:.1f} (NormFace) to {gaps[high]:.1f} (MagFace) points on LFW")
    stated(RESULTS, f"cost {gaps[low]:.1f}–{gaps[high]:.1f} points on LFW")
    stated(RESULTS, f"seed stds up to {max(std(a, 'lfw_acc') for a in PAPER):.1f} points")
    group = [mean(a, "lfw_acc") for a in ["softmax", *SMALL]]
    stated(RESULTS, f"sit within {max(group) - min(group):.1f} points of each other on LFW")
    stated(RESULTS, f"≤ {max(mean(a, 'cfp_fp_tar') for a in ARMS):.1f}% for every arm")


VERDICTS = [  # (a, b, set, the verdict claims 1-4 state), by the protocol's tie rule
    ("sphereface_small", "softmax", "lfw", "a"), ("sphereface_small", "softmax", "cfp_ff", "a"),
    ("sphereface_small", "softmax", "cfp_fp", "tie"),
    ("cosface_small", "sphereface_small", "lfw", "tie"), ("cosface_small", "sphereface_small", "cfp_fp", "tie"),
    ("cosface_small", "sphereface_small", "cfp_ff", "b"),
    ("arcface_small", "cosface_small", "lfw", "tie"), ("arcface_small", "cosface_small", "cfp_fp", "tie"),
    ("arcface_small", "cosface_small", "cfp_ff", "a"),
    ("sphereface_small", "arcface_small", "cfp_ff", "a"), ("sphereface_small", "arcface_small", "lfw", "a"),
    ("mv_softmax_small", "arcface_small", "lfw", "tie"), ("mv_softmax_small", "arcface_small", "cfp_fp", "b"),
    ("mv_softmax_small", "arcface_small", "cfp_ff", "b"),
    ("curricularface_small", "arcface_small", "lfw", "tie"), ("curricularface_small", "arcface_small", "cfp_fp", "tie"),
    ("curricularface_small", "arcface_small", "cfp_ff", "b"),
    *[("combined_small", part, s, "tie") for part in ("arcface_small", "cosface_small") for s in ("lfw", "cfp_fp",
                                                                                                   "cfp_ff")],
    *[("arcface_m0.8", m, "lfw", v) for m, v in [("arcface_m0.5", "tie"), ("arcface_m0.6", "tie"),
                                                 ("arcface_m0.2", "a"), ("arcface_small", "a"), ("arcface_m0.4", "a")]],
    *[("arcface_m0.8", m, "cfp_ff", v) for m, v in [("arcface_m0.4", "tie"), ("arcface_m0.5", "tie"),
                                                    ("arcface_m0.6", "tie"), ("arcface_m0.2", "a"),
                                                    ("arcface_small", "a")]],
    *[("arcface_m0.4", m, "cfp_fp", "a" if m == "arcface_m0.8" else "tie") for m in SWEEP if m != "arcface_m0.4"],
]


@pytest.mark.parametrize(("a", "b", "s", "verdict"), VERDICTS)
def test_the_verdicts_the_claims_state(a: str, b: str, s: str, verdict: str) -> None:
    expected = {"a": f"{a} ahead", "b": f"{b} ahead", "tie": "tie"}[verdict]
    assert study.compare(ROWS, a, b, f"{s}_acc").verdict == expected


def test_claims_1_to_4_differences() -> None:
    def gap(a: str, b: str, s: str) -> str:
        return f"{mean(a, f'{s}_acc') - mean(b, f'{s}_acc'):+.2f}".replace("-", "−")

    def spread(a: str, b: str, s: str) -> str:
        return f"{max(std(a, f'{s}_acc'), std(b, f'{s}_acc')):.2f}"

    stated(RESULTS, f"behind on CFP-FF (79.14 ± 0.82, {gap('cosface_small', 'sphereface_small', 'cfp_ff')})")
    stated(RESULTS, f"(83.46 ± 0.17, {gap('arcface_small', 'cosface_small', 'lfw')})")
    stated(RESULTS, f"{gap('arcface_small', 'cosface_small', 'cfp_ff')} > "
                    f"{spread('arcface_small', 'cosface_small', 'cfp_ff')}")
    stated(RESULTS, f"({gap('sphereface_small', 'arcface_small', 'cfp_ff')} > "
                    f"{spread('sphereface_small', 'arcface_small', 'cfp_ff')})")
    stated(RESULTS, f"on LFW ({gap('sphereface_small', 'arcface_small', 'lfw')} against a spread of "
                    f"{spread('sphereface_small', 'arcface_small', 'lfw')})")
    stated(RESULTS, f"62.97 ± 0.74, {gap('mv_softmax_small', 'arcface_small', 'cfp_fp')})")
    stated(RESULTS, f"80.20 ± 0.73, {gap('mv_softmax_small', 'arcface_small', 'cfp_ff')})")
    stated(RESULTS, f"{gap('curricularface_small', 'arcface_small', 'cfp_ff')} > "
                    f"{spread('curricularface_small', 'arcface_small', 'cfp_ff')}, barely")
    stated(RESULTS, f"{gap('combined_small', 'cosface_small', 'cfp_ff')} < "
                    f"{spread('combined_small', 'cosface_small', 'cfp_ff')}")


def test_the_margin_sweep_numbers_and_the_seeds_it_did_not_get() -> None:
    ranges = {s: max(mean(a, f"{s}_acc") for a in SWEEP) - min(mean(a, f"{s}_acc") for a in SWEEP)
              for s in ("lfw", "cfp_fp", "cfp_ff")}
    assert max(ranges["lfw"], ranges["cfp_fp"]) < 0.7 and ranges["cfp_ff"] == pytest.approx(1.4, abs=0.05)
    stated(RESULTS, "flat within 0.7 points on LFW and CFP-FP and 1.4 on CFP-FF")
    behind = [mean("arcface_m0.8", "lfw_acc") - mean(a, "lfw_acc") for a in SWEEP[:3]]
    stated(RESULTS, f"m 0.2–0.4 are behind by {min(behind):.2f}–{max(behind):.2f}")
    # the 1.5x rule: every margin is in a pair (the best margin on a set, another) whose difference is within 1.5x
    # the larger std, so every margin was owed seeds 3 and 4; none ran
    owed = set()
    for s in ("lfw", "cfp_fp", "cfp_ff"):
        best = max(SWEEP, key=lambda a, s=s: mean(a, f"{s}_acc"))
        for arm in SWEEP:
            difference = mean(best, f"{s}_acc") - mean(arm, f"{s}_acc")
            if arm != best and difference <= 1.5 * max(std(best, f"{s}_acc"), std(arm, f"{s}_acc")):
                owed |= {arm, best}
    assert owed == set(SWEEP)
    assert [len(values(arm, "lfw_acc")) for arm in SWEEP] == [3, 5, 3, 3, 3, 3]
    difference = mean("arcface_m0.8", "lfw_acc") - mean("arcface_m0.5", "lfw_acc")
    stated(RESULTS, f"m 0.5 vs m 0.8 on LFW differ by {difference:.2f} against a std of "
                    f"{std('arcface_m0.5', 'lfw_acc'):.2f}); they were not run")


def test_claim_5_gains_paired_by_seed() -> None:
    more = {}
    for arm in ("normface_small", "normface_paper"):
        low, good = gains(arm, "lfw_8px_q30"), gains(arm, "lfw")
        stated(RESULTS, f"{statistics.fmean(low):+.2f} ± {statistics.stdev(low):.2f}")
        stated(RESULTS, f"{statistics.fmean(good):+.2f} ± {statistics.stdev(good):.2f}".replace("-", "−"))
        more[arm] = (statistics.fmean(low) - statistics.fmean(good), max(statistics.stdev(low), statistics.stdev(good)))
    assert abs(more["normface_small"][0]) <= more["normface_small"][1]  # a tie
    stated(RESULTS, f"a tie ({more['normface_small'][0]:+.2f})".replace("-", "−"))
    assert more["normface_paper"][0] > more["normface_paper"][1]
    stated(RESULTS, "more on low quality ({:+.2f} > {:.2f})".format(*more["normface_paper"]))
    group = [mean(a, "lfw_8px_q30_acc") for a in ["softmax", *SMALL]]
    stated(RESULTS, f"lie within {max(group) - min(group):.2f} points on it ({min(group):.2f}–{max(group):.2f}; "
                    f"the mean seed std over the 19 arms is "
                    f"{statistics.fmean(std(a, 'lfw_8px_q30_acc') for a in LOSS_ARMS):.2f})")


def test_claim_6_spreads_and_which_set_separates_the_losses_most() -> None:
    def spread(arms: list[str], s: str) -> tuple[float, float]:
        means = [mean(a, f"{s}_acc") for a in arms]
        return max(means) - min(means), statistics.stdev(means)

    every = {s: spread(LOSS_ARMS, s) for s in ("cfp_fp", "lfw", "cfp_ff")}
    small = {s: spread(["softmax", *SMALL], s) for s in ("cfp_fp", "lfw", "cfp_ff")}
    stated(RESULTS, "CFP-FP max − min {:.2f} points (sample std over the arms {:.2f}), LFW {:.2f} ({:.2f}), "
                    "CFP-FF {:.2f} ({:.2f})".format(*every["cfp_fp"], *every["lfw"], *every["cfp_ff"]))
    stated(RESULTS, "CFP-FP {:.2f} ({:.2f}), LFW {:.2f} ({:.2f}), CFP-FF {:.2f} ({:.2f})".format(
        *small["cfp_fp"], *small["lfw"], *small["cfp_ff"]))
    assert max(small, key=lambda s: small[s][0]) == "cfp_ff" and max(every, key=lambda s: every[s][0]) == "lfw"
    stated(RESULTS, f"the set that separates the losses most ({small['cfp_ff'][0]:.2f} points against LFW's "
                    f"{small['lfw'][0]:.2f}); among all 19 arms it is LFW ({every['lfw'][0]:.2f} against CFP-FF's "
                    f"{every['cfp_ff'][0]:.2f})")


def test_the_best_and_worst_arm() -> None:
    def three(arm: str) -> float:
        return statistics.fmean(mean(arm, f"{s}_acc") for s in ("lfw", "cfp_fp", "cfp_ff"))

    ranked = sorted(LOSS_ARMS, key=three, reverse=True)
    assert ranked[0] == "sphereface_paper" and ranked[-1] == "arcface_paper"
    stated(RESULTS, f"`sphereface_paper`, {three(ranked[0]):.2f} (`magface_small` {three('magface_small'):.2f} and "
                    f"`sphereface_small` {three('sphereface_small'):.2f}")
    stated(RESULTS, f"`arcface_paper`, {three(ranked[-1]):.2f} (`magface_paper` {three('magface_paper'):.2f})")
    stated(RESULTS, f"uniform guessing over 291 classes: {math.log(291):.2f}")


PAIRS = [("sphereface_small", "softmax"), ("sphereface_small", "cosface_small"), ("arcface_small", "cosface_small"),
         ("sphereface_small", "arcface_small"), ("mv_softmax_small", "arcface_small"),
         ("curricularface_small", "arcface_small"), ("combined_small", "arcface_small"),
         ("combined_small", "cosface_small")]


def test_the_stated_test_paragraph() -> None:
    """Welch over seeds, Holm over the 64 comparisons of the documented --compare call, and over the 24 accuracy
    comparisons of the claims' three sets."""
    every = [(a, b, m) for a, b in PAIRS for s in SETS for m in (f"{s}_acc", f"{s}_tar")]
    p = [study_stats.welch(values(a, m), values(b, m)).p for a, b, m in every]
    holm = study_stats.holm(p)
    best = min(range(len(p)), key=p.__getitem__)
    assert every[best] == ("sphereface_small", "cosface_small", "cfp_ff_acc") and min(holm) > 0.05
    stated(RESULTS, f"64 comparisons. The smallest Welch p is {p[best]:.4f} (SphereFace ahead of CosFace on CFP-FF, "
                    f"+2.13), {holm[best]:.2f} after Holm's correction")
    accuracy = [pv for (a, b, m), pv in zip(every, p, strict=True) if m.endswith("_acc") and "8px" not in m]
    assert len(accuracy) == 24
    stated(RESULTS, f"(smallest corrected p {min(study_stats.holm(accuracy)):.3f})")
    page = (ROOT / "docs" / "results.md").read_text().splitlines()
    commands = [line for line in page if "--compare sphereface" in line and "tiny28" in line]
    assert len(commands) == 1 and re.findall(r"--compare (\S+)", commands[0]) == [f"{a},{b}" for a, b in PAIRS]


def test_marilyn_monroe_0001_is_in_one_pair(shared_data: Path) -> None:
    lines = (shared_data / "lfw" / "pairs.txt").read_text().splitlines()
    found = []
    for number, line in enumerate(lines[1:], start=2):
        f = line.split()
        images = [(f[0], int(f[1])), (f[0], int(f[2]))] if len(f) == 3 else [(f[0], int(f[1])), (f[2], int(f[3]))]
        if ("Marilyn_Monroe", 1) in images:
            found.append((number, (number - 2) // 600 + 1, line.split()))
    assert found == [(5610, 10, ["Marilyn_Monroe", "1", "2"])]
    stated(_text("data.md"), "(Marilyn_Monroe_0001) is in one pair, the same pair `Marilyn_Monroe 1 2` (line 5,610 "
                             "of `pairs.txt`, fold 10)")


@pytest.mark.slow
def test_the_grid_against_exact_cut_range_evaluation_md_states() -> None:
    spec = importlib.util.spec_from_file_location("bench_evaluation", ROOT / "benchmarks" / "evaluation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    found = bench.grid_vs_exact()
    strong = [100 * (g - e) for _, e, g in found if e >= 0.95]
    weak = [100 * (g - e) for _, e, g in found if e < 0.95]
    assert len(strong) == 3 and len(weak) == 12
    low, high = min(100 * e for _, e, _ in found if e < 0.95), max(100 * e for _, e, _ in found if e < 0.95)
    text = _text("evaluation.md")
    stated(text, f"grid − exact from {min(strong):+.2f} to {max(strong):+.2f} points for ~99% sets and from "
                 f"{min(weak):+.2f} to {max(weak):+.2f} points for {low:.0f}–{high:.0f}% sets".replace("-0", "−0"))
    assert "a few hundredths of a percent" not in text


def test_the_finetune_protocols_arithmetic() -> None:
    """docs/results.md, "Fine-tuning a strong model": SphereFace's lambda, the lr scaling and the cost estimate."""
    from marginface.losses import create

    section = RESULTS[RESULTS.index("## Fine-tuning a strong model"):]
    lam = create("sphereface", embedding_size=4, num_classes=3, lambda_gamma=0.12)

    def lambda_at(loss, step: int) -> float:  # the loss's own schedule at a step
        loss.step.fill_(step)
        return loss.current_lambda()

    assert round(lambda_at(lam, 200)) == 40
    stated(section, "would leave lambda at 40 after 200 steps")
    fast = create("sphereface", embedding_size=4, num_classes=3, lambda_gamma=3.0)
    floor = next(t for t in range(1000) if lambda_at(fast, t) <= 5.0)
    assert floor == 67 and round(lambda_at(fast, 4)) == 77  # "from step ~66"; the rehearsal's step 4
    stated(section, "floor 5 from step ~66")
    assert 0.1 * 64 / 512 == 0.0125
    step_quiet, step_load = 64 / 10.46, 33.8
    assert f"{step_quiet:.1f}" == "6.1" and f"{step_load / step_quiet:.1f}" == "5.5"
    train, means, evaluation = 200 * step_quiet / 60, 5_900 / (5.8 * step_load / step_quiet) / 60, 22_283 / 30 / 60
    assert 14_582 + 7_701 == 22_283 and round(train) == 20 and round(means) == 3 and round(evaluation) == 12
    total = 30 * (train + evaluation) + 25 * means + 5 * evaluation
    assert round(total, -1) == 1_120 and 9 <= total / 2 / 60 <= 10
    stated(section, "≈ 1,120 CPU minutes ≈ **9-10 hours** of the two cores")
