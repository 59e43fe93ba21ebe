"""The command lines shown in README.md and docs/*.md are real: every one parses with today's options, and the
cheap ones (listing presets, losses) run and print what the docs say."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from marginface.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "training.md", ROOT / "docs" / "evaluation.md", ROOT / "docs" / "data.md",
        ROOT / "docs" / "results.md"]
CHEAP = {("configs",), ("losses",), ("losses", "--params"), ("train", "--list")}


def command_lines(path: Path) -> list[str]:
    """``marginface ...`` command lines of the file's bash blocks, continuations joined, comments and optional
    ``[...]`` parts removed."""
    lines, text = [], path.read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", re.sub(r"\[[^\]]*\]", "", command)).strip()
            if "marginface.cli " in command:
                command = "marginface " + command.split("marginface.cli ", 1)[1]
            if command.startswith("marginface "):
                lines.append(command)
    return lines


CASES = [(path.name, line) for path in DOCS for line in command_lines(path)]


def test_the_docs_show_commands() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize(("doc", "line"), CASES)
def test_documented_command_parses(doc: str, line: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = shlex.split(line)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"{doc}: `{line}` does not parse: {capsys.readouterr().err.strip()} ({exit_.code})")
    if tuple(argv) in CHEAP:
        assert main(argv) == 0
        assert capsys.readouterr().out.strip()
