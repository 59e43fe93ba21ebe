"""The paper's whole input pipeline: uint8 RGB -> float in [-1, 1], plus a random horizontal flip.

Every function accepts either a uint8 numpy image in HWC layout (``(H, W, 3)``, RGB) or a torch tensor in
CHW layout (``(3, H, W)``) or a batch ``(B, 3, H, W)``. Datasets decode to uint8 HWC, call
:func:`to_tensor` and then apply their ``transform`` to the tensor, so a transform such as
:class:`RandomHorizontalFlip` sees ``(3, 112, 112)`` float32 in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

ImageLike = np.ndarray | torch.Tensor


def to_tensor(image: ImageLike) -> torch.Tensor:
    """uint8 RGB -> float32 tensor in [-1, 1]: ``(x / 255 - 0.5) / 0.5``.

    Args:
        image: uint8 numpy ``(H, W, 3)`` (HWC, as decoders return it) or uint8 tensor ``(3, H, W)`` /
            ``(B, 3, H, W)`` (CHW, as ``torchvision.io`` returns it). A float tensor is returned unchanged
            (assumed already normalised), so the function is idempotent.

    Returns:
        float32 tensor ``(3, H, W)`` (or ``(B, 3, H, W)``) in [-1, 1].
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"to_tensor expects a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
        # HWC -> CHW and normalise in numpy: single-threaded on purpose, since torch's intra-op thread pool
        # costs milliseconds per 112x112 image when the cores are busy (measured: 20 us vs up to 15 ms)
        out = image.transpose(2, 0, 1).astype(np.float32, order="C")
        np.divide(out, 127.5, out=out)
        out -= 1.0
        return torch.from_numpy(out)
    if isinstance(image, torch.Tensor):
        if image.is_floating_point():
            return image.float()
        if image.dtype != torch.uint8:
            raise ValueError(f"to_tensor expects a uint8 or float tensor, got {image.dtype}")
        # (x / 255 - 0.5) / 0.5 == x / 127.5 - 1
        return image.float().div_(127.5).sub_(1.0)
    raise TypeError(f"to_tensor expects a numpy array or a torch tensor, got {type(image).__name__}")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor` for one image: ``(3, H, W)`` float in [-1, 1] -> uint8 ``(H, W, 3)``."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"to_uint8 expects a (3, H, W) tensor, got {tuple(image.shape)}")
    scaled = (image.detach().float().cpu() + 1.0) * 127.5
    return scaled.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def hflip(image: ImageLike) -> ImageLike:
    """Mirror left-right. numpy ``(H, W, C)`` flips axis 1; tensors ``(..., H, W)`` flip the last axis."""
    if isinstance(image, np.ndarray):
        return np.ascontiguousarray(image[:, ::-1])
    if image.device.type == "cpu" and not image.requires_grad:
        # numpy copy: torch.flip goes through the intra-op thread pool, ~1000x slower on a busy CPU
        return torch.from_numpy(np.ascontiguousarray(image.numpy()[..., ::-1]))
    return torch.flip(image, dims=(-1,))


class RandomHorizontalFlip:
    """Flip with probability ``p`` (the ArcFace paper's only augmentation, p = 0.5).

    Args:
        p: flip probability in [0, 1].
        generator: optional ``torch.Generator`` for reproducible draws; the default uses torch's global
            RNG, which DataLoader seeds differently in every worker.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability p must be in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: ImageLike) -> ImageLike:
        if torch.rand((), generator=self.generator).item() < self.p:
            return hflip(image)
        return image

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply callables in order (kept tiny so the package needs no torchvision)."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: ImageLike) -> ImageLike:
        for transform in self.transforms:
            image = transform(image)
        return image

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def train_transform(flip_p: float = 0.5) -> RandomHorizontalFlip:
    """The paper's training augmentation, applied by datasets after :func:`to_tensor`."""
    return RandomHorizontalFlip(flip_p)
