"""ChunkedHead.fuse_optimizer: the centres' SGD step inside backward equals backward + torch SGD, with no (C, D)
gradient."""

from __future__ import annotations

import copy

import pytest
import torch

from marginface import losses
from marginface.heads import ChunkedHead, DenseHead, SparseRowSGD
from tests.heads.helpers import batch, build, case_id, softmax_cases
from tests.heads.test_chunked import _LargestTensor

HYPER = {
    "momentum-wd": dict(lr=0.1, momentum=0.9, weight_decay=5e-4),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "dampening": dict(lr=0.1, momentum=0.5, dampening=0.3),
    "plain": dict(lr=0.2),
}


def train(head, loss, optimizer, steps: int, lrs=None, dtype=torch.float64):
    """Run ``steps`` SGD steps on fixed random batches; returns the losses and embedding gradients."""
    values, grads = [], []
    for step in range(steps):
        if lrs is not None:
            for group in optimizer.param_groups:
                group["lr"] = lrs[step]
        x, labels = batch(16, 37, seed=step + 1, dtype=dtype)
        leaf = x.clone().requires_grad_(True)
        optimizer.zero_grad(set_to_none=True)
        value = head(leaf, labels)
        value.backward()
        optimizer.step()
        values.append(value.detach())
        grads.append(leaf.grad)
    return values, grads


