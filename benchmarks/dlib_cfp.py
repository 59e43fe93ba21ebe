"""dlib's published face encoder on CFP-FP and CFP-FF through marginface's verification protocol.

dlib's ResNet encoder (PyPI ``face-recognition-models``, run by ``dlib-bin``) with its *own* alignment: HOG frontal
face detector, then the CNN (MMOD) detector, then -- where neither finds a face -- a box around the image's 30
annotated CFP fiducials (counted and reported per view, never silent); dlib's 5-point shape predictor and
150x150 chip inside ``compute_face_descriptor``. Pairs, labels and the 10 folds are the official CFP splits
(``marginface.align.cfp.read_protocol``); the score is the negative Euclidean distance (dlib's metric), cosine
beside it. Same method as ``benchmarks/dlib_lfw.py`` for LFW.

    python benchmarks/dlib_cfp.py --cfp /work/shared/data/cfp --cache ~/.cache/marginface/dlib_cfp.npz [--no-cnn]
        [--budget SECONDS]

Images are embedded split by split (split 01 of FP and FF first) and cached; with ``--budget`` the run stops after
that many seconds and only the splits whose images are all embedded are evaluated (folds = those splits); a
second run continues from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dlib_lfw import _central, _load_dlib  # noqa: I001 (benchmarks/ sibling: same models, same rules)
from marginface.align.cfp import fiducials_path, read_fiducials, read_protocol, view_of
from marginface.paths import shared_data_dir


def _fiducial_box(dlib, image: Path, width: int, height: int):  # noqa: ANN001, ANN202 (dlib types)
    """Fallback box: the fiducials' bounding box grown to a square 1.3x its larger side, clipped to the image."""
    points = read_fiducials(fiducials_path(image))
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.65 * max(x1 - x0, y1 - y0)
    left, top = max(int(cx - half), 0), max(int(cy - half), 0)
    return dlib.rectangle(left, top, min(int(cx + half), width - 1), min(int(cy + half), height - 1))


_MODELS: tuple = ()


def _embed_one(job: tuple[Path, int, bool]) -> tuple[np.ndarray, str, str]:
    """One image -> (128,) descriptor, its view, and how its face was found (runs in a worker process)."""
    global _MODELS
    from PIL import Image

    if not _MODELS:
        _MODELS = _load_dlib()
    dlib, hog, cnn, shape, encoder = _MODELS
    path, upsample, use_cnn = job
    image = np.asarray(Image.open(path).convert("RGB"))
    height, width = image.shape[:2]
    rects, found_by = list(hog(image, upsample)), "hog"
    if not rects and use_cnn:
        rects, found_by = [d.rect for d in cnn(image, upsample)], "cnn"
    rect = _central(rects, width, height) if rects else _fiducial_box(dlib, path, width, height)
    vector = np.asarray(encoder.compute_face_descriptor(image, shape(image, rect), 0), np.float32)
    return vector, view_of(path), found_by if rects else "fiducial box"


def extract(images: list[Path], upsample: int, use_cnn: bool, workers: int, budget: float,
            done: dict[Path, tuple]) -> None:
    """Embed ``images`` (in order) into ``done[path] = (descriptor, view, found_by)`` until ``budget`` seconds."""
    from multiprocessing import get_context

    todo = [p for p in images if p not in done]
    start = time.perf_counter()
    with get_context("fork").Pool(max(workers, 1)) as pool, tqdm(total=len(todo), desc="dlib embed") as bar:
        for chunk in range(0, len(todo), 64):
            jobs = [(p, upsample, use_cnn) for p in todo[chunk : chunk + 64]]
            for path, out in zip(todo[chunk : chunk + 64], pool.map(_embed_one, jobs)):
                done[path] = out
            bar.update(len(jobs))
            if time.perf_counter() - start > budget:
                print(f"time budget of {budget:.0f} s spent after {chunk + len(jobs)} new images")
                return


