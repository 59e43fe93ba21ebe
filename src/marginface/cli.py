"""``marginface <command>``: thin. Each command parses its arguments and calls library functions.

To add a command: write ``_add_<name>(subparsers)`` that registers a parser with ``set_defaults(func=...)``
and append it to ``_COMMANDS``. Heavy imports happen inside the command functions, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _add_losses(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("losses", help="list the registered margin losses")
    parser.set_defaults(func=_run_losses)


def _run_losses(args: argparse.Namespace) -> int:
    from marginface import losses

    for name in losses.available():
        print(name)
    return 0


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_losses,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marginface", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
