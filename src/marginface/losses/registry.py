"""The loss registry. Each loss module registers its classes where they are defined, with ``@register("name")``;
importing :mod:`marginface.losses` imports every loss module, so every loss is registered."""

from __future__ import annotations

from typing import TYPE_CHECKING

from marginface.registry import Registry

if TYPE_CHECKING:
    from marginface.losses.base import MarginLoss

LOSSES: Registry[MarginLoss] = Registry("loss", sort=True)
register = LOSSES.register
