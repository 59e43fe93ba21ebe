"""Shared helpers of the head tests: losses with unit-scale centres, heads run to (loss, gradients, state)."""

from __future__ import annotations

import contextlib
import copy

import torch

from marginface import losses
from tests.losses.cases import AMLFS_ARC_FOCAL, AMLFS_HELPS

# Variants beyond the defaults that exercise branches the defaults do not (fallback past pi, gradients
# through circle's weights, no bias, Chebyshev margin with annealing done).
VARIANTS: dict[str, list[dict]] = {
    "arcface": [{"margin": 1.2}],
    "circle": [{"detach_weights": False}],
    "mv_softmax": [{"easy_margin": True}],
    "normface": [{"learn_scale": True}],
    "softmax": [{"bias": False}],
    "sphereface": [{"margin": 3, "lambda_base": 0.0, "lambda_min": 0.0}],
    "amlfs": [AMLFS_ARC_FOCAL, AMLFS_HELPS],  # tau applied after the full log-sum-exp in every head
}


def softmax_cases() -> list[tuple[str, dict]]:
    """(name, params) of every registered loss whose objective is a softmax cross-entropy, plus variants."""
    cases = []
    for name in losses.available():
        if build(name, {}).objective != "softmax":
            continue
        cases.append((name, {}))
        cases.extend((name, params) for params in VARIANTS.get(name, []))
    return cases


def other_objectives() -> list[str]:
    return [name for name in losses.available() if build(name, {}).objective != "softmax"]


def case_id(case: tuple[str, dict]) -> str:
    name, params = case
    if name == "amlfs" and params:
        return "amlfs-" + ("arc_focal" if params is AMLFS_ARC_FOCAL else "helps")
    return name + "".join(f"-{k}={v}" for k, v in params.items())


def build(name: str, params: dict, embedding_size: int = 16, num_classes: int = 37, seed: int = 0,
          dtype: torch.dtype = torch.float32) -> losses.MarginLoss:
    """A loss with unit-scale random centres and bias (the default init is tiny: margins would not bite)."""
    torch.manual_seed(seed)
    loss = losses.create(name, embedding_size=embedding_size, num_classes=num_classes, **params)
    with torch.no_grad():
        for pname, p in loss.named_parameters():
            if pname in ("weight", "bias"):
                p.normal_()
    if name == "curricularface":
        loss.t.fill_(0.3)  # non-zero t: the hard-negative modulation is active from the first step
    return loss.to(dtype)


def batch(embedding_size: int, num_classes: int, batch_size: int = 9, seed: int = 1,
          dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, embedding_size, generator=gen, dtype=torch.float64) * 3.0
    labels = torch.randint(0, num_classes, (batch_size,), generator=gen)
    labels[1] = labels[0]  # a repeated class in every batch
    return x.to(dtype), labels


def run(head: torch.nn.Module, loss: losses.MarginLoss, x: torch.Tensor, labels: torch.Tensor,
        forward_context=contextlib.nullcontext):
    """(loss value, {name: dense gradient}) of one forward (inside ``forward_context()``) + backward."""
    loss.zero_grad(set_to_none=True)
    leaf = x.detach().clone().requires_grad_(True)
    with forward_context():
        value = head(leaf, labels)
    value.backward()
    grads = {"x": leaf.grad}
    for name, p in loss.named_parameters():
        grads[name] = None if p.grad is None else (p.grad.to_dense() if p.grad.is_sparse else p.grad)
    return value.detach(), grads


def state(loss: losses.MarginLoss) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in loss.named_buffers()}


def twin(loss: losses.MarginLoss) -> losses.MarginLoss:
    """An independent copy with identical parameters and state."""
    return copy.deepcopy(loss)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    """Close to ``rtol`` relative to the largest entry of ``expected`` (gradients mix tiny and large)."""
    expected = expected.detach().to(torch.float64)
    actual = actual.detach().to(torch.float64)
    atol = rtol * max(1.0, float(expected.abs().max())) if expected.numel() else rtol
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def assert_same_result(result, reference, rtol: float, what: str) -> None:
    value, grads = result
    ref_value, ref_grads = reference
    assert_close(value, ref_value, rtol, f"{what} loss")
    assert grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        if ref is None:
            assert grads[name] is None or not grads[name].any(), f"{what}: unexpected gradient for {name}"
            continue
        assert grads[name] is not None, f"{what}: no gradient for {name}"
        assert_close(grads[name], ref, rtol, f"{what} grad {name}")
