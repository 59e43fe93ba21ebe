"""Curves, boundaries and significance come from the losses' own logits: checked against ``loss.logits`` on
constructed unit vectors, and against the papers' closed forms in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from marginface.analysis.curves import (
    LossSpec,
    decision_boundary,
    logits_from_cosines,
    paper_specs,
    significance_curve,
    target_logit_curve,
)

ELEMENTWISE = ["softmax", "normface", "sphereface:margin=4,lambda_base=0", "cosface:margin=0.35",
               "arcface:margin=0.5", "combined:m1=1,m2=0.3,m3=0.2", "curricularface", "mv_softmax",
               "subcenter_arcface", "adacos", "am_softmax", "circle"]


def planar_logits(spec: LossSpec, theta1: float, theta2: float) -> torch.Tensor:
    """``loss.logits`` (1, 2) in float64 for x = (1, 0), centre 1 at angle theta1 and centre 2 at -theta2:
    a real embedding and real centres with exactly those angles (label 0)."""
    loss = spec.build()
    with torch.no_grad():
        centres = torch.tensor([[math.cos(theta1), math.sin(theta1)], [math.cos(theta2), -math.sin(theta2)]],
                               dtype=torch.float64)
        loss.weight.copy_(centres.view(2, *([1] * (loss.weight.dim() - 2)), 2).expand_as(loss.weight))
        return loss.logits(torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([0]))


@pytest.mark.parametrize("text", ELEMENTWISE)
def test_logits_from_cosines_equal_the_losses_own_logits(text):
    spec = LossSpec.parse(text)
    loss = spec.build(num_classes=5, embedding_size=7)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    with torch.no_grad():
        loss.weight.copy_(torch.randn(loss.weight.shape, generator=gen, dtype=torch.float64))
        labels = torch.tensor([0, 1, 2, 3, 4, 0])
        expected = loss.logits(x, labels)
        rows = loss.weight if loss.weight.dim() == 2 else loss.weight
        cos = loss.similarity(loss.features(x), rows)
        got = logits_from_cosines(loss, cos, labels)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("spec", paper_specs(), ids=lambda s: s.label)
def test_curve_values_equal_the_losses_logits_at_known_angles(spec):
    theta = np.array([20.0, 37.5, 60.0, 90.0, 100.0, 150.0])
    curve = target_logit_curve(spec, theta)
    scale = spec.build().scale
    for t, value in zip(theta, curve):
        logit = planar_logits(spec, math.radians(t), math.pi / 2)[0, 0].item()
        assert value == pytest.approx(logit / scale, abs=1e-12)


def test_curves_match_the_papers_closed_forms():
    theta = np.linspace(1.0, 170.0, 50)
    t = np.radians(theta)
    got = {s.name: target_logit_curve(s, theta) for s in paper_specs()}
    np.testing.assert_allclose(got["softmax"], np.cos(t), atol=1e-12)
    np.testing.assert_allclose(got["cosface"], np.cos(t) - 0.35, atol=1e-12)
    inside = t + 0.5 < math.pi
    np.testing.assert_allclose(got["arcface"][inside], np.cos(t[inside] + 0.5), atol=1e-12)
    inside = t + 0.3 < math.pi
    np.testing.assert_allclose(got["combined"][inside], np.cos(t[inside] + 0.3) - 0.2, atol=1e-12)
    # SphereFace m=4, lambda=5: (5 cos t + (-1)^k cos(4t) - 2k) / 6 with k = floor(4t / pi)
    k = np.floor(4 * t / math.pi)
    np.testing.assert_allclose(got["sphereface"], (5 * np.cos(t) + (-1) ** k * np.cos(4 * t) - 2 * k) / 6,
                               atol=1e-12)


BOUNDARY_SPECS = ["normface", "sphereface:margin=4,lambda_base=0,lambda_min=0", "cosface:margin=0.35",
                  "arcface:margin=0.5", "combined:m1=1,m2=0.3,m3=0.2", "sphereface:margin=2"]


@pytest.mark.parametrize("text", BOUNDARY_SPECS)
def test_boundary_points_have_equal_logits_for_both_classes(text):
    spec = LossSpec.parse(text)
    theta1 = np.linspace(0.0, 180.0, 37)
    theta2 = decision_boundary(spec, theta1)
    assert np.isfinite(theta2).sum() >= 5, "too few boundary points to check"
    for t1, t2 in zip(theta1, theta2):
        if np.isfinite(t2):
            logits = planar_logits(spec, math.radians(t1), math.radians(t2))[0]
            assert abs(float(logits[0] - logits[1])) < 1e-6, (t1, t2, logits)


def test_boundaries_match_the_papers_table():
    theta1 = np.linspace(5.0, 100.0, 20)
    arc = decision_boundary(LossSpec("arcface", {"margin": 0.5}), theta1)
    np.testing.assert_allclose(arc, theta1 + math.degrees(0.5), atol=1e-9)  # constant angular margin
    cos = decision_boundary(LossSpec("cosface", {"margin": 0.35}), theta1)
    expected = np.degrees(np.arccos(np.clip(np.cos(np.radians(theta1)) - 0.35, -1, 1)))
    np.testing.assert_allclose(cos, expected, atol=1e-9)
    sphere = decision_boundary(LossSpec("sphereface", {"margin": 4, "lambda_base": 0.0, "lambda_min": 0.0}),
                               theta1[theta1 <= 45])
    np.testing.assert_allclose(sphere, 4 * theta1[theta1 <= 45], atol=1e-9)  # cos(4 t1) = cos(t2)


def test_significance_ratio_is_one_for_plain_softmax_and_the_closed_form_for_arcface():
    theta = np.linspace(5.0, 140.0, 28)
    for spec in (LossSpec("normface", {"scale": 30.0}), LossSpec("cosface", {"margin": 0.35})):
        ratio = significance_curve(spec, theta)["ratio"]
        assert np.isfinite(ratio[theta >= 60]).all()  # NaN only where 1 - p_y < 1e-7
        np.testing.assert_allclose(ratio[np.isfinite(ratio)], 1.0, rtol=1e-6)
    m, t = 0.5, np.radians(theta)
    arc = significance_curve(LossSpec("arcface", {"scale": 30.0, "margin": m}), theta, num_classes=7)
    ok = np.isfinite(arc["ratio"])
    assert ok.sum() > 20
    np.testing.assert_allclose(arc["ratio"][ok], (math.cos(m) + math.sin(m) * np.cos(t) / np.sin(t))[ok], rtol=1e-6)
    # p_target of 7 classes, the 6 others at cos = 0: e^(s f) / (e^(s f) + 6)
    f = np.cos(t + m)
    np.testing.assert_allclose(arc["p_target"], np.exp(30 * f) / (np.exp(30 * f) + 6), rtol=1e-9)


def test_loss_spec_parse_and_errors():
    spec = LossSpec.parse("arcface:margin=0.4,scale=32")
    assert spec.params == {"margin": 0.4, "scale": 32} and spec.label == "arcface(margin=0.4, scale=32)"
    with pytest.raises(ValueError, match="unknown loss"):
        LossSpec.parse("arcfase")
    with pytest.raises(ValueError, match="key=value"):
        LossSpec.parse("arcface:0.5")
