"""Every distance x mining against a naive float64 loop over all triplets; finiteness at the edges."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from marginface.triplet import TripletLoss, pairwise_distances
from marginface.triplet.loss import DISTANCES, MININGS


def naive_distance(u: torch.Tensor, v: torch.Tensor, distance: str) -> torch.Tensor:
    """One pair, float64, from the definitions (unit vectors u, v)."""
    if distance == "squared_euclidean":
        return ((u - v) ** 2).sum()
    if distance == "euclidean":
        return ((u - v) ** 2).sum().clamp_min(1e-6).sqrt()
    return torch.acos((u * v).sum().clamp(-1 + 1e-6, 1 - 1e-6))


def naive_loss(x: torch.Tensor, labels: list[int], margin: float, distance: str, mining: str,
               fallback: str = "farthest") -> torch.Tensor:
    """Enumerate every (a, p, n) with python loops, then apply the mining rule literally."""
    unit = x.double() / x.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = len(labels)
    d = [[naive_distance(unit[i], unit[j], distance) for j in range(n)] for i in range(n)]
    triplets = [(a, p, q) for a, p, q in itertools.product(range(n), repeat=3)
                if a != p and labels[a] == labels[p] and labels[q] != labels[a]]
    hinge = {t: torch.relu(d[t[0]][t[1]] - d[t[0]][t[2]] + margin) for t in triplets}
    if mining == "batch_all":
        active = [v for v in hinge.values() if v > 0]
        return sum(active) / len(active) if active else torch.zeros((), dtype=torch.float64)
    if mining == "batch_hard":
        per_anchor = []
        for a in range(n):
            mine = [t for t in triplets if t[0] == a]
            if mine:
                hard_p = max(d[a][t[1]] for t in mine)
                hard_n = min(d[a][t[2]] for t in mine)
                per_anchor.append(torch.relu(hard_p - hard_n + margin))
        return sum(per_anchor) / len(per_anchor)
    per_pair = []
    for a, p in {(t[0], t[1]) for t in triplets}:
        negatives = [t[2] for t in triplets if t[:2] == (a, p)]
        farther = [d[a][q] for q in negatives if d[a][q] > d[a][p]]
        if farther:
            per_pair.append(torch.relu(d[a][p] - min(farther) + margin))
        elif fallback == "farthest":
            per_pair.append(torch.relu(d[a][p] - max(d[a][q] for q in negatives) + margin))
    return sum(per_pair) / len(per_pair)


MARGINS = {"squared_euclidean": 0.5, "euclidean": 0.3, "angular": 0.35}


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mining", MININGS)
def test_loss_and_gradient_match_the_naive_float64_loop(distance, mining):
    gen = torch.Generator().manual_seed(DISTANCES.index(distance) * 10 + MININGS.index(mining))
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 3]  # identity 3 has no positive: never an anchor
    x = torch.randn(len(labels), 6, generator=gen, dtype=torch.float64)
    x32 = x.float().requires_grad_()
    loss = TripletLoss(MARGINS[distance], distance, mining)(x32, torch.tensor(labels))
    loss.backward()
    x64 = x.clone().requires_grad_()
    reference = naive_loss(x64, labels, MARGINS[distance], distance, mining)
    reference.backward()
    assert float(reference.detach()) > 0, "a test whose reference is 0 checks nothing"
    assert loss.item() == pytest.approx(float(reference.detach()), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)


def test_semi_hard_fallback_skip_and_farthest_differ_when_every_negative_is_hard():
    # anchor 0, positive 1 far away; the only negative (2) is closer than the positive: no semi-hard negative
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.9, 0.4], [-0.95, 0.2]])
    labels = [0, 0, 1, 1]
    for fallback in ("farthest", "skip"):
        loss_fn = TripletLoss(0.2, "squared_euclidean", "semi_hard", fallback)
        got = loss_fn(x, torch.tensor(labels))
        assert got.item() == pytest.approx(float(naive_loss(x, labels, 0.2, "squared_euclidean", "semi_hard",
                                                            fallback)), rel=1e-5)
        assert loss_fn.last_stats["fallback_pairs"] > 0
    skip = TripletLoss(0.2, mining="semi_hard", semi_hard_fallback="skip")(x, torch.tensor(labels))
    far = TripletLoss(0.2, mining="semi_hard", semi_hard_fallback="farthest")(x, torch.tensor(labels))
    assert skip.item() != pytest.approx(far.item())


def test_batch_all_averages_only_active_triplets():
    # two tight, well separated identities plus one violating point: one active triplet family
    x = torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [0.05, 0.99]])
    loss_fn = TripletLoss(0.2, mining="batch_all")
    assert float(loss_fn(x, torch.tensor([0, 0, 1, 1]))) == 0.0  # nothing active: 0, not NaN
    assert loss_fn.last_stats["active"] == 0 and loss_fn.last_stats["triplets"] == 8
    x[1] = torch.tensor([0.1, 1.0])  # positive of 0 now sits by identity 1
    loss = loss_fn(x, torch.tensor([0, 0, 1, 1]))
    active = loss_fn.last_stats["active"]
    assert 0 < active < 8
    assert loss.item() == pytest.approx(float(naive_loss(x, [0, 0, 1, 1], 0.2, "squared_euclidean", "batch_all")))


def test_batch_all_chunking_does_not_change_the_result():
    from marginface.triplet.loss import batch_all

    gen = torch.Generator().manual_seed(3)
    x, labels = torch.randn(12, 4, generator=gen), torch.arange(12) // 3
    dist = pairwise_distances(x)
    whole, _ = batch_all(dist, labels, 0.5)
    chunked, _ = batch_all(dist, labels, 0.5, max_elements=12 * 12)  # one anchor at a time
    assert whole.item() == pytest.approx(chunked.item(), rel=1e-6)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mining", MININGS)
def test_duplicate_and_zero_embeddings_give_finite_loss_and_gradients(distance, mining):
    x = torch.randn(8, 5)
    x[1] = x[0]  # duplicate positive: distance 0, where sqrt and arccos have infinite slope
    x[2] = x[0]  # duplicate *negative* of anchor 0 (label 1)
    x[5] = 0.0  # a zero embedding
    x.requires_grad_()
    loss = TripletLoss(0.3, distance, mining)(x, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("mining", MININGS)
def test_finite_and_close_to_fp32_under_bf16_autocast(mining):
    layer = torch.nn.Linear(16, 8)
    inputs, labels = torch.randn(16, 16), torch.arange(16) // 4
    loss_fn = TripletLoss(0.3, "angular", mining)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = layer(inputs)
        assert emb.dtype == torch.bfloat16
        loss = loss_fn(emb, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    exact = loss_fn(emb.float(), labels)  # same bf16 embeddings, no autocast: the loss itself stays fp32
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)


def test_batch_without_positives_gives_zero_connected_to_the_graph():
    x = torch.randn(4, 3, requires_grad=True)
    for mining in MININGS:
        loss = TripletLoss(mining=mining)(x, torch.arange(4))
        assert loss.item() == 0.0
        loss.backward()  # still differentiable (a zero gradient), so a training step does not crash


def test_pairwise_distances_of_unit_vectors_follow_the_definitions():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    d2 = pairwise_distances(x)
    assert float(d2[0, 1]) == pytest.approx(2.0, abs=1e-6) and float(d2[0, 2]) == pytest.approx(4.0, abs=1e-6)
    assert float(pairwise_distances(x, "euclidean")[0, 2]) == pytest.approx(2.0, abs=1e-6)
    assert float(pairwise_distances(x, "angular")[0, 1]) == pytest.approx(math.pi / 2, abs=1e-5)


@pytest.mark.parametrize("kwargs, match", [({"distance": "cosine"}, "distance"), ({"mining": "hard"}, "mining"),
                                           ({"margin": 0.0}, "margin"), ({"semi_hard_fallback": "x"}, "fallback")])
def test_bad_parameters_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TripletLoss(**kwargs)
