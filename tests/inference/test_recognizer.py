from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from marginface.align.detectors import Detections
from marginface.errors import NoFaceError, UserError
from marginface.inference.recognizer import FaceRecognizer
from tests.inference.helpers import LFW, save_tiny


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory) -> FaceRecognizer:
    path = save_tiny(tmp_path_factory.mktemp("m") / "m.safetensors", threshold=0.5)
    return FaceRecognizer.load(path, batch_size=3)


def _faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def test_embed_every_input_kind_agrees(recognizer, tmp_path):
    faces = _faces(4)
    Image.fromarray(faces[0]).save(tmp_path / "f0.png")
    tensors = torch.from_numpy(faces[2:].transpose(0, 3, 1, 2).astype(np.float32))
    inputs = [tmp_path / "f0.png", Image.fromarray(faces[1]), tensors]
    emb, infos = recognizer.embed_with_info(inputs)
    ref = recognizer.model.embed_pixels(faces.transpose(0, 3, 1, 2).astype(np.float32))
    assert emb.dtype == np.float32 and emb.shape == (4, 32)
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert all(i.aligned_input for i in infos) and infos[0].input.endswith("f0.png")
    np.testing.assert_allclose(recognizer.embed(faces), ref, atol=1e-5)  # an (N, H, W, 3) array: N images


def test_flip_tta_is_sum_of_raw_outputs(recognizer):
    faces = _faces(2, 1).transpose(0, 3, 1, 2).astype(np.float32)
    raw = recognizer.model.forward(faces) + recognizer.model.forward(faces[..., ::-1].copy())
    ref = raw / np.linalg.norm(raw.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(recognizer.embed(torch.from_numpy(faces)), ref, atol=1e-5)
    plain = recognizer.model.forward(faces)
    np.testing.assert_allclose(recognizer.embed(torch.from_numpy(faces), flip=False),
                               plain / np.linalg.norm(plain, axis=1, keepdims=True), atol=1e-5)


def test_normalised_tensor_is_refused(recognizer):
    with pytest.raises(ValueError, match="0..255"):
        recognizer.embed(torch.rand(1, 3, 112, 112) * 2 - 1)
    with pytest.raises(ValueError, match="aligned faces"):
        recognizer.embed(torch.rand(1, 3, 100, 100))


@pytest.mark.slow
def test_verify_uses_card_threshold_and_needs_one(recognizer, tmp_path):
    a, b = _faces(2, 3)
    result = recognizer.verify(a, b)
    score, same = result
    emb = recognizer.embed([a, b]).astype(np.float64)
    assert score == pytest.approx(float(emb[0] @ emb[1]), abs=1e-6)
    assert same == (score >= 0.5) and result.threshold == 0.5
    assert recognizer.verify(a, a).same
    with pytest.raises(ValueError, match="pass one image"):
        recognizer.verify(_faces(2), b)
    bare = FaceRecognizer.load(save_tiny(tmp_path / "n.safetensors"))
    with pytest.raises(UserError, match="no calibrated threshold.*marginface calibrate"):
        bare.verify(a, b)


class _FakeDetector:
    """Two faces: a small one at the top-left corner, a big one over the image centre."""

    def __init__(self, n):
        self.n = n

    def detect(self, image):
        h, w = image.shape[:2]
        boxes = np.array([[0, 0, 20, 20], [w * 0.25, h * 0.25, w * 0.75, h * 0.75]])[: self.n]
        marks = np.array([[[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]]]) * (w / 112)
        return Detections(boxes, np.array([0.99, 0.9])[: self.n], np.repeat(marks, self.n, axis=0))


def test_several_faces_policy_and_report(recognizer):
    photo = _faces(1, 4)[0].repeat(2, 0).repeat(2, 1)  # 224x224: a raw photo by the aligned-input rule
    recognizer._detector = _FakeDetector(2)
    try:
        _, (info,) = recognizer.embed_with_info(photo)
        assert info.faces == 2 and info.several and info.kept == "largest containing the centre"
        assert info.box == [56.0, 56.0, 168.0, 168.0] and not info.aligned_input
        recognizer.policy = "score"
        _, (info,) = recognizer.embed_with_info(photo)
        assert info.kept == "score" and info.box == [0.0, 0.0, 20.0, 20.0]
        recognizer._detector = _FakeDetector(0)
        with pytest.raises(NoFaceError, match="no face found in input #0"):
            recognizer.embed(photo)
    finally:
        recognizer._detector, recognizer.policy = None, "centre"


# ------------------------------------------------------------------ real photos (bad input section)
def _lfw(shared_data: Path, name: str = "Aaron_Eckhart/Aaron_Eckhart_0001.jpg") -> np.ndarray:
    return np.asarray(Image.open(shared_data / LFW / name).convert("RGB"))


def test_real_photo_exif_rotated_equals_upright(recognizer, shared_data, tmp_path):
    upright = _lfw(shared_data)
    Image.fromarray(upright).save(tmp_path / "up.png")
    image = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image.save(tmp_path / "rot.png", exif=exif)
    emb, infos = recognizer.embed_with_info([tmp_path / "up.png", tmp_path / "rot.png"])
    assert infos[0].faces >= 1 and not infos[0].aligned_input
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)


