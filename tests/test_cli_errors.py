"""The CLI's one error style: a user error is one or two lines on stderr and exit code 2; --debug re-raises."""

from __future__ import annotations

import argparse

import pytest

from marginface.cli import main


def test_user_error_is_short_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", "--embeddings", "missing.npz", "--roc", ""])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("marginface eval: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(ValueError, match="--embeddings needs --pairs"):
        main(["--debug", "eval", "--embeddings", "missing.npz", "--roc", ""])


def _all_parsers(parser: argparse.ArgumentParser, name: str = "marginface"):
    """Every parser of the command line (sub-commands and their sub-commands), with its command words."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                yield from _all_parsers(sub, f"{name} {word}")


def test_every_help_shows_the_defaults() -> None:
    """Each option with an informative default (not None / False / []) says it in --help."""
    from marginface.cli import build_parser

    checked = 0
    for name, parser in _all_parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            default = action.default
            if not action.option_strings or action.help == argparse.SUPPRESS or default is None \
                    or default is False or default == [] or default == argparse.SUPPRESS:
                continue
            assert action.help, f"{name} {action.option_strings[0]} has a default but no help text to show it"
            assert f"(default: {default})" in text, f"{name} {action.option_strings[0]}"
            checked += 1
    assert checked >= 20  # the walk reached the sub-commands


def test_losses_params_lists_each_loss_with_its_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    import inspect

    from marginface import losses

    assert main(["losses", "--params"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == losses.available()
    for line in lines:
        name = line.split(":")[0]
        # independent reference: the factory's own signature
        signature = inspect.signature(losses.LOSSES[name]).parameters.values()
        expected = [f"{p.name}={p.default!r}" for p in signature if p.name not in ("embedding_size", "num_classes")]
        assert line == f"{name}: {', '.join(expected)}"
    assert "arcface: scale=64.0, margin=0.5, easy_margin=False" in lines


def test_wrong_backbone_or_size_is_two_lines(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong --backbone / --embedding-size used to print torch's 21 KB list of state-dict keys."""
    import torch
    from safetensors.torch import save_file

    from marginface import backbones
    from marginface.evaluation.embed import load_backbone

    torch.manual_seed(0)
    model = backbones.create("mobilefacenet", embedding_size=32)
    path = tmp_path / "m.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(path))
    for name, size in (("mobilefacenet", 64), ("iresnet18", 32)):
        with pytest.raises(ValueError) as err:
            load_backbone(name, path, size)
        lines = str(err.value).splitlines()
        assert len(lines) == 2 and lines[0].startswith(f"checkpoint {path} does not fit this backbone: ")
        assert len(str(err.value)) < 400
    assert "It holds another embedding size than --embedding-size 64: pass the checkpoint's" in _message(
        load_backbone, "mobilefacenet", path, 64)
    assert "It holds another backbone: pass the --backbone it was trained with" in _message(
        load_backbone, "iresnet18", path, 32)


def _message(function, *args) -> str:
    try:
        function(*args)
    except ValueError as err:
        return str(err)
    raise AssertionError("no error")
