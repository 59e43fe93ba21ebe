"""``marginface prepare cfp``: raw CFP (official layout) -> aligned verification ``.bin`` (see align/cfp.py)."""

from __future__ import annotations

import argparse


def add_prepare_cfp(kinds: argparse._SubParsersAction) -> None:
    """Register ``prepare cfp`` on the ``prepare`` sub-command's sub-parsers."""
    parser = kinds.add_parser(
        "cfp", help="CFP (official layout) -> aligned CFP-FP / CFP-FF .bin, the 10 official splits as folds",
        description="Align every CFP image of the protocol with the detector; images where it finds no face "
        "are aligned with five points predicted from the 30 annotated fiducials (a least-squares map fitted on "
        "this run's detections, validated on held-out identities). OUT's <stem>.align_report.json has counts.",
    )
    parser.add_argument("--cfp", required=True, help="CFP root holding Data/ and Protocol/")
    parser.add_argument("--protocol", required=True, choices=["FP", "FF"], help="frontal-profile or frontal-frontal")
    parser.add_argument("--out", required=True, help="output .bin, e.g. cfp_fp.bin")
    parser.add_argument("--detector", default="mtcnn", help="face detector: mtcnn, mtcnn-torch or dlib")
    parser.add_argument("--workers", type=int, default=2, help="processes (0: in this process)")
    parser.set_defaults(func=run_prepare_cfp)


def run_prepare_cfp(args: argparse.Namespace) -> int:
    from marginface.align.cfp import build_cfp_bin
    from marginface.align.pipeline import AlignOptions

    report = build_cfp_bin(args.cfp, args.protocol, args.out,
                           AlignOptions(detector=args.detector, workers=args.workers))
    print(report.summary())
    for view, errors in report.map_validation.items():
        print(f"  fiducial map ({view}, held-out identities): {errors}")
    print(f"wrote {args.out}")
    return 0
