"""Reproduce dlib's published LFW figure (99.38%) through marginface's verification protocol.

dlib's ResNet face encoder (PyPI ``face-recognition-models``, run by ``dlib-bin``) is published at 99.38% on LFW.
This script embeds every image named by ``pairs.txt`` with dlib's own pipeline (HOG frontal face detector,
5-point shape predictor, 150x150 chip, 128-d descriptor), writes the embeddings in the ``.npz`` format that
``marginface eval --embeddings`` reads, and evaluates them with ``marginface.evaluation`` (10 folds in
``pairs.txt`` order, threshold on the other nine). dlib's descriptor is trained for Euclidean distance, so the
score is the negative Euclidean distance; cosine similarity is reported beside it.

Setup (optional extra, not a CI dependency)::

    pip install dlib-bin face-recognition-models 'setuptools<81'   # or: pip install 'marginface[dlib]'
    python benchmarks/dlib_lfw.py                                     # ~15 min on 2 CPU cores

The embeddings are cached (``--cache``); a second run only re-evaluates.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from marginface.data.pairs import read_pairs, resolve_images
from marginface.paths import shared_data_dir

# deep-funneled LFW images are 250x250 with the face roughly centred: this box is the fallback when neither
# of dlib's detectors finds a face (counted and reported, never silent).
_FALLBACK_BOX = (68, 68, 182, 182)


def _load_dlib() -> tuple:
    try:
        import dlib
        with warnings.catch_warnings():  # face_recognition_models imports pkg_resources (deprecated)
            warnings.simplefilter("ignore")
            import face_recognition_models as frm
    except ImportError as err:
        raise ImportError(
            "this benchmark needs dlib: pip install dlib-bin face-recognition-models 'setuptools<81' "
            "(or pip install 'marginface[dlib]')"
        ) from err
    hog = dlib.get_frontal_face_detector()
    cnn = dlib.cnn_face_detection_model_v1(frm.cnn_face_detector_model_location())
    shape = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    encoder = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    return dlib, hog, cnn, shape, encoder


def _central(rects: list, width: int, height: int):
    """The detection whose centre is nearest the image centre (LFW's subject is the centred face)."""
    cx, cy = width / 2, height / 2
    return min(rects, key=lambda r: (r.center().x - cx) ** 2 + (r.center().y - cy) ** 2)


def _detect(models: tuple, image: np.ndarray, upsample: int) -> tuple[object, str]:
    dlib, hog, cnn, _, _ = models
    height, width = image.shape[:2]
    rects = list(hog(image, upsample))
    if rects:
        return _central(rects, width, height), "hog"
    rects = [d.rect for d in cnn(image, upsample)]
    if rects:
        return _central(rects, width, height), "cnn"
    return dlib.rectangle(*_FALLBACK_BOX), "fallback"


def extract(files: dict[str, Path], upsample: int, jitters: int) -> tuple[np.ndarray, np.ndarray, Counter]:
    """Embed each file with dlib: (N,) names, (N, 128) float32 descriptors, and how faces were found."""
    from PIL import Image

    models = _load_dlib()
    names, vectors, how = [], [], Counter()
    for name, file in tqdm(files.items(), desc="dlib embed", unit="img"):
        image = np.asarray(Image.open(file).convert("RGB"))
        rect, found_by = _detect(models, image, upsample)
        how[found_by] += 1
        landmarks = models[3](image, rect)
        vectors.append(np.asarray(models[4].compute_face_descriptor(image, landmarks, jitters), np.float32))
        names.append(name)
    return np.array(names, dtype=str), np.stack(vectors), how


def main() -> None:
    shared = shared_data_dir()
    default_lfw = shared / "lfw" if shared else None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=default_lfw, help="folder with pairs.txt and lfw-deepfunneled/")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/marginface/dlib_lfw.npz")
    parser.add_argument("--upsample", type=int, default=1, help="detector upsampling (dlib's examples use 1)")
    parser.add_argument("--jitters", type=int, default=0, help="dlib num_jitters (0: one pass per image)")
    args = parser.parse_args()
    if args.lfw is None:
        raise SystemExit("no LFW folder: pass --lfw (folder holding pairs.txt and lfw-deepfunneled/)")
    pairs_path = args.lfw / "pairs.txt"
    pairs = read_pairs(pairs_path)
    files = resolve_images(pairs, args.lfw / "lfw-deepfunneled")
    if args.cache.is_file():
        print(f"using cached embeddings {args.cache} (delete it to re-extract)")
    else:
        start = time.perf_counter()
        names, embeddings, how = extract(files, args.upsample, args.jitters)
        seconds = time.perf_counter() - start
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.cache, names=names, embeddings=embeddings)
        print(f"embedded {len(names)} images in {seconds:.0f} s ({1000 * seconds / len(names):.0f} ms/img); "
              f"faces found by: {dict(how)}")
    _evaluate(args.cache, pairs_path)


def _evaluate(cache: Path, pairs_path: Path) -> None:
    from marginface.evaluation.verification import evaluate_embeddings_file, format_table

    results = []
    for metric in ("euclidean", "cosine"):
        start = time.perf_counter()
        results.append(evaluate_embeddings_file(cache, pairs_path, metric=metric, name=f"dlib LFW ({metric})"))
        print(f"protocol ({metric}): {1000 * (time.perf_counter() - start):.0f} ms")
    print(format_table(results))
    fold_accuracies = " ".join(f"{a:.4f}" for a in results[0].accuracy.accuracies)
    print(f"per-fold accuracy (euclidean): {fold_accuracies}")


if __name__ == "__main__":
    main()
