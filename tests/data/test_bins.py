import io
import os
import pickle
import pickletools

import cv2
import numpy as np
import pytest
import torch

from marginface.data.bins import (
    UnsafePickleError,
    load_verification_bin,
    read_verification_bin,
    write_verification_bin,
)
from tests.data.helpers import face, reference_tensor


def _jpeg(rgb) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def _png(rgb) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def test_write_read_round_trip(tmp_path):
    images = [_jpeg(face(i, 0)) for i in range(6)]
    issame = [True, False, True]
    path = write_verification_bin(tmp_path / "v.bin", images, issame)
    got_images, got_issame = read_verification_bin(path)
    assert got_images == images and got_issame.dtype == bool and got_issame.tolist() == issame
    # the file is the plain insightface pickle: (list of bytes, list of bools)
    assert pickle.loads(path.read_bytes()) == (images, issame)


def test_numpy_buffers_in_and_decode_exact(tmp_path):
    rgbs = [face(i, 1) for i in range(4)]
    buffers = [np.frombuffer(_png(rgb), np.uint8).reshape(-1, 1) for rgb in rgbs]  # cv2.imencode layout
    path = write_verification_bin(tmp_path / "v.bin", buffers, np.array([True, False]))
    images, issame = load_verification_bin(path)
    assert images.shape == (4, 3, 112, 112) and images.dtype == torch.float32 and issame.tolist() == [True, False]
    for image, rgb in zip(images, rgbs):
        np.testing.assert_allclose(image.numpy(), reference_tensor(rgb), rtol=0, atol=1e-6)


def test_real_small_lfw_bin(shared_data):
    path = shared_data / "bins" / "small_lfw.bin"
    encoded, issame = read_verification_bin(path)
    assert len(encoded) == 20 and all(data[:3] == b"\xff\xd8\xff" for data in encoded)
    assert issame.shape == (10,) and issame.dtype == bool
    images, issame2 = load_verification_bin(path)
    assert images.shape == (20, 3, 112, 112) and np.array_equal(issame, issame2)
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.1
    # what the file references is exactly numpy reconstruction (checked by pickletools)
    globals_used = {arg for op, arg, _ in pickletools.genops(path.read_bytes()) if op.name == "GLOBAL"}
    assert globals_used == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalExploit:
    def __reduce__(self):
        return eval, ("__import__('os').getpid()",)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Exploit(marker)], [True]), protocol=protocol))
    with pytest.raises(UnsafePickleError, match=rf"refusing to unpickle (posix|os|nt)\.system from {path}"):
        read_verification_bin(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps((_EvalExploit(), []), protocol=protocol))
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle (__builtin__|builtins)\.eval"):
        load_verification_bin(path)


def test_python2_style_pickle_needs_bytes_encoding(tmp_path):
    jpeg = _jpeg(face(3, 3))
    # protocol 2 as Python 2 wrote it: images as str (BINSTRING), bools as NEWTRUE/NEWFALSE
    raw = (b"\x80\x02]q\x00(T" + len(jpeg).to_bytes(4, "little") + jpeg + b"T" + len(jpeg).to_bytes(4, "little")
           + jpeg + b"e]q\x01\x88a\x86q\x02.")
    pickletools.dis(raw, out=io.StringIO())  # well-formed
    path = tmp_path / "py2.bin"
    path.write_bytes(raw)
    images, issame = read_verification_bin(path)
    assert images == [jpeg, jpeg] and issame.tolist() == [True]


def test_wrong_content_is_a_clear_error(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="expected a pickled \\(images, issame\\) pair"):
        read_verification_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        read_verification_bin(path)
    path.write_bytes(pickle.dumps(([b"a", 5], [True])))
    with pytest.raises(ValueError, match="image 1 is a int"):
        read_verification_bin(path)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="not a readable verification .bin"):
        read_verification_bin(path)
    with pytest.raises(FileNotFoundError):
        read_verification_bin(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="2N images"):
        write_verification_bin(tmp_path / "y.bin", [b"a"], [True])


def test_undecodable_image_in_bin_names_it(tmp_path):
    path = write_verification_bin(tmp_path / "v.bin", [_jpeg(face(0, 0)), b"\xff\xd8\xffbroken"], [True])
    with pytest.raises(ValueError, match=f"image 1 of {path}"):
        load_verification_bin(path)
