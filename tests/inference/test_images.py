import numpy as np
import pytest
from PIL import Image

from marginface.data.images import to_rgb_array


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


def _big_jpeg(path, size=(1000, 800)):  # noqa: ANN001, ANN202
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (size[1] // 50, size[0] // 50, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.BILINEAR).save(path, quality=92)  # smooth: DCT scaling is exact-ish
    return path


def test_read_photo_decodes_large_jpeg_reduced(tmp_path):
    from marginface.data.images import read_photo

    path = _big_jpeg(tmp_path / "big.jpg")
    full = to_rgb_array(path)
    for max_side, expected in ((600, 1), (500, 2), (250, 4), (100, 8), (1000, 1), (2000, 1)):
        rgb, scale = read_photo(path, "big", max_side)
        assert rgb.shape == (800 // expected, 1000 // expected, 3) and scale == expected
        assert max(rgb.shape[:2]) >= min(max_side, 1000)
        reference = full.reshape(800 // expected, expected, 1000 // expected, expected, 3).mean((1, 3))
        assert np.abs(rgb.astype(float) - reference).mean() < 3.0  # the same picture, averaged by DCT scaling


def test_read_photo_leaves_other_inputs_at_full_size(tmp_path):
    from marginface.data.images import read_photo

    big = np.asarray(Image.open(_big_jpeg(tmp_path / "big.jpg")))
    Image.fromarray(big).save(tmp_path / "big.png")
    rgb, scale = read_photo(tmp_path / "big.png", "png", 250)  # PNG: no DCT, decoded in full
    assert scale == 1.0 and rgb.shape == big.shape
    rgb, scale = read_photo(big, "array", 250)
    assert scale == 1.0 and rgb.shape == big.shape
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        read_photo(tmp_path / "bad.jpg", "bad", 250)
