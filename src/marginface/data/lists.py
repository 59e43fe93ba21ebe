"""Plain list files (one entry a line, ``#`` comments) that the training data sources read."""

from __future__ import annotations

from pathlib import Path


def read_lines(path: str | Path, what: str = "list") -> list[str]:
    """Entries of a list file: stripped, blank lines and ``#`` comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist (one entry a line, '#' for comments)")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]