def assert_same_training(fused_loss, ref_loss, fused_opt, ref_opt, results, what, rtol=1e-12):
    (fused_values, fused_grads), (ref_values, ref_grads) = results
    for name, p in ref_loss.named_parameters():
        q = dict(fused_loss.named_parameters())[name]
        torch.testing.assert_close(q, p, rtol=rtol, atol=rtol, msg=lambda m, name=name: f"{what} {name}: {m}")
        ref_buf = ref_opt.state[p].get("momentum_buffer")
        if ref_buf is not None:
            torch.testing.assert_close(fused_opt.state[q]["momentum_buffer"], ref_buf, rtol=rtol, atol=rtol,
                                       msg=lambda m, name=name: f"{what} momentum of {name}: {m}")
    torch.testing.assert_close(torch.stack(fused_values), torch.stack(ref_values), rtol=rtol, atol=rtol)
    for a, b in zip(fused_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("case", softmax_cases(), ids=case_id)
def test_fused_equals_chunked_then_torch_sgd_for_every_loss(case):
    """Three steps in float64 (chunk 5: target rows in several chunks, a repeated class per batch)."""
    ref_loss = build(*case, dtype=torch.float64)
    fused_loss = copy.deepcopy(ref_loss)
    ref_head, fused_head = ChunkedHead(ref_loss, 5), ChunkedHead(fused_loss, 5)
    hyper = HYPER["momentum-wd"]
    ref_opt, fused_opt = torch.optim.SGD(ref_loss.parameters(), **hyper), SparseRowSGD(fused_loss.parameters(), **hyper)
    fused_head.fuse_optimizer(fused_opt)
    results = train(fused_head, fused_loss, fused_opt, 3), train(ref_head, ref_loss, ref_opt, 3)
    assert fused_loss.weight.grad is None  # the centres never had a gradient tensor
    assert_same_training(fused_loss, ref_loss, fused_opt, ref_opt, results, case_id(case))


@pytest.mark.parametrize("hyper", HYPER.values(), ids=HYPER.keys())
def test_fused_follows_each_sgd_variant_and_the_lr_schedule(hyper):
    """torch.optim.SGD itself as the fused optimizer, learning rate changed between steps, against DenseHead."""
    ref_loss = build("arcface", {"margin": 1.2}, dtype=torch.float64)  # past-pi fallback rows too
    fused_loss = copy.deepcopy(ref_loss)
    ref_opt, fused_opt = torch.optim.SGD(ref_loss.parameters(), **hyper), torch.optim.SGD(fused_loss.parameters(),
                                                                                          **hyper)
    fused_head = ChunkedHead(fused_loss, 4)
    fused_head.fuse_optimizer(fused_opt)
    lrs = [hyper["lr"], hyper["lr"] / 10, hyper["lr"] * 2, hyper["lr"]]
    results = (train(fused_head, fused_loss, fused_opt, 4, lrs),
               train(DenseHead(ref_loss), ref_loss, ref_opt, 4, lrs))
    assert_same_training(fused_loss, ref_loss, fused_opt, ref_opt, results, str(hyper), rtol=1e-10)


def test_fused_survives_an_optimizer_state_dict_round_trip():
    """Resume: load_state_dict replaces the param groups; the fused update must follow the new ones."""
    ref_loss = build("cosface", {}, dtype=torch.float64)
    fused_loss = copy.deepcopy(ref_loss)
    hyper = HYPER["momentum-wd"]
    ref_opt, fused_opt = torch.optim.SGD(ref_loss.parameters(), **hyper), torch.optim.SGD(fused_loss.parameters(),
                                                                                          **hyper)
    fused_head, ref_head = ChunkedHead(fused_loss, 6), ChunkedHead(ref_loss, 6)
    fused_head.fuse_optimizer(fused_opt)
    train(fused_head, fused_loss, fused_opt, 2), train(ref_head, ref_loss, ref_opt, 2)
    fused_opt.load_state_dict(copy.deepcopy(fused_opt.state_dict()))
    lrs = [0.01, 0.01]  # set on the new groups only
    results = train(fused_head, fused_loss, fused_opt, 2, lrs), train(ref_head, ref_loss, ref_opt, 2, lrs)
    assert_same_training(fused_loss, ref_loss, fused_opt, ref_opt, results, "after load_state_dict")


def test_fused_backward_never_allocates_a_centre_sized_tensor():
    """After the first step (which creates the momentum buffer) no op outputs C x D elements; unfused does."""
    b, d, c, chunk = 8, 24, 400, 16  # C x D = 9600 > B x chunk, B x B, chunk x D
    largest = {}
    for fused in (True, False):
        loss = build("arcface", {}, embedding_size=d, num_classes=c)
        head = ChunkedHead(loss, chunk)
        optimizer = torch.optim.SGD(loss.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        if fused:
            head.fuse_optimizer(optimizer)
        x, labels = batch(d, c, batch_size=b)
        head(x.clone().requires_grad_(True), labels).backward()
        optimizer.step()
        probe = _LargestTensor()
        with probe:
            optimizer.zero_grad(set_to_none=True)
            head(x.clone().requires_grad_(True), labels).backward()
            optimizer.step()
        largest[fused] = probe.largest
    assert largest[False] >= c * d
    assert largest[True] <= max(b * chunk, b * b, chunk * d)


def test_fused_training_under_bf16_autocast_matches_unfused():
    """The head computes in float32 under autocast; fused and unfused agree to float32 round-off."""
    ref_loss = build("arcface", {})
    fused_loss = copy.deepcopy(ref_loss)
    hyper = HYPER["momentum-wd"]
    ref_opt, fused_opt = torch.optim.SGD(ref_loss.parameters(), **hyper), torch.optim.SGD(fused_loss.parameters(),
                                                                                          **hyper)
    fused_head, ref_head = ChunkedHead(fused_loss, 8), ChunkedHead(ref_loss, 8)
    fused_head.fuse_optimizer(fused_opt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        results = (train(fused_head, fused_loss, fused_opt, 2, dtype=torch.float32),
                   train(ref_head, ref_loss, ref_opt, 2, dtype=torch.float32))
    assert_same_training(fused_loss, ref_loss, fused_opt, ref_opt, results, "bf16", rtol=1e-6)


def test_a_backward_that_skips_the_centres_is_reported_on_the_next_forward():
    loss = build("arcface", {})
    head = ChunkedHead(loss, 8)
    head.fuse_optimizer(torch.optim.SGD(loss.parameters(), lr=0.1))
    x, labels = batch(16, 37)
    leaf = x.clone().requires_grad_(True)
    torch.autograd.grad(head(leaf, labels), [leaf])  # never reaches loss.weight's target rows
    with pytest.raises(RuntimeError, match="did not reach loss.weight"):
        head(leaf, labels)


def test_unfusing_restores_the_dense_gradient():
    loss = build("arcface", {})
    head = ChunkedHead(loss, 8)
    head.fuse_optimizer(torch.optim.SGD(loss.parameters(), lr=0.1))
    head.fuse_optimizer(None)
    x, labels = batch(16, 37)
    head(x, labels).backward()
    assert loss.weight.grad is not None and loss.weight.grad.shape == loss.weight.shape


def test_optimizers_that_cannot_be_fused_are_clear_errors():
    loss = losses.create("arcface", embedding_size=4, num_classes=5)
    head = ChunkedHead(loss)
    with pytest.raises(ValueError, match="does not hold loss.weight"):
        head.fuse_optimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1))
    with pytest.raises(ValueError, match="only SGD-family"):
        head.fuse_optimizer(torch.optim.Adam(loss.parameters()))
    with pytest.raises(ValueError, match="only SGD-family"):
        head.fuse_optimizer(torch.optim.SGD(loss.parameters(), lr=0.1, maximize=True))
