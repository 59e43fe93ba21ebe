"""Turn what a user hands us (a path, a PIL image, an array) into an upright (H, W, 3) uint8 RGB photo.

EXIF orientation is applied (a phone photo stored sideways is embedded upright). Greyscale (L, LA, 1, P),
RGBA (alpha dropped: the colour planes are kept as they are), 16-bit (I;16 / I mode PNGs and uint16 arrays:
scaled by 255/65535, not clipped) and CMYK (PIL's conversion) all become 8-bit RGB.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def describe(item: Any, index: int) -> str:
    """A short name for an input in error messages: its path, or its type and position."""
    if isinstance(item, str | os.PathLike):
        return str(item)
    return f"input #{index} ({type(item).__name__})"


def to_rgb_array(item: Any, name: str = "image") -> np.ndarray:
    """A path, PIL image or (H, W[, C]) uint8/uint16 array -> (H, W, 3) uint8 RGB, upright.

    Raises:
        FileNotFoundError: a path that does not exist.
        IsADirectoryError: a path that is a folder.
        ValueError: a file that is not a readable image (truncated, not an image), an unsupported array.
    """
    from PIL import Image

    if isinstance(item, str | os.PathLike):
        if Path(item).is_dir():
            raise IsADirectoryError(f"{item} is a folder, expected an image file")
        if not Path(item).is_file():
            raise FileNotFoundError(f"image {item} does not exist")
        try:
            with Image.open(item) as opened:
                return pil_to_rgb(opened)
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for foreign or truncated files
            raise ValueError(f"cannot read image {item}: {err} (is it a complete JPEG/PNG file?)") from err
    if isinstance(item, Image.Image):
        return pil_to_rgb(item)
    if isinstance(item, np.ndarray):
        return array_to_rgb(item, name)
    raise ValueError(f"{name}: expected a path, a PIL image or an (H, W, 3) uint8 array, got {type(item).__name__}")


def pil_to_rgb(image: Any) -> np.ndarray:
    """PIL image of any mode -> (H, W, 3) uint8 RGB with EXIF orientation applied (forces a full decode)."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return array_to_rgb(np.asarray(image), "16-bit image")
    if image.mode == "F":
        return array_to_rgb(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "float image")
    return np.asarray(image.convert("RGB"))


def array_to_rgb(array: np.ndarray, name: str = "array") -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 / uint16 -> (H, W, 3) uint8 RGB (alpha dropped)."""
    if array.dtype in (np.uint16, np.int32, np.uint32) or (array.dtype.kind in "iu" and array.max(initial=0) > 255):
        array = np.round(np.clip(array.astype(np.float64), 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(f"{name}: arrays must be uint8 (or uint16) pixels, got {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(f"{name}: expected (H, W), (H, W, 3) or (H, W, 4) pixels, got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])
