"""What is specific to the successor losses: their special cases, statistics, defaults and secondary switches.

The registry-wide harness (test_parity.py, test_properties.py) covers every loss with its defaults and the
VARIANTS of cases.py; here the float64 parity of the secondary switches reuses the same independent references.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from marginface import losses
from marginface.losses.adacos import fixed_scale
from marginface.losses.elasticface import margin_draws
from marginface.losses.sphereface2 import initial_bias
from tests.losses.cases import batch, build
from tests.losses.references import REFERENCES


def reference_parity(name: str, params: dict, training: bool = True, x=None, labels=None, loss=None) -> None:
    """Loss value and gradients of the implementation against the float64 reference (one forward each)."""
    loss = loss if loss is not None else build(name, params)
    if x is None:
        x, labels = batch(loss, batch_size=6)
    x_ref = x.detach().clone().requires_grad_(True)
    named = {n: p.detach().clone().requires_grad_(True) for n, p in loss.named_parameters()}
    state = {n: b.detach().clone() for n, b in loss.named_buffers()}
    ref_logits, ref_value = REFERENCES[name](x_ref, named, labels, loss, state, training)
    ref_value.backward()
    x_impl = x.detach().clone().requires_grad_(True)
    value = loss.train(training)(x_impl, labels)
    value.backward()
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x_impl.grad, x_ref.grad, rtol=1e-8, atol=1e-10)
    for n, p in loss.named_parameters():
        torch.testing.assert_close(p.grad, named[n].grad, rtol=1e-8, atol=1e-10)


def towards(centre: torch.Tensor, theta: torch.Tensor, norm: float, seed: int = 0) -> torch.Tensor:
    """(N, D) embeddings of norm ``norm`` at angles ``theta`` (N,) from ``centre`` (D,)."""
    centre = F.normalize(centre.detach().double(), dim=0)
    other = torch.randn(centre.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    other = F.normalize(other - (other @ centre) * centre, dim=0)
    return (torch.cos(theta)[:, None] * centre + torch.sin(theta)[:, None] * other) * norm


# ----------------------------------------------------------------------------- sub-center ArcFace
def test_subcenter_with_one_subcentre_is_arcface():
    sub, arc = build("subcenter_arcface", {"k": 1}), build("arcface", {})
    with torch.no_grad():
        sub.weight.copy_(arc.weight[:, None, :])
    x, labels = batch(arc, batch_size=32)
    torch.testing.assert_close(sub.logits(x, labels), arc.logits(x, labels), rtol=0, atol=0)
    torch.testing.assert_close(sub(x, labels), arc(x, labels), rtol=0, atol=0)


def test_subcenter_similarity_is_the_max_over_subcentres_and_slices_like_the_class_axis():
    loss = build("subcenter_arcface", {"k": 3}, num_classes=9)
    x, labels = batch(loss, batch_size=8)
    feats = loss.features(x)
    full = loss.similarity(feats, loss.weight)
    per_subcentre = torch.stack([F.cosine_similarity(x[:, None, :], loss.weight[None, :, k, :], dim=2)
                                 for k in range(3)])
    torch.testing.assert_close(full, per_subcentre.max(dim=0).values)
    torch.testing.assert_close(full[:, 2:6], loss.similarity(feats, loss.weight[2:6]))  # a head's chunk
    torch.testing.assert_close(loss.target_similarity(feats, labels), full[torch.arange(8), labels])
    assert loss.weight.shape == (9, 3, loss.embedding_size)


def test_subcenter_easy_margin_matches_reference():
    reference_parity("subcenter_arcface", {"easy_margin": True})


def test_subcenter_rejects_bad_k_and_rows():
    with pytest.raises(ValueError, match="k"):
        losses.create("subcenter_arcface", embedding_size=4, num_classes=3, k=0)
    loss = losses.create("subcenter_arcface", embedding_size=4, num_classes=3)
    with pytest.raises(ValueError, match="sub-center rows"):
        loss.similarity(torch.randn(2, 4), torch.randn(3, 4))


# ----------------------------------------------------------------------------- AdaFace
def test_adaface_statistics_follow_the_ema_of_clipped_norms():
    loss = build("adaface", {})
    x, labels = batch(loss, batch_size=8)
    x[0] *= 1e3  # norm > 100: clipped
    z = x.norm(dim=1).clamp(1e-3, 100.0)
    loss.train()(x, labels)
    assert float(loss.batch_mean) == pytest.approx(0.01 * float(z.mean()) + 0.99 * 20.0, rel=1e-12)
    assert float(loss.batch_std) == pytest.approx(0.01 * float(z.std()) + 0.99 * 100.0, rel=1e-12)


def test_adaface_batch_of_one_keeps_the_std():
    loss = build("adaface", {})
    x, labels = batch(loss, batch_size=1)
    value = loss.train()(x, labels)
    assert torch.isfinite(value) and float(loss.batch_std) == 100.0 and float(loss.batch_mean) != 20.0


def test_adaface_limits_are_cosface_and_arcface():
    """h = 0: z_hat = 0 and the target is CosFace's s (cos - m). Every z_hat = -1 (low norms): ArcFace's."""
    x, labels = batch(build("cosface", {}), batch_size=16)
    ada, cos = build("adaface", {"h": 0.0, "margin": 0.35}).eval(), build("cosface", {"margin": 0.35})
    with torch.no_grad():
        cos.weight.copy_(ada.weight)
    torch.testing.assert_close(ada.logits(x, labels), cos.logits(x, labels), rtol=1e-12, atol=1e-12)
    ada, arc = build("adaface", {"h": 1.0, "margin": 0.4}).eval(), build("arcface", {"margin": 0.4})
    with torch.no_grad():
        arc.weight.copy_(ada.weight)
        ada.batch_mean.fill_(100.0)
        ada.batch_std.fill_(1.0)  # every norm below 99 gives z_hat = -1
    torch.testing.assert_close(ada.logits(x, labels), arc.logits(x, labels), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("detach_norms", [True, False])
def test_adaface_clipped_angle_branches_match_reference(detach_norms):
    """High norms near the centre (theta + g_angle < 0: clipped at 0) and low norms near the opposite pole
    (theta + g_angle > pi: ArcFace's fallback); the random batches of the harness rarely reach either."""
    loss = build("adaface", {"margin": 1.0, "h": 1.0, "detach_norms": detach_norms})
    with torch.no_grad():
        loss.batch_mean.fill_(10.0)
        loss.batch_std.fill_(1.0)
    centre = loss.weight[0]
    near = towards(centre, torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64), norm=30.0)
    far = towards(centre, torch.tensor([3.0, 2.8, 2.5], dtype=torch.float64), norm=1.0, seed=1)
    x, labels = torch.cat([near, far]), torch.zeros(6, dtype=torch.long)
    reference_parity("adaface", {}, training=False, x=x, labels=labels, loss=loss)
    ctx = loss.dense(x, labels)[1]
    flat = ctx.target_logit[:2]  # clipped: s (1 - g_add) with g_add = 2m
    torch.testing.assert_close(flat, torch.full_like(flat, loss.scale * (1.0 - 2.0)))


