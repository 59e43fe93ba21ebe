"""dlib's published face encoder (128-d, 99.38% on LFW) as a cleaning :data:`~marginface.cleaning.embedders.Embedder`.

For *raw* loose crops (LFW deep-funneled, the CelebA subset, CFP): dlib's HOG frontal detector finds the face
(no upsampling first — these faces are 80-180 px, above HOG's 80 px window — then once upsampled), the central
detection is kept, dlib's 5-point model and ResNet encoder give the descriptor. Where HOG finds nothing, a
centred box of :data:`FALLBACK_FRACTION` of the image side is used (LFW-style crops put the face there); how each
face was found is counted and reported, never silent. dlib (``dlib-bin``, ``face-recognition-models``) is an
optional extra, imported only here and only when called.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: side of the centred fallback box / image side: deep-funneled LFW's (68, 68, 182, 182) in 250 x 250.
FALLBACK_FRACTION = 114 / 250

_MODELS: tuple | None = None  # per process: loading dlib's models takes ~1 s


def _models() -> tuple:
    global _MODELS
    if _MODELS is None:
        try:
            import dlib
            with warnings.catch_warnings():  # face_recognition_models imports pkg_resources (deprecated)
                warnings.simplefilter("ignore")
                import face_recognition_models as frm
        except ImportError as err:
            raise ImportError("the dlib embedder needs: pip install dlib-bin face-recognition-models "
                              "'setuptools<81' (or pip install 'marginface[dlib]')") from err
        _MODELS = (dlib, dlib.get_frontal_face_detector(),
                   dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
                   dlib.face_recognition_model_v1(frm.face_recognition_model_location()))
    return _MODELS


def fallback_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred box used when no face is detected."""
    side = FALLBACK_FRACTION * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return round(left), round(top), round(left + side), round(top + side)


def _face_box(image: np.ndarray) -> tuple[tuple[int, int, int, int], str]:
    _, hog, _, _ = _models()
    height, width = image.shape[:2]
    for upsample in (0, 1):
        rects = list(hog(image, upsample))
        if rects:
            # the subject of a loose crop is the face nearest the centre
            r = min(rects, key=lambda r: (r.center().x - width / 2) ** 2 + (r.center().y - height / 2) ** 2)
            return (r.left(), r.top(), r.right(), r.bottom()), f"hog{upsample}"
    return fallback_box(width, height), "fallback"


def embed_one(path: str | Path) -> tuple[np.ndarray, str]:
    """(128,) float32 dlib descriptor of the face in one image, and how the face was found."""
    from PIL import Image

    dlib, _, shape, encoder = _models()
    image = np.asarray(Image.open(path).convert("RGB"))
    box, how = _face_box(image)
    landmarks = shape(image, dlib.rectangle(*box))
    return np.asarray(encoder.compute_face_descriptor(image, landmarks, 0), np.float32), how


def embed_files(paths: Sequence[Path], workers: int = 2) -> tuple[np.ndarray, Counter]:
    """(N, 128) float32 dlib descriptors of ``paths`` (``workers`` processes, 0: this one) and the detection counts.

    dlib's encoder runs one image at a time on one core (~70 ms), so processes, not batches, give the speed.
    """
    from tqdm import tqdm

    if workers > 0:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = list(tqdm(pool.imap(embed_one, [str(p) for p in paths], chunksize=16),
                                total=len(paths), desc="dlib embed", unit="img"))
    else:
        results = [embed_one(p) for p in tqdm(paths, desc="dlib embed", unit="img")]
    if not results:
        return np.zeros((0, 128), np.float32), Counter()
    return np.stack([r[0] for r in results]), Counter(r[1] for r in results)


def dlib_embedder(workers: int = 2, counts: Counter | None = None):
    """An :data:`~marginface.cleaning.embedders.Embedder` running dlib; detection counts are added to ``counts``."""

    def embed(paths: Sequence[Path]) -> np.ndarray:
        vectors, how = embed_files(paths, workers)
        if counts is not None:
            counts.update(how)
        return vectors

    return embed
