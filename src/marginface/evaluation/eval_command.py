"""``marginface eval --ijb DIR`` and ``--json``: the IJB protocols and the one-table summary, added to ``eval``.

Kept apart from the ``eval`` parser in ``cli.py`` so that command's own routes (``--bins``, ``--pairs``/``--images``,
``--embeddings``) stay as they are: :func:`add_table_options` adds the options and wraps the command's function;
without ``--ijb`` or ``--json`` the original function runs unchanged.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def add_table_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--ijb``, ``--json`` and the IJB pooling switches to the ``eval`` parser; wrap its ``func``."""
    parser.add_argument("--ijb", nargs="+", default=[], metavar="DIR",
                        help="IJB release folder(s): DIR/meta + DIR/loose_crop (IJBB or IJBC), or a folder holding "
                        "IJBB/ and IJBC/; runs 1:1 (TAR@FAR) and, if the 1:N files are there, 1:N")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (for scripts)")
    parser.add_argument("--ijb-normalize-images", action="store_true",
                        help="IJB: L2-normalise image embeddings before pooling (default: keep their norms)")
    parser.add_argument("--ijb-no-detector-score", action="store_true",
                        help="IJB: do not weight image embeddings by the detector score")
    parser.set_defaults(func=_wrap(parser.get_default("func")))


def _wrap(original: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if not args.ijb and not args.json:
            return original(args)
        return run_table(args)

    return run


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
