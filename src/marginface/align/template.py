"""The standard 5-point face template, the least-squares similarity transform onto it, and the warp.

ArcFace (and every insightface release) aligns a face by mapping five landmarks — left eye centre, right eye
centre, nose tip, left mouth corner, right mouth corner, "left" meaning the image's left — onto fixed
positions in a 112x112 crop with the similarity transform (rotation, uniform scale, shift; no shear, no
reflection) that fits them best in the least-squares sense, then warping the photo with it.
"""

from __future__ import annotations

import numpy as np

#: insightface's ``arcface_dst``: the five landmark positions in a 112x112 crop, (5, 2) pixels (x, y).
ARCFACE_TEMPLATE_112: np.ndarray = np.array(
    [
        [38.2946, 51.6963],  # left eye centre
        [73.5318, 51.5014],  # right eye centre
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float64,
)
ARCFACE_TEMPLATE_112.setflags(write=False)


def template(image_size: int = 112) -> np.ndarray:
    """The ArcFace template for a square crop of ``image_size`` pixels, (5, 2) float64 pixels.

    112 is the native size; other sizes scale it uniformly (128 -> 128/112 x), as insightface does.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    return ARCFACE_TEMPLATE_112 * (image_size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` (Umeyama 1991, no reflection).

    Args:
        src: (K, 2) points (x, y) in the source image, pixels; K >= 2.
        dst: (K, 2) target points, pixels.

    Returns:
        (2, 3) float64 matrix ``M`` with ``dst ~= src @ M[:, :2].T + M[:, 2]``, minimising the sum of squared
        distances over rotations (det +1), uniform scales and shifts.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"src and dst must both be (K, 2) with K >= 2; got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks contain NaN or infinity")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 1e-12:
        raise ValueError("source landmarks are all at one point: no similarity transform is defined")
    cov = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    # Umeyama's sign fix: when the best orthogonal map is a reflection, flip the weakest axis instead,
    # which gives the best proper rotation.
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ np.diag(d) @ vt
    scale = (sigma * d).sum() / src_var
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def warp_face(image: np.ndarray, landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """Align one face: fit ``landmarks`` to the template and warp ``image`` into a square crop.

    Args:
        image: (H, W, 3) or (H, W) uint8 photo (any channel order; it is kept).
        landmarks: (5, 2) landmark positions in ``image``, pixels, ArcFace order (see module docstring).
        image_size: side of the output crop, pixels.

    Returns:
        (image_size, image_size, C) uint8 crop (same channel count and order as ``image``); pixels that fall
        outside the photo are black, as in insightface's ``norm_crop``.
    """
    import cv2

    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"image must be a (H, W[, C]) uint8 array, got {image.dtype} {image.shape}")
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must be (5, 2) in ArcFace order, got {landmarks.shape}")
    matrix = similarity_transform(landmarks, template(image_size))
    return cv2.warpAffine(image, matrix, (image_size, image_size), flags=cv2.INTER_LINEAR, borderValue=0.0)