# ----------------------------------------------------------------------------- MagFace
def test_magface_margin_and_regulariser_values():
    loss = build("magface", {})
    a = torch.tensor([10.0, 60.0, 110.0], dtype=torch.float64)
    torch.testing.assert_close(loss.adaptive_margin(a), torch.tensor([0.45, 0.625, 0.8], dtype=torch.float64))
    norms = torch.tensor([5.0, 10.0, 110.0, 500.0], dtype=torch.float64)
    expected = 35.0 * torch.tensor([1 / 10 + 10 / 110**2, 1 / 10 + 10 / 110**2, 2 / 110, 2 / 110],
                                   dtype=torch.float64)
    torch.testing.assert_close(loss.regularizer(loss.magnitude(norms)), expected)


def test_magface_loss_is_cross_entropy_plus_mean_regulariser():
    loss = build("magface", {"magnitude_min": 2.0, "magnitude_max": 12.0}).eval()
    x, labels = batch(loss, batch_size=16)
    logits, ctx = loss.dense(x, labels)
    a = x.norm(dim=1).clamp(2.0, 12.0)
    expected = F.cross_entropy(logits, labels) + (35.0 * (1 / a + a / 144.0)).mean()
    torch.testing.assert_close(loss(x, labels), expected)


def test_magface_gradient_reaches_the_magnitude():
    """ArcFace's loss is scale-invariant in x (its gradient is orthogonal to x); MagFace's is not."""
    for name, params, radial in [("arcface", {}, False), ("magface", {"magnitude_min": 2.0}, True)]:
        loss = build(name, params)
        x, labels = batch(loss, batch_size=8)
        x.requires_grad_(True)
        loss(x, labels).backward()
        along_x = (x.grad * x).sum(dim=1).abs().max()
        assert (along_x > 1e-6) == radial, f"{name}: radial gradient {along_x}"


