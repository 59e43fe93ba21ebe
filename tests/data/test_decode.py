import cv2
import numpy as np
import pytest

from marginface.data.decode import PREFERENCE, available_decoders, decode_image, get_decoder
from tests.data.helpers import face


def _encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def test_core_decoders_available():
    names = available_decoders()
    assert {"cv2", "pil"} <= set(names)
    assert names == [name for name in PREFERENCE if name in names]


@pytest.mark.parametrize("name", available_decoders())
def test_every_decoder_agrees_with_pil_on_jpeg(name):
    import io

    from PIL import Image

    data = _encode(face(0, 0), ".jpg")
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)
    out = get_decoder(name)(data)
    assert out.dtype == np.uint8 and out.shape == (112, 112, 3)
    # libjpeg builds may differ in IDCT/upsampling rounding by a few levels, never more
    assert np.abs(out.astype(np.int16) - reference).max() <= 4


def test_png_and_grey_are_lossless_through_auto():
    rgb = face(1, 2)
    assert np.array_equal(decode_image(_encode(rgb, ".png")), rgb)
    grey = rgb[:, :, 0].copy()
    ok, buf = cv2.imencode(".pgm", grey)
    out = decode_image(buf.tobytes())
    assert out.shape == (112, 112, 3) and all(np.array_equal(out[:, :, c], grey) for c in range(3))


def test_numpy_buffer_input():
    rgb = face(2, 0)
    assert np.array_equal(decode_image(np.frombuffer(_encode(rgb, ".png"), np.uint8)), rgb)


@pytest.mark.parametrize("decoder", ["auto", *available_decoders()])
def test_truncated_and_garbage_raise_naming_the_source(decoder):
    data = _encode(face(0, 1), ".jpg")
    for bad in (data[: len(data) // 2], b"\xff\xd8\xff" + bytes(300), b"this is not an image"):
        if decoder == "simplejpeg" and bad[:3] != b"\xff\xd8\xff":
            continue
        with pytest.raises(ValueError, match="cannot decode image some/file.jpg"):
            decode_image(bad, source="some/file.jpg", decoder=decoder)


def test_unknown_decoder():
    with pytest.raises(ValueError, match="unknown decoder"):
        decode_image(b"", decoder="nope")
