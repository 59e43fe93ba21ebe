"""``marginface eval``: 10-fold verification on .bin / pairs.txt sets, precomputed embeddings, and (``--ijb``,
``--json``) the IJB protocols and the one-table summary (library: ``marginface.evaluation``).

Without ``--ijb`` or ``--json`` the command prints the verification table (and the ROC plot if asked); with either,
:func:`run_table` evaluates everything and prints the standard one-row table (or its JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="10-fold verification accuracy, TAR@FAR and a ROC plot on .bin / pairs.txt sets",
        description="Evaluate a checkpoint on .bin sets and/or a pairs.txt + image folder, or evaluate "
        "precomputed embeddings (--embeddings, from any model) on a pairs.txt. See docs/evaluation.md.",
    )
    parser.add_argument("--checkpoint", help="safetensors backbone weights (keys unprefixed or 'backbone.')")
    parser.add_argument("--backbone", help="backbone registry name, e.g. iresnet50 (default: from the checkpoint's "
                        "model card)")
    parser.add_argument("--embedding-size", type=int, default=None,
                        help="the checkpoint's embedding size (default: from its model card, else 512)")
    parser.add_argument("--bins", nargs="+", default=[], metavar="BIN", help="insightface .bin sets")
    parser.add_argument("--pairs", help="LFW-format pairs.txt (its 10 folds are used)")
    parser.add_argument("--images", help="aligned 112x112 faces for --pairs: <root>/<Name>/<Name>_NNNN.jpg "
                        "(marginface align writes them); raw photos are refused")
    parser.add_argument("--aligned", action="store_true",
                        help="assert that --images holds aligned 112x112 faces (checked; they are always detected)")
    parser.add_argument("--center-crop", action="store_true",
                        help="evaluate raw photos of --images as centre crops: a rough stand-in, not comparable")
    parser.add_argument("--embeddings", help=".npz (names, embeddings) or .safetensors (one tensor per image)")
    parser.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine",
                        help="pair score for --embeddings (euclidean = negative distance)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    parser.add_argument("--no-flip", action="store_true", help="disable flip test-time augmentation")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--workers", type=int, default=0, help="image decoding processes for --images")
    parser.add_argument("--roc", metavar="FILE", help="draw the ROC plot into FILE (e.g. runs/x/roc.png); none is "
                        "drawn unless asked, so eval writes nothing into the current folder")
    _add_table_options(parser)
    parser.set_defaults(func=run_eval, argument_flags={"name": "--backbone"})  # load_backbone(name, ...)


def run_eval(args: argparse.Namespace) -> int:
    """The verification table (+ ROC plot); with ``--ijb`` or ``--json``: :func:`run_table`."""
    if args.ijb or args.json:
        return run_table(args)
    from marginface.evaluation import verification

    results = evaluate_sets(args)
    print(verification.format_table(results))
    if args.roc:
        print(f"ROC plot: {verification.plot_roc(results, args.roc)}")
    return 0


def _add_table_options(parser: argparse.ArgumentParser) -> None:
    """``--ijb``, ``--json`` and the IJB pooling switches."""
    parser.add_argument("--ijb", nargs="+", default=[], metavar="DIR",
                        help="IJB release folder(s): DIR/meta + DIR/loose_crop (IJBB or IJBC), or a folder holding "
                        "IJBB/ and IJBC/; runs 1:1 (TAR@FAR) and, if the 1:N files are there, 1:N")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (for scripts)")
    parser.add_argument("--ijb-normalize-images", action="store_true",
                        help="IJB: L2-normalise image embeddings before pooling (default: keep their norms)")
    parser.add_argument("--ijb-no-detector-score", action="store_true",
                        help="IJB: do not weight image embeddings by the detector score")


def _verification_sets(args: argparse.Namespace) -> list:
    """The ``--bins`` / ``--pairs`` / ``--embeddings`` sets (none: an IJB-only run), as plain ``eval`` does."""
    return evaluate_sets(args) if args.bins or args.pairs or args.embeddings else []


def evaluate_sets(args: argparse.Namespace) -> list:
    """``verification.evaluate_cli_sets`` with the ``eval`` command's options: the one place that maps them."""
    from marginface.evaluation import verification

    return verification.evaluate_cli_sets(
        checkpoint=args.checkpoint, backbone=args.backbone, embedding_size=args.embedding_size,
        bins=args.bins, pairs=args.pairs, images=args.images, embeddings=args.embeddings,
        metric=args.metric, batch_size=args.batch_size, flip=not args.no_flip, device=args.device,
        workers=args.workers, aligned=args.aligned, center_crop=args.center_crop,
    )


def _ijb_results(args: argparse.Namespace) -> list:
    if not args.ijb:
        return []
    if not args.checkpoint:
        raise ValueError("--ijb needs --checkpoint (the model that embeds the IJB crops)")
    from marginface.evaluation import ijb
    from marginface.models.backbone import load_backbone

    folders = [f for d in args.ijb for f in ijb.release_folders(d)]  # fails before loading anything heavy
    options = ijb.PoolingOptions(flip=not args.no_flip, normalize_images=args.ijb_normalize_images,
                                 detector_score=not args.ijb_no_detector_score)
    model = load_backbone(args.backbone, args.checkpoint, args.embedding_size).to(args.device)
    return [ijb.evaluate_model(model, f, options, batch_size=args.batch_size, device=args.device,
                               workers=args.workers) for f in folders]


def run_table(args: argparse.Namespace) -> int:
    """Evaluate the verification sets and IJB releases, print the standard table (or JSON), save the ROC."""
    from marginface.evaluation import report, verification

    if not (args.bins or args.pairs or args.embeddings or args.ijb):
        raise ValueError("nothing to evaluate: give --bins, --pairs with --images, --embeddings or --ijb")
    sets = _verification_sets(args)
    ijbs = _ijb_results(args)
    model = Path(args.checkpoint).stem if args.checkpoint else Path(args.embeddings or "embeddings").stem
    roc = str(verification.plot_roc(sets, args.roc)) if args.roc and sets else None
    if args.roc and any(r.verification is not None for r in ijbs):
        path = Path(args.roc)
        ijb_roc = str(report.plot_ijb_roc(ijbs, path.with_name(f"{path.stem}_ijb{path.suffix or '.png'}")))
        roc = f"{roc}, {ijb_roc}" if roc else ijb_roc
    if args.json:
        print(json.dumps({**report.to_json(model, sets, ijbs), "roc_plot": roc}, indent=2))
        return 0
    if sets:
        print(verification.format_table(sets))
        print()
    print(report.standard_table(model, sets, ijbs))
    if roc:
        print(f"ROC plot: {roc}")
    return 0