def test_magface_easy_margin_matches_reference():
    reference_parity("magface", {"easy_margin": True, "magnitude_min": 2.0})


def test_magface_rejects_bad_ranges():
    with pytest.raises(ValueError, match="magnitude_min"):
        losses.create("magface", embedding_size=4, num_classes=3, magnitude_min=110.0, magnitude_max=10.0)
    with pytest.raises(ValueError, match="margin_min"):
        losses.create("magface", embedding_size=4, num_classes=3, margin_min=0.9, margin_max=0.5)


# ----------------------------------------------------------------------------- ElasticFace
@pytest.mark.parametrize("name, mean, std", [("elasticface_arc", 0.5, 0.05), ("elasticface_cos", 0.35, 0.05)])
def test_elastic_margins_follow_the_paper_distribution(name, mean, std):
    loss = losses.create(name, embedding_size=4, num_classes=3, seed=123)
    assert (loss.margin, loss.std, loss.scale) == (mean, std, 64.0)
    n = 40_000
    draws = loss.train().sample_margins(n, torch.zeros(1, dtype=torch.float64))
    assert abs(float(draws.mean()) - mean) < 4 * std / math.sqrt(n)
    assert abs(float(draws.std()) / std - 1.0) < 4 / math.sqrt(2 * n)
    assert int(loss.step) == 1
    assert torch.equal(loss.eval().sample_margins(5, draws), torch.full((5,), mean, dtype=torch.float64))


def test_elastic_margins_are_reproducible_resumable_and_change_per_step():
    a, b = (losses.create("elasticface_arc", embedding_size=4, num_classes=3, seed=7) for _ in range(2))
    like = torch.zeros(1, dtype=torch.float64)
    first = a.train().sample_margins(16, like)
    assert torch.equal(first, b.train().sample_margins(16, like))
    second = a.sample_margins(16, like)
    assert not torch.equal(first, second)
    resumed = losses.create("elasticface_arc", embedding_size=4, num_classes=3, seed=99)
    resumed.load_state_dict(b.state_dict())  # after one step, like a checkpoint
    assert torch.equal(resumed.train().sample_margins(16, like), second)
    assert torch.equal(first, margin_draws(7, 1, 16, 0.5, 0.05))


@pytest.mark.parametrize("name, base, margin",
                         [("elasticface_arc", "arcface", 0.5), ("elasticface_cos", "cosface", 0.35)])
def test_elastic_eval_mode_and_zero_std_are_the_fixed_margin_loss(name, base, margin):
    elastic, fixed = build(name, {}), build(base, {"margin": margin})
    with torch.no_grad():
        fixed.weight.copy_(elastic.weight)
    x, labels = batch(fixed, batch_size=16)
    torch.testing.assert_close(elastic.eval().logits(x, labels), fixed.logits(x, labels), rtol=1e-12, atol=1e-12)
    zero_std = build(name, {"std": 0.0})
    torch.testing.assert_close(zero_std.train().logits(x, labels), fixed.logits(x, labels), rtol=1e-12, atol=1e-12)


def test_elasticface_cos_with_large_std_matches_reference():
    reference_parity("elasticface_cos", {"std": 0.2})


