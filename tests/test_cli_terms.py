"""Library errors name arguments in the caller's terms (`name`); the CLI alone puts its flags in their place."""

from __future__ import annotations

import argparse
import re

import pytest

from marginface.cli import _in_cli_terms, _leaf_parser, build_parser, main
from marginface.errors import UserError

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def _spelled(argv: list[str], message: str, error: type[Exception] = UserError) -> Exception:
    parser = build_parser()
    args = parser.parse_args(argv)
    err = error(message)
    _in_cli_terms(err, _leaf_parser(parser, args), args)
    return err


def test_names_become_the_command_s_own_options() -> None:
    argv = ["eval", "--checkpoint", "c.safetensors"]
    assert str(_spelled(argv, "`embeddings` needs `pairs`; `center_crop` or `images=DIR`")) == (
        "--embeddings needs --pairs; --center-crop or --images DIR")
    # a store_true option takes no value: `aligned=True` is the bare flag
    assert str(_spelled(argv, "pass `aligned=True`")) == "pass --aligned"
    # a name that is no option of this command stays as the library wrote it
    assert str(_spelled(argv, "`skip_bad` and `far`")) == "`skip_bad` and `far`"


def test_positionals_kinds_and_mapped_names() -> None:
    # positional: its metavar; a kind's own parser (prepare lfw-bin) is the one consulted
    assert str(_spelled(["export", "m.safetensors", "--onnx", "o.onnx"], "`model` and `out`")) == "MODEL and --onnx"
    assert str(_spelled(["prepare", "lfw-bin", "--lfw", "a", "--pairs", "p", "--out", "o"],
                        "drop `aligned`")) == "drop --aligned"
    # calibrate_model(write=False) is calibrate's --no-write (argument_flags of the command)
    assert str(_spelled(["calibrate", "m.safetensors"], "pass `write=False`")) == "pass --no-write"
    # OSErrors keep their type and read the same
    err = _spelled(["calibrate", "m.safetensors"], "`pairs` x is a folder", IsADirectoryError)
    assert isinstance(err, IsADirectoryError) and str(err) == "--pairs x is a folder"


def test_library_messages_have_no_flags_and_the_cli_adds_them(tmp_path, capsys) -> None:
    from marginface.evaluation.verification import evaluate_cli_sets
    from marginface.inference.calibrate import calibrate_model

    cases = [(lambda: evaluate_cli_sets(checkpoint=None, backbone=None, embeddings="e.npz"), "`embeddings`"),
             (lambda: evaluate_cli_sets(checkpoint="c", backbone=None, pairs="p.txt"), "`pairs` and `images`"),
             (lambda: calibrate_model(tmp_path / "m.safetensors", 1e-3), "`pairs=FILE`")]
    for call, words in cases:
        with pytest.raises(ValueError) as caught:
            call()
        assert words in str(caught.value) and not FLAG.search(str(caught.value)), str(caught.value)
    assert main(["calibrate", str(tmp_path / "m.safetensors")]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "marginface calibrate: give exactly one source of pairs: --pairs FILE (.bin or pairs.txt + --images) or "
        "--folder DIR")
    with pytest.raises(ValueError, match="^--pairs and --images go together"):  # --debug: the same words
        main(["--debug", "eval", "--checkpoint", "c.safetensors", "--pairs", "p.txt"])


def test_every_argument_flags_entry_names_an_option_of_its_command() -> None:
    """A mapped name whose flag was renamed would silently stop being translated."""
    def walk(parser: argparse.ArgumentParser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)

    mapped = 0
    for parser in walk(build_parser()):
        flags = {f for a in parser._actions for f in a.option_strings}
        for name, flag in (parser.get_default("argument_flags") or {}).items():
            assert flag in flags, f"{parser.prog}: argument_flags {name} -> {flag}, no such option"
            mapped += 1
    assert mapped == 2


def test_checkpoint_split_names_its_shards_option(tmp_path, capsys) -> None:
    from marginface.training.reshard import rewrite

    with pytest.raises(UserError, match="^`shards` must be >= 1, got 0$"):
        rewrite(tmp_path / "run", tmp_path / "out", 0)
    assert main(["checkpoint", "split", str(tmp_path / "run"), str(tmp_path / "out"), "--shards", "0"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == "marginface checkpoint: --shards must be >= 1, got 0"
