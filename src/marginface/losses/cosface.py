"""Additive cosine margin: AM-Softmax (Wang et al., 2018, IEEE SPL) and CosFace (Wang et al., CVPR 2018).

Both define the target logit ``s (cos(theta) - m)`` and the others ``s cos(theta_j)``; they differ only in the
published defaults (AM-Softmax s=30, m=0.35; CosFace s=64, m=0.35). ``margin`` is in cosine units.
"""

from __future__ import annotations

from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss
from marginface.losses.registry import register


class AdditiveCosineMarginLoss(MarginLoss):
    """``s (cos(theta_y) - m)`` for the target class, ``s cos(theta_j)`` for the others."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        if margin < 0:
            raise ValueError(f"margin (cosine units) must be >= 0, got {margin}")
        self.margin = float(margin)

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        return self.scale * (cos - self.margin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}"


@register("am_softmax")
class AMSoftmaxLoss(AdditiveCosineMarginLoss):
    """AM-Softmax with its paper's defaults: scale 30, margin 0.35."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 30.0, margin: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes, scale=scale, margin=margin)


@register("cosface")
class CosFaceLoss(AdditiveCosineMarginLoss):
    """CosFace (LMCL) with its paper's defaults: scale 64, margin 0.35."""
