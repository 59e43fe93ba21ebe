"""``marginface <command>``: thin. Each command parses its arguments and calls library functions.

One module per area registers its commands: ``train.py`` (losses, train, demo, configs), ``eval.py``, ``data.py``
(prepare rec / degrade), ``align.py`` (align, prepare lfw-bin / cfp), ``analysis.py`` (plot), ``inference.py``
(verify, enroll, identify, export, calibrate, info, convert), ``cleaning.py`` (clean), ``search.py``, ``study.py``,
``checkpoint.py``. To add a command: write ``add_<name>(subparsers)`` that registers a parser with
``set_defaults(func=...)`` in the module of its area, and append it to ``_COMMANDS``. These modules import only the
standard library and each other at the top: the library (torch, numpy) is imported inside the command functions, so
``import marginface.cli`` and ``marginface --help`` stay fast (``tests/test_cli_imports.py`` holds it). Command
functions do not catch errors: they raise ``marginface.errors.UserError`` (or ValueError / FileNotFoundError) with
a message that names the thing and the fix, and ``main`` -- the one place that handles them -- prints it in one
line and returns 2. Library messages name arguments in library terms (`center_crop`); ``main`` puts the command's
own flag (``--center-crop``) in their place (``_in_cli_terms``), so no library module needs to know the flags.
A library name that is not the parser's ``dest`` is mapped by the command (``set_defaults(argument_flags={"name":
"--backbone"})``); a flag in library text only inside a whole command line (``marginface calibrate MODEL --pairs``),
which ``tests/test_cli_terms.py`` checks over every string of the library.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from marginface.cli.align import add_align
from marginface.cli.analysis import add_plot
from marginface.cli.checkpoint import add_checkpoint
from marginface.cli.cleaning import add_clean
from marginface.cli.data import add_prepare
from marginface.cli.eval import add_eval
from marginface.cli.inference import add_inference_commands
from marginface.cli.search import add_search
from marginface.cli.study import add_study
from marginface.cli.train import add_configs, add_demo, add_losses, add_train
from marginface.errors import UserError, is_user_error

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_losses,
    add_train,
    add_demo,
    add_eval,
    add_prepare,
    add_align,
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


def _error_line(err: BaseException) -> str:
    """The message of a refusal, with the remedy added for the ones whose own text has none."""
    text = str(err) or type(err).__name__
    if isinstance(err, MemoryError):
        return f"out of memory ({text}): an input asks for more memory than this machine has"
    if getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in text:
        return f"{text}: the disk is full; free space (or write elsewhere) and run again"
    return text


# A library message names a function argument as `name` or `name=value` (backquoted, in the caller's terms);
# _in_cli_terms puts the command's own option in its place.
_ARGUMENT = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=([^`]*))?`")


def _leaf_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command that ran (``prepare cfp``: the ``cfp`` parser), followed by the words typed."""
    while True:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or getattr(args, subparsers[0].dest, None) is None:
            return parser
        parser = subparsers[0].choices[getattr(args, subparsers[0].dest)]


def _option_spelling(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, argparse.Action]:
    """``{argument name: the option that sets it}`` of one command: each option's ``dest`` (``center_crop``:
    ``--center-crop``), plus the names a command maps itself (``set_defaults(argument_flags={"out": "--onnx"})``:
    the library argument ``out`` is this command's ``--onnx``)."""
    actions = {a.dest: a for a in parser._actions if a.dest not in (argparse.SUPPRESS, "help")}
    by_flag = {flag: a for a in parser._actions for flag in a.option_strings}
    for name, flag in (getattr(args, "argument_flags", None) or {}).items():
        if flag in by_flag:
            actions[name] = by_flag[flag]
    return actions


def _in_cli_terms(err: BaseException, parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rewrite a library error's message in the command's terms, in place (so that ``--debug``'s traceback says
    the same): `center_crop` -> ``--center-crop``, `images=DIR` -> ``--images DIR``, `skip_bad=True` ->
    ``--skip-bad``, `write=False` with ``argument_flags={"write": "--no-write"}`` -> ``--no-write``; a positional
    argument -> its metavar. The one place where flags enter library messages; a
    name that is no option of this command stays as the library wrote it."""
    if len(err.args) != 1 or not isinstance(err.args[0], str) or "`" not in err.args[0]:
        return
    actions = _option_spelling(parser, args)

    def spell(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        action = actions.get(name)
        if action is None:
            return match.group(0)
        if not action.option_strings:  # a positional: MODEL, SRC ...
            return str(action.metavar or action.dest.upper())
        flag = next((f for f in action.option_strings if f.startswith("--")), action.option_strings[0])
        takes_value = action.nargs != 0
        return f"{flag} {value}" if value is not None and takes_value else flag

    err.args = (_ARGUMENT.sub(spell, err.args[0]),)


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
    parser = build_parser()
    args = parser.parse_args(argv)
    # "prepare cfp", "clean outliers": the words the user typed, for the error prefix
    command = " ".join(str(w) for w in (args.command, getattr(args, "prepare_kind", None),
                                        getattr(args, "clean_kind", None)) if w)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # `marginface configs | head`: the reader closed the pipe. Quiet, like a Unix tool killed by SIGPIPE; stdout
        # goes to /dev/null so the interpreter's final flush cannot raise the same error again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as err:
        if is_user_error(err):
            _in_cli_terms(err, _leaf_parser(parser, args), args)
        if args.debug or not is_user_error(err):
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

