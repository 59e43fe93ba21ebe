"""Align a folder of raw photos (``root/<identity>/<image>``) into 112x112 faces, with a report.

Each image is decoded, its faces detected, one face chosen (``detectors.select_face``), warped onto the
ArcFace template and written as ``DST/<identity>/<stem>.jpg`` (or ``.png``). ``DST/align_report.json``
records the counts, which images had no face, which had several and which was kept and why, and which
files were skipped as unreadable.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

#: extensions considered images; other files in identity folders are listed as ignored, not read.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".gif"})


@dataclass
class AlignReport:
    """What ``align_folder`` did; written to ``DST/align_report.json``. Paths are relative to SRC."""

    detector: str
    total: int = 0
    written: int = 0
    faces_found: int = 0
    no_face: list[str] = field(default_factory=list)
    several: list[dict] = field(default_factory=list)
    kept_because: dict[str, int] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    seconds: float = 0.0
    empty_identities: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.faces_found / max(self.total - len(self.bad), 1)
        empty = self.empty_identities
        return (
            f"{self.total} images: face found in {self.faces_found} ({100 * rate:.2f}% of readable), "
            f"none in {len(self.no_face)}, several in {len(self.several)} (kept: {self.kept_because}); "
            f"{len(self.fallback)} aligned by the median-landmark fallback, {len(self.bad)} unreadable "
            f"skipped, {len(self.ignored)} non-image files ignored; {self.written} written in {self.seconds:.1f} s"
            + (f"; {len(empty)} identity folders without images left out: {', '.join(empty[:5])}"
               + (", ..." if len(empty) > 5 else "") if empty else "")
        )


def list_images(src: str | Path, skip_bad: bool = False) -> tuple[list[Path], list[Path]]:
    """Image files under ``src/<identity>/`` (sorted) and the other files found there (ignored). An unreadable
    identity folder is an error naming it, or (``skip_bad``) listed among the ignored."""
    root = Path(src)
    if root.is_file():
        raise NotADirectoryError(f"{root} is a file, expected a folder of photos {root}/<identity>/<image>")
    if not root.is_dir():
        raise FileNotFoundError(f"source folder {root} does not exist")
    images, ignored = [], []
    for identity in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            entries = sorted(p for p in identity.iterdir() if p.is_file())
        except OSError as err:  # permissions, I/O error
            if not skip_bad:
                raise ValueError(f"cannot read identity folder {identity} ({err.strerror}): fix it, or pass "
                                 "`skip_bad=True` to skip it") from err
            ignored.append(identity)
            continue
        for path in entries:
            (images if path.suffix.lower() in IMAGE_EXTENSIONS else ignored).append(path)
    if not images:
        raise FileNotFoundError(f"no images under {root}/<identity>/ (expected root/<identity>/<image>)")
    return images, ignored


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file fully into (H, W, 3) uint8 RGB; raises ValueError naming the file if unreadable."""
    from PIL import Image

    from marginface.data.images import check_pixels

    try:
        with Image.open(path) as image:
            check_pixels(image.size, str(path))  # from the header, before decoding
            return np.asarray(image.convert("RGB"))  # convert() forces a full decode: truncation raises
    except Exception as err:  # PIL raises several types (OSError, SyntaxError, ValueError, DecompressionBomb...)
        raise ValueError(f"cannot read image {path}: {err}") from err


# One detector per worker process, built once by the pool initializer.
_WORKER: dict = {}


def _init_worker(detector: str, detector_kwargs: dict, policy: str, image_size: int) -> None:
    import cv2

    from marginface.align.detectors import create_detector

    cv2.setNumThreads(1)  # one process per core; nested threads only contend
    _WORKER.update(detector=create_detector(detector, **detector_kwargs), policy=policy, size=image_size)


