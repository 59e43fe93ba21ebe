"""Properties every loss of the family must have: smooth gradients, finiteness at the edges, a margin that never
helps, state that advances only in training, clear errors on bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from marginface import losses
from tests.losses.cases import AMLFS_ARC_FOCAL, AMLFS_COSFACE, AMLFS_HELPS, all_cases, batch, build, case_id

CASES = all_cases()
DEFAULTS = [(name, {}) for name in losses.available()]


# ----------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradcheck_float64(case):
    """Analytic gradients equal finite differences at random points (away from the kinks, almost surely).

    Eval mode keeps running state fixed across the many calls gradcheck makes. Circle's default detaches its
    weights by definition (the paper's gradient is not the derivative of the value), so it is checked with
    ``detach_weights=False``; AdaFace's default detaches its norms (the official code) and is checked with
    ``detach_norms=False``.
    """
    name, params = case
    if name == "circle":
        params = {**params, "detach_weights": False}
    if name == "adaface":  # the official code detaches the norms in the margin: a named switch, default on
        params = {**params, "detach_norms": False}
    loss = build(name, params, embedding_size=4, num_classes=5).eval()
    x, labels = batch(loss, batch_size=3)
    names = [n for n, _ in loss.named_parameters()]
    tensors = [p.detach().clone().requires_grad_(True) for _, p in loss.named_parameters()]

    def fn(x_, *param_values):
        return functional_call(loss, dict(zip(names, param_values)), (x_, labels))

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True), *tensors), eps=1e-6, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- finiteness under fuzzing
EDGE_KINDS = ["random", "on_centre", "opposite", "past_pi", "zero"]


def edge_embeddings(loss, kind: str, norm: float, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Embeddings at the edges: cos exactly +1 / -1 with the target, theta + m > pi, the zero vector."""
    gen = torch.Generator().manual_seed(seed)
    centres = loss.weight.detach().double()
    centres = centres.max(dim=1).values if centres.dim() == 3 else centres  # any representative per class
    target = torch.nn.functional.normalize(centres[labels], dim=1)
    noise = torch.nn.functional.normalize(torch.randn(target.shape, generator=gen, dtype=torch.float64), dim=1)
    direction = {
        "random": noise,
        "on_centre": target,
        "opposite": -target,
        "past_pi": torch.nn.functional.normalize(-target + 0.2 * noise, dim=1),
        "zero": torch.zeros_like(target),
    }[kind]
    return direction * norm


@pytest.mark.parametrize("case", CASES, ids=case_id)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(EDGE_KINDS),
    norm=st.sampled_from([1e-6, 1.0, 64.0, 1e4, 1e12]),
    precision=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**16),
)
def test_finite_at_the_edges(case, kind, norm, precision, seed):
    name, params = case
    loss = build(name, params, embedding_size=8, num_classes=6, dtype=torch.float32, seed=seed % 7).train()
    labels = torch.randint(0, loss.num_classes, (4,), generator=torch.Generator().manual_seed(seed))
    x = edge_embeddings(loss, kind, norm, labels, seed)
    if precision == torch.float16:
        x = x.clamp(-6e4, 6e4)  # fp16 cannot hold larger values: the input itself would be inf
    x = x.to(precision).requires_grad_(True)
    value = loss(x, labels)
    value.backward()
    assert torch.isfinite(value), f"{name}: loss {value} for {kind} embeddings of norm {norm} in {precision}"
    assert torch.isfinite(x.grad).all(), f"{name}: non-finite embedding gradient ({kind}, {norm}, {precision})"
    for pname, p in loss.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"{name}: non-finite grad of {pname}"


# ----------------------------------------------------------------------------- the margin never helps
def target_logit_curve(loss, thetas: torch.Tensor, norm: float) -> torch.Tensor:
    """The target logit at angle theta to the class centre, via the public ``logits`` (eval mode)."""
    d = loss.embedding_size
    centre = torch.nn.functional.normalize(loss.weight.detach().double().reshape(loss.num_classes, -1, d)[0, 0], dim=0)
    other = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    other = torch.nn.functional.normalize(other - (other @ centre) * centre, dim=0)
    x = (torch.cos(thetas)[:, None] * centre + torch.sin(thetas)[:, None] * other) * norm
    labels = torch.zeros(len(thetas), dtype=torch.long)
    if hasattr(loss, "weight") and loss.weight.dim() == 3:  # sub-centres: make every sub-centre the same
        with torch.no_grad():
            loss.weight[0] = loss.weight[0, :1]
    return loss.eval().logits(x, labels)[:, 0]


