import numpy as np
import pytest

from marginface.cleaning import dlib_embed


def test_fallback_box_is_lfw_box_for_250_and_centred():
    assert dlib_embed.fallback_box(250, 250) == (68, 68, 182, 182)
    left, top, right, bottom = dlib_embed.fallback_box(115, 144)
    assert abs((left + right) / 2 - 57.5) <= 1 and abs((top + bottom) / 2 - 72) <= 1
    assert abs((right - left) - 0.456 * 115) <= 1


@pytest.mark.slow
def test_dlib_embeds_same_person_closer_than_another(shared_data):
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    root = shared_data / "lfw" / "lfw-deepfunneled"
    paths = [root / "Colin_Powell/Colin_Powell_0001.jpg", root / "Colin_Powell/Colin_Powell_0002.jpg",
             root / "Serena_Williams/Serena_Williams_0001.jpg"]
    vectors, how = dlib_embed.embed_files(paths, workers=0)
    assert vectors.shape == (3, 128) and sum(how.values()) == 3
    d = lambda i, j: np.linalg.norm(vectors[i] - vectors[j])  # noqa: E731
    assert d(0, 1) < 0.6 < d(0, 2)  # dlib's published same-person threshold is 0.6 (Euclidean)
