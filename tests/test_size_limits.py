"""Small files that ask for huge memory are refused before anything is allocated, with the limit named (issue 31
point 6). Each case runs in a subprocess whose address space is capped (``resource.RLIMIT_AS``) at what it has
after its imports plus 256 MiB: an allocation of the size the file asks for would fail there with MemoryError."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

_CAPPED = textwrap.dedent("""
    import resource, sys
    {imports}
    vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
    try:
        {call}
        print("OK")
    except MemoryError:
        print("MemoryError")
    except Exception as err:
        print(type(err).__name__ + ": " + str(err))
""")


def _capped(imports: str, call: str) -> str:
    """Run ``call`` under the address-space cap; its outcome: "OK", "MemoryError" or "Type: message"."""
    code = _CAPPED.format(imports=imports, call=call)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def _png(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """A greyscale 8-bit PNG of zeros (``rows`` of its data written; None = all): big in pixels, tiny on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (width + 1)  # filter byte 0 + the row
    idat = b"".join(packer.compress(row) for _ in range(height if rows is None else rows)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_bin_pickle_asking_bytearray_of_a_gigabyte_is_refused(tmp_path):
    payload = b"\x80\x02c__builtin__\nbytearray\nJ\x00\xca\x9a;\x85R."  # bytearray(10**9): 33 bytes
    (tmp_path / "evil.bin").write_bytes(payload)
    outcome = _capped("from marginface.data.bins import read_verification_bin",
                      f"read_verification_bin({str(tmp_path / 'evil.bin')!r})")
    assert outcome.startswith("UnsafePickleError: refusing bytearray(...) asking for 1,000,000,000 bytes"), outcome
    assert "MAX_PICKLE_ALLOCATION" in outcome


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_real_bins_still_read(tmp_path, protocol):
    import pickle

    from marginface.data.bins import read_verification_bin

    content = ([b"\xff\xd8\xffjpeg", bytearray(b"png"), np.arange(3, dtype=np.uint8), b"x"], [True, False])
    (tmp_path / "ok.bin").write_bytes(pickle.dumps(content, protocol=protocol))
    images, issame = read_verification_bin(tmp_path / "ok.bin")
    assert images == [b"\xff\xd8\xffjpeg", b"png", b"\0\1\2", b"x"] and issame.tolist() == [True, False]


def test_png_of_144_megapixels_is_refused_from_its_header(tmp_path):
    path = _png(tmp_path / "big.png", 12000, 12000)  # ~140 KB on disk, 144 MP: 432 MB as RGB before detection
    assert path.stat().st_size < 1_000_000
    outcome = _capped("from marginface.inference.images import to_rgb_array", f"to_rgb_array({str(path)!r})")
    assert outcome == ("ValueError: image " + str(path) + " is 12000 x 12000 = 144,000,000 pixels, above the limit "
                       "of 50,000,000 (marginface.inference.images.MAX_IMAGE_PIXELS): downscale it first (a face "
                       "needs about 112 x 112 pixels)"), outcome


def test_decompression_bomb_is_a_clear_error(tmp_path):
    from marginface.inference.images import to_rgb_array

    path = _png(tmp_path / "bomb.png", 30000, 30000, rows=1)  # 900 MP: PIL's DecompressionBombError at open
    with pytest.raises(ValueError, match=r"bomb.png is too large to decode .*MAX_IMAGE_PIXELS"):
        to_rgb_array(path)
    from marginface.align.pipeline import read_rgb

    with pytest.raises(ValueError, match="cannot read image .*bomb.png"):
        read_rgb(path)


def test_gallery_npy_header_asking_terabytes_is_refused(tmp_path):
    from marginface.inference.card import ModelCard
    from marginface.inference.gallery import Gallery

    card = ModelCard(backbone="mobilefacenet", embedding_size=8, weights_sha256="e" * 64)
    gallery = Gallery.create(card)
    gallery.add_many(["a", "b"], np.eye(8)[:2], card)
    gallery.save(tmp_path / "g")
    vec = tmp_path / "g" / (tmp_path / "g" / "CURRENT").read_text() / "vectors.npy"
    vec.write_bytes(_npy_with_shape(vec.read_bytes(), (2, 2**40)))  # 2 x 2^40 float32: 8 TiB
    outcome = _capped("from marginface.inference.gallery import Gallery", f"Gallery.load({str(tmp_path / 'g')!r})")
    assert outcome.startswith("UserError: gallery ") and "vectors.npy holds (2, 1099511627776) float32" in outcome


def _npy_with_shape(data: bytes, shape: tuple[int, ...]) -> bytes:
    """A .npy file's bytes with its header's shape replaced (same header length, padded with spaces)."""
    header_len = struct.unpack("<H", data[8:10])[0]
    header = data[10:10 + header_len].decode("latin1")
    start, end = header.index("'shape': (") + len("'shape': "), header.index(")", header.index("'shape'")) + 1
    new = (header[:start] + str(shape) + header[end:]).rstrip("\n").rstrip(" ")
    new = new.ljust(header_len - 1) + "\n"
    assert len(new) == header_len
    return data[:10] + new.encode("latin1") + data[10 + header_len:]
