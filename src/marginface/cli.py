"""``marginface <command>``: thin. Each command parses its arguments and calls library functions.

To add a command: write ``add_<name>(subparsers)`` that registers a parser with ``set_defaults(func=...)`` -- in
its own module next to the library code it calls (e.g. ``align/cfp_command.py``) -- and append it to
``_COMMANDS``. Heavy imports happen inside the command functions, so ``--help`` is fast. Command functions do not
catch errors: they raise ``marginface.errors.UserError`` (or ValueError / FileNotFoundError) with a message that
names the thing and the fix, and ``main`` prints it in one line and returns 2.
"""

from __future__ import annotations

import argparse
import errno
import pickle
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from marginface.analysis.command import add_plot
from marginface.errors import UserError
from marginface.evaluation.eval_command import add_table_options  # light module: argparse only


def _add_losses(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("losses", help="list the registered margin losses")
    parser.add_argument("--params", action="store_true",
                        help="also list each loss's parameters and their defaults (loss.params in a config)")
    parser.set_defaults(func=_run_losses)


def _run_losses(args: argparse.Namespace) -> int:
    from marginface import losses

    for name in losses.available():
        if not args.params:
            print(name)
            continue
        params = ", ".join(f"{k}={v!r}" for k, v in losses.parameters(name).items())
        print(f"{name}: {params or '(no parameters)'}")
    return 0


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
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
    parser.set_defaults(func=_run_eval)
    add_table_options(parser)  # --ijb, --json (one JSON for every set and IJB): evaluation/eval_command.py


def _run_eval(args: argparse.Namespace) -> int:
    from marginface.evaluation import verification
    from marginface.evaluation.eval_command import evaluate_sets

    results = evaluate_sets(args)
    print(verification.format_table(results))
    if args.roc:
        print(f"ROC plot: {verification.plot_roc(results, args.roc)}")
    return 0


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a face model from a YAML preset (+ key=value overrides)",
                                   description="Train from a preset (marginface configs lists them) or a YAML file, "
                                   "with key=value overrides. Rerunning the same command resumes from the last "
                                   "checkpoint; Ctrl-C / SIGTERM checkpoint the current step and stop.")
    parser.add_argument("--config", help="preset name or YAML file, e.g. synthetic_mobilefacenet_arcface")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first instead of resuming")
    parser.add_argument("--allow-schedule-change", action="store_true",
                        help="resume although lr / steps / milestones differ from the saved run (recorded in "
                        "its history.jsonl)")
    parser.add_argument("overrides", nargs="*", help="section.field=value, e.g. optim.lr=0.05 loss.name=cosface")
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from marginface.training import presets

    if args.list:
        print(presets.preset_listing())
        return 0
    if not args.config and not args.overrides:
        raise UserError(presets.no_config_message())
    from marginface.training.config import load_config
    from marginface.training.distributed import shutdown
    from marginface.training.trainer import Trainer, clear_run, plot_loss_curve

    config = load_config(args.config and presets.resolve_config(args.config), args.overrides)
    if args.fresh:
        clear_run(config.output_dir)
    trainer = Trainer(config, allow_schedule_change=args.allow_schedule_change).setup()
    try:
        results = trainer.fit()
    except BaseException:
        shutdown(wait_for_peers=False)
        raise
    shutdown()
    if trainer.dist.is_main:
        plot_loss_curve(config.output_dir)
        print(f"final validation: {results['final']}  best: {results['best']}")
    return 0


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="train on synthetic identities for a few minutes (CPU)",
        description="Train the demo model. An interrupted demo (Ctrl-C / SIGTERM) resumes from its checkpoint "
        "when the same command is run again; a finished one (report.html written) is deleted and run anew.")
    parser.add_argument("--output-dir", default="runs/demo",
                        help="run folder (an interrupted demo there resumes; a finished one is replaced)")
    parser.add_argument("--steps", type=int, default=None, help="default: the demo's 250 steps")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first instead of resuming")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from marginface.experiments.demo import run_demo

    run_demo(args.output_dir, args.steps, fresh=args.fresh)
    return 0


def _add_prepare(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prepare", help="convert data sets: folder -> .rec/.idx, ...",
                                   description="Convert data sets. One sub-command per conversion.")
    kinds = parser.add_subparsers(dest="prepare_kind", required=True, metavar="KIND")
    for add in _PREPARE_KINDS:
        add(kinds)


def _add_prepare_rec(kinds: argparse._SubParsersAction) -> None:
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
    parser.set_defaults(func=_run_prepare_rec)


def _run_prepare_rec(args: argparse.Namespace) -> int:
    from marginface.cleaning.lists import read_lines
    from marginface.data.folder import FolderDataset
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


def _add_align(subparsers: argparse._SubParsersAction) -> None:
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
    parser.set_defaults(func=_run_align)


def _align_options(args: argparse.Namespace):
    from marginface.align.pipeline import AlignOptions

    kwargs = {"min_face": args.min_face} if args.detector.startswith("mtcnn") else {}
    return AlignOptions(detector=args.detector, detector_kwargs=kwargs, policy=args.keep,
                        fallback=args.fallback, ext="." + args.format, workers=args.workers,
                        skip_bad=getattr(args, "skip_bad", False))


def _run_align(args: argparse.Namespace) -> int:
    from marginface.align.pipeline import align_folder

    report = align_folder(args.src, args.dst, _align_options(args))
    print(report.summary())
    print(f"report: {args.dst}/align_report.json")
    return 0


def _add_prepare_lfw_bin(kinds: argparse._SubParsersAction) -> None:
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
    parser.set_defaults(func=_run_prepare_lfw_bin, fallback="median")


