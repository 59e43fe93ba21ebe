"""Every registered loss against its independent float64 reference: logits, loss, gradients, in every precision."""

from __future__ import annotations

import pytest
import torch

from marginface import losses
from tests.losses.cases import all_cases, batch, build, case_id
from tests.losses.references import REFERENCES

CASES = all_cases()


def run_reference(loss, x, labels, training):
    """The reference on float64 leaf copies of the inputs; returns logits, loss and the gradients."""
    x_ref = x.detach().to(torch.float64).requires_grad_(True)
    params = {n: p.detach().to(torch.float64).clone().requires_grad_(True) for n, p in loss.named_parameters()}
    state = {n: b.detach().clone() for n, b in loss.named_buffers()}
    logits, value = REFERENCES[loss_name(loss)](x_ref, params, labels, loss, state, training)
    value.backward()
    grads = {"x": x_ref.grad, **{n: p.grad for n, p in params.items()}}
    return logits, value, grads


def run_implementation(loss, x, labels, training):
    loss.train(training)
    loss.zero_grad()
    x_impl = x.detach().clone().requires_grad_(True)
    value = loss(x_impl, labels)
    value.backward()
    grads = {"x": x_impl.grad, **{n: p.grad for n, p in loss.named_parameters()}}
    return value, grads


def loss_name(loss) -> str:
    return loss._registry_name


@pytest.fixture(autouse=True)
def _name_losses(monkeypatch):
    """Tag every created loss with its registry name so the harness can find its reference."""
    original = losses.create

    def create(name, **kwargs):
        loss = original(name, **kwargs)
        loss._registry_name = name
        return loss

    monkeypatch.setattr(losses, "create", create)


def test_every_registered_loss_has_a_reference():
    missing = [name for name in losses.available() if name not in REFERENCES]
    assert not missing, f"losses without a float64 reference: {missing}"


def assert_close(actual, expected, rtol, what):
    expected = expected.detach().to(torch.float64)
    actual = actual.detach().to(torch.float64)
    atol = rtol * max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_float64_parity(case, training):
    name, params = case
    loss = build(name, params)
    x, labels = batch(loss)
    ref_logits, ref_value, ref_grads = run_reference(loss, x, labels, training)
    value, grads = run_implementation(loss, x, labels, training)
    assert_close(value, ref_value, 1e-9, "loss")
    for key, ref_grad in ref_grads.items():
        assert_close(grads[key], ref_grad, 1e-8, f"grad {key}")
    if ref_logits is not None:
        # The reference state already includes this step's update; logits read the updated state in eval mode.
        fresh = build(name, params)
        fresh.train(training)
        assert_close(fresh.logits(x, labels), ref_logits, 1e-9, "logits")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_float32_parity(case):
    name, params = case
    loss64 = build(name, params)
    x, labels = batch(loss64)
    ref_logits, ref_value, ref_grads = run_reference(loss64, x, labels, training=True)
    loss32 = build(name, params, dtype=torch.float32)
    value, grads = run_implementation(loss32, x.float(), labels, training=True)
    assert value.dtype == torch.float32
    assert_close(value, ref_value, 2e-5, "loss")
    for key, ref_grad in ref_grads.items():
        assert_close(grads[key], ref_grad, 2e-4, f"grad {key}")
    if ref_logits is not None:
        fresh = build(name, params, dtype=torch.float32).train()
        logits = fresh.logits(x.float(), labels)
        assert logits.dtype == torch.float32
        assert_close(logits, ref_logits, 2e-5, "logits")


@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_low_precision_autocast(case, precision):
    """Under autocast the embeddings arrive in bf16/fp16; the loss must still compute in float32.

    Tight check: against the reference on the *same* rounded embeddings (only float32 arithmetic differs).
    Loose check: against the reference on the unrounded embeddings (what the user would have got in float32).
    """
    name, params = case
    loss = build(name, params, dtype=torch.float32)
    x, labels = batch(loss)
    projection = torch.nn.Linear(loss.embedding_size, loss.embedding_size)
    torch.nn.init.eye_(projection.weight)
    torch.nn.init.zeros_(projection.bias)
    with torch.autocast("cpu", dtype=precision):
        emb = projection(x.float())
        assert emb.dtype == precision
        logits = loss.train().logits(emb, labels)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    ref_logits, ref_value, _ = run_reference(build(name, params), emb.detach().double(), labels, training=True)
    if ref_logits is not None:
        assert_close(logits, ref_logits, 2e-5, "logits vs reference on rounded input")
        loose_logits, _, _ = run_reference(build(name, params), x, labels, training=True)
        assert_close(logits, loose_logits, 3e-2, "logits vs reference on float32 input")
    fresh = build(name, params, dtype=torch.float32).train()
    with torch.autocast("cpu", dtype=precision):
        value = fresh(projection(x.float()), labels)
    assert value.dtype == torch.float32
    assert_close(value, ref_value, 2e-5, "loss vs reference on rounded input")
