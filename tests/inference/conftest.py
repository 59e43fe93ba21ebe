from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from marginface.paths import shared_data_dir


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """The real pretrained models under ../shared/models; tests that use them skip cleanly when absent."""
    data = shared_data_dir()
    models = data.parent / "models" if data is not None else None
    if models is None or not models.is_dir():
        pytest.skip("../shared/models is absent (set MARGINFACE_SHARED_DATA to ../shared/data beside it)")
    return models


@pytest.fixture(scope="session")
def real_aligned_faces(shared_data) -> np.ndarray:
    """The 20 aligned 112x112 LFW faces of ../shared/data/bins/small_lfw.bin as (20, 3, 112, 112) float32 RGB
    pixels in 0..255 (decoded with PIL, no normalisation)."""
    import io

    from PIL import Image

    from marginface.data.bins import read_verification_bin

    encoded, _ = read_verification_bin(shared_data / "bins" / "small_lfw.bin")
    faces = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in encoded]
    return np.stack(faces).transpose(0, 3, 1, 2).astype(np.float32)
