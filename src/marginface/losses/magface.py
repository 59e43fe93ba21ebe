"""MagFace (Meng et al., CVPR 2021, "MagFace: A Universal Representation for Face Recognition and Quality
Assessment").

The feature magnitude ``a = ||x||`` (clipped to [l_a, u_a]) sets an ArcFace margin that grows linearly with it,
and a regulariser rewards large magnitudes, so that at the optimum the magnitude measures sample quality:

    m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m              (linear, increasing; paper Sec. 3.2)
    g(a) = 1 / a + a / u_a^2                                        (convex, decreasing on [l_a, u_a])
    loss = cross_entropy(s cos(theta + m(a)) for the target, s cos(theta_j) for the others) + lambda_g g(a)

Defaults are the paper's / official training script's (IrvingMeng/MagFace run/run.sh): l_a 10, u_a 110,
l_m 0.45, u_m 0.8, lambda_g 35, s 64. The gradient flows through a into both m(a) and g(a) (that is the point
of MagFace; the clip has zero gradient outside [l_a, u_a], as in the official code).

Choices: the official ``MagLinear`` defaults to ``easy_margin=True`` (margin only where cos(theta) > 0); the
paper's formula has no such switch, so ``easy_margin`` defaults to False here and the target logit uses
ArcFace's monotonic fallback ``cos(theta) - m sin(m)`` where ``theta + m(a) > pi`` (the official code's
non-easy branch). ``regularizer`` in the context is ``lambda_g g(a)`` per sample (B,), averaged with the
cross-entropy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss, arc_margin
from marginface.losses.registry import register


@register("magface")
class MagFaceLoss(MarginLoss):
    """Magnitude-aware ArcFace. Magnitudes in embedding-norm units, margins in radians."""

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 64.0, magnitude_min: float = 10.0,
        magnitude_max: float = 110.0, margin_min: float = 0.45, margin_max: float = 0.8,
        regularizer_weight: float = 35.0, easy_margin: bool = False,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        if not 0 < magnitude_min < magnitude_max:
            raise ValueError(f"need 0 < magnitude_min < magnitude_max, got {magnitude_min}, {magnitude_max}")
        if not 0 <= margin_min <= margin_max < torch.pi / 2:
            raise ValueError(f"need 0 <= margin_min <= margin_max < pi/2, got {margin_min}, {margin_max}")
        if regularizer_weight < 0:
            raise ValueError(f"regularizer_weight (lambda_g) must be >= 0, got {regularizer_weight}")
        self.magnitude_min, self.magnitude_max = float(magnitude_min), float(magnitude_max)
        self.margin_min, self.margin_max = float(margin_min), float(margin_max)
        self.regularizer_weight = float(regularizer_weight)
        self.easy_margin = bool(easy_margin)

    def magnitude(self, norms: Tensor) -> Tensor:
        """(B,) a: the feature norms clipped to [magnitude_min, magnitude_max] (gradient inside only)."""
        return norms.clamp(self.magnitude_min, self.magnitude_max)

    def adaptive_margin(self, a: Tensor) -> Tensor:
        """(B,) m(a) in radians, linear from margin_min at magnitude_min to margin_max at magnitude_max."""
        slope = (self.margin_max - self.margin_min) / (self.magnitude_max - self.magnitude_min)
        return slope * (a - self.magnitude_min) + self.margin_min

    def regularizer(self, a: Tensor) -> Tensor:
        """(B,) lambda_g g(a) = lambda_g (1/a + a/u_a^2)."""
        return self.regularizer_weight * (1.0 / a + a / self.magnitude_max**2)

    def add_extras(self, ctx: MarginContext) -> None:
        ctx.regularizer = self.regularizer(self.magnitude(ctx.norms))

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        margined = arc_margin(cos, self.adaptive_margin(self.magnitude(ctx.norms)))
        if self.easy_margin:
            margined = torch.where(cos > 0, margined, cos)
        return self.scale * margined

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, magnitude=[{self.magnitude_min}, {self.magnitude_max}], "
            f"margin=[{self.margin_min}, {self.margin_max}], regularizer_weight={self.regularizer_weight}"
        )