# ----------------------------------------------------------------------------- SphereFace2
@pytest.mark.parametrize("magnitude_type", ["C", "A"])
@pytest.mark.parametrize("num_classes", [5, 1000, 100_000])
def test_sphereface2_initial_bias_is_stationary_at_zero_cosines(magnitude_type, num_classes):
    """d loss / d b = 0 when every cosine is 0: lambda sigma(-(a_y + b)) = (1 - lambda)(C - 1) sigma(a_i + b)."""
    lam, r, m, t = 0.7, 40.0, 0.4, 3.0
    b = initial_bias(num_classes, lam, r, m, t, magnitude_type)
    g0 = 2 * 0.5**t - 1
    a_y = r * (g0 - m) if magnitude_type == "C" else r * (2 * ((math.cos(math.pi / 2 + m) + 1) / 2) ** t - 1)
    a_i = r * (g0 + m) if magnitude_type == "C" else r * g0
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    positive, negative = lam * sigmoid(-(a_y + b)), (1 - lam) * (num_classes - 1) * sigmoid(a_i + b)
    assert positive == pytest.approx(negative, rel=1e-9)


def test_sphereface2_module_starts_at_the_initial_bias_and_its_bias_gradient_vanishes_there():
    loss = losses.create("sphereface2", embedding_size=8, num_classes=5).double()
    b = initial_bias(5, 0.7, 40.0, 0.4, 3.0, "C")
    assert float(loss.bias.detach()) == pytest.approx(b, rel=1e-6)  # a float32 parameter
    with torch.no_grad():
        loss.bias.fill_(b)
        loss.weight.copy_(torch.eye(8, dtype=torch.float64)[:5])
    x = torch.eye(8, dtype=torch.float64)[5:8] * 3.0  # orthogonal to every centre: all cosines are 0
    loss(x, torch.tensor([0, 2, 4])).backward()
    assert abs(float(loss.bias.grad)) < 1e-10


def test_sphereface2_loss_is_opensphere_weighted_bce():
    """The same loss written as opensphere does: BCE-with-logits over all B x C pairs, mean-reduced, weighted
    by lw C / r (lambda on the target, 1 - lambda elsewhere)."""
    loss = build("sphereface2", {"loss_weight": 50.0})
    x, labels = batch(loss, batch_size=8)
    logits = loss.logits(x, labels)
    one_hot = F.one_hot(labels, loss.num_classes).double()
    weight = 50.0 * loss.num_classes / 40.0 * (0.7 * one_hot + 0.3 * (1 - one_hot))
    expected = F.binary_cross_entropy_with_logits(logits, one_hot, weight=weight)
    torch.testing.assert_close(loss(x, labels), expected)


def test_sphereface2_pair_losses_sum_chunk_by_chunk():
    loss = build("sphereface2", {})
    x, labels = batch(loss, batch_size=8)
    logits, ctx = loss.dense(x, labels)
    mask = F.one_hot(labels, loss.num_classes).bool()
    chunks = sum(loss.pair_losses(logits[:, a:a + 3], mask[:, a:a + 3]).sum(dim=1) for a in range(0, 7, 3))
    torch.testing.assert_close(loss(x, labels), (chunks / loss.scale).mean())


@pytest.mark.parametrize("params", [
    {"detach_adjustment": True},
    {"positive_weight": 0.5, "loss_weight": 50.0, "t": 1.0},
    {"magnitude_type": "A", "margin": 0.8, "detach_adjustment": True},
])
def test_sphereface2_switches_match_reference(params):
    reference_parity("sphereface2", params)


def test_sphereface2_detached_adjustment_changes_only_the_gradient():
    true, detached = build("sphereface2", {}), build("sphereface2", {"detach_adjustment": True})
    x, labels = batch(true, batch_size=8)
    torch.testing.assert_close(true.logits(x, labels), detached.logits(x, labels))
    true(x, labels).backward()
    detached(x, labels).backward()
    assert not torch.allclose(true.weight.grad, detached.weight.grad)


def test_sphereface2_rejects_unknown_type():
    with pytest.raises(ValueError, match="magnitude_type"):
        losses.create("sphereface2", embedding_size=4, num_classes=3, magnitude_type="M")


