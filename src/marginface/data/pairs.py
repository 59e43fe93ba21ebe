"""LFW ``pairs.txt``: parse it keeping its fold structure, and resolve its names to image files.

The format (LFW View 2): the first line is ``<folds> <n>`` (or just ``<n>`` for one fold, as in
``pairsDevTest.txt``); then each fold lists ``n`` matched pairs ``name i j`` followed by ``n`` mismatched
pairs ``name1 i name2 j``. Image ``i`` of ``name`` is ``<root>/<name>/<name>_<i:04d>.jpg``. Fields may be
separated by tabs or spaces.

This is the project's one pairs parser: ``marginface eval --pairs`` and ``marginface prepare lfw-bin`` (via
:mod:`marginface.align.lfw`) both read through :func:`read_pairs`, so a file one accepts the other accepts too,
and a header that contradicts the content is refused by both before any image is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PairsFile:
    """The pairs of a ``pairs.txt``, in file order.

    Attributes:
        names: (N, 2) relative image paths ``<Name>/<Name>_NNNN.jpg`` (POSIX separators).
        issame: (N,) bool, True for a matched (same identity) pair.
        folds: (N,) int64 fold id 0..k-1, from the file's fold structure.
        lines: (N,) int64 1-based line number of each pair in the file (for error messages).
        num_folds: folds declared by the header (0: the file has no header, all pairs are in fold 0).
    """

    names: np.ndarray
    issame: np.ndarray
    folds: np.ndarray
    lines: np.ndarray
    num_folds: int = 0

    def __len__(self) -> int:
        return int(self.issame.size)

    def unique_names(self) -> list[str]:
        """Every image named by a pair, once, in order of first appearance."""
        return list(dict.fromkeys(self.names.ravel().tolist()))


def image_name(person: str, index: str, line_no: int, path: Path) -> str:
    """The relative path of image ``index`` (1-based) of ``person``, e.g. ``Abel_Pacheco/Abel_Pacheco_0001.jpg``."""
    if not index.isdigit() or int(index) < 1:
        raise ValueError(f"{path}:{line_no}: image number {index!r} is not a positive integer")
    if person in (".", "..") or "/" in person or "\\" in person or "\0" in person:
        raise ValueError(f"{path}:{line_no}: person name {person!r} is not a plain folder name (a pairs file names "
                         "images inside its image folder; '..' or a path separator would reach outside it)")
    return f"{person}/{person}_{int(index):04d}.jpg"


def _parse_header(fields: list[str], path: Path) -> tuple[int, int]:
    if all(f.isdigit() and int(f) >= 1 for f in fields) and len(fields) in (1, 2):
        return (int(fields[0]), int(fields[1])) if len(fields) == 2 else (1, int(fields[0]))
    raise ValueError(
        f"{path}:1: expected the header '<folds> <pairs per class per fold>' (e.g. '10 300'), got {fields!r}"
    )


def _parse_pair(fields: list[str], line_no: int, path: Path) -> tuple[str, str, bool]:
    if len(fields) == 3:
        return image_name(fields[0], fields[1], line_no, path), image_name(
            fields[0], fields[2], line_no, path
        ), True
    if len(fields) == 4:
        return image_name(fields[0], fields[1], line_no, path), image_name(
            fields[2], fields[3], line_no, path
        ), False
    raise ValueError(
        f"{path}:{line_no}: expected 'name i j' (same) or 'name1 i name2 j' (different), got {fields!r}"
    )


def read_pairs(path: str | Path, header: str = "required") -> PairsFile:
    """Parse an LFW-format ``pairs.txt``, checking that it has exactly the fold structure its header declares.

    Args:
        path: the pairs file.
        header: ``"required"`` (evaluation: the folds come from the header) or ``"optional"`` (building a
            ``.bin``, which keeps no folds: a file without a header is then one list of pairs, in fold 0).
            A header that is present is always checked against the content.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a malformed line (message names the line number), or a fold that does not hold ``n``
            matched then ``n`` mismatched pairs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    try:  # utf-8-sig: a byte-order mark (Windows editors) is not part of the header
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a UTF-8 text pairs file ({err})") from err
    raw = [(no, line.split()) for no, line in enumerate(text.splitlines(), start=1)]
    raw = [(no, f) for no, f in raw if f]
    if not raw:
        raise ValueError(f"{path} is empty; expected an LFW pairs.txt (header '10 300' then the pairs)")
    if header == "optional" and not all(f.isdigit() for f in raw[0][1]):
        return _pairs_without_header(raw, path)
    num_folds, per_class = _parse_header(raw[0][1], path)
    body = raw[1:]
    expected = 2 * num_folds * per_class
    if len(body) != expected:
        raise ValueError(
            f"{path}: header declares {num_folds} folds x (2 x {per_class}) = {expected} pairs, found {len(body)}; "
            "fix the header (first line '<folds> <pairs per class per fold>')"
            + (" or delete it (a .bin keeps no folds)" if header == "optional" else "")
        )
    names, issame, lines = [], [], []
    for k, (no, fields) in enumerate(body):
        a, b, same = _parse_pair(fields, no, path)
        if same != ((k % (2 * per_class)) < per_class):
            kind = "matched" if same else "mismatched"
            raise ValueError(
                f"{path}:{no}: a {kind} pair out of place: each fold must hold {per_class} matched pairs "
                f"then {per_class} mismatched pairs"
            )
        names.append((a, b))
        issame.append(same)
        lines.append(no)
    folds = np.arange(expected, dtype=np.int64) // (2 * per_class)
    return PairsFile(np.array(names, dtype=object).reshape(-1, 2), np.array(issame, dtype=bool), folds,
                     np.array(lines, dtype=np.int64), num_folds)


def _pairs_without_header(raw: list[tuple[int, list[str]]], path: Path) -> PairsFile:
    parsed = [(_parse_pair(fields, no, path), no) for no, fields in raw]
    names = np.array([(a, b) for (a, b, _), _ in parsed], dtype=object).reshape(-1, 2)
    issame = np.array([same for (_, _, same), _ in parsed], dtype=bool)
    return PairsFile(names, issame, np.zeros(len(parsed), dtype=np.int64),
                     np.array([no for _, no in parsed], dtype=np.int64), 0)


def resolve_images(pairs: PairsFile, root: str | Path) -> dict[str, Path]:
    """Map every image name of ``pairs`` to its file under ``root``, checking that each exists.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or a pair names an image that is absent; the message
            names the first such pair's line number and the missing path.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected <root>/<Name>/<Name>_NNNN.jpg)")
    resolved: dict[str, Path] = {}
    for (a, b), line in zip(pairs.names, pairs.lines):
        for name in (a, b):
            if name in resolved:
                continue
            file = root / name
            if not file.is_file():
                raise FileNotFoundError(f"pairs line {int(line)} names {name}, but {file} does not exist")
            resolved[name] = file
    return resolved
