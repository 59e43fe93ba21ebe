"""Tiny on-disk fixtures for the data tests, rendered from the synthetic generator (no files shipped)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from marginface.data.synthetic import render_face


def face(identity: int, image: int, size: int = 112) -> np.ndarray:
    """A deterministic uint8 RGB (size, size, 3) face."""
    img = render_face(7, identity, image)
    return img if size == 112 else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def write_image(path: Path, rgb: np.ndarray) -> bytes:
    """Encode by extension (.png lossless, .jpg quality 95) and write; returns the bytes written."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


def make_folder(root: Path, names=("bob", "alice", "carol"), per_identity: int = 3, ext: str = ".png") -> dict:
    """root/<name>/<k><ext>; returns {path: rgb array} of everything written."""
    written = {}
    for i, name in enumerate(names):
        for k in range(per_identity):
            path = root / name / f"{k:02d}{ext}"
            rgb = face(i, k)
            write_image(path, rgb)
            written[path] = rgb
    return written


def reference_tensor(rgb: np.ndarray) -> np.ndarray:
    """Independent float64 reference of the normalisation: (x / 255 - 0.5) / 0.5, CHW, by explicit loops."""
    h, w, c = rgb.shape
    out = np.empty((c, h, w), dtype=np.float64)
    for ch in range(c):
        out[ch] = (rgb[:, :, ch].astype(np.float64) / 255.0 - 0.5) / 0.5
    return out


def unreadable_folder(monkeypatch, folder: Path) -> None:
    """``folder`` cannot be listed (as with chmod 000 for a non-root user; chmod does not stop root, who may run
    the tests)."""
    iterdir = Path.iterdir

    def refuse(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
