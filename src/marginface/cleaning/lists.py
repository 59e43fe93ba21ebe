"""Plain list files (one entry a line, ``#`` comments) that training and ``prepare rec`` read; atomic writes."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path


def write_lines(path: str | Path, lines: Iterable[str], header: str = "") -> Path:
    """Write ``lines`` (after ``# header`` lines) to ``path`` atomically (temp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    body = "".join(f"# {h}\n" for h in header.splitlines()) + "".join(f"{line}\n" for line in lines)
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_lines(path: str | Path, what: str = "list") -> list[str]:
    """Entries of a list file: stripped, blank lines and ``#`` comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist (one entry a line, '#' for comments)")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def read_merge_map(path: str | Path) -> dict[str, str]:
    """A label-merge map: ``source_identity<TAB>target_identity`` lines -> ``{source: target}``."""
    merge = {}
    for line in read_lines(path, "label-merge map"):
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"label-merge map {path}: line {line!r} must be 'source<TAB>target'")
        merge[parts[0]] = parts[1]
    return merge


def write_merge_map(path: str | Path, merge: Mapping[str, str], header: str = "") -> Path:
    return write_lines(path, (f"{a}\t{b}" for a, b in sorted(merge.items())), header)
