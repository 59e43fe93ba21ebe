"""What every face detector returns (:class:`Detections`) and the interface it implements (:class:`Detector`).

Below both ``detectors`` (the registry that creates detectors) and ``mtcnn`` (one of them), so neither imports the
other's module for these types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Faces found in one image.

    Attributes:
        boxes: (N, 4) float x1, y1, x2, y2, 0-based pixels.
        scores: (N,) detector confidence (a probability for MTCNN, an SVM margin for dlib's HOG).
        landmarks: (N, 5, 2) float pixels (x, y), ArcFace order.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2)))

    def __len__(self) -> int:
        return len(self.boxes)


class Detector(Protocol):
    def detect(self, image: np.ndarray) -> Detections:
        """Faces in an (H, W, 3) uint8 RGB image."""
        ...
