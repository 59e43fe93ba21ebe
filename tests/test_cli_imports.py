"""``import marginface.cli`` and every ``marginface ... --help`` load no torch and no numpy.

The command modules import the library inside their run functions; a top-level import of a library module that
pulls torch in (``data/__init__`` does) makes every ``marginface`` call, ``--help`` included, pay 2+ s of torch
import. Each check runs in a fresh interpreter: this test process has torch loaded already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import marginface

HEAVY = ("torch", "numpy")

# Walks the parser tree and runs ``main([*words, "--help"])`` for every (sub)command in one fresh interpreter,
# then prints the command lines and the heavy modules loaded, as JSON on the last line.
_EVERY_HELP = """
import argparse, contextlib, io, json, sys
from marginface.cli import build_parser, main

def walk(parser, words):
    yield words
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                yield from walk(sub, [*words, word])

checked, failed = [], []
for words in walk(build_parser(), []):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*words, "--help"])
        except SystemExit as stop:
            if stop.code not in (0, None):
                failed.append(words)
    if not out.getvalue().startswith("usage: marginface"):
        failed.append(words)
    checked.append(" ".join(words))
print(json.dumps({"checked": checked, "failed": failed, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports this checkout's marginface."""
    src = str(Path(marginface.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_import_cli_loads_no_torch_or_numpy() -> None:
    done = _python(f"import marginface.cli, sys; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"import marginface.cli loaded {done.stdout.strip()}"


def test_every_command_help_works_without_torch() -> None:
    done = _python(f"HEAVY = {HEAVY!r}\n{_EVERY_HELP}")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["failed"], f"--help failed for {result['failed']}"
    assert result["heavy"] == [], f"--help of every command loaded {result['heavy']}"
    # the walk reached the commands and their kinds (a broken walk would check only the top parser)
    for words in ("", "train", "eval", "verify", "enroll", "identify", "prepare cfp", "clean outliers",
                  "plot toy", "checkpoint split", "study", "search"):
        assert words in result["checked"], words
    assert len(result["checked"]) >= 30


def test_python_dash_m_and_the_console_script_reach_main() -> None:
    """``python -m marginface.cli`` (torchrun, the study runner) runs ``cli/__main__.py``; the console script
    names ``marginface.cli:main``."""
    src = Path(marginface.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "marginface.cli", "configs", "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: marginface configs")
    pyproject = src.parent / "pyproject.toml"
    if pyproject.is_file():  # a checkout (an installed wheel has no pyproject.toml)
        tomllib = pytest.importorskip("tomllib")  # Python 3.11+
        scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
        assert scripts["marginface"] == "marginface.cli:main"
        from marginface.cli import main

        assert callable(main)
