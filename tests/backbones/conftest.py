from __future__ import annotations

import pytest
import torch


@pytest.fixture
def faces() -> torch.Tensor:
    """Two random 'faces' (2, 3, 112, 112) in [-1, 1], fixed seed."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 112, 112, generator=generator) * 2 - 1


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Run this folder's tests on one intra-op thread, restoring the setting afterwards.

    The batches here are tiny (B = 2), so a second thread buys little, while on a shared or busy 2-core
    runner OpenMP's spinning threads slowed a MobileFaceNet training step from 0.4 s to 5-14 s.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
