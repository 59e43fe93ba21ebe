"""CurricularFace (Huang et al., CVPR 2020, "CurricularFace: Adaptive Curriculum Learning Loss").

Target logit ``s cos(theta + m)`` (ArcFace's, with its fallback past pi). A hard negative — a class whose cosine
exceeds the margined target cosine ``T(cos theta_y)`` — gets ``s cos(theta_j) (t + cos(theta_j))``: early in
training t is ~0 and hard negatives are *down*-weighted (easy samples first); as t grows towards the mean
target cosine they are emphasised.
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss, arc_margin
from marginface.losses.registry import register


@register("curricularface")
class CurricularFaceLoss(MarginLoss):
    """State: buffer ``t`` (starts at 0). At each training-mode forward, before use:
    ``t <- momentum * mean_batch(cos theta_y) + (1 - momentum) * t`` (the un-margined target cosines, detached).
    The authors' code compares hard negatives against ``cos(theta + m)`` without the fallback; here the
    comparison uses the target actually used (with the fallback), which differs only where theta + m > pi.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5,
        momentum: float = 0.01,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        if not 0 <= margin < torch.pi / 2:
            raise ValueError(f"margin (radians) must lie in [0, pi/2), got {margin}")
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must lie in (0, 1], got {momentum}")
        self.margin, self.momentum = float(margin), float(momentum)
        self.register_buffer("t", torch.zeros(()))

    @torch.no_grad()
    def update_state(self, ctx: MarginContext) -> None:
        batch_mean = ctx.target_similarity.detach().mean().to(self.t.dtype)
        self.t.copy_(self.momentum * batch_mean + (1.0 - self.momentum) * self.t)

    def add_extras(self, ctx: MarginContext) -> None:
        ctx.extras["hard_threshold"] = arc_margin(ctx.target_similarity, self.margin).detach()

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        return self.scale * arc_margin(cos, self.margin)

    def nontarget_logits(self, similarity: Tensor, ctx: MarginContext) -> Tensor:
        hard = similarity > ctx.extras["hard_threshold"][:, None]
        modulated = similarity * (self.t.to(similarity.dtype) + similarity)
        return self.scale * modulated.where(hard, similarity)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, momentum={self.momentum}"
