"""Learning-rate schedules, as pure functions of the step (so resuming needs nothing but the step)."""

from __future__ import annotations

import math
from bisect import bisect_right

from marginface.training.config import OptimConfig


def learning_rate(step: int, config: OptimConfig, total_steps: int | None = None) -> float:
    """The rate used *for* optimizer step ``step`` (counted from 0) of a ``total_steps``-step run.

    A linear warm-up multiplies the rate by ``(step + 1) / warmup_steps`` during the first ``warmup_steps``
    steps. Then, by ``config.schedule``:

    * ``"step"`` (the ArcFace recipe): ``lr * gamma^(milestones passed)`` (the warm-up factor applies on top).
    * ``"cosine"``: ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2``,
    * ``"poly"``: ``min_lr + (lr - min_lr) * (1 - t)^power`` (arcface_torch's ``PolyScheduler``, power 2),

    with ``t = (step - warmup_steps) / (total_steps - warmup_steps)`` in [0, 1): the decay starts at the end of
    the warm-up and reaches ``min_lr`` one step after the last. ``total_steps`` is required by these two.
    """
    if config.schedule == "step":
        rate = config.lr * config.gamma ** bisect_right(config.milestones, step)
    else:
        rate = _decayed(step, config, total_steps)
    if config.warmup_steps and step < config.warmup_steps:
        rate *= (step + 1) / config.warmup_steps
    return rate


def _decayed(step: int, config: OptimConfig, total_steps: int | None) -> float:
    if total_steps is None or total_steps <= config.warmup_steps:
        raise ValueError(f"schedule {config.schedule!r} needs total_steps > warmup_steps ({config.warmup_steps}), "
                         f"got {total_steps}")
    t = min(max(step - config.warmup_steps, 0) / (total_steps - config.warmup_steps), 1.0)
    shape = (1.0 + math.cos(math.pi * t)) / 2.0 if config.schedule == "cosine" else (1.0 - t) ** config.power
    return config.min_lr + (config.lr - config.min_lr) * shape
