"""ArcFace: additive angular margin (Deng et al., CVPR 2019, "ArcFace: Additive Angular Margin Loss")."""

from __future__ import annotations

import torch
from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss, arc_margin
from marginface.losses.registry import register


@register("arcface")
class ArcFaceLoss(MarginLoss):
    """Target logit ``s cos(theta + m)``, others ``s cos(theta_j)``; ``margin`` in radians (default 0.5).

    Where ``theta + m > pi`` the target logit is ``s (cos(theta) - m sin(m))`` so it keeps decreasing in theta
    (insightface's choice; cos(theta + m) itself would rise again and reward a wrong prediction).
    ``easy_margin=True`` applies the margin only where ``cos(theta) > 0`` and leaves the rest unchanged (the
    paper's ablation): the target logit then jumps up at theta = pi/2, which is why it is not the default.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        if not 0 <= margin < torch.pi / 2:
            raise ValueError(f"margin (radians) must lie in [0, pi/2), got {margin}")
        self.margin = float(margin)
        self.easy_margin = bool(easy_margin)

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        margined = arc_margin(cos, self.margin)
        if self.easy_margin:
            # theta < pi/2 where cos > 0, so theta + m < pi and the fallback never applies there.
            margined = torch.where(cos > 0, margined, cos)
        return self.scale * margined

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, easy_margin={self.easy_margin}"
