"""ChunkedHead: parity with DenseHead for every softmax loss, a float64 naive reference, no (B, C) tensor."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from marginface import losses
from marginface.heads import ChunkedHead, DenseHead
from tests.heads.helpers import (
    assert_close,
    assert_same_result,
    batch,
    build,
    case_id,
    other_objectives,
    run,
    softmax_cases,
    state,
    twin,
)

CASES = softmax_cases()


@pytest.mark.parametrize("case, chunk_size", [(case, 5) for case in CASES]
                         + [(("arcface", {}), 1), (("arcface", {}), 64), (("softmax", {}), 1)],
                         ids=lambda v: case_id(v) if isinstance(v, tuple) else f"chunk{v}")
def test_chunked_equals_dense_in_training_with_state(case, chunk_size):
    """Two training steps from identical state: loss, every gradient and the running state agree to 1e-5."""
    name, params = case
    dense_loss = build(name, params)
    chunk_loss = twin(dense_loss)
    dense, chunked = DenseHead(dense_loss), ChunkedHead(chunk_loss, chunk_size=chunk_size)
    for step in range(2):
        x, labels = batch(16, 37, seed=step + 1)
        reference = run(dense, dense_loss, x, labels)
        result = run(chunked, chunk_loss, x, labels)
        assert_same_result(result, reference, 1e-5, f"{case_id(case)} step {step}")
        for key, value in state(dense_loss).items():
            torch.testing.assert_close(state(chunk_loss)[key], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_chunked_equals_dense_in_eval_mode(case):
    dense_loss = build(*case).eval()
    chunk_loss = twin(dense_loss)
    x, labels = batch(16, 37, seed=3)
    reference = run(DenseHead(dense_loss), dense_loss, x, labels)
    assert_same_result(run(ChunkedHead(chunk_loss, 7), chunk_loss, x, labels), reference, 1e-5, case_id(case))
    assert all(torch.equal(state(chunk_loss)[k], v) for k, v in state(dense_loss).items())


@pytest.mark.parametrize("name", ["arcface", "sphereface", "curricularface"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_under_bf16_autocast_stays_float32(name, dtype):
    """Forward under bf16 autocast: the head still computes in float32, equal to the float32 dense result.

    Backward runs outside autocast (as with torch.amp); the chunk recomputation in backward disables autocast
    itself anyway. With bf16 embeddings their gradient is rounded to bf16 (8-bit mantissa), so it is compared
    to one bf16 rounding step; the loss and the float32 centre gradients still agree to 1e-5.
    """
    dense_loss = build(name, {})
    chunk_loss = twin(dense_loss)
    x, labels = batch(16, 37, seed=4, dtype=dtype)
    reference = run(DenseHead(dense_loss), dense_loss, x, labels)
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    result = run(ChunkedHead(chunk_loss, 6), chunk_loss, x, labels, forward_context=autocast)
    assert result[0].dtype == torch.float32
    if dtype == torch.bfloat16:
        assert_close(result[1].pop("x"), reference[1].pop("x"), 2.0**-7, f"{name} bf16 grad x")
    assert_same_result(result, reference, 1e-5, f"{name} bf16 autocast")


def test_gradients_accumulate_over_backward_passes():
    """Two forwards then two backwards, and one graph backward twice: weight.grad sums as the dense one."""
    dense_loss = build("arcface", {})
    chunk_loss = twin(dense_loss)
    batches = [batch(16, 37, seed=s) for s in (1, 2)]
    for head in (DenseHead(dense_loss), ChunkedHead(chunk_loss, 5)):
        values = [head(x, labels) for x, labels in batches]
        for value in values:
            value.backward()
        again = head(*batches[0])
        again.backward(retain_graph=True)
        again.backward()
    assert_close(chunk_loss.weight.grad, dense_loss.weight.grad, 1e-5, "accumulated weight grad")


def naive_arcface(x, weight, labels, scale=64.0, margin=0.5):
    """Float64 per-element loop of the ArcFace cross-entropy (insightface's fallback past pi), no batching."""
    total = 0.0
    for i in range(x.shape[0]):
        xi = x[i] / torch.sqrt((x[i] * x[i]).sum())
        logits = []
        for j in range(weight.shape[0]):
            cos = (xi * weight[j]).sum() / torch.sqrt((weight[j] * weight[j]).sum())
            if j == int(labels[i]):
                theta = torch.acos(cos.clamp(-1.0, 1.0))
                if theta + margin > math.pi:
                    logits.append(scale * (cos - margin * math.sin(margin)))
                else:
                    logits.append(scale * torch.cos(theta + margin))
            else:
                logits.append(scale * cos)
        stacked = torch.stack(logits)
        top = stacked.max()
        total = total + top + torch.log(torch.exp(stacked - top).sum()) - stacked[int(labels[i])]
    return total / x.shape[0]


def naive_softmax(x, weight, bias, labels):
    """Float64 loop of the plain softmax cross-entropy with bias."""
    total = 0.0
    for i in range(x.shape[0]):
        logits = torch.stack([(x[i] * weight[j]).sum() + bias[j] for j in range(weight.shape[0])])
        total = total - torch.log(torch.exp(logits[int(labels[i])]) / torch.exp(logits).sum())
    return total / x.shape[0]


def float64_leaves(loss, x):
    leaves = {n: p.detach().double().clone().requires_grad_(True) for n, p in loss.named_parameters()}
    return x.detach().double().clone().requires_grad_(True), leaves


@pytest.mark.parametrize("name", ["arcface", "softmax"])
def test_chunked_matches_naive_float64_reference(name):
    loss = build(name, {}, embedding_size=6, num_classes=11, dtype=torch.float64)
    x, labels = batch(6, 11, batch_size=5, dtype=torch.float64)
    if name == "arcface":
        with torch.no_grad():  # one sample past the fallback point: its target is nearly opposite its centre
            x[2] = -loss.weight[labels[2]] * 4.0
    value, grads = run(ChunkedHead(loss, chunk_size=3), loss, x, labels)
    x_ref, params = float64_leaves(loss, x)
    if name == "arcface":
        expected = naive_arcface(x_ref, params["weight"], labels)
    else:
        expected = naive_softmax(x_ref, params["weight"], params["bias"], labels)
    expected.backward()
    assert_close(value, expected, 1e-10, "loss")
    assert_close(grads["x"], x_ref.grad, 1e-10, "grad x")
    for pname, leaf in params.items():
        assert_close(grads[pname], leaf.grad, 1e-10, f"grad {pname}")


def _storage(t: torch.Tensor) -> int:
    return t._values().untyped_storage().data_ptr() if t.is_sparse else t.untyped_storage().data_ptr()


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op allocates (values only for sparse tensors).

    Outputs that share storage with an input (views, results of in-place ops) are not allocations: skipped.
    """

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {_storage(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and _storage(t) not in inputs:
                self.largest = max(self.largest, t._values().numel() if t.is_sparse else t.numel())
        return out


@pytest.mark.parametrize("name", ["arcface", "sphereface", "softmax"])
def test_chunked_never_materialises_batch_by_classes(name):
    """No op in forward or backward produces B x C elements (D < B: the (C, D) weight gradient is smaller)."""
    b, d, c, chunk = 32, 4, 150, 16
    loss = build(name, {}, embedding_size=d, num_classes=c)
    x, labels = batch(d, c, batch_size=b)
    probes = {}
    for head in (ChunkedHead(loss, chunk_size=chunk), DenseHead(loss)):
        probe = _LargestTensor()
        with probe:
            run(head, loss, x, labels)
        probes[type(head).__name__] = probe.largest
    assert probes["DenseHead"] >= b * c  # the probe sees the dense logits ...
    # ... and nothing that large in the chunked head: chunks, the (B, B) target block, the weight gradient
    assert probes["ChunkedHead"] <= max(b * chunk, b * b, c * d)


def test_objectives_other_than_softmax_are_refused():
    names = other_objectives()
    if not names:
        pytest.skip("every registered loss is a softmax cross-entropy")
    for name in names:
        with pytest.raises(ValueError, match="not supported by ChunkedHead"):
            ChunkedHead(build(name, {}))


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True, "8"])
def test_bad_chunk_size_is_a_clear_error(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        ChunkedHead(losses.create("arcface", embedding_size=4, num_classes=5), chunk_size=chunk_size)


def test_bad_inputs_are_checked_like_the_loss():
    head = ChunkedHead(losses.create("arcface", embedding_size=4, num_classes=5))
    with pytest.raises(ValueError, match="labels must lie in"):
        head(torch.randn(2, 4), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="embeddings must have shape"):
        head(torch.randn(2, 3), torch.tensor([0, 1]))


def test_auto_chunk_size_keeps_cpu_temporaries_within_the_byte_budget():
    """None sizes chunks so that (N, chunk) and (chunk, D) float32 temporaries fit CPU_CHUNK_BYTES (4 MiB)."""
    from marginface.heads.chunked import CPU_CHUNK_BYTES, DEFAULT_CHUNK_SIZE, MIN_AUTO_CHUNK, auto_chunk_size

    cpu = torch.device("cpu")
    assert auto_chunk_size(512, 512, cpu) == 2048  # 512 x 2048 x 4 B = 4 MiB exactly
    assert auto_chunk_size(512, 128, cpu) == 2048 and auto_chunk_size(128, 512, cpu) == 2048
    assert auto_chunk_size(100, 100, cpu) == 8192  # 10,485 classes fit; the power of two below
    for n, d in [(7, 3), (64, 512), (1000, 128), (4096, 512)]:
        chunk = auto_chunk_size(n, d, cpu)
        assert chunk & (chunk - 1) == 0 and chunk >= MIN_AUTO_CHUNK
        assert chunk == MIN_AUTO_CHUNK or 4 * chunk * max(n, d) <= CPU_CHUNK_BYTES < 8 * chunk * max(n, d)
    assert auto_chunk_size(10**6, 512, cpu) == MIN_AUTO_CHUNK  # huge N: the floor, not a 4-class matmul
    assert auto_chunk_size(512, 512, torch.device("meta")) == DEFAULT_CHUNK_SIZE


def test_default_chunking_equals_dense_over_several_chunks(monkeypatch):
    """chunk_size None (the default) splits the classes by the byte rule and still equals DenseHead."""
    from marginface.heads import chunked

    monkeypatch.setattr(chunked, "CPU_CHUNK_BYTES", 4 * 16 * 8)  # 8 classes per chunk at N = 9, D = 16
    monkeypatch.setattr(chunked, "MIN_AUTO_CHUNK", 1)
    dense_loss = build("arcface", {})
    chunk_loss = twin(dense_loss)
    head = ChunkedHead(chunk_loss)
    x, labels = batch(16, 37)
    assert head.chunk_size is None
    plan = chunked.ChunkPlan(chunk_loss, positions=labels, chunk_size=None)
    assert plan.chunk_size == 8 and len(list(plan.chunks())) == 5
    assert_same_result(run(head, chunk_loss, x, labels), run(DenseHead(dense_loss), dense_loss, x, labels), 1e-5,
                       "auto chunks")
