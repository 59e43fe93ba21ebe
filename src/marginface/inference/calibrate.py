"""Threshold calibration: the cosine threshold at a target false-accept rate, written into the model card.

Decision rule everywhere: two faces are the same person iff ``cosine >= threshold``.

- **At a target FAR** (the default threshold): the lowest threshold whose measured FAR on the impostor
  (different-identity) pairs is <= the target, i.e. at most ``floor(far * impostors)`` impostor pairs accepted
  — :func:`marginface.evaluation.metrics.tar_at_far`'s operating point, no interpolation. A FAR below
  ``1 / impostors`` cannot be measured on that many pairs and is refused.
- **At best accuracy**: :func:`marginface.evaluation.metrics.best_threshold` (the midpoint cut maximising
  accuracy on these pairs; optimistic, as it is fitted on the data it is measured on).

Pairs come from a labelled folder (``DIR/<identity>/<images>``: every same-identity pair is genuine, every
other pair an impostor), an LFW-format ``pairs.txt`` with its image folder, or an insightface ``.bin``.
Scores are computed with the model's own pipeline (:class:`~marginface.inference.recognizer.FaceRecognizer`,
flip TTA per the card), so the threshold applies to exactly what ``verify`` computes.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from marginface.errors import UserError
from marginface.evaluation import metrics


@dataclass
class Calibration:
    """A calibrated threshold and what supports it.

    Attributes:
        far: the target FAR.
        threshold: accept iff ``cosine >= threshold``; at most ``far * impostors`` impostor pairs accepted.
        achieved_far: the FAR measured at ``threshold`` (<= ``far``).
        tar: the true-accept rate measured at ``threshold``.
        impostors, genuine: numbers of different- and same-identity pairs.
        best_threshold, best_accuracy: the accuracy-maximising threshold and its accuracy on these pairs.
        data: where the pairs came from.
    """

    far: float
    threshold: float
    achieved_far: float
    tar: float
    impostors: int
    genuine: int
    best_threshold: float
    best_accuracy: float
    data: str = ""

    def card_thresholds(self, flip_tta: bool) -> dict[str, Any]:
        """The ``thresholds`` entry of a model card (``default`` is the threshold at the target FAR)."""
        return {"default": self.threshold, **asdict(self), "flip_tta": flip_tta,
                "date": datetime.date.today().isoformat()}

    def describe(self) -> str:
        return (f"threshold {self.threshold:.6f} at FAR <= {self.far:g} (measured FAR {self.achieved_far:.3g}, "
                f"TAR {self.tar:.4f}) on {self.impostors} impostor / {self.genuine} genuine pairs; best-accuracy "
                f"threshold {self.best_threshold:.6f} (accuracy {self.best_accuracy:.4f}) [{self.data}]")


def calibrate_scores(scores: np.ndarray, issame: np.ndarray, far: float, data: str = "") -> Calibration:
    """Calibrate on (N,) pair cosines and (N,) same-identity flags. Raises UserError when ``far`` is below
    ``1 / impostors`` (not measurable) or a class of pairs is missing."""
    issame = np.asarray(issame, dtype=bool)
    impostors, genuine = check_measurable(far, issame, data)
    # clipped as verify() clips: a float64 dot of two float32 unit vectors can exceed 1 by a few ulps, and a
    # threshold of 1.0000001 would reject even identical images
    scores = np.clip(np.asarray(scores, dtype=np.float64), -1.0, 1.0)
    point = metrics.tar_at_far(scores, issame, far)
    best_t, best_acc = metrics.best_threshold(scores, issame)
    return Calibration(float(far), float(point.threshold[0]), float(point.achieved_far[0]), float(point.tar[0]),
                       impostors, genuine, float(best_t), float(best_acc), data)


def check_measurable(far: float, issame: np.ndarray, data: str = "") -> tuple[int, int]:
    """(impostors, genuine) of (N,) same-identity flags; raises UserError when ``far`` cannot be calibrated on
    them (a class missing, ``far`` outside (0, 1] or below ``1 / impostors``). Cheap: the sources call it on the
    labels alone, before any image is embedded."""
    issame = np.asarray(issame, dtype=bool)
    impostors, genuine = int((~issame).sum()), int(issame.sum())
    if impostors == 0 or genuine == 0:
        raise UserError(f"calibration needs both genuine and impostor pairs; got {genuine} genuine and "
                        f"{impostors} impostor pairs from {data or 'the data'}")
    if not 0 < far <= 1:
        raise UserError(f"`far` must be in (0, 1], got {far}")
    if far * impostors < 1 - 1e-9:
        raise UserError(f"FAR {far:g} cannot be measured on {impostors} impostor pairs (the smallest measurable "
                        f"FAR is 1/{impostors} = {1 / impostors:.3g}): use at least {int(np.ceil(1 / far))} "
                        "impostor pairs (a bigger folder or pairs file) or a larger `far`")
    return impostors, genuine


def measurable_far(impostors: int) -> float:
    """The smallest power of ten that ``impostors`` impostor pairs can measure: ``10**ceil(log10(1/impostors))``
    (the lowest measurable FAR is ``1 / impostors``; e.g. 300 pairs -> 1e-2, 1,000 -> 1e-3, 3,000 -> 1e-3)."""
    if impostors < 1:
        raise ValueError(f"no FAR can be measured on {impostors} impostor pairs")
    return float(10.0 ** math.ceil(math.log10(1.0 / impostors) - 1e-9))  # tolerance: 1,000 pairs measure 1e-3


def calibrate_validation_pairs(embeddings: np.ndarray, issame: np.ndarray, data: str) -> dict[str, Any]:
    """A card's ``thresholds`` from a training validation set: (2N, D) L2-normalised embeddings (rows 2i, 2i+1
    are pair i, flip TTA) and (N,) labels, at :func:`measurable_far` of its impostor pairs. ``{}`` when the set
    lacks genuine or impostor pairs.

    The FAR is chosen from the pairs, not fixed: a target below ``1 / impostors`` cannot be measured (and is
    refused by :func:`calibrate_scores`), so a small validation set yields a threshold at a coarse FAR (e.g.
    1e-2 for the demo's 300 impostor pairs); ``far_choice`` in the card says so, and ``marginface calibrate``
    on more pairs gives a finer one.
    """
    issame = np.asarray(issame, dtype=bool)
    impostors = int((~issame).sum())
    if impostors == 0 or issame.sum() == 0:
        return {}
    emb = np.asarray(embeddings, dtype=np.float64)  # scores in float64, as verify() computes them
    far = measurable_far(impostors)
    result = calibrate_scores(np.sum(emb[0::2] * emb[1::2], axis=1), issame, far, data)
    choice = (f"the smallest power of ten measurable on {impostors} impostor pairs (the lowest measurable FAR "
              f"is 1/{impostors} = {1 / impostors:.3g}); marginface calibrate on more pairs for a lower FAR")
    return {**result.card_thresholds(flip_tta=True), "far_choice": choice}


# ------------------------------------------------------------------------------------------ pair sources
def folder_pairs(recognizer: Any, folder: str | os.PathLike, max_images: int = 4000,
                 seed: int = 0, far: float | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """All pairs of the images of ``folder/<identity>/``: (scores, issame, description).

    More than ``max_images`` images: a seeded random subset of that many (all pairs grow as N^2). ``far``:
    checked against the pairs (:func:`check_measurable`) before any image is embedded.
    """
    from marginface.align.pipeline import list_images

    images, _ = list_images(folder)
    total = len(images)
    if total > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(total, max_images, replace=False))
        images = [images[i] for i in keep]
    labels = np.unique([p.parent.name for p in images], return_inverse=True)[1]
    upper = np.triu_indices(len(images), k=1)
    issame = labels[upper[0]] == labels[upper[1]]
    if far is not None:
        check_measurable(far, issame, f"folder {folder}")
    emb = recognizer.embed_with_info(images, progress=True)[0].astype(np.float64)  # as verify() scores
    scores = (emb @ emb.T)[upper]
    return scores, issame, f"folder {folder} ({len(images)} of {total} images, all pairs)"


def pairs_file_pairs(recognizer: Any, pairs: str | os.PathLike, images: str | os.PathLike | None = None,
                     far: float | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Pairs of an insightface ``.bin`` (aligned faces) or of an LFW ``pairs.txt`` over ``images``:
    (scores, issame, description). Each distinct image is embedded once; ``far`` is checked against the pairs'
    labels (:func:`check_measurable`) before any image is decoded or embedded."""
    path = Path(pairs)
    if path.is_dir():
        raise IsADirectoryError(f"`pairs` {path} is a folder, expected a .bin or pairs.txt file (labelled photos "
                                "DIR/<identity>/<images> go to `folder`)")
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    if path.suffix.lower() == ".bin":
        from marginface.data.bins import read_verification_bin

        encoded, issame = read_verification_bin(path)
        if far is not None:
            check_measurable(far, issame, str(path))
        emb, distinct = _embed_distinct(recognizer, encoded, path)
        emb = emb.astype(np.float64)  # scores in float64, as verify() computes them
        return (np.sum(emb[0::2] * emb[1::2], axis=1), np.asarray(issame, bool),
                f"{path} ({len(issame)} pairs, {distinct} distinct images)")
    if images is None:
        raise UserError(f"{path} is a pairs.txt: also give the image folder it refers to (`images=DIR`)")
    from marginface.evaluation.pairs import read_pairs, resolve_images

    parsed = read_pairs(path)
    if far is not None:
        check_measurable(far, parsed.issame, str(path))
    files = resolve_images(parsed, images)
    names = parsed.unique_names()
    emb = recognizer.embed_with_info([files[n] for n in names], progress=True)[0].astype(np.float64)
    row = {n: i for i, n in enumerate(names)}
    a = emb[[row[n] for n in parsed.names[:, 0]]]
    b = emb[[row[n] for n in parsed.names[:, 1]]]
    return np.sum(a * b, axis=1), parsed.issame.astype(bool), f"{path} over {images} ({len(parsed)} pairs)"


def _embed_distinct(recognizer: Any, encoded: list[bytes], path: Path, chunk: int = 256) -> tuple[np.ndarray, int]:
    """(2N, D) embeddings of a ``.bin``'s encoded images, each distinct image (same encoded bytes, by SHA-256)
    decoded and embedded once, ``chunk`` at a time (memory O(chunk), not O(2N) decoded images); and the number
    of distinct images. LFW's 12,000 stored images are 7,701 distinct ones."""
    import hashlib

    import torch
    from tqdm.auto import tqdm

    from marginface.data.bins import decode_verification_images

    first: dict[bytes, int] = {}  # content hash -> row among the distinct images
    rows = np.array([first.setdefault(hashlib.sha256(item).digest(), len(first)) for item in encoded])
    sources = np.unique(rows, return_index=True)[1]  # the first stored copy of each distinct image
    out = np.empty((len(sources), recognizer.card.embedding_size), dtype=np.float32)
    with tqdm(total=len(sources), desc=f"embed {path.name}", unit="img") as bar:
        for start in range(0, len(sources), chunk):
            indices = sources[start : start + chunk].tolist()
            faces = decode_verification_images(encoded, path, indices, recognizer.size, progress=False)
            pixels = torch.clamp(faces * 127.5 + 127.5, 0, 255)  # the loader's [-1, 1] back to 0..255
            out[start : start + len(indices)] = recognizer.embed(pixels)
            bar.update(len(indices))
    return out[rows], len(sources)


def calibrate_model(model: str | os.PathLike, far: float, *, pairs: str | None = None, images: str | None = None,
                    folder: str | None = None, write: bool = True, device: str = "cpu",
                    max_images: int = 4000, threads: int | None = None) -> Calibration:
    """Calibrate the model at ``model`` on ``pairs`` (.bin or pairs.txt + ``images``) or a labelled ``folder``;
    with ``write``, store the result in its card (atomic rewrite of the file)."""
    from marginface.inference.recognizer import FaceRecognizer
    from marginface.models.load import write_card

    if (pairs is None) == (folder is None):
        raise UserError("give exactly one source of pairs: `pairs=FILE` (.bin or pairs.txt + `images`) or `folder=DIR`")
    suffix = Path(model).suffix.lower()
    if write and suffix not in (".safetensors", ".onnx") and not Path(model).is_dir():
        raise UserError(f"{model}: a card can only be written into .safetensors or .onnx files; export it "
                        "(marginface export) or pass `write=False` to only print the threshold")
    recognizer = FaceRecognizer.load(model, device=device, threads=threads)
    if folder is not None:
        scores, issame, data = folder_pairs(recognizer, folder, max_images, far=far)
    else:
        scores, issame, data = pairs_file_pairs(recognizer, pairs, images, far=far)
    result = calibrate_scores(scores, issame, far, data)
    if write:
        card = recognizer.card
        card.thresholds = result.card_thresholds(card.input.flip_tta)
        write_card(recognizer.model.path, card)
    return result
