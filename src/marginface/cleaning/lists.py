"""Plain list files (one entry a line, ``#`` comments) that training and ``prepare rec`` read; atomic writes."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from marginface.data.lists import read_lines  # moved to marginface.data.lists (training reads it)


def write_lines(path: str | Path, lines: Iterable[str], header: str = "") -> Path:
    """Write ``lines`` (after ``# header`` lines) to ``path`` atomically (temp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    body = "".join(f"# {h}\n" for h in header.splitlines()) + "".join(f"{line}\n" for line in lines)
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, path)
    return path


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