# ----------------------------------------------------------------------------- AdaCos
@pytest.mark.parametrize("num_classes", [3, 1000, 85_742])
def test_adacos_fixed_scale(num_classes):
    assert fixed_scale(num_classes) == pytest.approx(math.sqrt(2) * math.log(num_classes - 1), rel=1e-15)
    loss = build("adacos", {"dynamic": False}, num_classes=num_classes, embedding_size=4)
    x, labels = batch(loss, batch_size=4)
    cos = F.normalize(x, dim=1) @ F.normalize(loss.weight.detach(), dim=1).t()
    torch.testing.assert_close(loss.train().logits(x, labels), fixed_scale(num_classes) * cos)
    assert float(loss.adaptive_scale) == pytest.approx(fixed_scale(num_classes))


def test_adacos_dynamic_scale_follows_algorithm_1():
    loss = build("adacos", {}, num_classes=50, embedding_size=16)
    x, labels = batch(loss, batch_size=9)
    s_old = float(loss.adaptive_scale)
    assert s_old == pytest.approx(fixed_scale(50))
    cos = F.normalize(x, dim=1) @ F.normalize(loss.weight.detach(), dim=1).t()
    target = cos[torch.arange(9), labels]
    b_avg = (torch.exp(s_old * cos).sum(dim=1) - torch.exp(s_old * target)).mean()
    theta_med = torch.acos(target).sort().values[4]  # odd batch: the median is unambiguous
    expected = float(torch.log(b_avg) / torch.cos(torch.clamp(theta_med, max=math.pi / 4)))
    logits = loss.train().logits(x, labels)
    assert float(loss.adaptive_scale) == pytest.approx(expected, rel=1e-10)
    torch.testing.assert_close(logits, expected * cos)


def test_adacos_class_statistic_adds_up_over_chunks():
    loss = build("adacos", {}, num_classes=10)
    x, labels = batch(loss, batch_size=6)
    sim = loss.similarity(loss.features(x), loss.weight)
    mask = F.one_hot(labels, 10).bool()
    whole = loss.class_statistic(sim, mask)
    parts = loss.class_statistic(sim[:, :4], mask[:, :4]) + loss.class_statistic(sim[:, 4:], mask[:, 4:])
    torch.testing.assert_close(whole, parts)


def test_adacos_needs_three_classes():
    with pytest.raises(ValueError, match="num_classes >= 3"):
        losses.create("adacos", embedding_size=4, num_classes=2)


def test_sphereface2_target_logit_never_helps_and_decreases_in_theta():
    """The binary analogue of 'the margin never helps': the target's logit is at most the logit a non-target
    class would get at the same angle, and it decreases with theta (g is increasing in the cosine)."""
    for params in [{}, {"magnitude_type": "A"}]:
        loss = build("sphereface2", params).eval()
        thetas = torch.linspace(0, math.pi, 361, dtype=torch.float64)
        x = towards(loss.weight[0], thetas, norm=5.0)
        logits = loss.logits(x, torch.zeros(361, dtype=torch.long))[:, 0]
        plain = loss.nontarget_logits(torch.cos(thetas)[:, None], None)[:, 0]
        assert (logits <= plain + 1e-9).all()
        assert (logits[1:] - logits[:-1] <= 1e-9).all()


def test_adacos_median_below_pi_over_4_and_even_batch():
    """Random batches have target angles near pi/2, where min(pi/4, theta_med) hides the median. Here the
    samples sit close to their centres (median 0.3 < pi/4, mean 0.48) in an even batch, whose two middle angles
    0.3 and 0.5 differ: the lower one is used (torch.median's convention)."""
    loss = build("adacos", {})
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    angles = torch.tensor([0.1, 0.2, 0.3, 0.5, 0.6, 1.2], dtype=torch.float64)
    x = torch.cat([towards(loss.weight[y], angles[i:i + 1], norm=2.0, seed=i) for i, y in enumerate(labels)])
    s_old = float(loss.adaptive_scale)  # fixed_scale(7), stored as a float32 buffer
    reference_parity("adacos", {}, x=x, labels=labels, loss=loss)
    cos = F.normalize(x, dim=1) @ F.normalize(loss.weight.detach(), dim=1).t()
    b_avg = (torch.exp(s_old * cos).sum(dim=1) - torch.exp(s_old * torch.cos(angles))).mean()
    assert float(loss.adaptive_scale) == pytest.approx(float(torch.log(b_avg)) / math.cos(0.3), rel=1e-10)
