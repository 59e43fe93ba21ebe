"""Library errors name arguments in the caller's terms (`name`); the CLI alone puts its flags in their place."""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from pathlib import Path

import pytest

from marginface.cli import _in_cli_terms, _leaf_parser, build_parser, main
from marginface.errors import UserError
from tests.data.helpers import unreadable_folder

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


# A flag may appear in library text only as part of a whole command line the user would type, which no single
# command's parser could translate: `marginface <command> ... --flag` (a recipe naming a full command, e.g. "run
# marginface calibrate MODEL --pairs ... first") or another program's own line (`torchrun --nproc_per_node=N`,
# `pip install --no-deps X`). "A whole command line" = the flag follows the program's name within one clause (no
# , ; : ( ) between them). Every other flag-like word is the CLI's to add: the library names the argument (`fresh`).
_COMMAND_LINE = re.compile(r"(?:\bmarginface [a-z][a-z-]*|\btorchrun|\bpip install)[^,;:()]*$")
_LIBRARY = Path(__file__).resolve().parents[1] / "src" / "marginface"


def _texts(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, text)`` of every string literal that is not a docstring; an f-string is one text with each
    ``{value}`` read as ``X`` (so "marginface align {root} --fallback" stays one command line)."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    inside_fstring = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in ast.walk(node)
                      if part is not node}
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and id(node) not in inside_fstring:
            texts.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
              and id(node) not in inside_fstring):
            texts.append((node.lineno, node.value))
    return texts


def _stray_flags(text: str) -> list[str]:
    """The flags of ``text`` that are not part of a command line (see _COMMAND_LINE); a literal that is one flag
    alone (``"--config"``, ``"--untracked-files=no"``) is an argv element for a subprocess, not prose."""
    if re.fullmatch(r"--[a-z][\w-]*(=\S*)?", text):
        return []
    return [m.group(0) for m in FLAG.finditer(text) if not _COMMAND_LINE.search(text[:m.start()])]


def test_library_text_names_arguments_not_flags() -> None:
    """Every message outside cli/ -- raised, built in a variable or a helper, f-strings included -- names an
    argument (`skip_bad=True`), never the flag of the command that happens to run it (``--skip-bad``): the library
    cannot know which command (or Python caller) that is, and `marginface.cli.main` puts the flag in."""
    stray, messages = [], 0
    for path in sorted(_LIBRARY.rglob("*.py")):
        if path.relative_to(_LIBRARY).parts[0] == "cli":
            continue
        for line, text in _texts(ast.parse(path.read_text(encoding="utf-8"))):
            messages += " " in text
            stray += [f"{path.relative_to(_LIBRARY)}:{line}: {flag} in {text!r}" for flag in _stray_flags(text)]
    assert messages > 500  # the scan reads the library's prose at all
    assert not stray, "\n".join(stray)


def test_the_scan_tells_command_lines_from_stray_flags() -> None:
    assert _stray_flags("run marginface calibrate X --pairs ... --far 1e-3 first, or pass a threshold") == []
    assert _stray_flags("launch it with torchrun --nproc_per_node=N or set loss.sharded=false") == []
    assert _stray_flags("--config") == []
    assert _stray_flags("run marginface demo --steps X to resume it, or add --fresh to start over") == ["--fresh"]
    assert _stray_flags("(its model card says: --backbone X)") == ["--backbone"]
    tree = ast.parse('def f(p):\n    """--doc is prose for people"""\n    raise ValueError(f"{p}: pass --skip-bad")\n')
    assert [_stray_flags(text) for _, text in _texts(tree)] == [["--skip-bad"]]


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
    assert mapped == 5


