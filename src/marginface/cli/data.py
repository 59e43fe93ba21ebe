"""``marginface prepare <kind>``: convert data sets (library: ``marginface.data``, ``marginface.align``).

One ``add_prepare_<kind>(kinds)`` per conversion, listed in :data:`PREPARE_KINDS`: ``rec`` and ``degrade`` here,
``lfw-bin`` and ``cfp`` (which detect and align faces) in ``cli/align.py``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from marginface.cli.align import add_prepare_cfp, add_prepare_lfw_bin


def add_prepare(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prepare", help="convert data sets: folder -> .rec/.idx, ...",
                                   description="Convert data sets. One sub-command per conversion.")
    kinds = parser.add_subparsers(dest="prepare_kind", required=True, metavar="KIND")
    for add in PREPARE_KINDS:
        add(kinds)


def add_prepare_rec(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "rec", help="pack SRC_FOLDER/<identity>/<image> into OUT_PREFIX.rec/.idx (insightface RecordIO)",
        description="Pack a folder of aligned 112x112 faces into OUT_PREFIX.rec, OUT_PREFIX.idx and "
        "OUT_PREFIX.classes.json (identity -> label). See docs/data.md.",
    )
    parser.add_argument("src_folder", metavar="SRC_FOLDER", help="root/<identity>/<image>")
    parser.add_argument("out_prefix", metavar="OUT_PREFIX", help="e.g. data/train -> data/train.rec")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip corrupt/non-image files and empty identity folders (listed at the end)")
    parser.add_argument("--resize", action="store_true", help="resize faces that are not 112x112")
    parser.add_argument("--exclude-identities", metavar="FILE", help="identities to leave out, one a line "
                        "(e.g. marginface clean overlap's exclude_identities.txt)")
    parser.add_argument("--image-list", metavar="FILE", help="identity/file names to keep, one a line "
                        "(e.g. marginface clean outliers' image_list.txt)")
    parser.set_defaults(func=run_prepare_rec)


def run_prepare_rec(args: argparse.Namespace) -> int:
    from marginface.data.folder import FolderDataset
    from marginface.data.lists import read_lines
    from marginface.data.recordio import write_recordio

    dataset = FolderDataset(args.src_folder, skip_bad=args.skip_bad, resize=args.resize,
                            exclude_identities=args.exclude_identities and read_lines(args.exclude_identities),
                            image_list=args.image_list and read_lines(args.image_list, "image list"))
    stats = write_recordio(dataset, args.out_prefix)
    print(f"wrote {stats.num_images} images of {stats.num_classes} identities to {stats.rec_path} "
          f"(index {stats.idx_path}); {stats.reencoded} re-encoded, {len(stats.skipped)} skipped")
    for path in stats.skipped:
        print(f"  skipped {path}: {dataset.skip_reasons[path]}")
    return 0


def add_prepare_degrade(kinds: argparse._SubParsersAction) -> None:
    """Register ``prepare degrade`` on the ``prepare`` sub-command's sub-parsers."""
    parser = kinds.add_parser(
        "degrade", help="verification .bin -> a low-quality copy (fewer pixels, strong JPEG), the same pairs",
        description="Downscale every face to SIZE x SIZE (area average), scale it back to its size (bicubic) "
        "and re-encode it as JPEG at QUALITY: the low-quality version of a set, for checking how a model "
        "copes with poor images.",
    )
    parser.add_argument("--bin", required=True, dest="src", help="the verification .bin to degrade")
    parser.add_argument("--out", required=True, help="output .bin, e.g. lfw_16px_q30.bin")
    parser.add_argument("--size", type=int, default=16, help="pixels of detail left per side (default 16)")
    parser.add_argument("--quality", type=int, default=30, help="JPEG quality of the copy (default 30)")
    parser.set_defaults(func=run_prepare_degrade)


def run_prepare_degrade(args: argparse.Namespace) -> int:
    from marginface.data.degrade import degrade_bin

    pairs = degrade_bin(args.src, args.out, args.size, args.quality)
    print(f"wrote {args.out}: {pairs} pairs, faces at {args.size}x{args.size} pixels, JPEG quality {args.quality}")
    return 0


# `marginface prepare <kind>`, in the order --help lists them
PREPARE_KINDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_prepare_rec,
    add_prepare_lfw_bin,
    add_prepare_cfp,
    add_prepare_degrade,
]
