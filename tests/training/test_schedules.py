"""Learning-rate schedules against the formulas written out in float64, step by step."""

from __future__ import annotations

import math
from bisect import bisect_right

import pytest

from marginface.training.config import OptimConfig
from marginface.training.schedules import learning_rate


def _old_step_schedule(step: int, config: OptimConfig) -> float:
    """schedules.learning_rate as it was before cosine/poly existed (commit 4b81758), for the SGD default."""
    rate = config.lr * config.gamma ** bisect_right(config.milestones, step)
    if config.warmup_steps and step < config.warmup_steps:
        rate *= (step + 1) / config.warmup_steps
    return rate


def test_step_schedule_is_unchanged():
    config = OptimConfig(lr=0.1, milestones=[5, 9, 20], gamma=0.1, warmup_steps=7)
    for step in range(30):
        assert learning_rate(step, config, 30) == _old_step_schedule(step, config)
        assert learning_rate(step, config) == _old_step_schedule(step, config)  # total_steps not needed


# lr 1e-3, warm-up 10 of 110 steps: the decay runs over 100 steps, t = (step - 10) / 100.
@pytest.mark.parametrize("step, t", [(10, 0.0), (11, 0.01), (35, 0.25), (60, 0.5), (109, 0.99), (200, 1.0)])
def test_cosine_and_poly_follow_their_formulas_after_the_warm_up(step, t):
    for schedule, shape in (("cosine", 0.5 * (1 + math.cos(math.pi * t))), ("poly", (1 - t) ** 2)):
        config = OptimConfig(name="adamw", lr=1e-3, schedule=schedule, warmup_steps=10)
        assert learning_rate(step, config, 110) == pytest.approx(1e-3 * shape, rel=1e-12, abs=1e-18)


def test_warm_up_is_linear_from_lr_over_warmup_to_lr():
    for schedule in ("step", "cosine", "poly"):
        config = OptimConfig(lr=1e-3, schedule=schedule, warmup_steps=10)
        assert [learning_rate(s, config, 110) for s in range(10)] == pytest.approx([1e-4 * (s + 1) for s in range(10)])


def test_min_lr_and_power():
    config = OptimConfig(lr=1.0, schedule="poly", power=1.0, min_lr=0.1)
    assert [learning_rate(s, config, 10) for s in (0, 5, 9)] == pytest.approx([1.0, 0.55, 0.19], rel=1e-12)
    config = OptimConfig(lr=1.0, schedule="cosine", min_lr=0.2)
    assert learning_rate(5, config, 10) == pytest.approx(0.6, rel=1e-12)


def test_arcface_torch_poly_scheduler_after_warm_up():
    """arcface_torch lr_scheduler.PolyScheduler: base * (1 - (s - w) / (T - w))^2 for s >= w (power 2)."""
    config = OptimConfig(name="adamw", lr=1e-3, schedule="poly", warmup_steps=400)
    for s in (400, 1234, 3999):
        assert learning_rate(s, config, 4000) == pytest.approx(1e-3 * (1 - (s - 400) / 3600) ** 2, rel=1e-12)


def test_decay_schedules_need_the_total():
    with pytest.raises(ValueError, match="total_steps"):
        learning_rate(0, OptimConfig(schedule="cosine"))
