"""List files the data loaders accept (identities to leave out, images to keep): one entry a line, ``#`` comments.

Here, in the data layer, because training reads them (``data.exclude_identities``, ``data.image_list``) and training
may not import cleaning, which writes them (``marginface.cleaning.lists``).
"""

from __future__ import annotations

from pathlib import Path


def read_lines(path: str | Path, what: str = "list") -> list[str]:
    """Entries of a list file: stripped, blank lines and ``#`` comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist (one entry a line, '#' for comments)")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]
