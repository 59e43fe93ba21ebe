"""Learning-rate schedules, as pure functions of the step (so resuming needs nothing but the step)."""

from __future__ import annotations

from bisect import bisect_right

from marginface.training.config import OptimConfig


def learning_rate(step: int, config: OptimConfig) -> float:
    """The ArcFace recipe: ``lr * gamma^(milestones passed)``, after an optional linear warm-up.

    ``step`` counts optimizer steps from 0; the rate returned is the one used *for* that step.
    """
    rate = config.lr * config.gamma ** bisect_right(config.milestones, step)
    if config.warmup_steps and step < config.warmup_steps:
        rate *= (step + 1) / config.warmup_steps
    return rate
