"""PartialFCHead: sampling rules, equality with the dense loss over the sampled classes, r = 1 is dense."""

from __future__ import annotations

import math

import pytest
import torch

from marginface import losses
from marginface.heads import DenseHead, PartialFCHead
from marginface.heads.partial_fc import sample_classes
from tests.heads.helpers import assert_same_result, batch, build, case_id, run, softmax_cases, state, twin

CASES = softmax_cases()


def sub_loss(name: str, params: dict, full: losses.MarginLoss, index: torch.Tensor) -> losses.MarginLoss:
    """The loss restricted to the classes ``index``: rows (and bias) sliced, every other buffer copied."""
    sub = losses.create(name, embedding_size=full.embedding_size, num_classes=int(index.numel()), **params)
    sliced = {k: (v[index] if k in ("weight", "bias") and v.dim() > 0 else v)
              for k, v in full.state_dict().items()}
    sub.load_state_dict(sliced)
    return sub.train(full.training)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sample_rate_one_equals_dense(case):
    dense_loss = build(*case)
    pfc_loss = twin(dense_loss)
    head = PartialFCHead(pfc_loss, sample_rate=1.0, chunk_size=8)
    for step in range(2):
        x, labels = batch(16, 37, seed=step + 5)
        reference = run(DenseHead(dense_loss), dense_loss, x, labels)
        assert_same_result(run(head, pfc_loss, x, labels), reference, 1e-5, f"{case_id(case)} step {step}")
        assert torch.equal(head.last_index, torch.arange(37))
        for key, value in state(dense_loss).items():
            torch.testing.assert_close(state(pfc_loss)[key], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sampled_loss_equals_dense_loss_over_the_sampled_classes(case):
    """r = 0.3: loss and gradients equal DenseHead on a loss holding only the sampled rows."""
    name, params = case
    loss = build(name, params)
    head = PartialFCHead(loss, sample_rate=0.3, chunk_size=4, seed=7)
    x, labels = batch(16, 37, seed=2)
    before = twin(loss)
    value, grads = run(head, loss, x, labels)
    index = head.last_index
    reference_loss = sub_loss(name, params, before, index)
    sub_labels = torch.searchsorted(index, labels)
    ref_value, ref_grads = run(DenseHead(reference_loss), reference_loss, x, sub_labels)
    expected = {"x": ref_grads["x"]}
    for pname, g in ref_grads.items():
        if pname in ("weight", "bias"):
            full = torch.zeros_like(grads[pname])
            full[index] = g
            expected[pname] = full
        elif pname != "x":  # a parameter shared by all classes (NormFace's learned scale)
            expected[pname] = g
    assert_same_result((value, grads), (ref_value, expected), 1e-5, case_id(case))
    for key, value in state(reference_loss).items():
        torch.testing.assert_close(state(loss)[key], value, rtol=1e-6, atol=1e-7)


def test_weight_gradient_is_sparse_over_the_sampled_rows():
    loss = build("arcface", {}, num_classes=50)
    head = PartialFCHead(loss, sample_rate=0.2, chunk_size=4)
    x, labels = batch(16, 50, batch_size=6)
    head(x.requires_grad_(), labels).backward()
    grad = loss.weight.grad.coalesce()
    assert grad.is_sparse
    assert torch.equal(grad.indices()[0], head.last_index)
    dense_head = PartialFCHead(twin(loss), sample_rate=0.2, chunk_size=4, sparse_grad=False)
    dense_head.loss.weight.grad = None
    dense_head(x.detach().requires_grad_(), labels).backward()
    assert not dense_head.loss.weight.grad.is_sparse
    torch.testing.assert_close(dense_head.loss.weight.grad, grad.to_dense(), rtol=1e-6, atol=1e-7)


def test_sampling_keeps_positives_and_the_count():
    gen = torch.Generator().manual_seed(0)
    positives = torch.tensor([3, 17, 40])
    index = sample_classes(positives, 100, 10, gen)
    assert index.numel() == 10 and torch.equal(index, index.sort().values) and index.unique().numel() == 10
    assert torch.isin(positives, index).all()
    # more positives than the sample size: the positives alone (insightface's rule)
    assert torch.equal(sample_classes(torch.arange(20), 100, 10, gen), torch.arange(20))


def test_sampling_is_deterministic_per_seed():
    loss = build("cosface", {}, num_classes=200)
    x, labels = batch(16, 200)
    draws = []
    for seed in (5, 5, 6):
        head = PartialFCHead(loss, sample_rate=0.1, seed=seed)
        head(x, labels)
        draws.append(head.last_index)
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])
    assert draws[0].numel() == 20


def test_negatives_are_uniform():
    """Each negative is drawn with probability (n - p) / (C - p): frequencies within 5 binomial sigmas."""
    gen = torch.Generator().manual_seed(1)
    positives, num_classes, num_sample, trials = torch.tensor([0, 7]), 40, 10, 3000
    counts = torch.zeros(num_classes)
    for _ in range(trials):
        counts[sample_classes(positives, num_classes, num_sample, gen)] += 1
    assert torch.all(counts[positives] == trials)
    p = (num_sample - 2) / (num_classes - 2)
    negatives = torch.ones(num_classes, dtype=torch.bool)
    negatives[positives] = False
    sigma = math.sqrt(trials * p * (1 - p))
    assert (counts[negatives] - trials * p).abs().max() < 5 * sigma


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_bad_sample_rate_is_a_clear_error(rate):
    with pytest.raises(ValueError, match="sample_rate must"):
        PartialFCHead(losses.create("arcface", embedding_size=4, num_classes=5), sample_rate=rate)


@pytest.mark.parametrize("chunk_size", [0, -1, 1.5])
def test_bad_chunk_size_is_a_clear_error(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        PartialFCHead(losses.create("arcface", embedding_size=4, num_classes=5), chunk_size=chunk_size)


def test_the_sampler_state_is_part_of_the_state_dict():
    """A head rebuilt from ``state_dict()`` samples the same classes next as the head that was saved."""
    loss = losses.create("arcface", embedding_size=8, num_classes=100)
    saved = PartialFCHead(loss, sample_rate=0.1, seed=3)
    labels = torch.tensor([1, 5, 7])
    for _ in range(3):
        saved.sample(labels)
    restored = PartialFCHead(loss, sample_rate=0.1, seed=3)
    restored.load_state_dict(saved.state_dict())
    assert "_extra_state" in saved.state_dict()
    assert torch.equal(restored.sample(labels), saved.sample(labels))
    fresh = PartialFCHead(loss, sample_rate=0.1, seed=3)
    assert not torch.equal(fresh.sample(labels), saved.sample(labels))  # i.e. the state, not the seed, decided