def split_order(protocols: dict) -> list[Path]:
    """Every image, ordered split by split (split 01 of FP and FF first), so a partial run covers whole splits."""
    order, seen = [], set()
    for split in range(10):
        for proto in protocols.values():
            for pair in proto.pairs[proto.folds == split]:
                for k in pair:
                    if proto.images[k] not in seen:
                        seen.add(proto.images[k])
                        order.append(proto.images[k])
    return order


def _load_cache(path: Path) -> dict[Path, tuple]:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {Path(n): (e, v, h) for n, e, v, h in zip(data["names"], data["embeddings"], data["views"],
                                                         data["found_by"])}


def _save_cache(path: Path, done: dict[Path, tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    names = sorted(done)
    np.savez(tmp, names=np.array([str(n) for n in names]), embeddings=np.stack([done[n][0] for n in names]),
             views=np.array([done[n][1] for n in names]), found_by=np.array([done[n][2] for n in names]))
    os.replace(tmp, path)


def main() -> None:
    shared = shared_data_dir()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfp", type=Path, default=shared / "cfp" if shared else None)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/marginface/dlib_cfp.npz")
    parser.add_argument("--upsample", type=int, default=1, help="detector upsampling (CFP images are <= 144 px)")
    parser.add_argument("--no-cnn", action="store_true", help="skip dlib's CNN detector (slow on CPU): "
                        "HOG, then the fiducial box")
    parser.add_argument("--workers", type=int, default=2, help="processes")
    parser.add_argument("--budget", type=float, default=float("inf"),
                        help="stop embedding after this many seconds (the cache keeps what was done; whole "
                        "splits are evaluated)")
    args = parser.parse_args()
    if args.cfp is None:
        raise SystemExit("no CFP folder: pass --cfp (the folder holding Data/ and Protocol/)")
    protocols = {name: read_protocol(args.cfp, name) for name in ("FP", "FF")}
    done = _load_cache(args.cache)
    order = split_order(protocols)
    if any(p not in done for p in order):
        start = time.perf_counter()
        before = len(done)
        extract(order, args.upsample, not args.no_cnn, args.workers, args.budget, done)
        seconds = time.perf_counter() - start
        _save_cache(args.cache, done)
        print(f"embedded {len(done) - before} images in {seconds:.0f} s "
              f"({1000 * seconds / max(len(done) - before, 1):.0f} ms/img); {len(done)}/{len(order)} cached")
    how = {}
    for _, view, found_by in done.values():
        how.setdefault(str(view), Counter())[str(found_by)] += 1
    print(f"faces found by (per view, embedded images): {json.dumps({k: dict(v) for k, v in how.items()})}")
    _evaluate(protocols, done)


def _evaluate(protocols: dict, done: dict[Path, tuple]) -> None:
    from marginface.evaluation import metrics
    from marginface.evaluation.verification import evaluate_scores, format_table

    results = []
    for name, proto in protocols.items():
        have = np.array([p in done for p in proto.images])
        complete = [s for s in range(10) if have[proto.pairs[proto.folds == s]].all()]
        if len(complete) < 2:
            print(f"CFP-{name}: fewer than 2 complete splits embedded; not evaluated")
            continue
        keep = np.isin(proto.folds, complete)
        emb = np.stack([done[p][0] if p in done else np.zeros(128, np.float32) for p in proto.images])
        pairs = proto.pairs[keep]
        splits = ",".join(str(s + 1) for s in complete)
        label = f"dlib CFP-{name}" + ("" if len(complete) == 10 else f" (splits {splits})")
        for metric in ("euclidean", "cosine"):
            scores = metrics.pair_scores(emb[pairs[:, 0]], emb[pairs[:, 1]], metric)
            results.append(evaluate_scores(scores, proto.issame[keep], proto.folds[keep], name=f"{label} ({metric})"))
        print(f"{label}: per-split accuracy (euclidean) "
              f"{' '.join(f'{a:.4f}' for a in results[-2].accuracy.accuracies)}")
    print(format_table(results))


if __name__ == "__main__":
    main()
