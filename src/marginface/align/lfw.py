"""LFW-style folder + ``pairs.txt`` -> an aligned verification ``.bin`` (insightface layout).

``pairs.txt`` (LFW View 2): an optional header of integers (``10 300``: folds, pairs per class per fold),
then one pair per line: ``name i j`` (same person) or ``name1 i name2 j`` (different people); image ``i``
of ``name`` is ``<lfw>/<name>/<name>_<iiii>.jpg``. The ``.bin`` holds ``2N`` encoded 112x112 faces (pair
``k`` = images ``2k`` and ``2k+1``) and ``N`` bools, written by ``marginface.data.bins``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from marginface.align.pipeline import AlignOptions, AlignReport, align_images


@dataclass(frozen=True)
class Pair:
    """One line of pairs.txt: two image paths, whether they show the same person, and where it came from."""

    first: Path
    second: Path
    issame: bool
    line: int
    text: str


def _image_path(root: Path, name: str, number: str, where: str) -> Path:
    if not number.isdigit():
        raise ValueError(f"{where}: image number {number!r} is not an integer")
    return root / name / f"{name}_{int(number):04d}.jpg"


def read_pairs(pairs_path: str | Path, lfw_dir: str | Path, check_exists: bool = True) -> list[Pair]:
    """Parse ``pairs.txt`` into pairs of image paths under ``lfw_dir``.

    Raises FileNotFoundError naming the line when a pair names an image that does not exist, and
    ValueError naming the line when a line is neither ``name i j`` nor ``name1 i name2 j``.
    """
    pairs_path, root = Path(pairs_path), Path(lfw_dir)
    if not pairs_path.is_file():
        raise FileNotFoundError(f"pairs file {pairs_path} does not exist")
    if not root.is_dir():
        raise FileNotFoundError(f"LFW folder {root} does not exist")
    pairs = []
    for number, raw in enumerate(pairs_path.read_text().splitlines(), start=1):
        fields, where = raw.split(), f"{pairs_path}:{number}: {raw.strip()!r}"
        if not fields or (number == 1 and all(f.isdigit() for f in fields)):
            continue  # blank line, or the "folds pairs-per-fold" header
        if len(fields) == 3:
            first, second = (_image_path(root, fields[0], n, where) for n in fields[1:])
        elif len(fields) == 4:
            first = _image_path(root, fields[0], fields[1], where)
            second = _image_path(root, fields[2], fields[3], where)
        else:
            raise ValueError(f"{where}: expected 'name i j' or 'name1 i name2 j'")
        for path in (first, second) if check_exists else ():
            if not path.is_file():
                raise FileNotFoundError(f"{where} names {path}, which does not exist")
        pairs.append(Pair(first, second, len(fields) == 3, number, raw.strip()))
    if not pairs:
        raise ValueError(f"{pairs_path} holds no pairs")
    return pairs


def _read_aligned(path: Path, image_size: int) -> bytes:
    """The bytes of an already aligned face file, after checking it decodes to (image_size, image_size)."""
    from marginface.align.pipeline import read_rgb

    image = read_rgb(path)
    if image.shape[:2] != (image_size, image_size):
        raise ValueError(f"{path} is {image.shape[1]}x{image.shape[0]}, not an aligned "
                         f"{image_size}x{image_size} face: drop --aligned to detect and align it")
    return path.read_bytes()


def build_verification_bin(
    lfw_dir: str | Path, pairs_path: str | Path, out: str | Path,
    options: AlignOptions | None = None, aligned: bool = False,
) -> AlignReport:
    """Align the images named by ``pairs_path`` and write them with the labels to ``out`` (a ``.bin``).

    Every pair must yield two faces, so photos where no face is found are warped with the median-landmark
    fallback (``AlignOptions.fallback`` is forced to ``"median"``); the report (also written beside
    ``out`` as ``<stem>.align_report.json``) lists them. With ``aligned=True`` the folder already holds
    aligned faces (e.g. the output of ``marginface align``): their files are packed as they are.
    """
    from marginface.data.bins import write_verification_bin

    options = replace(options or AlignOptions(), fallback="median", skip_bad=False)
    pairs = read_pairs(pairs_path, lfw_dir)
    unique = list(dict.fromkeys(p for pair in pairs for p in (pair.first, pair.second)))
    report, start = AlignReport(detector="none (pre-aligned)" if aligned else options.detector), time.perf_counter()
    if aligned:
        encoded = {path: _read_aligned(path, options.image_size) for path in unique}
        report.total = report.written = len(unique)
    else:
        records = align_images([(path, None) for path in unique], options, report)
        encoded = {r["path"]: r["encoded"] for r in records if "encoded" in r}
        missing = [str(p) for p in unique if p not in encoded]
        if missing:
            raise ValueError(f"no face could be aligned in {len(missing)} images, e.g. {missing[0]}")
    images = [encoded[p] for pair in pairs for p in (pair.first, pair.second)]
    write_verification_bin(out, images, [pair.issame for pair in pairs])
    report.seconds = round(time.perf_counter() - start, 2)
    out = Path(out)
    summary = {**asdict(report), "pairs": len(pairs), "same": sum(p.issame for p in pairs), "summary": report.summary()}
    out.with_name(out.stem + ".align_report.json").write_text(json.dumps(summary, indent=1, default=str))
    return report
