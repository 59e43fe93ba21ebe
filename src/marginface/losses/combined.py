"""The combined margin of the ArcFace paper: ``cos(m1 theta + m2) - m3`` (Deng et al., CVPR 2019, Sec. 3.3).

(m1, m2, m3) = (m, 0, 0) is SphereFace's multiplicative margin without its piecewise extension, (1, m, 0)
ArcFace and (1, 0, m) CosFace. All three terms are always applied (insightface's CombinedMarginLoss drops m1
and m2 whenever m3 > 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss, angle
from marginface.losses.registry import register


@register("combined")
class CombinedMarginLoss(MarginLoss):
    """Target logit ``s (cos(m1 theta + m2) - m3)``, kept decreasing in theta on [0, pi].

    Where ``m1 theta + m2 > pi`` (theta > theta* = (pi - m2)/m1) the target logit is ``s (cos(theta) - m3 - P)``
    with ``P = max(m2 sin(m2), 1 + cos(theta*))``: ``1 + cos(theta*)`` is the smallest penalty that keeps the
    function decreasing across theta*, and ``m2 sin(m2)`` is ArcFace's fallback, so (1, m, 0) equals ``arcface``
    exactly. m1 is dimensionless, m2 in radians, m3 in cosine units; all must be >= 0 and m1 > 0.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 64.0,
        m1: float = 1.0, m2: float = 0.3, m3: float = 0.2,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        if m1 <= 0 or m2 < 0 or m3 < 0 or m2 >= math.pi:
            raise ValueError(f"combined margin needs m1 > 0, 0 <= m2 < pi, m3 >= 0; got {(m1, m2, m3)}")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.theta_star = (math.pi - self.m2) / self.m1
        self.penalty = max(self.m2 * math.sin(self.m2), 1.0 + math.cos(min(self.theta_star, math.pi)))

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        theta = angle(cos)
        margined = torch.cos(self.m1 * theta + self.m2) - self.m3
        fallback = cos - self.m3 - self.penalty
        return self.scale * torch.where(theta > self.theta_star, fallback, margined)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m1={self.m1}, m2={self.m2}, m3={self.m3}"