MARGIN_FREE = {"softmax", "normface", "adacos"}


def documented_exception(case: tuple[str, dict]) -> bool:
    """easy_margin ArcFace, and AM-LFS samples whose t lies above the identity somewhere (its space allows it)."""
    name, params = case
    return bool(params.get("easy_margin")) or (name == "amlfs" and not build(name, params).never_helps())


@pytest.mark.parametrize("case", [c for c in CASES if c[0] not in MARGIN_FREE and not documented_exception(c)],
                         ids=case_id)
@pytest.mark.parametrize("norm", [1.0, 20.0, 60.0])
def test_margin_never_helps(case, norm):
    """Target logit <= the plain logit of the same cosine, and non-increasing in theta on [0, pi].

    ``easy_margin`` ArcFace is excluded on purpose: it jumps up at theta = pi/2 (documented on the class).
    """
    name, params = case
    loss = build(name, params)
    if getattr(loss, "objective", "softmax") != "softmax":
        pytest.skip(f"{name} is not a softmax cross-entropy; its own tests cover its logits")
    thetas = torch.linspace(0, math.pi, 721, dtype=torch.float64)
    curve = target_logit_curve(loss, thetas, norm)
    plain_scale = norm if name == "sphereface" else loss.scale
    plain = plain_scale * torch.cos(thetas)
    tol = 1e-9 * max(1.0, plain_scale)
    assert (curve <= plain + tol).all(), f"{name}: margin helps at theta={thetas[curve > plain + tol][:3]}"
    rises = curve[1:] - curve[:-1]
    assert (rises <= tol).all(), f"{name}: target logit rises with theta at {thetas[1:][rises > tol][:3]}"


def test_arcface_easy_margin_is_the_documented_exception():
    loss = build("arcface", {"easy_margin": True})
    thetas = torch.tensor([math.pi / 2 - 1e-3, math.pi / 2 + 1e-3], dtype=torch.float64)
    curve = target_logit_curve(loss, thetas, 1.0)
    assert curve[1] > curve[0]  # the jump that keeps easy_margin out of the default


@pytest.mark.parametrize(("base", "edge"), [("am", math.acos(0.35)), ("arc", math.pi / 2)])
def test_mv_softmax_easy_margin_is_a_documented_exception(base, edge):
    """The authors' code (easy_margin) leaves cos <= m (AM) / cos <= 0 (Arc) unmargined: a jump up there."""
    loss = build("mv_softmax", {"base": base, "easy_margin": True})
    thetas = torch.tensor([edge - 1e-3, edge + 1e-3], dtype=torch.float64)
    curve = target_logit_curve(loss, thetas, 1.0)
    assert curve[1] > curve[0]
    assert curve[1].item() == pytest.approx(loss.scale * math.cos(edge + 1e-3), rel=1e-12)  # no margin past the edge


def test_amlfs_space_allows_a_transform_that_helps():
    """AM-LFS's piecewise-linear t is unconstrained: a sample can raise the target logit above s cos(theta)."""
    loss = build("amlfs", AMLFS_HELPS)
    assert not loss.never_helps()
    thetas = torch.linspace(0.1, math.pi - 0.1, 50, dtype=torch.float64)
    assert (target_logit_curve(loss, thetas, 1.0) > loss.scale * torch.cos(thetas)).all()


@pytest.mark.parametrize("params", [{}, AMLFS_COSFACE, AMLFS_ARC_FOCAL, AMLFS_HELPS,
                                    {"logit_slopes": [1.0, -0.5], "logit_intercepts": [0.0, 0.0]},
                                    {"logit_slopes": [1.0, 1.0], "logit_intercepts": [0.0, -0.2]}])
def test_amlfs_never_helps_agrees_with_the_curve(params):
    """``never_helps`` (checked on the breakpoints) equals the property checked on a dense grid of angles."""
    loss = build("amlfs", params)
    thetas = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    curve = target_logit_curve(loss, thetas, 1.0)
    tol = 1e-9 * loss.scale
    holds = bool((curve <= loss.scale * torch.cos(thetas) + tol).all() and ((curve[1:] - curve[:-1]) <= tol).all())
    assert loss.never_helps() == holds


