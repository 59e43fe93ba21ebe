"""Low-quality copies of a verification set (``marginface prepare degrade``, in ``marginface/cli/data.py``).

A claim of the normalisation papers (L2-constrained softmax, Ranjan et al. 2017; NormFace) is that normalising the
features helps most on low-quality faces. To check it on the sets we have, every image of a ``.bin`` is degraded
the way low-quality face photos are — too few pixels and strong compression: downscaled to ``size`` x ``size``
(area averaging, as a camera that far away would sample the face), scaled back to 112x112 (bicubic, as a
pipeline that upsamples a small detection), and re-encoded as JPEG at ``quality``. Pairs and labels are kept,
so accuracies on the copy and on the original compare like for like.
"""

from __future__ import annotations

import io
from pathlib import Path


def degrade_image(encoded: bytes, size: int, quality: int) -> bytes:
    """One encoded face -> the same face at ``size`` x ``size`` pixels of detail, JPEG ``quality``, original size."""
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as image:
        rgb = image.convert("RGB")
    small = rgb.resize((size, size), Image.Resampling.BOX)
    restored = small.resize(rgb.size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    restored.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def degrade_bin(src: str | Path, dst: str | Path, size: int, quality: int) -> int:
    """Write ``dst``: every image of ``src`` degraded by :func:`degrade_image`, the same pairs. Returns N pairs."""
    from tqdm.auto import tqdm

    from marginface.data.bins import read_verification_bin, write_verification_bin  # torch: only when used

    if not 4 <= size <= 112:
        raise ValueError(f"size must be in 4..112 pixels (the face's side after degradation), got {size}")
    if not 1 <= quality <= 95:
        raise ValueError(f"quality must be a JPEG quality in 1..95, got {quality}")
    if Path(src).resolve() == Path(dst).resolve():
        raise ValueError(f"{dst}: the output would replace the set it is made from; choose another path")
    images, issame = read_verification_bin(src)
    degraded = [degrade_image(image, size, quality)
                for image in tqdm(images, desc=f"degrading {Path(src).name}", unit="img")]
    write_verification_bin(dst, degraded, issame)
    return len(issame)
