from __future__ import annotations

import pytest
import torch
from torch import nn

from marginface.backbones._common import check_input, run_checkpointed


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (3, 112, 112), (2, 1, 112, 112), (2, 3, 112, 96)])
def test_wrong_input_shape_names_the_contract(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, 112, 112\)"):
        check_input(torch.zeros(shape))


def _block() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.PReLU(8), nn.BatchNorm2d(8))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_checkpointed_block_matches_plain_gradients_and_running_statistics(momentum: float | None) -> None:
    plain, checkpointed = _block(), _block()
    for m in (*plain.modules(), *checkpointed.modules()):
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    x = torch.randn(3, 4, 9, 9)
    for _ in range(2):  # two steps: the counter and the running statistics must advance once per step
        x_plain, x_ckpt = x.clone().requires_grad_(), x.clone().requires_grad_()
        (plain(x_plain) ** 2).sum().backward()
        (run_checkpointed(checkpointed, x_ckpt) ** 2).sum().backward()
    torch.testing.assert_close(x_ckpt.grad, x_plain.grad)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        torch.testing.assert_close(b, a, msg=name)
    assert checkpointed[1].num_batches_tracked.item() == 2
    assert checkpointed[1].momentum == momentum  # restored after the recomputation
