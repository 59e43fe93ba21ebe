from __future__ import annotations

import numpy as np
import pytest

from marginface.align.template import ARCFACE_TEMPLATE_112, similarity_transform, template, warp_face


def _closed_form_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Independent float64 reference: a 2-D similarity is linear in (a, b, tx, ty) with
    x' = a x - b y + tx, y' = b x + a y + ty, so least squares is one linear solve (no SVD, no reflection)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1.0, 0.0], [y, x, 0.0, 1.0]]
        rhs += [u, v]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def _known(scale: float, angle: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


@pytest.mark.parametrize("seed", range(5))
def test_recovers_a_known_similarity_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 250, size=(5, 2))
    truth = _known(rng.uniform(0.2, 3.0), rng.uniform(-np.pi, np.pi), tuple(rng.uniform(-100, 100, 2)))
    np.testing.assert_allclose(similarity_transform(src, _apply(truth, src)), truth, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_fit_matches_closed_form_least_squares(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    src = rng.uniform(0, 250, size=(7, 2))
    dst = _apply(_known(0.5, 0.3, (10.0, -4.0)), src) + rng.normal(0, 3.0, size=(7, 2))
    np.testing.assert_allclose(similarity_transform(src, dst), _closed_form_similarity(src, dst), atol=1e-9)


def test_never_reflects() -> None:
    # The best orthogonal fit to a mirrored face is a reflection; a similarity must stay a rotation.
    src = ARCFACE_TEMPLATE_112.copy()
    dst = src * np.array([-1.0, 1.0])
    matrix = similarity_transform(src, dst)
    assert np.linalg.det(matrix[:, :2]) > 0
    np.testing.assert_allclose(matrix, _closed_form_similarity(src, dst), atol=1e-9)


def test_template_lands_on_template() -> None:
    np.testing.assert_allclose(similarity_transform(template(), template()), _known(1, 0, (0, 0)), atol=1e-12)
    # Landmarks that are a similarity image of the template map back exactly onto it.
    face = _apply(_known(2.1, 0.4, (30.0, 55.0)), ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(_apply(similarity_transform(face, template()), face), template(), atol=1e-9)


def test_template_scales_with_size() -> None:
    np.testing.assert_allclose(template(224), ARCFACE_TEMPLATE_112 * 2)
    with pytest.raises(ValueError, match="positive"):
        template(0)


def test_warp_with_template_landmarks_is_identity() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(warp_face(image, ARCFACE_TEMPLATE_112), image)


def test_warp_moves_landmarks_onto_template() -> None:
    # Draw bright dots at known landmark positions of a rotated, scaled face and check where they land.
    matrix = _known(1.7, -0.35, (40.0, 25.0))
    points = _apply(matrix, ARCFACE_TEMPLATE_112)
    image = np.zeros((260, 240), dtype=np.uint8)
    for x, y in np.round(points).astype(int):
        image[y - 2 : y + 3, x - 2 : x + 3] = 255
    crop = warp_face(image, points)
    for x, y in ARCFACE_TEMPLATE_112:
        assert crop[int(round(y)), int(round(x))] > 128


@pytest.mark.parametrize("shape", [(250, 250, 3), (100, 80), (300, 200, 3)])
@pytest.mark.parametrize("size", [112, 128])
def test_warp_shape_and_dtype(shape: tuple[int, ...], size: int) -> None:
    image = np.full(shape, 7, dtype=np.uint8)
    landmarks = ARCFACE_TEMPLATE_112 * 0.8 + 10
    out = warp_face(image, landmarks, size)
    assert out.shape == (size, size, *shape[2:]) and out.dtype == np.uint8


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="all at one point"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        similarity_transform(np.ones((5, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        similarity_transform(np.full((5, 2), np.nan), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="uint8"):
        warp_face(np.zeros((10, 10, 3), np.float32), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        warp_face(np.zeros((10, 10, 3), np.uint8), ARCFACE_TEMPLATE_112[:4])
