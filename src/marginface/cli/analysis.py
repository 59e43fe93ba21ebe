"""``marginface plot KIND``: the paper figures from our losses and runs, as PNG plus the data as CSV.

Kinds: target-logit, boundaries, significance (from the loss implementations), theta and
target-logit-training (from a run), toy (trains small models). Each writes ``--out`` (a .png) and the same
path with .csv; ``--json`` prints what was written (and headline numbers) as one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LOSS_HELP = ("a registered loss with parameters, name[:key=value,...], e.g. arcface:margin=0.5; repeat for "
             "several (default: the paper's set)")


def add_plot(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot", help="paper figures from our losses and runs (PNG + CSV): target-logit, theta, boundaries, ...",
        description="Draw the figures of the margin-loss papers from marginface's own losses and runs. Every "
        "kind writes OUT (.png) and OUT with .csv. See docs/analysis.md.")
    kinds = parser.add_subparsers(dest="plot_kind", required=True, metavar="KIND")
    for add in (_add_target_logit, _add_boundaries, _add_significance, _add_theta, _add_training, _add_toy):
        sub = add(kinds)
        sub.add_argument("--json", action="store_true", help="print the files written (and numbers) as JSON")


def _common(kinds, name: str, help_text: str, default_out: str | None) -> argparse.ArgumentParser:
    parser = kinds.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--out", default=default_out, help="output PNG (the CSV goes beside it, same stem)")
    return parser


def _add_target_logit(kinds) -> argparse.ArgumentParser:
    parser = _common(kinds, "target-logit", "target logit (scale removed) against theta, per loss (ArcFace Fig. 5a)",
                     "target_logit.png")
    parser.add_argument("--loss", action="append", help=LOSS_HELP)
    parser.add_argument("--theta-min", type=float, default=20.0, help="degrees (default 20, as the paper)")
    parser.add_argument("--theta-max", type=float, default=100.0, help="degrees (default 100)")
    parser.set_defaults(func=run_target_logit)
    return parser


def _add_boundaries(kinds) -> argparse.ArgumentParser:
    parser = _common(kinds, "boundaries", "binary decision boundaries in the (theta1, theta2) plane (ArcFace Fig. 3)",
                     "boundaries.png")
    parser.add_argument("--loss", action="append", help=LOSS_HELP)
    parser.set_defaults(func=run_boundaries)
    return parser


def _add_significance(kinds) -> argparse.ArgumentParser:
    parser = _common(kinds, "significance", "AM-LFS: |dL/dcos(theta_y)| / sum_j |dL/dcos(theta_j)| against p_y",
                     "significance.png")
    parser.add_argument("--loss", action="append", help=LOSS_HELP)
    parser.add_argument("--classes", type=int, default=10, help="classes in the softmax (default 10)")
    parser.add_argument("--nontarget-angle", type=float, default=90.0, help="angle of every other class, degrees")
    parser.add_argument("--norm", type=float, default=30.0,
                        help="feature norm ||x|| (the scale of softmax and SphereFace, which have none; default 30)")
    parser.set_defaults(func=run_significance)
    return parser


def _add_theta(kinds) -> argparse.ArgumentParser:
    parser = _common(kinds, "theta", "theta_y / nearest non-target angle histograms of a run (ArcFace Fig. 5b)", None)
    parser.add_argument("--run", required=True, help="run folder (config.json, log.csv, checkpoints/)")
    parser.add_argument("--source", choices=["checkpoints", "log"], default="checkpoints",
                        help="checkpoints: embed the training images with each checkpoint; log: the histograms "
                        "the trainer logged from its batches (analysis.theta_every)")
    parser.add_argument("--steps", type=int, nargs="+", help="steps to overlay (default: first, middle, last)")
    parser.add_argument("--images", type=int, default=1000, help="training images per checkpoint (evenly spaced)")
    parser.set_defaults(func=run_theta)
    return parser


def _add_training(kinds) -> argparse.ArgumentParser:
    parser = _common(kinds, "target-logit-training", "mean target logit and theta_y over training (ArcFace Fig. 5c)",
                     None)
    parser.add_argument("--run", required=True, action="append", help="run folder(s) trained with "
                        "analysis.theta_every > 0; repeat to compare runs")
    parser.set_defaults(func=run_training)
    return parser


def _add_toy(kinds) -> argparse.ArgumentParser:
    parser = _common(kinds, "toy", "train 2-D / 3-D toy embeddings per loss and draw the features (SphereFace)",
                     "toy.png")
    parser.add_argument("--loss", action="append", help=LOSS_HELP + " (default: softmax, A-Softmax m=1..4)")
    parser.add_argument("--dim", type=int, default=2, choices=[2, 3], help="embedding dimension")
    parser.add_argument("--identities", type=int, default=8, help="synthetic identities (default 8)")
    parser.add_argument("--images", type=int, default=60, help="images per identity")
    parser.add_argument("--image-size", type=int, default=24, help="rendered image side, pixels (multiple of 8)")
    parser.add_argument("--steps", type=int, default=300, help="SGD steps per loss (batch 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the initialisation and the batches")
    parser.set_defaults(func=run_toy)
    return parser


# ----------------------------------------------------------------------------- runners
def _specs(args, default):
    from marginface.analysis.curves import LossSpec

    return [LossSpec.parse(text) for text in args.loss] if args.loss else default()


def _csv_path(png: str | Path) -> Path:
    return Path(png).with_suffix(".csv")


def _report(args, written: list[Path], numbers: dict | None = None) -> int:
    if args.json:
        print(json.dumps({"kind": args.plot_kind, "files": [str(p) for p in written], **(numbers or {})}))
    else:
        for path in written:
            print(f"wrote {path}")
        for key, value in (numbers or {}).items():
            print(f"  {key}: {value}")
    return 0


def run_target_logit(args: argparse.Namespace) -> int:
    from marginface.analysis.curves import paper_specs
    from marginface.analysis.figures import target_logit_figure

    return _report(args, target_logit_figure(_specs(args, paper_specs), args.out, args.theta_min, args.theta_max))


def boundary_specs():
    from marginface.analysis.curves import LossSpec

    return [LossSpec("normface"), LossSpec("sphereface", {"margin": 4, "lambda_base": 0.0, "lambda_min": 0.0}),
            LossSpec("cosface", {"margin": 0.35}), LossSpec("arcface", {"margin": 0.5})]


def run_boundaries(args: argparse.Namespace) -> int:
    import numpy as np

    from marginface.analysis import draw
    from marginface.analysis.curves import decision_boundary

    theta1 = np.linspace(0.0, 180.0, 361)
    found = {spec.label: (theta1, decision_boundary(spec, theta1)) for spec in _specs(args, boundary_specs)}
    rows = [[float(t), *(float(b[1][i]) for b in found.values())] for i, t in enumerate(theta1)]
    written = [draw.write_csv(_csv_path(args.out), ["theta1_deg", *(f"theta2_deg {k}" for k in found)], rows),
               draw.draw_boundaries(found, args.out)]
    return _report(args, written)


def significance_specs():
    from marginface.analysis.curves import LossSpec

    return [LossSpec("softmax"), LossSpec("normface", {"scale": 30.0}),
            LossSpec("sphereface", {"margin": 4, "lambda_base": 0.0}),
            LossSpec("cosface", {"scale": 30.0, "margin": 0.35}), LossSpec("arcface", {"scale": 30.0, "margin": 0.5}),
            LossSpec("combined", {"scale": 30.0, "m1": 1.0, "m2": 0.3, "m3": 0.2})]


def run_significance(args: argparse.Namespace) -> int:
    import numpy as np

    from marginface.analysis import draw
    from marginface.analysis.curves import significance_curve

    theta = np.linspace(0.5, 179.5, 359)
    results = {spec.label: significance_curve(spec, theta, args.classes, args.nontarget_angle, args.norm)
               for spec in _specs(args, significance_specs)}
    rows = [[k, float(t), float(r["p_target"][i]), float(r["ratio"][i])]
            for k, r in results.items() for i, t in enumerate(theta)]
    title = (f"relative significance of the intra-class term (C={args.classes}, other classes at "
             f"{args.nontarget_angle:g}°, ||x||={args.norm:g})")
    written = [draw.write_csv(_csv_path(args.out), ["loss", "theta_deg", "p_target", "ratio"], rows),
               draw.draw_significance(results, args.out, title)]
    return _report(args, written)


def run_theta(args: argparse.Namespace) -> int:
    from marginface.analysis.figures import theta_figure
    from marginface.runs import RunDir

    out = args.out or str(RunDir(args.run).theta_figure(args.source))
    written, numbers = theta_figure(args.run, out, args.source, args.steps, args.images)
    return _report(args, written, numbers)


def run_training(args: argparse.Namespace) -> int:
    from marginface.analysis.figures import training_figure
    from marginface.runs import RunDir

    out = args.out or str(RunDir(args.run[0]).target_logit_training)
    return _report(args, training_figure(args.run, out))


def _toy_title(result) -> str:
    """Loss name, its parameters on the next line (they are long), then spread and accuracy."""
    name, _, params = result.label.partition("(")
    params = f"\n({params}" if params else ""
    return f"{name}{params}\nspread {result.spread_deg:.1f}°, acc {result.accuracy:.0%}"


def run_toy(args: argparse.Namespace) -> int:
    import torch

    from marginface.analysis import draw
    from marginface.analysis.curves import LossSpec
    from marginface.analysis.toy import TOY_LOSSES, toy_features

    if args.image_size % 8 or args.image_size < 8:
        raise ValueError(f"--image-size must be a positive multiple of 8, got {args.image_size}")
    specs = _specs(args, lambda: [LossSpec.parse(t) for t in TOY_LOSSES])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: one thread is faster than two contending ones
    try:
        results = toy_features(specs, dim=args.dim, num_identities=args.identities,
                               images_per_identity=args.images, image_size=args.image_size, steps=args.steps,
                               seed=args.seed)
    finally:
        torch.set_num_threads(threads)
    rows = [[r.label, int(lab), *map(float, f)] for r in results for f, lab in zip(r.features, r.labels)]
    header = ["loss", "label", *(f"f{i}" for i in range(args.dim))]
    panels = [(_toy_title(r), r.features, r.labels) for r in results]
    written = [draw.write_csv(_csv_path(args.out), header, rows), draw.draw_toy(panels, args.out)]
    numbers = {f"spread_deg {r.label}": round(r.spread_deg, 2) for r in results}
    numbers.update({f"accuracy {r.label}": round(r.accuracy, 4) for r in results})
    return _report(args, written, numbers)
