"""Threshold calibration from scores: the cosine threshold at a target false-accept rate, and a card's thresholds
from a validation set's embeddings. Pure numbers (no files, no photos, no model): the trainer calls
:func:`calibrate_validation_pairs` for the card it writes, and :mod:`marginface.inference.calibrate` (``marginface
calibrate``: pairs from folders, pairs files and ``.bin`` sets, embedded by the model's own pipeline) calls
:func:`calibrate_scores`.

Decision rule everywhere: two faces are the same person iff ``cosine >= threshold``.

- **At a target FAR** (the default threshold): the lowest threshold whose measured FAR on the impostor
  (different-identity) pairs is <= the target, i.e. at most ``floor(far * impostors)`` impostor pairs accepted
  — :func:`marginface.evaluation.metrics.tar_at_far`'s operating point, no interpolation. A FAR below
  ``1 / impostors`` cannot be measured on that many pairs and is refused.
- **At best accuracy**: :func:`marginface.evaluation.metrics.best_threshold` (the midpoint cut maximising
  accuracy on these pairs; optimistic, as it is fitted on the data it is measured on).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import asdict, dataclass
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
