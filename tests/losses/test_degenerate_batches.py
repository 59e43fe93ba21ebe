"""Registry-wide: an empty batch is a clear ValueError that changes nothing (no NaN, no poisoned running state), for
every loss under every head; huge embeddings (1e30) give finite losses (issue 31 point 5)."""

from __future__ import annotations

import copy

import pytest
import torch

from marginface.heads import create_head
from marginface.losses.base import EMPTY_BATCH_MESSAGE
from marginface.triplet.loss import TripletLoss
from tests.losses.cases import all_cases, build, case_id

D, C = 6, 7
HEADS = ("dense", "chunked", "partial_fc")


def _state(head: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Buffers, parameters and the sampler's generator state (partial FC's extra state)."""
    return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in head.state_dict().items()}


def _head(kind: str, loss):
    return create_head(kind, loss, chunk_size=3, sample_rate=0.5, seed=0)


@pytest.mark.parametrize("case", all_cases(), ids=case_id)
def test_empty_batch_is_a_clear_error_and_leaves_the_state_untouched(case):
    name, params = case
    for kind in HEADS:
        loss = build(name, params, embedding_size=D, num_classes=C, dtype=torch.float32)
        if kind != "dense" and loss.objective != "softmax":
            continue  # only the dense head takes the other objectives (refused elsewhere, tested in tests/heads)
        head = _head(kind, loss).train()
        twin = copy.deepcopy(head)
        before = _state(head)
        with pytest.raises(ValueError, match="an empty batch"):
            head(torch.zeros(0, D), torch.zeros(0, dtype=torch.long))
        after = _state(head)
        assert before.keys() == after.keys()
        for key in before:
            assert torch.equal(before[key], after[key]), f"{name} {kind}: {key} changed"
        # the next batch gives what a head that never saw the empty one gives: nothing was poisoned
        x, y = torch.randn(5, D, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3, 4])
        value, expected = head(x, y), twin(x, y)
        assert torch.isfinite(value) and torch.equal(value, expected), (name, kind)


def test_empty_batch_message_names_the_fix():
    assert "skip the step" in EMPTY_BATCH_MESSAGE and "untouched" in EMPTY_BATCH_MESSAGE
    with pytest.raises(ValueError, match="an empty batch"):
        TripletLoss()(torch.zeros(0, D), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("case", all_cases(), ids=case_id)
def test_huge_embeddings_give_a_finite_loss_and_gradient(case):
    """SphereFace's logits are ||x|| cos: ||x|| of a row of 1e30s overflowed float32 (inf - inf = NaN)."""
    name, params = case
    loss = build(name, params, embedding_size=D, num_classes=C, dtype=torch.float32).train()
    x = (torch.randn(4, D, generator=torch.Generator().manual_seed(2)) * 1e30).requires_grad_(True)
    value = loss(x, torch.tensor([0, 1, 2, 3]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all(), name
    if loss.normalizes_features:  # the direction survives: features are the float64 unit rows
        ref = x.detach().double() / x.detach().double().norm(dim=1, keepdim=True)
        torch.testing.assert_close(loss.features(x.detach()).double(), ref, atol=1e-6, rtol=0)


def test_ordinary_rows_are_untouched_by_the_overflow_guard():
    from marginface.losses.base import overflow_safe, row_norms

    x = torch.randn(8, D, generator=torch.Generator().manual_seed(3)) * torch.logspace(-20, 14, 8)[:, None]
    assert torch.equal(overflow_safe(x), x) and torch.equal(row_norms(x), x.norm(dim=1))
    big = torch.full((2, D), 3e37)
    ref = torch.tensor(3e37, dtype=torch.float64) * D ** 0.5  # float64 reference of ||row||
    torch.testing.assert_close(row_norms(big).double(), ref.expand(2), rtol=1e-6, atol=0)
