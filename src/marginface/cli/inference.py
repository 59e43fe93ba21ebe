"""``marginface verify | enroll | identify | export | calibrate | info | convert``: thin CLI over marginface.inference.

Each prints lines a person reads, or one JSON object with ``--json``. Errors are raised (UserError /
ValueError / FileNotFoundError) and printed by ``marginface.cli.main``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


def add_inference_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the seven inference commands."""
    for add in (_add_verify, _add_enroll, _add_identify, _add_export, _add_calibrate, _add_info, _add_convert):
        add(subparsers)


def _face_options(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    parser.add_argument("--model", required=model_required,
                        help="model file: .safetensors (marginface), .pth (insightface arcface_torch), .onnx, "
                        "MXNet prefix-0000.params / prefix-symbol.json / prefix")
    parser.add_argument("--device", default="cpu", help="torch device for the model, e.g. cuda:0")
    parser.add_argument("--keep", default="centre", choices=["centre", "largest", "score"],
                        help="face used when a photo has several (as marginface align)")
    parser.add_argument("--min-face", type=float, default=20.0, help="smallest face searched, pixels")
    parser.add_argument("--detector", default="mtcnn", help="face detector: mtcnn, mtcnn-torch or dlib")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _threads_option(parser)


def _threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, help="threads for the model (default: $MARGINFACE_THREADS, else "
                        "min(physical cores, 4) less the cores busy now, at least 1; docs/inference.md)")


def _recognizer(args: argparse.Namespace, model: str | None = None) -> Any:
    from marginface.inference.recognizer import FaceRecognizer

    return FaceRecognizer.load(model or args.model, device=args.device, detector=args.detector,
                               policy=args.keep, min_face=args.min_face, threads=args.threads)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=1, default=_json_default))


def _json_default(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value):
        return asdict(value)
    return str(value)


def score_versus_threshold(score: float, threshold: float) -> str:
    """``cosine 0.734512 >= threshold 0.612000``: six decimals, and the difference when those print the same
    (a collapsed model scores 1.0 against a threshold of 0.99999997: the line must not read ``1.0000 < 1.0000``)."""
    sign = ">=" if score >= threshold else "<"
    text = f"cosine {score:.6f} {sign} threshold {threshold:.6f}"
    if f"{score:.6f}" == f"{threshold:.6f}":
        text += f" (cosine - threshold = {score - threshold:.3g})"
    return text


def _face_note(info: Any) -> str:
    if info.aligned_input:
        return f"{info.input}: aligned input"
    note = f"{info.input}: {info.faces} faces, kept the {info.kept}" if info.several else f"{info.input}: 1 face"
    return note


