"""``marginface align``, ``marginface prepare lfw-bin`` and ``marginface prepare cfp``: detect and align faces.

Library: ``marginface.align`` (the alignment pipeline in ``align/pipeline.py``, the CFP protocol in ``align/cfp.py``).
"""

from __future__ import annotations

import argparse


def add_align(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "align", help="detect and align raw photos SRC/<identity>/<image> into 112x112 faces in DST",
        description="Detect faces (5 landmarks), keep one per photo, warp it onto the ArcFace 112x112 "
        "template and write DST/<identity>/<stem>.jpg; DST/align_report.json lists faces found / none / "
        "several (and which was kept) and skipped files. Needs an extra: pip install 'marginface[align]'.",
    )
    parser.add_argument("src", metavar="SRC", help="raw photos, SRC/<identity>/<image>")
    parser.add_argument("dst", metavar="DST", help="output folder (same structure)")
    parser.add_argument("--skip-bad", action="store_true", help="skip and count unreadable images")
    parser.add_argument("--detector", default="mtcnn", help="mtcnn, mtcnn-torch or dlib")
    parser.add_argument("--keep", default="centre", choices=["centre", "largest", "score"],
                        help="face kept when there are several (centre: largest box containing the centre)")
    parser.add_argument("--fallback", default="none", choices=["none", "median"],
                        help="photos with no face: leave out (none) or warp with the median landmarks")
    parser.add_argument("--min-face", type=float, default=20.0, help="smallest face searched, pixels (MTCNN)")
    parser.add_argument("--workers", type=int, default=2, help="processes (0: in this process)")
    parser.add_argument("--format", default="jpg", choices=["jpg", "png"], help="output encoding")
    parser.set_defaults(func=run_align)


def align_options(args: argparse.Namespace):
    """The :class:`~marginface.align.pipeline.AlignOptions` of ``align`` / ``prepare lfw-bin``'s options."""
    from marginface.align.pipeline import AlignOptions

    kwargs = {"min_face": args.min_face} if args.detector.startswith("mtcnn") else {}
    return AlignOptions(detector=args.detector, detector_kwargs=kwargs, policy=args.keep,
                        fallback=args.fallback, ext="." + args.format, workers=args.workers,
                        skip_bad=getattr(args, "skip_bad", False))


def run_align(args: argparse.Namespace) -> int:
    from marginface.align.pipeline import align_folder

    report = align_folder(args.src, args.dst, align_options(args))
    print(report.summary())
    print(f"report: {args.dst}/align_report.json")
    return 0


def add_prepare_lfw_bin(kinds: argparse._SubParsersAction) -> None:
    """Register ``prepare lfw-bin`` on the ``prepare`` sub-command's sub-parsers."""
    parser = kinds.add_parser(
        "lfw-bin", help="LFW-style folder + pairs.txt -> aligned verification .bin (insightface layout)",
        description="Detect and align every image named in pairs.txt (needs the align extra), then write "
        "OUT: 2N encoded 112x112 faces and N same/different bools. Photos without a detected face are "
        "warped with the median landmarks; OUT's <stem>.align_report.json lists them.",
    )
    parser.add_argument("--lfw", required=True, help="LFW-style folder: DIR/<name>/<name>_<iiii>.jpg")
    parser.add_argument("--pairs", required=True, help="pairs.txt ('name i j' / 'name1 i name2 j' lines)")
    parser.add_argument("--out", required=True, help="output .bin path, e.g. lfw.bin")
    parser.add_argument("--aligned", action="store_true", help="--lfw already holds aligned 112x112 faces")
    parser.add_argument("--detector", default="mtcnn", help="mtcnn, mtcnn-torch or dlib")
    parser.add_argument("--keep", default="centre", choices=["centre", "largest", "score"],
                        help="face kept when there are several (centre: largest box containing the centre)")
    parser.add_argument("--min-face", type=float, default=20.0, help="smallest face searched, pixels (MTCNN)")
    parser.add_argument("--workers", type=int, default=2, help="processes (0: in this process)")
    parser.add_argument("--format", default="jpg", choices=["jpg", "png"], help="encoding inside the .bin")
    parser.set_defaults(func=run_prepare_lfw_bin, fallback="median")


def run_prepare_lfw_bin(args: argparse.Namespace) -> int:
    from marginface.align.lfw import build_verification_bin

    report = build_verification_bin(args.lfw, args.pairs, args.out, align_options(args), args.aligned)
    print(f"packed {report.written} pre-aligned images" if args.aligned else report.summary())
    print(f"wrote {args.out}")
    return 0


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
