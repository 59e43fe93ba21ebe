"""MV-Softmax: mis-classified vector guided softmax (Wang et al., AAAI 2020).

The target logit carries an AM (``cos - m``) or Arc (``cos(theta + m)``) margin; a non-target class whose cosine
exceeds that margined target cosine is a mis-classified vector and its logit is raised:
``adaptive``: ``(t + 1) cos(theta_j) + t``, ``fixed``: ``cos(theta_j) + t``; then everything is scaled by s.
FaceX-Zoo's reference applies the AM margin only where ``cos > m`` (making the target logit jump up at
``cos = m``); here the margin always applies, as in the paper.
"""

from __future__ import annotations

from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss, arc_margin


class MVSoftmaxLoss(MarginLoss):
    """``base`` "am" (margin in cosine units, default 0.35) or "arc" (radians, default 0.5); ``t`` >= 0."""

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 32.0, margin: float | None = None,
        t: float = 0.2, base: str = "am", mode: str = "adaptive",
    ) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        if base not in ("am", "arc"):
            raise ValueError(f"base must be 'am' or 'arc', got {base!r}")
        if mode not in ("adaptive", "fixed"):
            raise ValueError(f"mode must be 'adaptive' or 'fixed', got {mode!r}")
        if t < 0:
            raise ValueError(f"t (the mis-classified-vector weight) must be >= 0, got {t}")
        self.base, self.mode, self.t = base, mode, float(t)
        self.margin = float(margin if margin is not None else (0.35 if base == "am" else 0.5))
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")

    def margined_cos(self, cos: Tensor) -> Tensor:
        return cos - self.margin if self.base == "am" else arc_margin(cos, self.margin)

    def make_context(self, embeddings, labels, target_similarity, class_statistic=None) -> MarginContext:
        ctx = super().make_context(embeddings, labels, target_similarity, class_statistic)
        ctx.extras["hard_threshold"] = self.margined_cos(target_similarity).detach()
        return ctx

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        return self.scale * self.margined_cos(cos)

    def nontarget_logits(self, similarity: Tensor, ctx: MarginContext) -> Tensor:
        hard = similarity > ctx.extras["hard_threshold"][:, None]
        raised = (self.t + 1.0) * similarity + self.t if self.mode == "adaptive" else similarity + self.t
        return self.scale * raised.where(hard, similarity)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base}, margin={self.margin}, t={self.t}, mode={self.mode}"
