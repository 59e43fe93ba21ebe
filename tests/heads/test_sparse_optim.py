"""SparseRowSGD: only the sampled rows move, and they move exactly as torch's SGD would move them."""

from __future__ import annotations

import pytest
import torch

from marginface.heads import PartialFCHead, SparseRowSGD
from tests.heads.helpers import batch, build

HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


def partial_fc_step(head, optimizer, seed):
    optimizer.zero_grad(set_to_none=True)
    x, labels = batch(16, head.loss.num_classes, batch_size=6, seed=seed)
    head(x, labels).backward()
    grad = head.loss.weight.grad.coalesce()
    optimizer.step()
    return head.last_index.clone(), grad


def test_unsampled_rows_and_their_momentum_are_bit_identical():
    loss = build("arcface", {}, num_classes=60)
    head = PartialFCHead(loss, sample_rate=0.2, chunk_size=5, seed=3)
    optimizer = SparseRowSGD(loss.parameters(), **HYPER)
    for seed in (1, 2):
        before = loss.weight.detach().clone()
        buffer = optimizer.state[loss.weight].get("momentum_buffer")
        buffer = None if buffer is None else buffer.clone()
        index, _ = partial_fc_step(head, optimizer, seed)
        untouched = torch.ones(60, dtype=torch.bool)
        untouched[index] = False
        assert torch.equal(loss.weight[untouched], before[untouched])
        assert not torch.equal(loss.weight[index], before[index])
        after = optimizer.state[loss.weight]["momentum_buffer"]
        if buffer is not None:
            assert torch.equal(after[untouched], buffer[untouched])
        else:
            assert not after[untouched].any()


def test_state_dict_round_trip_continues_exactly():
    """Resume: torch's load_state_dict casts state tensors to the parameter dtype; ``row_started`` must stay bool."""
    import copy

    loss = build("arcface", {}, num_classes=60)
    head = PartialFCHead(loss, sample_rate=0.2, chunk_size=5, seed=3)
    optimizer = SparseRowSGD(loss.parameters(), **HYPER)
    partial_fc_step(head, optimizer, 1)
    twin_loss = copy.deepcopy(loss)
    twin_head = PartialFCHead(twin_loss, sample_rate=0.2, chunk_size=5, seed=3)
    twin_head.generator.set_state(head.generator.get_state())
    twin = SparseRowSGD(twin_loss.parameters(), **HYPER)
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert twin.state[twin_loss.weight]["row_started"].dtype == torch.bool
    for seed in (2, 3):
        partial_fc_step(head, optimizer, seed)
        partial_fc_step(twin_head, twin, seed)
    assert torch.equal(twin_loss.weight, loss.weight)
    assert torch.equal(twin.state[twin_loss.weight]["momentum_buffer"], optimizer.state[loss.weight]["momentum_buffer"])


def test_first_step_equals_torch_sgd_on_the_sampled_rows():
    loss = build("cosface", {}, num_classes=60)
    head = PartialFCHead(loss, sample_rate=0.25, chunk_size=7, seed=4)
    before = loss.weight.detach().clone()
    index, grad = partial_fc_step(head, SparseRowSGD(loss.parameters(), **HYPER), seed=1)
    rows = torch.nn.Parameter(before[index].clone())
    rows.grad = grad.to_dense()[index]
    torch.optim.SGD([rows], **HYPER).step()
    torch.testing.assert_close(loss.weight.detach()[index], rows.detach(), rtol=1e-6, atol=1e-8)


def naive_sgd_rows(weight, history, lr, momentum, weight_decay, dampening=0.0, nesterov=False):
    """Float64 loop: each row runs torch's SGD formula on only the steps in which it was sampled."""
    weight = weight.double().clone()
    buffers = {}
    for index, grad in history:
        dense = grad.to_dense().double()
        for r in index.tolist():
            g = dense[r] + weight_decay * weight[r]
            if momentum:
                buffers[r] = g.clone() if r not in buffers else momentum * buffers[r] + (1 - dampening) * g
                g = g + momentum * buffers[r] if nesterov else buffers[r]
            weight[r] = weight[r] - lr * g
    return weight


@pytest.mark.parametrize("hyper", [HYPER, dict(lr=0.05, momentum=0.8, dampening=0.3),
                                   dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
                                   dict(lr=0.2)])
def test_three_steps_match_a_per_row_float64_loop(hyper):
    """Rows sampled at steps 1 and 3 but not 2 carry momentum only across their own steps."""
    loss = build("arcface", {}, num_classes=40)
    head = PartialFCHead(loss, sample_rate=0.3, chunk_size=6, seed=9)
    optimizer = SparseRowSGD(loss.parameters(), **hyper)
    start = loss.weight.detach().clone()
    history = [partial_fc_step(head, optimizer, seed) for seed in (1, 2, 3)]
    expected = naive_sgd_rows(start, history, hyper["lr"], hyper.get("momentum", 0.0),
                              hyper.get("weight_decay", 0.0), hyper.get("dampening", 0.0),
                              hyper.get("nesterov", False))
    first, second, third = (set(index.tolist()) for index, _ in history)
    assert (first & third) - second, "the draw should give rows sampled at steps 1 and 3 only"
    torch.testing.assert_close(loss.weight.detach().double(), expected, rtol=1e-6, atol=1e-7)


def test_dense_gradients_follow_torch_sgd_exactly():
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(5, 3))
    ref = torch.nn.Parameter(ours.detach().clone())
    opt_ours = SparseRowSGD([ours], lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
    opt_ref = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
    for step in range(3):
        grad = torch.randn(5, 3, generator=torch.Generator().manual_seed(step))
        ours.grad, ref.grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_ref.step()
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0.0), "lr must be > 0"),
    (dict(lr=0.1, momentum=-0.5), "must be >= 0"),
    (dict(lr=0.1, weight_decay=-1.0), "must be >= 0"),
    (dict(lr=0.1, nesterov=True), "nesterov"),
])
def test_bad_hyperparameters_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseRowSGD([torch.nn.Parameter(torch.zeros(2))], **kwargs)