def encode(crop: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 RGB crop as JPEG (``quality`` 0-100) or PNG bytes."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(ext, np.ascontiguousarray(crop[..., ::-1]), params)  # OpenCV encodes BGR
    if not ok:
        raise ValueError(f"OpenCV could not encode a {crop.shape} crop as {ext}")
    return data.tobytes()


def emit(crop: np.ndarray, dst: Path | None, ext: str) -> bytes | None:
    """Write the crop to ``dst`` (parents created) or, when ``dst`` is None, return its encoded bytes."""
    data = encode(crop, ext)
    if dst is None:
        return data
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    return None


def process_one(task: tuple[Path, Path | None, str]) -> dict:
    """Worker step for (source, destination or None, extension): decode, detect, choose, warp, emit.

    Returns a record: ``faces`` found, the chosen ``landmarks`` (5, 2) and ``reason``, ``encoded`` bytes
    when no destination was given — or ``error`` when the file could not be read.
    """
    from marginface.align.detectors import select_face
    from marginface.align.template import warp_face

    path, dst, ext = task
    try:
        image = read_rgb(path)
    except ValueError as err:
        return {"path": path, "error": str(err)}
    found = _WORKER["detector"].detect(image)
    record = {"path": path, "faces": len(found), "shape": image.shape[:2]}
    if len(found):
        index, reason = select_face(found, image.shape, _WORKER["policy"])
        landmarks = found.landmarks[index]
        record.update(landmarks=landmarks, reason=reason)
        record["encoded"] = emit(warp_face(image, landmarks, _WORKER["size"]), dst, ext)
    return record


def _iter_records(tasks: list[tuple], workers: int, init_args: tuple, desc: str):
    from tqdm import tqdm

    if workers <= 1:
        _init_worker(*init_args)
        yield from tqdm(map(process_one, tasks), total=len(tasks), desc=desc, unit="img")
        return
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from tqdm(pool.imap(process_one, tasks, chunksize=8), total=len(tasks), desc=desc, unit="img")


@dataclass(frozen=True)
class AlignOptions:
    """How to align. ``policy``: which face to keep (see ``select_face``). ``fallback``: ``"none"`` leaves
    faceless images out; ``"median"`` warps them with the median landmarks (relative to image size) of the
    faces found in the same run — right for loose, centred crops like LFW, where a missed face is still in
    the usual place. ``workers``: processes (each single-threaded); 0 or 1 runs in this process."""

    detector: str = "mtcnn"
    detector_kwargs: dict = field(default_factory=dict)
    policy: str = "centre"
    fallback: str = "none"
    image_size: int = 112
    ext: str = ".jpg"
    workers: int = 2
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if self.fallback not in ("none", "median"):
            raise ValueError(f"fallback must be 'none' or 'median', got {self.fallback!r}")
        if self.ext not in (".jpg", ".png"):
            raise ValueError(f"ext must be '.jpg' or '.png', got {self.ext!r}")


def align_images(tasks: list[tuple[Path, Path | None]], options: AlignOptions, report: AlignReport) -> list[dict]:
    """Align (source, destination or None) pairs; fills ``report``; returns one record per readable image.

    Raises ValueError naming the file on the first unreadable image unless ``options.skip_bad``.
    """
    from marginface.align.detectors import create_detector

    # Build one detector here first: a missing extra then fails once, clearly, instead of in every worker
    # (a pool re-spawns workers whose initializer raises, forever).
    create_detector(options.detector, **options.detector_kwargs)
    init_args = (options.detector, options.detector_kwargs, options.policy, options.image_size)
    jobs = [(src, dst, options.ext) for src, dst in tasks]
    # closing(): on an error the worker pool stops now, not when the traceback is freed (no writes after it)
    with closing(_iter_records(jobs, options.workers, init_args, desc=f"align ({options.detector})")) as stream:
        records = _collect(stream, options, report)
    report.total += len(tasks)
    report.faces_found += sum(r["faces"] > 0 for r in records)
    report.no_face += [str(r["path"]) for r in records if r["faces"] == 0]
    report.kept_because = dict(Counter(s["kept"] for s in report.several))
    if options.fallback == "median":
        _median_fallback(records, dict(tasks), options, report)
    report.written += sum("encoded" in r for r in records)
    return records


def _collect(stream, options: AlignOptions, report: AlignReport) -> list[dict]:
    """The readable records of ``stream``; unreadable files raise, or are reported under ``skip_bad``."""
    records = []
    for record in stream:
        if "error" in record:
            if not options.skip_bad:
                raise ValueError(f"{record['error']} (pass `skip_bad=True` to skip and count unreadable files)")
            report.bad.append({"path": str(record["path"]), "error": record["error"]})
            continue
        records.append(record)
        if record["faces"] > 1:
            report.several.append({"path": str(record["path"]), "faces": record["faces"], "kept": record["reason"]})
    return records


def _median_fallback(records: list[dict], dst_of: dict, options: AlignOptions, report: AlignReport) -> None:
    from marginface.align.template import warp_face

    found = [r for r in records if r["faces"]]
    if not found:
        return  # nothing to take a median of; the faceless images stay out
    relative = np.median([r["landmarks"] / np.array(r["shape"][::-1]) for r in found], axis=0)
    for record in records:
        if record["faces"] == 0:
            image = read_rgb(record["path"])
            record["landmarks"] = relative * np.array(image.shape[1::-1])
            crop = warp_face(image, record["landmarks"], options.image_size)
            record["encoded"] = emit(crop, dst_of[record["path"]], options.ext)
            report.fallback.append(str(record["path"]))


def align_folder(src: str | Path, dst: str | Path, options: AlignOptions | None = None) -> AlignReport:
    """Align every image of ``src/<identity>/`` into ``dst/<identity>/<stem><ext>``; returns the report.

    The report (counts, faceless, several-face and skipped files) is also written to
    ``dst/align_report.json`` with paths relative to ``src``.
    """
    options = options or AlignOptions()
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"destination {dst} is the source folder: choose another folder")
    images, ignored = list_images(src, skip_bad=options.skip_bad)
    # everything is written under a temporary sibling and moved into DST at the end: a failed or interrupted
    # run leaves DST as it was (no half-aligned identities)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    tasks, seen = [], {}
    for path in images:
        out = tmp / path.parent.name / (path.stem + options.ext)
        if out in seen:
            raise ValueError(f"{path} and {seen[out]} would both be written to "
                             f"{dst / out.relative_to(tmp)}: rename one")
        seen[out] = path
        tasks.append((path, out))
    report = AlignReport(detector=options.detector, ignored=[str(p.relative_to(src)) for p in ignored],
                         empty_identities=_empty_identities(src))
    start = time.perf_counter()
    try:
        align_images(tasks, options, report)
        report.seconds = round(time.perf_counter() - start, 2)
        _write_report(report, src, tmp / "align_report.json")
        _move_into(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _empty_identities(src: Path) -> list[str]:
    """Identity folders of ``src`` that hold no image file (they are left out of the output)."""
    empty = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        try:
            entries = list(folder.iterdir())
        except OSError:  # unreadable: list_images raised or (skip_bad) listed it among the ignored
            continue
        if not any(f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS for f in entries):
            empty.append(folder.name)
    return empty


def _move_into(tmp: Path, dst: Path) -> None:
    """Move the finished output ``tmp`` to ``dst``: a rename when ``dst`` is new, else file by file over it."""
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dst)
        return
    for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
        target = dst / file.relative_to(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(file, target)


def _write_report(report: AlignReport, src: Path, path: Path) -> None:
    def rel(p: str) -> str:
        return str(Path(p).relative_to(src)) if Path(p).is_relative_to(src) else p

    data = asdict(report)
    data["no_face"] = [rel(p) for p in report.no_face]
    data["fallback"] = [rel(p) for p in report.fallback]
    data["several"] = [{**s, "path": rel(s["path"])} for s in report.several]
    data["bad"] = [{**b, "path": rel(b["path"])} for b in report.bad]
    data["summary"] = report.summary()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
