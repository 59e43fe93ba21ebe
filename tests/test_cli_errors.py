"""The CLI's one error style: a user error is one or two lines on stderr and exit code 2; --debug re-raises."""

from __future__ import annotations

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
