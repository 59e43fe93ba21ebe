import numpy as np
import pytest
from PIL import Image

from marginface.inference.images import to_rgb_array


def _photo():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)


def test_exif_rotated_equals_upright(tmp_path):
    upright = _photo()
    stored = np.rot90(upright, k=1)  # what the camera stored; EXIF 6 says "rotate 90 CW to view"
    image = Image.fromarray(np.ascontiguousarray(stored))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "r.png", exif=exif)
    np.testing.assert_array_equal(to_rgb_array(tmp_path / "r.png"), upright)


def test_modes(tmp_path):
    grey = np.arange(40 * 60, dtype=np.uint8).reshape(40, 60)
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = to_rgb_array(tmp_path / "g.png")
    assert out.shape == (40, 60, 3) and (out[..., 1] == grey).all()
    rgba = np.dstack([_photo(), np.full((40, 60), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(to_rgb_array(tmp_path / "a.png"), rgba[..., :3])
    sixteen = (grey.astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(tmp_path / "s.png")
    np.testing.assert_array_equal(to_rgb_array(tmp_path / "s.png")[..., 0], grey)
    Image.fromarray(_photo()).convert("CMYK").save(tmp_path / "c.jpg")
    assert to_rgb_array(tmp_path / "c.jpg").shape == (40, 60, 3)


def test_bad_files(tmp_path):
    (tmp_path / "n.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        to_rgb_array(tmp_path / "n.jpg")
    Image.fromarray(_photo()).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read image"):
        to_rgb_array(tmp_path / "t.jpg")
    with pytest.raises(FileNotFoundError):
        to_rgb_array(tmp_path / "missing.jpg")
