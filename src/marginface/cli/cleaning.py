"""``marginface clean embed|outliers|duplicates|overlap``: lists for review and for training; nothing is deleted.

Each command reads embeddings (an ``.npz`` of names/embeddings, the identity being the folder part of each name;
or a checkpoint plus the image folder), prints counts at each step (``--json``: one JSON object instead) and
writes plain list files that ``marginface train`` (``data.exclude_identities``, ``data.image_list``) and
``marginface prepare rec`` (``--exclude-identities``, ``--image-list``) read, plus an optional contact sheet.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_clean(subparsers: argparse._SubParsersAction) -> None:
    """Register ``marginface clean`` and its sub-commands."""
    parser = subparsers.add_parser(
        "clean", help="data cleaning (ArcFace paper): outliers, duplicate identities, train/test overlap",
        description="Find label noise, duplicate identities and train/test identity overlap from centroid "
        "distances of any embedder's embeddings. Only list files are written; the images are never touched.")
    kinds = parser.add_subparsers(dest="clean_kind", required=True, metavar="KIND")
    _add_embed(kinds)
    _add_outliers(kinds)
    _add_duplicates(kinds)
    _add_overlap(kinds)
    _add_noise(kinds)


def _source_args(parser: argparse.ArgumentParser, flag: str = "--embeddings", what: str = "the set") -> None:
    parser.add_argument(flag, required=True, nargs="+", metavar="NPZ",
                        help=f"embeddings of {what}: .npz files (names, embeddings; identity = folder part of the "
                        "name; several files from one image root are concatenated), e.g. from 'clean embed'")


def _common(parser: argparse.ArgumentParser, per_test: bool = False) -> None:
    parser.add_argument("--out", required=True, help="output folder for the lists, report.json and the sheet")
    parser.add_argument("--threshold", type=float, default=None, nargs="+" if per_test else None,
                        help="centroid cosine distance (1 - cos); default: calibrated from the data"
                        + ("; one for all test sets or one per --test" if per_test else ""))
    parser.add_argument("--sheet", action=argparse.BooleanOptionalAction, default=True,
                        help="write the contact sheet (PNG per flagged item + index.html)")
    parser.add_argument("--max-sheet", type=int, default=60, help="at most this many flagged items on the sheet")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_embed(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("embed", help="embed an image folder (root/<identity>/...) into an .npz",
                              description="Embed root/<identity>/<image> with dlib's published encoder (raw "
                              "loose crops) or a marginface checkpoint (aligned 112x112 images).")
    parser.add_argument("root", help="image folder, root/<identity>/<image>")
    parser.add_argument("--out", required=True, help="output .npz (names, embeddings, root, paths)")
    parser.add_argument("--model", default="dlib", help="'dlib', or a model file marginface.inference.load_model "
                        "reads (.safetensors with its card, insightface .pth, .onnx, an MXNet model-zoo prefix or its "
                        ".params) for aligned faces")
    parser.add_argument("--backbone", default=None, help="backbone, for a safetensors file without a card")
    parser.add_argument("--embedding-size", type=int, default=None, help="embedding size, for a file without a card")
    parser.add_argument("--config", default=None, help="the run's config.json, for a file without a card")
    parser.add_argument("--pattern", default="*/*", help="glob under root, e.g. '*/frontal/*' for CFP")
    parser.add_argument("--max-per-identity", type=int, default=None, help="embed at most K images per identity")
    parser.add_argument("--min-images", type=int, default=1, help="skip identities with fewer images")
    parser.add_argument("--skip-per-identity", type=int, default=0, help="leave out the first N images of each "
                        "identity (embedded earlier with --max-per-identity N); the .npz files concatenate")
    parser.add_argument("--workers", type=int, default=2, help="processes for dlib (0: this one)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run_embed)


def run_embed(args: argparse.Namespace) -> int:
    import time
    from collections import Counter

    from marginface.cleaning.embedders import embed_folder, model_embedder, save_npz

    counts: Counter = Counter()
    if args.model == "dlib":
        from marginface.cleaning.dlib_embed import dlib_embedder

        embedder = dlib_embedder(args.workers, counts)
    else:
        embedder = model_embedder(args.model, backbone=args.backbone, embedding_size=args.embedding_size,
                                  config=args.config)
    start = time.perf_counter()
    data = embed_folder(args.root, embedder, args.pattern, args.max_per_identity, args.min_images,
                        args.skip_per_identity)
    save_npz(args.out, data)
    report = {"images": len(data.names), "identities": len(data.classes), "seconds": round(time.perf_counter() - start),
              "faces_found_by": dict(counts), "out": str(args.out)}
    _print(report, args.json, f"embedded {report['images']} images of {report['identities']} identities in "
           f"{report['seconds']} s" + (f"; faces found by {dict(counts)}" if counts else "") + f"; wrote {args.out}")
    return 0


def _print(report: dict, as_json: bool, text: str) -> None:
    print(json.dumps(report, indent=1) if as_json else text)


def _load(files: list[str]):
    from marginface.cleaning.embedders import concat, load_npz

    return concat([load_npz(f) for f in files])


def _out_dir(args: argparse.Namespace):
    from pathlib import Path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _finish(args: argparse.Namespace, out, report: dict, title: str, items: list, lines: list[str]) -> None:
    """Write report.json (+ the sheet), then print the counts (or the JSON)."""
    from marginface.data.lists import write_lines

    if args.sheet:
        from marginface.cleaning.sheets import write_sheet

        figures = [name for name in ("distributions.png",) if (out / name).is_file()]
        report["sheet"] = str(write_sheet(out, title, items[: args.max_sheet], lines, figures))
    write_lines(out / "report.json", [json.dumps(report, indent=1)])
    _print(report, args.json, "\n".join(lines + [f"wrote {out}/"]))


def _calibration_lines(summary: dict | None, threshold: float) -> list[str]:
    if summary is None:
        return [f"threshold {threshold:.4f} (given)"]
    s, d = summary["same"], summary["different"]
    return [f"threshold {threshold:.4f} (calibrated, minimum total error between {s['n']} same-identity "
            f"distances, median {s['q50']:.3f}, q95 {s['q95']:.3f}, and {d['n']} nearest-other-identity "
            f"distances, q5 {d['q5']:.3f}, "
            f"median {d['q50']:.3f}; {100 * summary['same_above_threshold']:.1f}% same above, "
            f"{100 * summary['different_below_threshold']:.1f}% different below)"]


def _add_outliers(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("outliers", help="images far from their identity's centroid (label noise)",
                              description="Leave-one-out distance of every image to its identity's centroid; "
                              "flags by an absolute threshold or per identity (median + k * MAD). Writes "
                              "outliers.tsv and image_list.txt (the images kept; for data.image_list).")
    _source_args(parser)
    _common(parser)
    parser.add_argument("--rule", choices=["threshold", "robust"], default="robust",
                        help="per identity median + k * 1.4826 * MAD above --floor (default; better precision on "
                        "planted noise, docs/cleaning.md), or the absolute threshold alone")
    parser.add_argument("--k", type=float, default=3.0, help="robust rule: MADs above the median")
    parser.add_argument("--floor", type=float, default=None, help="robust rule: never flag below this distance "
                        "(default: the threshold)")
    parser.set_defaults(func=run_outliers)


def run_outliers(args: argparse.Namespace) -> int:
    import numpy as np

    from marginface.cleaning.review import find_outliers, outlier_items
    from marginface.data.lists import write_lines

    data = _load(args.embeddings)
    out = _out_dir(args)
    result = find_outliers(data, args.rule, args.threshold, args.k, args.floor)
    flagged = np.flatnonzero(result.flags)
    flagged = flagged[np.argsort(-result.distances[flagged], kind="stable")]
    write_lines(out / "outliers.tsv", (f"{data.names[i]}\t{result.distances[i]:.4f}" for i in flagged),
                "image\tleave-one-out cosine distance to the rest of its identity (worst first)")
    write_lines(out / "image_list.txt", (n for n, f in zip(data.names, result.flags) if not f),
                f"images kept by marginface clean outliers (rule {args.rule}, threshold {result.threshold:.4f})")
    identities = sorted({data.classes[data.labels[i]] for i in flagged})
    report = {"images": len(data.names), "identities": len(data.classes), "rule": args.rule,
              "threshold": result.threshold, "calibration": result.calibration, "flagged_images": int(flagged.size),
              "identities_with_flags": len(identities), "kept_images": len(data.names) - int(flagged.size)}
    lines = [f"read {len(data.names)} images of {len(data.classes)} identities",
             *_calibration_lines(result.calibration, result.threshold),
             f"rule {args.rule}: flagged {flagged.size} images in {len(identities)} identities; "
             f"kept {report['kept_images']} (image_list.txt)"]
    _finish(args, out, report, f"outliers ({args.rule} rule)", outlier_items(data, result, args.max_sheet), lines)
    return 0


def _add_duplicates(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("duplicates", help="two labels, one person: identities with close centroids",
                              description="Centroid distance between every two identities of one set; pairs "
                              "under the threshold are listed (duplicates.tsv) and merged by union-find into "
                              "merge_map.tsv (label -> the group's identity with most images).")
    _source_args(parser)
    _common(parser)
    parser.set_defaults(func=run_duplicates)


def run_duplicates(args: argparse.Namespace) -> int:
    from marginface.cleaning.review import find_duplicates, pair_items
    from marginface.data.lists import write_lines, write_merge_map

    data = _load(args.embeddings)
    out = _out_dir(args)
    pairs, merge, threshold, summary = find_duplicates(data, args.threshold)
    write_lines(out / "duplicates.tsv", (f"{data.classes[a]}\t{data.classes[b]}\t{d:.4f}" for a, b, d in pairs),
                "identity\tidentity\tcentroid cosine distance")
    write_merge_map(out / "merge_map.tsv", {data.classes[a]: data.classes[b] for a, b in merge.items()},
                    "source\ttarget: merge the source identity's images into the target's")
    report = {"images": len(data.names), "identities": len(data.classes), "threshold": threshold,
              "calibration": summary, "pairs": len(pairs), "merged_identities": len(merge)}
    lines = [f"read {len(data.names)} images of {len(data.classes)} identities",
             *_calibration_lines(summary, threshold),
             f"{len(pairs)} duplicate pairs; merge map folds {len(merge)} identities into others (merge_map.tsv)"]
    _finish(args, out, report, "duplicate identities", pair_items(data, data, pairs, max_items=args.max_sheet), lines)
    return 0


def _add_overlap(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("overlap", help="training identities that are also test identities",
                              description="Centroid distance from every training identity to its nearest "
                              "identity of each test set; those under the threshold are written to "
                              "exclude_identities.txt (for data.exclude_identities) and overlap.tsv.")
    _source_args(parser, "--train", "the training set")
    parser.add_argument("--test", required=True, nargs="+", action="append", metavar="NPZ",
                        help="embeddings of a test set (.npz; several files of one root are one set); "
                        "repeat --test for several test sets")
    _common(parser, per_test=True)
    parser.set_defaults(func=run_overlap)


def run_overlap(args: argparse.Namespace) -> int:
    from pathlib import Path

    from marginface.cleaning.review import find_overlap, pair_items
    from marginface.data.lists import write_lines

    train = _load(args.train)
    tests = [_load(files) for files in args.test]
    labels = [Path(files[0]).stem for files in args.test]
    labels = [f"{x}.{t + 1}" if labels.count(x) > 1 else x for t, x in enumerate(labels)]  # unique names
    out = _out_dir(args)
    threshold = args.threshold[0] if args.threshold and len(args.threshold) == 1 else args.threshold
    found, thresholds, calibrations = find_overlap(train, tests, threshold)
    if args.sheet:
        _plot_overlap(out, train, tests, labels, thresholds, calibrations)
    summaries = [None if c is None else c.summary() for c in calibrations]
    write_lines(out / "overlap.tsv", (f"{train.classes[a]}\t{labels[t]}\t{tests[t].classes[b]}\t{d:.4f}"
                                      for a, t, b, d in found),
                "train identity\ttest set\ttest identity\tcentroid cosine distance")
    excluded = sorted({train.classes[a] for a, _, _, _ in found})
    write_lines(out / "exclude_identities.txt", excluded,
                "training identities close to a test identity: "
                + ", ".join(f"{x} (threshold {t:.4f})" for x, t in zip(labels, thresholds)))
    per_set = {labels[t]: sum(1 for f in found if f[1] == t) for t in range(len(tests))}
    report = {"train_images": len(train.names), "train_identities": len(train.classes),
              "test_identities": {labels[t]: len(x.classes) for t, x in enumerate(tests)},
              "thresholds": dict(zip(labels, thresholds)), "calibrations": dict(zip(labels, summaries)),
              "overlap_pairs": per_set, "excluded_identities": len(excluded)}
    lines = [f"read {len(train.classes)} training identities; test sets: "
             + ", ".join(f"{labels[t]} {len(x.classes)} identities" for t, x in enumerate(tests))]
    for t, label in enumerate(labels):
        lines += [f"{label}: " + line for line in _calibration_lines(summaries[t], thresholds[t])]
    lines.append("overlap pairs: " + ", ".join(f"{k} {v}" for k, v in per_set.items())
                 + f"; {len(excluded)} training identities to exclude (exclude_identities.txt)")
    items = []
    for t, test in enumerate(tests):
        pairs = [(a, b, d) for a, tt, b, d in found if tt == t]
        items += pair_items(train, test, pairs, ("train ", labels[t] + " "), args.max_sheet)
    _finish(args, out, report, "train/test identity overlap", items, lines)
    return 0


def _add_noise(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("noise", help="outlier precision/recall on planted label swaps (choose a rule)",
                              description="Swap the labels of a fraction of the images between identities "
                              "(several seeds), run both outlier rules with a threshold calibrated on the noisy "
                              "labels, and report precision and recall against the planted swaps.")
    _source_args(parser)
    parser.add_argument("--fraction", type=float, nargs="+", default=[0.05], help="fractions of images swapped")
    parser.add_argument("--min-images", type=int, default=1, help="only identities with this many images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="noise seeds")
    parser.add_argument("--threshold", type=float, default=None, help="fixed threshold (default: calibrated)")
    parser.add_argument("--k", type=float, default=3.0, help="robust rule: MADs above the median")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run_noise)


def run_noise(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from marginface.cleaning.review import noise_precision_recall, subset

    data = subset(_load(args.embeddings), args.min_images)
    reports = [noise_precision_recall(data, f, args.seeds, args.threshold, args.k)
               for f in tqdm(args.fraction, desc="noise levels", disable=args.json)]
    lines = [f"{data.embeddings.shape[0]} images of {len(data.classes)} identities (>= {args.min_images} images)"]
    for r in reports:
        for rule in ("threshold", "robust"):
            x = r[rule]
            lines.append(f"{100 * r['fraction']:.0f}% swapped (~{sum(r['swapped_images']) / len(r['seeds']):.0f} "
                         f"images), {rule} rule (t={x['threshold']:.3f}): precision {x['precision']:.3f} "
                         f"± {x['precision_std']:.3f}, recall {x['recall']:.3f} ± {x['recall_std']:.3f}")
    _print({"levels": reports}, args.json, "\n".join(lines))
    return 0


def _plot_overlap(out, train, tests, labels, thresholds, calibrations) -> None:
    import importlib.util

    from marginface.cleaning.review import nearest_test_distances

    if importlib.util.find_spec("matplotlib") is None:  # an optional extra: the lists and sheets do not need it
        print("(no distributions.png: pip install 'marginface[plot]' for it)", file=sys.stderr)
        return
    from marginface.cleaning.sheets import plot_distributions

    panels = [{"title": f"{label}: calibration and each training identity's nearest test identity",
               "same": c.same, "different": c.different, "threshold": t,
               "observed": nearest_test_distances(train, test), "observed_label": "train -> nearest test"}
              for label, test, t, c in zip(labels, tests, thresholds, calibrations) if c is not None]
    if panels:
        plot_distributions(panels, out / "distributions.png")
