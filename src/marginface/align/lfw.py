"""LFW-style folder + ``pairs.txt`` -> an aligned verification ``.bin`` (insightface layout).

``pairs.txt`` (LFW View 2): an optional header of integers (``10 300``: folds, pairs per class per fold; checked
against the content when present), then one pair per line: ``name i j`` (same person) or ``name1 i name2 j``
(different people); image ``i`` of ``name`` is ``<lfw>/<name>/<name>_<iiii>.jpg``. The ``.bin`` holds ``2N``
encoded 112x112 faces (pair ``k`` = images ``2k`` and ``2k+1``) and ``N`` bools, written by ``marginface.data.bins``.
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


def read_pairs(pairs_path: str | Path, lfw_dir: str | Path, check_exists: bool = True) -> list[Pair]:
    """Parse ``pairs.txt`` into pairs of image paths under ``lfw_dir``.

    The parsing is :func:`marginface.data.pairs.read_pairs` (the project's one pairs parser; the header
    is optional here, and checked against the content when present). Raises FileNotFoundError naming the line
    when a pair names an image that does not exist, and ValueError naming the line when a line is neither
    ``name i j`` nor ``name1 i name2 j`` or the header contradicts the content.
    """
    from marginface.data.pairs import read_pairs as parse_pairs

    pairs_path, root = Path(pairs_path), Path(lfw_dir)
    parsed = parse_pairs(pairs_path, header="optional")
    if not root.is_dir():
        raise FileNotFoundError(f"LFW folder {root} does not exist")
    text = pairs_path.read_text().splitlines()
    pairs = []
    for (a, b), same, number in zip(parsed.names, parsed.issame, parsed.lines.tolist()):
        raw = text[number - 1].strip()
        first, second = root / a, root / b
        for path in (first, second) if check_exists else ():
            if not path.is_file():
                raise FileNotFoundError(f"{pairs_path}:{number}: {raw!r} names {path}, which does not exist")
        pairs.append(Pair(first, second, bool(same), number, raw))
    return pairs


def _read_aligned(path: Path, image_size: int) -> bytes:
    """The bytes of an already aligned face file, after checking it decodes to (image_size, image_size)."""
    from marginface.align.pipeline import read_rgb

    image = read_rgb(path)
    if image.shape[:2] != (image_size, image_size):
        raise ValueError(f"{path} is {image.shape[1]}x{image.shape[0]}, not an aligned "
                         f"{image_size}x{image_size} face: drop `aligned` to detect and align it")
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
