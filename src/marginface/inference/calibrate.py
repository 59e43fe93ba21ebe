"""Threshold calibration of a model file: the cosine threshold at a target false-accept rate, written into its card.

The numbers (scores -> threshold, the decision rule ``cosine >= threshold``, which FARs can be measured) are
:mod:`marginface.evaluation.calibration`; this module gathers the pairs and scores them. Pairs come from a
labelled folder (``DIR/<identity>/<images>``: every same-identity pair is genuine, every other pair an impostor),
an LFW-format ``pairs.txt`` with its image folder, or an insightface ``.bin``. Scores are computed with the
model's own pipeline (:class:`~marginface.inference.recognizer.FaceRecognizer`, flip TTA per the card), so the
threshold applies to exactly what ``verify`` computes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from marginface.errors import UserError

# The pure part (scores -> thresholds) moved to marginface.evaluation.calibration (the trainer uses it: training may
# import evaluation, not inference); importing it from here is kept for one release.
from marginface.evaluation.calibration import (  # noqa: F401
    Calibration,
    calibrate_scores,
    calibrate_validation_pairs,
    check_measurable,
    measurable_far,
)


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
    from marginface.data.pairs import read_pairs, resolve_images

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
