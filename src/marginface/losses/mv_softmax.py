"""MV-Softmax: mis-classified vector guided softmax (Wang et al., AAAI 2020).

The target logit carries an AM (``cos - m``) or Arc (``cos(theta + m)``) margin; a non-target class whose cosine
exceeds that margined target cosine is a mis-classified vector and its logit is raised:
``adaptive``: ``(t + 1) cos(theta_j) + t``, ``fixed``: ``cos(theta_j) + t``; then everything is scaled by s.
The authors' code (FaceX-Zoo ``MV_Softmax``) applies the margin only where ``cos > m`` (AM) or ``cos > 0`` (Arc),
so the target logit jumps up there; here the margin always applies, as in the paper, and the authors' behaviour
is the named switch ``easy_margin=True`` (the hard-example threshold stays the margined target cosine, as their
mask). Like ArcFace's ``easy_margin`` it is a documented exception to "the margin never helps".
"""

from __future__ import annotations

from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss, arc_margin
from marginface.losses.registry import register


@register("mv_softmax")
class MVSoftmaxLoss(MarginLoss):
    """``base`` "am" (margin in cosine units, default 0.35) or "arc" (radians, default 0.5); ``t`` >= 0."""

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 32.0, margin: float | None = None,
        t: float = 0.2, base: str = "am", mode: str = "adaptive", easy_margin: bool = False,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        if base not in ("am", "arc"):
            raise ValueError(f"base must be 'am' or 'arc', got {base!r}")
        if mode not in ("adaptive", "fixed"):
            raise ValueError(f"mode must be 'adaptive' or 'fixed', got {mode!r}")
        if t < 0:
            raise ValueError(f"t (the mis-classified-vector weight) must be >= 0, got {t}")
        self.base, self.mode, self.t, self.easy_margin = base, mode, float(t), bool(easy_margin)
        self.margin = float(margin if margin is not None else (0.35 if base == "am" else 0.5))
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")

    def margined_cos(self, cos: Tensor) -> Tensor:
        return cos - self.margin if self.base == "am" else arc_margin(cos, self.margin)

    def add_extras(self, ctx: MarginContext) -> None:
        ctx.extras["hard_threshold"] = self.margined_cos(ctx.target_similarity).detach()

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        margined = self.margined_cos(cos)
        if self.easy_margin:  # the authors' code: no margin at or below cos = m (AM) / cos = 0 (Arc)
            margined = margined.where(cos > (self.margin if self.base == "am" else 0.0), cos)
        return self.scale * margined

    def nontarget_logits(self, similarity: Tensor, ctx: MarginContext) -> Tensor:
        hard = similarity > ctx.extras["hard_threshold"][:, None]
        raised = (self.t + 1.0) * similarity + self.t if self.mode == "adaptive" else similarity + self.t
        return self.scale * raised.where(hard, similarity)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, base={self.base}, margin={self.margin}, t={self.t}, mode={self.mode}, "
                f"easy_margin={self.easy_margin}")
