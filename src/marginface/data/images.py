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

#: the largest photo decoded, in pixels (50 MP: a 50-megapixel phone photo). Checked from the file's header,
#: before decoding: a 445 KB PNG of 12000 x 12000 pixels would otherwise cost gigabytes in face detection.
MAX_IMAGE_PIXELS = 50_000_000


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
        with open_image(item) as opened:
            check_pixels(opened.size, str(item))
            try:
                return pil_to_rgb(opened)
            except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for foreign or truncated files
                raise ValueError(f"cannot read image {item}: {err} (is it a complete JPEG/PNG file?)") from err
    if isinstance(item, Image.Image):
        check_pixels(item.size, name)
        return pil_to_rgb(item)
    if isinstance(item, np.ndarray):
        return array_to_rgb(item, name)
    raise ValueError(f"{name}: expected a path, a PIL image or an (H, W, 3) uint8 array, got {type(item).__name__}")


def read_photo(item: Any, name: str, max_side: int) -> tuple[np.ndarray, float]:
    """Like :func:`to_rgb_array`, but a JPEG file whose longer side exceeds ``max_side`` is decoded at a
    reduced size by libjpeg's DCT scaling (PIL ``draft``: 1/2, 1/4 or 1/8, the smallest that keeps the longer
    side >= ``max_side``), which skips most of the decoding work of a camera-sized photo.

    Returns:
        (H, W, 3) uint8 RGB and the factor from its pixels to the file's (1.0 when decoded at full size).
    """
    if not isinstance(item, str | os.PathLike) or not Path(item).is_file():
        return to_rgb_array(item, name), 1.0
    with open_image(item) as opened:
        check_pixels(opened.size, str(item))
        try:
            full = max(opened.size)
            if opened.format == "JPEG" and full > max_side:
                ratio = max_side / full
                opened.draft("RGB", (int(np.ceil(opened.size[0] * ratio)), int(np.ceil(opened.size[1] * ratio))))
            rgb = pil_to_rgb(opened)
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for foreign or truncated files
            raise ValueError(f"cannot read image {item}: {err} (is it a complete JPEG/PNG file?)") from err
    return rgb, full / max(rgb.shape[:2])


def open_image(path: str | os.PathLike) -> Any:
    """``PIL.Image.open`` (reads the header only) with its errors as ValueErrors naming the file and the fix."""
    from PIL import Image

    try:
        return Image.open(path)
    except Image.DecompressionBombError as err:  # PIL's own limit (2 x its MAX_IMAGE_PIXELS), hit at open
        raise ValueError(f"image {path} is too large to decode ({err}); the limit here is {MAX_IMAGE_PIXELS:,} "
                         "pixels (marginface.inference.images.MAX_IMAGE_PIXELS): downscale it first") from err
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for foreign or truncated files
        raise ValueError(f"cannot read image {path}: {err} (is it a complete JPEG/PNG file?)") from err


def check_pixels(size: tuple[int, int], name: str) -> None:
    """Raise ValueError if a (width, height) image is above :data:`MAX_IMAGE_PIXELS` (call before decoding)."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image {name} is {width} x {height} = {width * height:,} pixels, above the limit of "
                         f"{MAX_IMAGE_PIXELS:,} (marginface.inference.images.MAX_IMAGE_PIXELS): downscale it first "
                         "(a face needs about 112 x 112 pixels)")


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
