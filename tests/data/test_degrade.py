"""`marginface prepare degrade`: a low-quality copy of a verification set — the same pairs, fewer pixels of detail."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from marginface.cli import main
from marginface.data.bins import read_verification_bin, write_verification_bin
from marginface.data.degrade import degrade_bin, degrade_image


def _face(seed: int) -> bytes:
    """A 112x112 PNG with detail at every scale (noise), so that a degradation is measurable."""
    pixels = np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _pixels(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), dtype=np.float64)


def test_degraded_face_keeps_its_size_and_only_the_coarse_detail() -> None:
    face = _face(0)
    degraded = degrade_image(face, size=8, quality=95)
    assert Image.open(io.BytesIO(degraded)).format == "JPEG"
    original, got = _pixels(face), _pixels(degraded)
    assert got.shape == (112, 112, 3)
    # independent reference: the 14x14-pixel block means of the original are what an 8x8 image keeps
    block_means = original.reshape(8, 14, 8, 14, 3).mean(axis=(1, 3))
    got_means = got.reshape(8, 14, 8, 14, 3).mean(axis=(1, 3))
    assert np.abs(got_means - block_means).mean() < 6.0  # bicubic overshoot + JPEG, on a 0..255 scale
    assert np.abs(got - original).mean() > 40.0  # the per-pixel noise is gone


def test_degrade_bin_keeps_pairs_and_labels(tmp_path: Path) -> None:
    src, dst = tmp_path / "set.bin", tmp_path / "set_8px.bin"
    write_verification_bin(src, [_face(i) for i in range(4)], [True, False])
    assert degrade_bin(src, dst, size=8, quality=30) == 2
    images, issame = read_verification_bin(dst)
    assert issame.tolist() == [True, False] and len(images) == 4
    assert all(Image.open(io.BytesIO(image)).size == (112, 112) for image in images)
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file, replaced at the end


def test_bad_arguments_are_refused_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "set.bin"
    write_verification_bin(src, [_face(0), _face(1)], [True])
    with pytest.raises(ValueError, match="replace the set it is made from"):
        degrade_bin(src, src, 8, 30)
    with pytest.raises(ValueError, match="size must be in 4..112"):
        degrade_bin(src, tmp_path / "out.bin", 2, 30)
    assert main(["prepare", "degrade", "--bin", str(src), "--out", str(tmp_path / "out.bin"), "--quality", "0"]) == 2
    assert "quality must be a JPEG quality in 1..95" in capsys.readouterr().err
    assert main(["prepare", "degrade", "--bin", str(src), "--out", str(tmp_path / "out.bin"), "--size", "8"]) == 0
    assert "1 pairs, faces at 8x8 pixels, JPEG quality 30" in capsys.readouterr().out
