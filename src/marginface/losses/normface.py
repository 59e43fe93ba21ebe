"""NormFace (Wang et al., 2017, "NormFace: L2 Hypersphere Embedding for Face Verification")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from marginface.losses.base import MarginContext, MarginLoss
from marginface.losses.registry import register


@register("normface")
class NormFaceLoss(MarginLoss):
    """Normalised softmax: logits ``s cos(theta_j)`` for every class, no margin. Default ``scale`` 30.

    ``learn_scale=True`` learns s as one scalar parameter ``learned_scale``, as the authors' released prototxt does
    (happynear/NormFace ``prototxt/scaled_cosine_softmax.prototxt``: a Caffe ``Scale`` layer over the cosines, one
    scalar, filler value 10, ``min_value`` 0.01): it starts at ``scale`` (pass ``scale=10`` for the authors'
    start) and the value used is ``max(learned_scale, scale_floor)`` (floor 0.01 as theirs). The scalar is shared
    by all classes, so a sharded head refuses it (its gradient would need an all-reduce over the ranks).
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 30.0, learn_scale: bool = False,
                 scale_floor: float = 0.01) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        if not 0 < scale_floor <= scale:
            raise ValueError(f"scale_floor must lie in (0, scale={scale}], got {scale_floor}")
        self.learn_scale, self.scale_floor = bool(learn_scale), float(scale_floor)
        if self.learn_scale:
            self.learned_scale = nn.Parameter(torch.tensor(float(scale)))

    def current_scale(self) -> Tensor | float:
        """s: the fixed ``scale``, or the learned scalar floored at ``scale_floor``."""
        return self.learned_scale.clamp(min=self.scale_floor) if self.learn_scale else self.scale

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        return self.current_scale() * cos

    def nontarget_logits(self, similarity: Tensor, ctx: MarginContext) -> Tensor:
        return self.current_scale() * similarity

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, learn_scale={self.learn_scale}"
