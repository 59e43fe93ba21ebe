"""A stand-in detector for pipeline tests: deterministic, instant, and driven by the image content.

The number of faces is read from the image brightness (dark: none; bright: two; otherwise one), so a test
folder can hold each case; the kept face is the template placed in the centre of the image, scaled to a
third of its width, and a second face sits in the top-left corner.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from marginface.align import detectors
from marginface.align.template import ARCFACE_TEMPLATE_112


def centre_landmarks(height: int, width: int) -> np.ndarray:
    """Where the stand-in puts the centred face: the template scaled to a third of the width, centred."""
    scale = width / 3 / 112
    return (ARCFACE_TEMPLATE_112 - 56.0) * scale + np.array([width / 2, height / 2])


class StandInDetector:
    def detect(self, image: np.ndarray) -> detectors.Detections:
        height, width = image.shape[:2]
        level = float(image.mean())
        count = 0 if level < 20 else 2 if level > 200 else 1
        centre = centre_landmarks(height, width)
        faces = [centre, (centre - [width / 2, height / 2]) * 0.5 + [width / 8, height / 8]][:count]
        boxes = [[f[:, 0].min() - 5, f[:, 1].min() - 10, f[:, 0].max() + 5, f[:, 1].max() + 5] for f in faces]
        return detectors.Detections(
            np.array(boxes).reshape(-1, 4), np.linspace(0.9, 0.8, count), np.array(faces).reshape(-1, 5, 2)
        )


@pytest.fixture
def stand_in_detector(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(detectors.DETECTORS, "stand-in", lambda **kwargs: StandInDetector())
    return "stand-in"


def write_image(path: Path, value: int, size: tuple[int, int] = (90, 120)) -> None:
    """A flat RGB image of grey ``value`` (height, width = ``size``) with a coloured square in the middle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*size, 3), value, dtype=np.uint8)
    h, w = size
    image[h // 2 - 5 : h // 2 + 5, w // 2 - 5 : w // 2 + 5] = (255, 0, 0) if value < 128 else (0, 0, 255)
    assert cv2.imwrite(str(path), image[..., ::-1])