def _run_prepare_lfw_bin(args: argparse.Namespace) -> int:
    from marginface.align.lfw import build_verification_bin

    report = build_verification_bin(args.lfw, args.pairs, args.out, _align_options(args), args.aligned)
    print(f"packed {report.written} pre-aligned images" if args.aligned else report.summary())
    print(f"wrote {args.out}")
    return 0


# `marginface prepare <kind>`: one _add_prepare_<kind>(kinds) per conversion
_PREPARE_KINDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_prepare_rec,
    _add_prepare_lfw_bin,
]
from marginface.align.cfp_command import add_prepare_cfp  # noqa: E402 (light module: argparse only)
from marginface.cleaning.command import add_clean  # noqa: E402 (light module: argparse only)
from marginface.data.degrade import add_prepare_degrade  # noqa: E402 (light module: argparse, io, pathlib)
from marginface.inference.commands import add_inference_commands  # noqa: E402 (light module: argparse only)
from marginface.training.checkpoint_command import add_checkpoint  # noqa: E402 (light module: argparse only)
from marginface.training.presets import add_configs  # noqa: E402 (light module: argparse, json, pathlib)
from marginface.training.search_command import add_search  # noqa: E402 (light module: argparse only)
from marginface.training.study_command import add_study  # noqa: E402 (light module: argparse, json, shlex)

_PREPARE_KINDS += [add_prepare_cfp, add_prepare_degrade]

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_losses,
    _add_train,
    _add_demo,
    _add_eval,
    _add_prepare,
    _add_align,
    add_plot,
    add_inference_commands,
    add_clean,
    add_search,
    add_study,
    add_configs,
    add_checkpoint,
]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help shows each option's default, except the uninformative ones (None, False: flags and optional paths)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command parser: defaults shown in --help (sub-parsers inherit the class); no abbreviations
    (``--modle`` is not silently anything); an unknown option is named, with the closest known one, even when
    argparse would first complain about a required option it hides (``--modle x`` -> "--model is required")."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._arg_strings: list[str] = []

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        self._arg_strings = [str(a) for a in (sys.argv[1:] if args is None else args)]
        namespace, extras = super().parse_known_args(args, namespace)
        if self._is_leaf() and self._unknown_options(extras):
            self.error(self._unknown_message(self._unknown_options(extras)))
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        unknown = self._unknown_options(self._arg_strings) if self._is_leaf() else []
        super().error(self._unknown_message(unknown) if unknown else message)

    def _is_leaf(self) -> bool:
        """A parser without sub-commands: every option typed after its command word is one of its own."""
        return not any(isinstance(a, argparse._SubParsersAction) for a in self._actions)

    def _unknown_options(self, words: Sequence[str]) -> list[str]:
        words = list(words[: list(words).index("--")]) if "--" in words else list(words)  # then positionals only
        options = [w.split("=", 1)[0] for w in words if w.startswith("-") and w != "-"
                   and not self._negative_number_matcher.match(w)]
        return [o for o in options if o not in self._option_string_actions]

    def _unknown_message(self, unknown: list[str]) -> str:
        import difflib

        parts = []
        for option in unknown:
            close = difflib.get_close_matches(option, list(self._option_string_actions), n=1, cutoff=0.6)
            parts.append(f"unrecognized argument {option}" + (f"; did you mean {close[0]}?" if close else ""))
        return "; ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="marginface",
        description="Face recognition with margin-based softmax losses: train, align, prepare, evaluate.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(subparsers)
    return parser


# Errors a user can fix: printed as one or two lines, exit code 2 (argparse's own code for usage errors).
# FloatingPointError: training diverged (the trainer's message names the step and the remedy). OSError: a full
# disk, an unreadable file (FileNotFoundError, PermissionError... are OSErrors). UnpicklingError: a refused .bin.
# MemoryError: an input asking for more memory than there is. SafetensorError (matched by name: not imported
# here): safetensors' own errors, e.g. a full disk while writing a checkpoint.
_USER_ERRORS = (ValueError, OSError, ImportError, FloatingPointError, pickle.UnpicklingError, MemoryError)
_USER_ERROR_NAMES = ("SafetensorError",)


def _is_user_error(err: BaseException) -> bool:
    return isinstance(err, _USER_ERRORS) or type(err).__name__ in _USER_ERROR_NAMES


def _error_line(err: BaseException) -> str:
    """The message of a refusal, with the remedy added for the ones whose own text has none."""
    text = str(err) or type(err).__name__
    if isinstance(err, MemoryError):
        return f"out of memory ({text}): an input asks for more memory than this machine has"
    if getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in text:
        return f"{text}: the disk is full; free space (or write elsewhere) and run again"
    return text


def _close_progress_bars() -> None:
    """End the line of any progress bar an error left open, so the error message starts a line of its own
    (``enrol:  40%|####  | 2/5 marginface enroll: no face found ...`` otherwise)."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:  # no bar was ever started
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error prints ``marginface <command>: <message>`` and returns 2 (``--debug``:
    the traceback), Ctrl-C prints one line and returns 130."""
    args = build_parser().parse_args(argv)
    # "prepare cfp", "clean outliers": the words the user typed, for the error prefix
    command = " ".join(str(w) for w in (args.command, getattr(args, "prepare_kind", None),
                                        getattr(args, "clean_kind", None)) if w)
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        if args.debug or not _is_user_error(err):
            raise
        _close_progress_bars()
        print(f"marginface {command}: {_error_line(err)}", file=sys.stderr)
        if not isinstance(err, UserError):
            print("  (run with marginface --debug ... for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        if args.debug:
            raise
        print(f"marginface {command}: interrupted" + (f": {stop}" if str(stop) else ""), file=sys.stderr)
        return int(getattr(stop, "exit_code", 130))


if __name__ == "__main__":
    sys.exit(main())
