from __future__ import annotations

from pathlib import Path

import pytest
import torch

from marginface.paths import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data under ../shared/data; tests that use it skip cleanly when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent (set MARGINFACE_SHARED_DATA to point at it)")
    return path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