def test_checkpoint_split_names_its_shards_option(tmp_path, capsys) -> None:
    from marginface.training.reshard import rewrite

    with pytest.raises(UserError, match="^`shards` must be >= 1, got 0$"):
        rewrite(tmp_path / "run", tmp_path / "out", 0)
    assert main(["checkpoint", "split", str(tmp_path / "run"), str(tmp_path / "out"), "--shards", "0"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == "marginface checkpoint: --shards must be >= 1, got 0"




def test_skip_bad_reads_as_the_flag_of_the_command_that_ran(tmp_path, monkeypatch, capsys) -> None:
    """align and prepare rec end to end: the library says `skip_bad=True`, the user reads --skip-bad."""
    from tests.data.helpers import make_folder

    make_folder(tmp_path / "faces", per_identity=1)
    locked = tmp_path / "faces" / "alice"
    unreadable_folder(monkeypatch, locked)
    assert main(["align", str(tmp_path / "faces"), str(tmp_path / "out"), "--workers", "0"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"marginface align: cannot read identity folder {locked} (Permission denied): fix it, or pass --skip-bad to "
        "skip it")
    assert main(["prepare", "rec", str(tmp_path / "faces"), str(tmp_path / "train")]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"marginface prepare rec: cannot read identity folder {locked} (Permission denied): fix it, or pass --skip-bad "
        "to leave it out (marginface prepare rec --skip-bad)")


def test_converted_messages_read_as_the_command_s_flags(tmp_path) -> None:
    """Each family of messages that used to carry a flag, through the parser of the command that shows it."""
    import torch

    from marginface import backbones
    from marginface.experiments.study import Study
    from marginface.inference.gallery import _bad_folder, _damaged_message
    from marginface.models.backbone import mismatch_summary
    from marginface.models.load import _no_card_message
    from marginface.training import run_checks

    model = backbones.create("mobilefacenet", embedding_size=32)
    state = {k: torch.zeros(1) for k in model.state_dict()}
    eval_argv = ["eval", "--checkpoint", "m.safetensors"]
    assert str(_spelled(eval_argv, mismatch_summary(model, {}, Path("m.safetensors")))).endswith(
        "It holds another backbone: pass the --backbone it was trained with")
    assert str(_spelled(eval_argv, mismatch_summary(model, state, Path("m.safetensors")))).endswith(
        "It holds another embedding size than --embedding-size 32: pass the checkpoint's")
    assert str(_spelled(eval_argv, "(its model card says: `name=iresnet50` `embedding_size=512`); leave "
                        "`name`/`embedding_size` out")) == (
        "(its model card says: --backbone iresnet50 --embedding-size 512); leave --backbone/--embedding-size out")
    assert str(_spelled(["clean", "embed", "ROOT", "--model", "m.pth", "--out", "e.npz"],
                        _no_card_message(tmp_path / "m.pth"))).endswith(
        "load_model(path, config='RUN/config.json') (--backbone/--embedding-size or --config).")
    assert "no earlier version is kept" in _damaged_message(tmp_path, "v000002", OSError("x"))  # nothing to name
    (tmp_path / "v000001").mkdir()
    assert "(--gallery-version v000001) and save again" in str(_spelled(
        ["identify", "--gallery", str(tmp_path), "x.jpg"], _damaged_message(tmp_path, "v000002", OSError("x"))))

    problem = []
    with pytest.raises(UserError) as bad_name:
        _bad_folder([tmp_path / "caf\udce9" / "0.png"], False, problem)
    assert str(_spelled(["enroll", "DIR", "--gallery", "G", "--model", "m"], str(bad_name.value))).endswith(
        "rename it, or pass --skip-bad to skip it")

    saved = {"steps": 4, "optim": {"lr": 0.1}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"steps": 4, "optim": {"lr": 0.1}}')
    with pytest.raises(run_checks.ResumeError) as refused:
        run_checks.check_resume(run, {**saved, "optim": {"lr": 0.2}}, {}, has_checkpoint=True)
    assert "add --allow-schedule-change (recorded in" in str(_spelled(["train", "--config", "c"], str(refused.value)))
    assert "start again with --fresh (deletes" in str(_spelled(["search", "--config", "c"], str(refused.value)))
    assert list(inspect.signature(Study).parameters)[1] == "out"  # the library name the study command maps
    assert str(_spelled(["study", "spec.yaml"], "use another `out` folder")) == "use another --output folder"
