"""`marginface configs | head -1`: a reader that closes the pipe early gets no error text on stderr."""

from __future__ import annotations

import subprocess
import sys


def test_a_closed_pipe_is_quiet() -> None:
    child = subprocess.Popen([sys.executable, "-m", "marginface.cli", "configs"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.read(1)  # the first byte, then hang up like `head -c 1`
    child.stdout.close()
    stderr = child.stderr.read().decode()
    code = child.wait(timeout=60)
    assert "Broken pipe" not in stderr and "Traceback" not in stderr, stderr
    assert code in (0, 141), (code, stderr)