# ----------------------------------------------------------------------------- special cases of the combined margin
@pytest.mark.parametrize("margin", [0.5, 1.0, 1.4])
def test_combined_margin_reduces_to_arcface(margin):
    arc, comb = build("arcface", {"margin": margin}), build("combined", {"m1": 1.0, "m2": margin, "m3": 0.0})
    x, labels = batch(arc, batch_size=64)
    torch.testing.assert_close(comb.logits(x, labels), arc.logits(x, labels), rtol=1e-12, atol=1e-10)


def test_combined_margin_reduces_to_cosface():
    cos, comb = build("cosface", {}), build("combined", {"m1": 1.0, "m2": 0.0, "m3": 0.35})
    x, labels = batch(cos, batch_size=64)
    torch.testing.assert_close(comb.logits(x, labels), cos.logits(x, labels), rtol=1e-12, atol=1e-10)


def test_combined_margin_applies_all_three_terms():
    """insightface's CombinedMarginLoss silently drops m1 and m2 when m3 > 0; ours must not."""
    full, cos_only = build("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.2}), build("cosface", {"margin": 0.2})
    x, labels = batch(full, batch_size=16)
    assert not torch.allclose(full.logits(x, labels), cos_only.logits(x, labels))


# ----------------------------------------------------------------------------- running state
STATEFUL = [(name, {}) for name in losses.available() if list(build(name, {}).named_buffers())]


@pytest.mark.parametrize("case", STATEFUL, ids=case_id)
def test_state_advances_only_in_training_and_is_saved(case):
    name, params = case
    loss = build(name, params)
    x, labels = batch(loss)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.eval()(x, labels)
    loss.logits(x, labels)
    for key, value in loss.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=f"{name}: eval mode changed {key}")
    loss.train()(x, labels)
    after_one = {k: v.clone() for k, v in loss.state_dict().items()}
    buffers = [k for k, _ in loss.named_buffers()]
    assert all(k in after_one for k in buffers), f"{name}: buffers missing from state_dict"
    assert any(not torch.equal(after_one[k], before[k]) for k in buffers), f"{name}: training did not advance state"
    restored = build(name, params)
    restored.load_state_dict(after_one)
    torch.testing.assert_close(restored.eval().logits(x, labels), loss.eval().logits(x, labels))


def test_sphereface_step_counts_training_forwards():
    loss = build("sphereface", {}).train()
    x, labels = batch(loss)
    for _ in range(3):
        loss(x, labels)
    assert int(loss.step) == 3
    assert loss.current_lambda() == pytest.approx(max(5.0, 1000.0 / (1 + 0.12 * 3)))


def test_curricularface_t_follows_the_ema_of_target_cosines():
    loss = build("curricularface", {})
    t0 = float(loss.t)
    x, labels = batch(loss)
    cos_y = torch.nn.functional.cosine_similarity(x, loss.weight.detach()[labels], dim=1)
    loss.train()(x, labels)
    assert float(loss.t) == pytest.approx(0.01 * float(cos_y.mean()) + 0.99 * t0, rel=1e-12)


# ----------------------------------------------------------------------------- registry sweep and bad input
@pytest.mark.parametrize("name", losses.available())
def test_every_parameter_gets_a_gradient(name):
    loss = build(name, {}, dtype=torch.float32).train()
    x, labels = batch(loss, batch_size=16, dtype=torch.float32)
    x.requires_grad_(True)
    value = loss(x, labels)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    for pname, p in loss.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    assert loss.logits(x, labels).shape == (16, loss.num_classes)


@pytest.mark.parametrize("name", losses.available())
def test_bad_input_names_the_problem(name):
    loss = build(name, {}, dtype=torch.float32)
    x, labels = batch(loss, dtype=torch.float32)
    with pytest.raises(ValueError, match="shape"):
        loss(x[:, :-1], labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        loss(x, labels[:-1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 7\)"):
        loss(x, torch.full_like(labels, 7))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 7\)"):
        loss(x, torch.full_like(labels, -1))
    with pytest.raises(ValueError, match="floating-point"):
        loss(x.long(), labels)
    with pytest.raises(ValueError, match="integer tensor"):
        loss(x, labels.float())
    nan = x.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        loss(nan, labels)


def test_create_errors_name_the_loss_and_its_options():
    with pytest.raises(ValueError, match="unknown loss 'arcfce'.*arcface"):
        losses.create("arcfce", embedding_size=4, num_classes=3)
    with pytest.raises(ValueError, match="bad parameters for loss 'arcface'"):
        losses.create("arcface", embedding_size=4, num_classes=3, margn=0.5)
    with pytest.raises(ValueError, match="num_classes"):
        losses.create("arcface", embedding_size=4, num_classes=1)
