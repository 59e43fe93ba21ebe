"""Circle loss, classification form with class centres (Sun et al., CVPR 2020, "Circle Loss", Eq. 5-7).

Target logit ``gamma alpha_p (cos(theta) - Delta_p)``, others ``gamma alpha_n (cos(theta_j) - Delta_n)`` with
``alpha_p = relu(O_p - cos)``, ``alpha_n = relu(cos_j - O_n)``, ``O_p = 1 + m``, ``O_n = -m``, ``Delta_p = 1 - m``,
``Delta_n = m``. The paper treats the weights alpha as constants in back-propagation ("we detach them"); that
is the default here and a named switch (``detach_weights``), not a silent trick.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss
from marginface.losses.registry import register


@register("circle")
class CircleLoss(MarginLoss):
    """``scale`` is the paper's gamma (default 256), ``margin`` its relaxation m (default 0.25)."""

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 256.0, margin: float = 0.25,
        detach_weights: bool = True,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        if not 0 <= margin < 0.5:
            raise ValueError(f"circle margin m must lie in [0, 0.5), got {margin}")
        self.margin, self.detach_weights = float(margin), bool(detach_weights)

    def _weight(self, value: Tensor) -> Tensor:
        value = F.relu(value)
        return value.detach() if self.detach_weights else value

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        alpha_p = self._weight(1.0 + self.margin - cos)
        return self.scale * alpha_p * (cos - (1.0 - self.margin))

    def nontarget_logits(self, similarity: Tensor, ctx: MarginContext) -> Tensor:
        alpha_n = self._weight(similarity + self.margin)
        return self.scale * alpha_n * (similarity - self.margin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, detach_weights={self.detach_weights}"