def test_real_photo_modes(recognizer, shared_data, tmp_path):
    rgb = _lfw(shared_data)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.dstack([rgb, np.full(grey.shape, 9, np.uint8)])).save(tmp_path / "a.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "s.png")
    emb, infos = recognizer.embed_with_info([tmp_path / "g.png", tmp_path / "a.png", tmp_path / "s.png", rgb])
    assert all(i.faces >= 1 for i in infos)
    np.testing.assert_allclose(emb[0], emb[2], atol=1e-6)  # 16-bit = the same grey
    np.testing.assert_allclose(emb[1], emb[3], atol=1e-6)  # alpha dropped


def test_real_no_face_tiny_face_two_faces(recognizer, shared_data, tmp_path):
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    with pytest.raises(NoFaceError, match="wall.png"):
        recognizer.embed(tmp_path / "wall.png")
    face = _lfw(shared_data)
    canvas = np.full((400, 400, 3), 128, np.uint8)
    canvas[:16, :16] = np.asarray(Image.fromarray(face).resize((16, 16)))
    Image.fromarray(canvas).save(tmp_path / "tiny.png")
    with pytest.raises(NoFaceError, match="tiny.png.*under 20 px"):
        recognizer.embed(tmp_path / "tiny.png")
    other = _lfw(shared_data, "Aaron_Peirsol/Aaron_Peirsol_0001.jpg")
    two = np.full((250, 500, 3), 128, np.uint8)
    two[:, 125:375] = face
    two[70:195, 0:125] = np.asarray(Image.fromarray(other).resize((125, 125)))
    _, (info,) = recognizer.embed_with_info(two)
    assert info.faces >= 2 and info.kept == "largest containing the centre"
    assert info.box[0] >= 125 and info.box[2] <= 375  # the centred face was kept


def test_bad_files(recognizer, tmp_path):
    (tmp_path / "n.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image .*n.jpg"):
        recognizer.embed(tmp_path / "n.jpg")
    Image.fromarray(_faces(1)[0]).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read image .*t.jpg"):
        recognizer.embed(tmp_path / "t.jpg")


def test_max_side_is_checked(recognizer):
    with pytest.raises(ValueError, match="max_side"):
        FaceRecognizer(recognizer.model, max_side=112)


def test_max_side_large_photo_box_in_file_pixels(recognizer, shared_data, tmp_path):
    # A camera-sized JPEG (a real LFW photo upscaled 6x): with max_side the photo is decoded at 1/4 by DCT
    # scaling and detected on a 500 px copy, yet the reported box is in the file's pixels, close to the
    # full-size path's box, and the crops agree (same face, same place).
    big = np.asarray(Image.fromarray(_lfw(shared_data)).resize((1500, 1500), Image.BICUBIC))
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=95)
    fast = FaceRecognizer(recognizer.model, max_side=500)
    (crop_full, info_full), = recognizer.faces([tmp_path / "big.jpg"])
    (crop_fast, info_fast), = fast.faces([tmp_path / "big.jpg"])
    width = info_full.box[2] - info_full.box[0]
    assert width > 300  # the upscaled face
    np.testing.assert_allclose(info_fast.box, info_full.box, atol=0.08 * width)
    assert np.abs(crop_fast - crop_full).mean() < 20  # 0..255 pixels: the same aligned face
