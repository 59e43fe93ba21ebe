"""Encoded image bytes -> uint8 RGB ``(H, W, 3)``, through the fastest decoder that is installed.

Decoders, each returning uint8 HWC RGB:

- ``"simplejpeg"``: libjpeg-turbo through the optional ``simplejpeg`` package (JPEG only);
- ``"cv2"``: ``cv2.imdecode`` + BGR->RGB (OpenCV is a core dependency; JPEG, PNG, BMP, PGM, TIFF, WebP);
- ``"pil"``: Pillow (everything Pillow opens, GIF included);
- ``"torchvision"``: ``torchvision.io.decode_image``, used only if it imports (PyPI torchvision does not load
  beside every torch build).

``"auto"`` tries them in :data:`PREFERENCE` order (the order measured fastest on 112x112 JPEGs, see
docs/data.md and benchmarks/data.py), skipping decoders that are missing or cannot read the format, and
falls back to the next one when a decoder refuses the data. Only when every decoder fails is the image
declared corrupt, with an error that names it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import cache

import numpy as np

Decoder = Callable[[bytes], np.ndarray]

# Fastest first, measured by benchmarks/data.py on 112x112 JPEGs (docs/data.md, "Decode speed").
PREFERENCE: tuple[str, ...] = ("simplejpeg", "cv2", "pil", "torchvision")
_JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    """True when ``data`` starts with the JPEG SOI marker."""
    return data[:3] == _JPEG_MAGIC


def _decode_pil(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        # convert() loads the pixels, so truncated files raise here rather than later
        return np.asarray(image.convert("RGB"))


def _decode_cv2(data: bytes) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("cv2.imdecode could not decode the data")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _decode_simplejpeg(data: bytes) -> np.ndarray:
    import simplejpeg

    if not is_jpeg(data):
        raise ValueError("simplejpeg reads JPEG only")
    # strict=True turns libjpeg's "premature end of data" warnings into errors: truncated files fail loudly
    return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)


def _decode_torchvision(data: bytes) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode, decode_image

    tensor = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return tensor.permute(1, 2, 0).contiguous().numpy()


_DECODERS: dict[str, tuple[str, Decoder]] = {
    "simplejpeg": ("simplejpeg", _decode_simplejpeg),
    "cv2": ("cv2", _decode_cv2),
    "pil": ("PIL.Image", _decode_pil),
    "torchvision": ("torchvision.io", _decode_torchvision),
}


@cache
def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except Exception:  # torchvision raises RuntimeError/OSError, not ImportError, on a bad build
        return False
    return True


def available_decoders() -> list[str]:
    """Names of the decoders whose library imports here, in :data:`PREFERENCE` order."""
    return [name for name in PREFERENCE if _importable(_DECODERS[name][0])]


def get_decoder(name: str) -> Decoder:
    """The raw decoder function ``bytes -> uint8 (H, W, 3) RGB`` for ``name`` (no fallback)."""
    if name not in _DECODERS:
        raise ValueError(f"unknown decoder {name!r}; choose one of {sorted(_DECODERS)} or 'auto'")
    if not _importable(_DECODERS[name][0]):
        raise ImportError(f"decoder {name!r} needs the {_DECODERS[name][0]!r} module, which does not import here")
    return _DECODERS[name][1]


def decode_image(data: bytes | np.ndarray, source: str = "<bytes>", decoder: str = "auto") -> np.ndarray:
    """Decode encoded image bytes to uint8 RGB ``(H, W, 3)``.

    Args:
        data: the encoded file (``bytes`` or a uint8 numpy buffer, as in insightface .bin files).
        source: what to call the data in error messages (a path, ``"record 17 of train.rec"``...).
        decoder: ``"auto"`` (fastest available, with fallback) or one name from :data:`PREFERENCE`.

    Raises:
        ValueError: naming ``source`` when no decoder can read the data (corrupt, truncated, not an image).
    """
    if isinstance(data, np.ndarray):
        data = data.tobytes()
    names = available_decoders() if decoder == "auto" else [decoder]
    errors = []
    for name in names:
        if name == "simplejpeg" and not is_jpeg(data):
            continue
        try:
            image = get_decoder(name)(data)
        except Exception as error:  # each library raises its own type; we report them all
            errors.append(f"{name}: {error}")
            continue
        return _as_rgb(image, source)
    detail = "; ".join(errors) or "no decoder available"
    raise ValueError(f"cannot decode image {source}: not a readable image or corrupt/truncated ({detail})")


def _as_rgb(image: np.ndarray, source: str) -> np.ndarray:
    """Grey ``(H, W)`` -> ``(H, W, 3)``; anything else that is not uint8 RGB is an error naming ``source``."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"decoded image {source} has dtype {image.dtype} shape {image.shape}, not uint8 RGB")
    return image