# ------------------------------------------------------------------------------------------ verify
def _add_verify(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("verify", help="are two photos the same person? (cosine vs the card's threshold)")
    parser.add_argument("a", metavar="A", help="first photo (raw or an aligned 112x112 face)")
    parser.add_argument("b", metavar="B", help="second photo")
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the card's calibrated one)")
    _face_options(parser)
    parser.set_defaults(func=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    result = _recognizer(args).verify(args.a, args.b, threshold=args.threshold)
    if args.json:
        _print_json(result)
        return 0
    verdict = "same person" if result.same else "different people"
    print(f"{verdict}: {score_versus_threshold(result.score, result.threshold)}")
    for info in result.faces:
        print("  " + _face_note(info))
    return 0


# ------------------------------------------------------------------------------------------ enroll
def _add_enroll(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("enroll", help="enrol DIR/<identity>/<images> into a gallery folder")
    parser.add_argument("folder", metavar="DIR", help="photos, DIR/<identity>/<image>")
    parser.add_argument("--gallery", required=True, help="gallery folder (created if absent, else extended)")
    parser.add_argument("--skip-bad", action="store_true", help="skip (and list) unreadable or faceless photos")
    _face_options(parser)
    parser.set_defaults(func=_run_enroll)


def _run_enroll(args: argparse.Namespace) -> int:
    from pathlib import Path

    from marginface.inference.gallery import Gallery

    recognizer = _recognizer(args)
    exists = (Path(args.gallery) / "CURRENT").is_file()
    before = Gallery.load(args.gallery) if exists else Gallery.create(recognizer.card)
    batch = before.embed_folder(recognizer, args.folder, skip_bad=args.skip_bad)  # outside the lock: slow
    # load again under the folder's lock: another enroll may have saved meanwhile; both land (see Gallery.update)
    with Gallery.update(args.gallery, recognizer.card, on_wait=lambda m: print(m, file=sys.stderr)) as gallery:
        gallery.model_path = gallery.model_path or str(Path(args.model).resolve())
        report = gallery.apply(batch)
    if args.json:
        _print_json({**report, "gallery": args.gallery})
        return 0
    print(f"enrolled {report['images']} images of {report['identities']} identities; the gallery {args.gallery} "
          f"now holds {report['gallery_size']}")
    if report["already_enrolled"]:
        print(f"  {len(report['already_enrolled'])} images were already enrolled (same file bytes) and were skipped")
    for item in report["skipped"]:
        print(f"  skipped {item['path']}: {item['error']}")
    for item in report["several_faces"]:
        print(f"  {item['path']}: {item['faces']} faces, kept the {item['kept']}")
    return 0


# ------------------------------------------------------------------------------------------ identify
def _add_identify(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("identify", help="top-k gallery identities for each photo")
    parser.add_argument("images", nargs="+", metavar="IMG", help="photos to identify")
    parser.add_argument("--gallery", required=True, help="gallery folder (marginface enroll)")
    parser.add_argument("--gallery-version", help="read this saved version (e.g. v000003) instead of the current")
    parser.add_argument("-k", type=int, default=5, help="results per photo")
    parser.add_argument("--exact", choices=["auto", "yes", "no"], default="auto",
                        help="exact search (auto: exact up to the gallery's approximate_above size)")
    _face_options(parser, model_required=False)
    parser.set_defaults(func=_run_identify, argument_flags={"version": "--gallery-version"})  # Gallery.load(version=)


def _run_identify(args: argparse.Namespace) -> int:
    from marginface.errors import UserError
    from marginface.inference.gallery import Gallery

    gallery = Gallery.load(args.gallery, version=args.gallery_version)
    model = args.model or gallery.model_path
    if not model:
        raise UserError(f"the gallery {args.gallery} does not record its model: pass --model")
    recognizer = _recognizer(args, model)
    vectors, infos = recognizer.embed_with_info(list(args.images))
    exact = {"auto": None, "yes": True, "no": False}[args.exact]
    results = gallery.search(vectors, args.k, model=recognizer.card, exact=exact)
    threshold = recognizer.card.threshold
    if args.json:
        _print_json({"threshold": threshold, "results": [
            {"image": info.input, "face": info, "matches": [m.__dict__ for m in matches],
             "match": _best_match(matches, threshold)} for info, matches in zip(infos, results)]})
        return 0
    for info, matches in zip(infos, results):
        print(_face_note(info))
        for rank, match in enumerate(matches, 1):
            print(f"  {rank}. {_printable(match.name)}  cosine {match.score:.6f}{_flag(rank, match.score, threshold)}")
    return 0


def _best_match(matches: list[Any], threshold: float | None) -> str | None:
    """The identity a photo is identified as: the best-scoring one if it reaches the threshold, else None.
    One photo is one person, so at most one result is "the match" (others above the threshold are only that)."""
    return matches[0].name if matches and threshold is not None and matches[0].score >= threshold else None


def _flag(rank: int, score: float, threshold: float | None) -> str:
    if threshold is None:
        return ""
    if score < threshold:
        return "  (below threshold)"
    return "  (match)" if rank == 1 else "  (also above threshold)"


def _printable(name: str) -> str:
    """``name`` as typed, or its escaped repr when it holds control characters (a newline or an ANSI escape
    in an identity folder's name must not rewrite the terminal or add fake result lines)."""
    return name if name.isprintable() else ascii(name)


# ------------------------------------------------------------------------------------------ export
def _add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a model to ONNX (fp32, --fp16 or --int8) with its card")
    parser.add_argument("model", metavar="MODEL", help=".safetensors / checkpoint folder / insightface .pth")
    parser.add_argument("--onnx", required=True, help="output .onnx path")
    parser.add_argument("--fp16", action="store_true", help="fp16 weights and activations (fp32 input/output)")
    parser.add_argument("--int8", action="store_true", help="INT8 static quantization (needs --calibration-images)")
    parser.add_argument("--calibration-images", help="aligned 112x112 faces (folder, searched recursively)")
    parser.add_argument("--calibration-count", type=int, default=200, help="faces used to calibrate INT8")
    parser.add_argument("--int8-method", default="percentile", choices=["percentile", "minmax", "entropy"],
                        help="how INT8 activation ranges are set from the calibration faces")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=_run_export, argument_flags={"out": "--onnx"})  # export_onnx(model, out, ...)


def _run_export(args: argparse.Namespace) -> int:
    from marginface.inference.export import export_onnx

    report = export_onnx(args.model, args.onnx, fp16=args.fp16, int8=args.int8,
                         calibration_images=args.calibration_images, calibration_count=args.calibration_count,
                         int8_method=args.int8_method)
    _print_json(report) if args.json else print(report.describe())
    return 0


# ------------------------------------------------------------------------------------------ calibrate
def _add_calibrate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("calibrate", help="threshold at a target FAR, written into the model's card")
    parser.add_argument("model", metavar="MODEL", help="model file whose card gets the threshold: .safetensors "
                        "(e.g. runs/x/best.safetensors) or .onnx")
    parser.add_argument("--pairs", help="insightface .bin, or an LFW-format pairs.txt (with --images)")
    parser.add_argument("--images", help="image folder the pairs.txt refers to")
    parser.add_argument("--folder", help="labelled photos DIR/<identity>/<images> (all pairs are used)")
    parser.add_argument("--far", type=float, default=1e-3, help="target false-accept rate")
    parser.add_argument("--max-images", type=int, default=4000, help="--folder: seeded subset above this")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the model file as it is")
    parser.add_argument("--device", default="cpu", help="torch device for the model, e.g. cuda:0")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _threads_option(parser)
    parser.set_defaults(func=_run_calibrate, argument_flags={"write": "--no-write"})  # calibrate_model(write=)


def _run_calibrate(args: argparse.Namespace) -> int:
    from marginface.inference.calibrate import calibrate_model

    result = calibrate_model(args.model, args.far, pairs=args.pairs, images=args.images, folder=args.folder,
                             write=not args.no_write, device=args.device, max_images=args.max_images,
                             threads=args.threads)
    if args.json:
        _print_json({**result.__dict__, "written": not args.no_write})
        return 0
    print(result.describe())
    if math.isinf(result.threshold):
        print("  (no threshold accepts any genuine pair within this FAR: the model does not separate these pairs)")
    print(f"written into the card of {args.model}" if not args.no_write else "not written (--no-write)")
    return 0


# ------------------------------------------------------------------------------------------ info
def _add_info(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="print a model's card (contract, training, thresholds)")
    parser.add_argument("model", metavar="MODEL", help="model file: .safetensors (e.g. runs/x/best.safetensors), "
                        "a checkpoint folder, an MXNet prefix or -0000.params, .pth (arcface_torch, CASIA) or .onnx")
    parser.add_argument("--json", action="store_true", help="print the card as one JSON object")
    parser.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from marginface.models.load import load_model

    card = load_model(args.model).card
    if args.json:
        print(card.to_json())
        return 0
    print(f"{args.model}")
    print(card.describe())
    return 0


# ------------------------------------------------------------------------------------------ convert
def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="write a foreign model (MXNet, arcface_torch .pth) as our .safetensors with a card",
        description="Read IN with load_model (MXNet prefix-0000.params / -symbol.json / prefix, .pth, "
        "safetensors) and write OUT.safetensors: the weights under our backbone's names and the model card.")
    parser.add_argument("src", metavar="IN", help="the model: MXNet prefix or .params, .pth, .safetensors")
    parser.add_argument("out", metavar="OUT", help="output .safetensors path")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")
    parser.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from marginface.models.load import convert_model

    card = convert_model(args.src, args.out)
    if args.json:
        print(card.to_json())
        return 0
    print(f"wrote {args.out}")
    print(card.describe())
    return 0
