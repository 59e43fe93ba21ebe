"""``marginface study``: run (or resume) a study of arms x seeds and summarise it (see ``experiments/study.py``)."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import replace
from pathlib import Path


def add_study(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study", help="train and evaluate arms x seeds of one preset; resumable; results.csv + summary",
        description="Run every (arm, seed) of a study spec (YAML: preset, overrides, arms, seeds, eval bins, lanes) "
        "as `marginface train` + `marginface eval` child processes, LANES side by side. Rerunning resumes: runs with "
        "a row in results.csv are skipped, trained ones are evaluated, half-trained ones continue.")
    parser.add_argument("spec", help="study spec, e.g. configs/study/celeba299_losses.yaml")
    parser.add_argument("--output", help="study folder (default: runs/study_<spec name>)")
    parser.add_argument("--lanes", type=int, help="runs side by side (default: the spec's lanes)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="appended to the spec's common overrides, e.g. --override model.backbone=iresnet50 "
                        "(repeat; recorded in OUTPUT/study.json, so use a new --output for a changed study)")
    parser.add_argument("--threads", type=int, help="intra-op threads per run (default: CPU cores // lanes)")
    parser.add_argument("--dry-run", action="store_true", help="print each run's status and command; run nothing")
    parser.add_argument("--summary", action="store_true", help="only summarise results.csv (mean ± std over seeds)")
    parser.add_argument("--json", action="store_true", help="print the summary (or the dry-run plan) as JSON")
    parser.add_argument("--compare", action="append", default=[], metavar="A,B",
                        help="with --summary: arm A against arm B on every set's accuracy and TAR: the tie "
                        "rule (a difference not above the larger seed std is a tie), Welch's t-test over seeds "
                        "with Holm-corrected p over all the call's comparisons, a 95%% bootstrap interval; repeat "
                        "for more pairs")
    parser.add_argument("--figure", metavar="OUT.png",
                        help="with --summary: accuracy of the --figure-arm arms on every set (PNG + CSV beside)")
    parser.add_argument("--figure-arm", action="append", default=[], metavar="ARM[=LABEL]",
                        help="an arm of the figure, in order (repeat); numeric labels make a numeric axis, e.g. "
                        "--figure-arm arcface_m0.2=0.2")
    parser.add_argument("--figure-xlabel", default="arm", help="the figure's x-axis label")
    parser.set_defaults(func=run_study_command, argument_flags={"out": "--output"})  # Study(spec, out)


def run_study_command(args: argparse.Namespace) -> int:
    from marginface.errors import UserError
    from marginface.experiments import study

    spec = study.load_study(args.spec)
    if args.lanes:
        spec = replace(spec, lanes=args.lanes)
    if args.override:
        spec = replace(spec, overrides=[*spec.overrides, *args.override])
    out = Path(args.output or f"runs/study_{Path(args.spec).stem}")
    if spec.runner == "embedding_block" and not args.summary:  # issue 30's CPU variant (experiments/)
        if args.dry_run:
            raise UserError("--dry-run lists `marginface train` commands; the embedding_block runner has none (it "
                            "runs in this process and resumes: run it)")
        from marginface.experiments.embedding_block_study import run_study

        failed_runs = run_study(spec, out, threads=args.threads)
        if failed_runs:
            raise UserError("\n".join([f"{len(failed_runs)} run(s) failed (the others are in {out / 'results.csv'}):"]
                                      + [f"  {arm} seed {seed}: {why}" for arm, seed, why in failed_runs]))
        args.summary = True
    if args.dry_run:
        return _dry_run(spec, out, args.json)
    if not args.summary:
        failed = study.Study(spec, out, threads=args.threads).run()
        if failed:
            raise UserError("\n".join([f"{len(failed)} run(s) failed (the others are in {out / 'results.csv'}):"]
                                      + [f"  {r.arm} seed {r.seed}: {why}" for r, why in failed]))
    order = {arm: i for i, arm in enumerate(spec.arms)}  # the spec's arms first, in its order; then any others
    rows = sorted(study.read_results(out / "results.csv"),
                  key=lambda r: (order.get(r["arm"], len(order)), r["arm"], int(r["seed"])))
    sets = [Path(b).stem for b in spec.bins]
    if args.compare:
        return _compare(rows, sets, args.compare, args.json)
    if args.figure:
        if not args.figure_arm:
            raise UserError("--figure needs the arms to draw: --figure-arm ARM[=LABEL], repeated, in order")
        arms = [(a.partition("=")[0], a.partition("=")[2] or a.partition("=")[0]) for a in args.figure_arm]
        for path in study.arms_figure(rows, arms, sets, args.figure, args.figure_xlabel):
            print(f"wrote {path}")
    if args.json:
        print(json.dumps({"results": str(out / "results.csv"), "environments": [
            {"environment": line, "rows": count} for line, count in study.environments(rows)], "summary": [
            {"arm": s.arm, "metric": s.metric, "seeds": len(s.values), "mean": s.mean, "std": s.std}
            for metric in [f"{n}_{f}" for n in sets for f in ("acc", "tar")] for s in study.summarise(rows, metric)]},
            indent=2))
        return 0
    planned = {(r.arm, str(r.seed)) for r in study.plan(spec, out)}
    print(f"{len(planned & {(r['arm'], r['seed']) for r in rows})} of this spec's {len(planned)} run(s) evaluated; "
          f"{len(rows)} row(s) in {out / 'results.csv'}")
    for line, count in study.environments(rows):
        print(f"environment of {count} row(s): {line}")
    print(f"TAR at FAR = {spec.far:g}; mean ± std over seeds (sample std): differences inside the spread are ties")
    print(study.summary_table(rows, sets))
    return 0


def _dry_run(spec, out: Path, as_json: bool) -> int:
    from marginface.experiments import study

    done = study.finished(out / "results.csv")
    plan = [{"arm": r.arm, "seed": r.seed, "status": study.status(r, done),
             "command": shlex.join(study.train_command(spec, r))} for r in study.plan(spec, out)]
    if as_json:
        print(json.dumps(plan, indent=2))
        return 0
    for p in plan:
        print(f"{p['status']:>8}  {p['command']}")
    return 0


def _compare(rows, sets: list[str], pairs: list[str], as_json: bool) -> int:
    from marginface.errors import UserError
    from marginface.experiments import study

    found = []
    for pair in pairs:
        a, comma, b = pair.partition(",")
        if not comma or not a or not b:
            raise UserError(f"--compare {pair!r}: give two arms as A,B, e.g. --compare arcface_small,softmax")
        for metric in [f"{s}_{f}" for s in sets for f in ("acc", "tar")]:
            try:
                c = study.compare(rows, a, b, metric)
            except ValueError as error:
                if metric.endswith("_tar"):
                    continue  # TAR is empty where the set has too few pairs for the FAR: nothing to compare
                raise UserError(str(error)) from None
            welch, (low, high) = c.welch, c.interval()
            found.append({"a": a, "b": b, "metric": metric, "a_mean": c.a.mean, "b_mean": c.b.mean,
                          "difference": c.difference, "spread": c.spread, "verdict": c.verdict,
                          "seeds": [len(c.a.values), len(c.b.values)], "welch_t": welch.t, "welch_df": welch.df,
                          "p": welch.p, "interval_95": [low, high]})
    tested = _correct(found)
    if as_json:
        print(json.dumps([_finite(f) for f in found], indent=2))
        return 0
    print(f"{tested} comparison(s) tested in this call; Welch's t-test over seeds (two-sided), p Holm-corrected "
          f"over these {tested} (p_holm); 95% percentile bootstrap interval of the difference (10,000 resamples); "
          "the tie rule (difference within the larger seed std) is uncorrected")
    for f in found:
        print(f"{f['a']} vs {f['b']} on {f['metric']}: {100 * f['a_mean']:.2f} vs {100 * f['b_mean']:.2f} "
              f"(difference {100 * f['difference']:+.2f}, spread {100 * f['spread']:.2f}, seeds {f['seeds'][0]}/"
              f"{f['seeds'][1]}): {f['verdict']}; {_test_text(f)}")
    return 0


def _correct(found: list[dict]) -> int:
    """Holm-correct the p-values of one ``--compare`` call together (in place: ``p_holm``, ``comparisons``);
    returns how many comparisons had a test (two seeds or more per arm)."""
    from marginface.experiments.study_stats import holm

    adjusted = holm([f["p"] for f in found])
    tested = sum(1 for p in adjusted if p == p)
    for f, p in zip(found, adjusted, strict=True):
        f["p_holm"], f["comparisons"] = p, tested
    return tested


def _finite(found: dict) -> dict:
    """``found`` with NaN or infinite numbers (no test: one seed; no spread) as JSON null, which any reader parses."""
    import math

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return [clean(x) for x in v] if isinstance(v, list) else v

    return {k: clean(v) for k, v in found.items()}


def _test_text(f: dict) -> str:
    if f["p"] != f["p"]:  # NaN: fewer than two seeds in an arm
        return "no test (one seed)"
    low, high = f["interval_95"]
    return (f"Welch t {f['welch_t']:+.2f} (df {f['welch_df']:.1f}), p {f['p']:.3g}, p_holm {f['p_holm']:.3g} of "
            f"{f['comparisons']}; 95% interval [{100 * low:+.2f}, {100 * high:+.2f}]")
