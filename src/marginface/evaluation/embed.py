"""Batched embedding extraction (with flip test-time augmentation) and image loading.

Model files are read by :mod:`marginface.models` (:func:`marginface.models.load_backbone` for eval's contract).

Flip TTA follows insightface's ``verification.py``: the model embeds the image and its horizontal mirror, the two
*raw* (un-normalised) embeddings are summed, and the sum is L2-normalised. Summing raw embeddings lets the view
with the larger feature norm (the more confident one) weigh more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

# moved to marginface.models.backbone; kept for one release
from marginface.models.backbone import load_backbone, load_backbone_weights, mismatch_summary  # noqa: F401

if TYPE_CHECKING:  # PIL is a core dependency, but imported where used to keep `import marginface` light
    from PIL.Image import Image

#: ``preprocess(image) -> image``: a PIL RGB image in, a 112x112 PIL RGB image out (e.g. a face aligner).
Preprocess = Callable[["Image"], "Image"]


def center_crop_resize(image: Image, size: int = 112, crop_fraction: float = 0.6) -> Image:
    """Default preprocessing for *unaligned* photos: crop the central square, resize to ``size`` x ``size``.

    The crop side is ``crop_fraction`` of the shorter side (0.6 of a 250x250 LFW image = the central 150x150,
    roughly the face). This is a stand-in so that any folder can be evaluated: real evaluation needs faces
    aligned to the 112x112 ArcFace template (pass an aligner as ``preprocess``); numbers on centre crops are
    lower and not comparable with published ones.
    """
    from PIL import Image as PILImage

    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    width, height = image.size
    side = round(min(width, height) * crop_fraction)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), PILImage.BILINEAR)


def image_to_tensor(image: Image) -> torch.Tensor:
    """RGB PIL image (H, W) -> (3, H, W) float32 in [-1, 1] (``(pixel / 255 - 0.5) / 0.5``, insightface's)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0)


def load_aligned(path: str | Path, size: int = 112) -> torch.Tensor:
    """An aligned ``size`` x ``size`` face file -> (3, size, size) float32 in [-1, 1], decoded exactly as the
    images of a ``.bin`` are (:func:`marginface.data.decode.decode_image`, same decoder, same normalisation), so
    a folder and the ``.bin`` packed from it embed to the same numbers. Other sizes raise, naming the file."""
    from marginface.data.decode import decode_image
    from marginface.data.folder import check_size
    from marginface.data.transforms import to_tensor

    source = str(path)
    return to_tensor(check_size(decode_image(Path(path).read_bytes(), source, "auto"), source, size, False))


def load_image(path: str | Path, preprocess: Preprocess | None = center_crop_resize, size: int = 112) -> torch.Tensor:
    """Read an image file and return (3, size, size) float32 in [-1, 1].

    ``preprocess`` maps the PIL RGB image to the model's input (default :func:`center_crop_resize`; pass an
    aligner), or is ``None`` when the files are already ``size`` x ``size`` aligned faces: they are then read by
    :func:`load_aligned`, exactly as a ``.bin``'s images.
    """
    from PIL import Image as PILImage

    if preprocess is None:
        return load_aligned(path, size)

    with PILImage.open(path) as opened:
        image = opened.convert("RGB")
    if preprocess is not None:
        image = preprocess(image)
    if image.size != (size, size):
        raise ValueError(f"{path}: preprocessed image is {image.size[0]}x{image.size[1]}, model needs {size}x{size}")
    return image_to_tensor(image)


class _Files(torch.utils.data.Dataset):
    def __init__(self, files: Sequence[str | Path], preprocess: Preprocess | None, size: int) -> None:
        self.files, self.preprocess, self.size = list(files), preprocess, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(self.files[i], self.preprocess, self.size)


def _tensor_batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]


@torch.inference_mode()
def embed_batches(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    flip: bool = True,
    device: str | torch.device = "cpu",
    total: int | None = None,
    desc: str = "embed",
    normalize: bool = True,
) -> np.ndarray:
    """Embed (B, 3, H, W) batches in [-1, 1] -> (N, D) float32 L2-normalised embeddings, in input order.

    With ``flip``, each row is ``normalise(model(x) + model(mirror(x)))`` (see the module docstring). The model
    is put in eval mode for the duration and restored afterwards. ``normalize=False`` returns the raw (summed)
    embeddings instead, whose norms IJB's template pooling uses as a quality weight. ``total``: the number of
    images, for the progress bar.
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        with tqdm(total=total, desc=desc, unit="img") as bar:
            for batch in batches:
                batch = batch.to(device, non_blocking=True)
                emb = model(batch).float()
                if flip:
                    emb = emb + model(torch.flip(batch, dims=[3])).float()
                out.append((torch.nn.functional.normalize(emb, dim=1) if normalize else emb).cpu())
                bar.update(batch.shape[0])
    finally:
        model.train(was_training)
    result = torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
    if not np.isfinite(result).all():
        raise ValueError("the model produced NaN/inf embeddings; check the checkpoint and the input range")
    return result


def embed_tensor(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 128, flip: bool = True,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Embed a (N, 3, H, W) tensor in [-1, 1] (e.g. a loaded ``.bin``) -> (N, D) float32, L2-normalised."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    return embed_batches(model, _tensor_batches(images, batch_size), flip=flip, device=device,
                         total=images.shape[0])


def embed_files(
    model: nn.Module, files: Sequence[str | Path], *, preprocess: Preprocess | None = center_crop_resize,
    batch_size: int = 128, flip: bool = True, device: str | torch.device = "cpu", workers: int = 0,
    size: int = 112,
) -> np.ndarray:
    """Embed image files (decoded with PIL, ``preprocess`` applied) -> (N, D) float32, L2-normalised."""
    loader = torch.utils.data.DataLoader(_Files(files, preprocess, size), batch_size=batch_size,
                                         num_workers=workers, shuffle=False)
    return embed_batches(model, loader, flip=flip, device=device, total=len(files))
